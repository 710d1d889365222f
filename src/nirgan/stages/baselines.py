"""Stage baselines: evaluate's references, computed before train (:mod:`nirgan.metrics.baselines`).

Inputs: ``data/prepared`` arrays and ``data/split`` manifests; the train params that build the
untrained generator (its architecture and ``train.seed``), and the evaluate params of the
baselines' protocol.

Outputs:
- ``models/baselines/``: ``instrument.pt`` (the pose/gaze estimator trained on the real
  train-split targets; without labels, the feature network) and ``record.json`` (the baseline
  figures, the judge curve's baseline rows and the fingerprint evaluate checks);
- ``models/label_estimator.pt``: the instrument again, which generate's label check reads
  images with; without labels in the split, an "absent" record naming why.

Why a stage of its own: none of this reads the trained generator, so a ``dvc exp run`` over
training params reuses it, and evaluate after it runs only the trained generator's half.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nirgan.config import Config
from nirgan.devices import resolve_device
from nirgan.io import stage_log
from nirgan.metrics import baselines
from nirgan.metrics.data import has_labels, load_train_test
from nirgan.models.artifacts import BASELINES, save_absent, save_baselines, save_pose_estimator, untrained_sampler

LABEL_ESTIMATOR = "label_estimator.pt"  # the instrument, kept for generate's label check


def run(cfg: Config, prepared_dir: Path, split_dir: Path, model_dir: Path) -> dict[str, Any]:
    model_dir = Path(model_dir)
    e = cfg.evaluate
    train, test = load_train_test(prepared_dir, split_dir)
    with stage_log("baselines", train_pairs=len(train), test_pairs=len(test)) as counts:
        device = resolve_device(e.device, "evaluate.device")
        untrained = untrained_sampler(cfg.train, 0).inference(e.precision, device)
        labelled = has_labels(train, test)
        found = baselines.compute(cfg, train, test, untrained.generate, untrained.latent_dim,
                                  (untrained.generator, untrained.mapping), device, labelled)
        save_baselines(model_dir / BASELINES, found.instrument, baselines.record(found))
        if labelled:
            save_pose_estimator(found.instrument, model_dir / LABEL_ESTIMATOR)
        else:
            save_absent(model_dir / LABEL_ESTIMATOR, "the split has no pose/gaze labels: no label estimator")
        counts.update(figures=len(found.figures), labelled=labelled)
    return dict(counts)
