"""Target-label accuracy of a trained expression model, the quick figure of issue 13's target.

A classifier (``nirgan.expression.measures``) is trained on the real train faces only; it rates
every test face translated to each of the other labels (n_test x (C - 1) translations), beside
its own accuracy on the real test faces. The evaluate_expression stage reports the official
figures; this script is the trainer's own check.

Run from the expression pipeline's folder after ``dvc repro train_expression``::

    cd pipelines/expression && ../../.venv/bin/python ../../benchmarks/expression_accuracy.py
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from nirgan.expression.data import load_expression_split
from nirgan.expression.measures import accuracy, predict_labels, train_expression_classifier
from nirgan.expression.artifacts import load_expression_translator


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prepared", default="data/prepared")
    ap.add_argument("--split", default="data/split")
    ap.add_argument("--model", default="models/expression_generator.pt")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    split = load_expression_split(args.prepared, args.split)
    c = len(split.names)
    t0 = time.perf_counter()
    clf = train_expression_classifier(split.train_images, split.train_labels, c, epochs=args.epochs, seed=args.seed)
    clf_s = time.perf_counter() - t0
    translator = load_expression_translator(args.model)
    targets = np.concatenate([(split.test_labels + k) % c for k in range(1, c)])
    inputs = np.concatenate([split.test_images] * (c - 1))
    pred = predict_labels(clf, translator.translate(inputs, targets))
    confusion = np.zeros((c, c), int)
    np.add.at(confusion, (targets, pred), 1)
    print(json.dumps({
        "model": translator.kind,
        "labels": list(split.names),
        "target_label_accuracy": float((pred == targets).mean()),
        "classifier_real_test_accuracy": accuracy(clf, split.test_images, split.test_labels),
        "translations": int(len(targets)),
        "per_label_accuracy": {n: float(confusion[i, i] / max(confusion[i].sum(), 1)) for i, n in enumerate(split.names)},
        "confusion_rows_target_cols_predicted": confusion.tolist(),
        "classifier_train_s": round(clf_s, 1),
        "torch_threads": torch.get_num_threads(),
    }, indent=1))


if __name__ == "__main__":
    main()
