"""Command line: ``nirgan stage <name>`` runs one pipeline stage on the default paths.

dvc.yaml calls these commands; the paths here are the ones declared there as deps and
outs. ``nirgan check-params`` validates params.yaml (and that the data paths it names
exist) without running anything.

A params error (:class:`ConfigError`), a data error (:class:`DataError`) or a missing input
file ends the command with one line on stderr, naming the file, row and key, and exit code 2;
no traceback, which is kept for real bugs.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nirgan.config import Config, ConfigError, DataError, ServiceError, check_data_paths, load_config

RAW = Path("data/raw")
CROPS = Path("data/crops")
CLEAN = Path("data/clean")
PREPARED = Path("data/prepared")
SPLIT = Path("data/split")
MODELS = Path("models")
METRICS = Path("metrics")
PLOTS = Path("plots")


def _stage(module: str) -> Callable[..., dict[str, Any]]:
    return importlib.import_module(f"nirgan.stages.{module}").run


STAGES: dict[str, Callable[[Config], dict[str, Any]]] = {
    "collect": lambda cfg: _stage("collect")(cfg, out_dir=RAW),
    "detect": lambda cfg: _stage("detect")(cfg, raw_dir=RAW, out_dir=CROPS),
    "clean": lambda cfg: _stage("clean")(cfg, crops_dir=CROPS, out_dir=CLEAN),
    "augment": lambda cfg: _stage("augment")(cfg, crops_dir=CROPS, clean_dir=CLEAN, out_dir=PREPARED),
    "split": lambda cfg: _stage("split")(cfg, prepared_dir=PREPARED, out_dir=SPLIT),
    "train": lambda cfg: _stage("train")(
        cfg, prepared_dir=PREPARED, split_dir=SPLIT, out_dir=MODELS, metrics_path=METRICS / "train.json"
    ),
    "train_expression": lambda cfg: _stage("train_expression")(
        cfg, prepared_dir=PREPARED, split_dir=SPLIT, out_dir=MODELS, metrics_path=METRICS / "train_expression.json"
    ),
    "evaluate_expression": lambda cfg: _stage("evaluate_expression")(
        cfg, prepared_dir=PREPARED, split_dir=SPLIT, model_dir=MODELS, metrics_path=METRICS / "eval_expression.json",
        plots_dir=PLOTS,
    ),
    "evaluate": lambda cfg: _stage("evaluate")(
        cfg,
        raw_dir=RAW,
        crops_dir=CROPS,
        clean_dir=CLEAN,
        prepared_dir=PREPARED,
        split_dir=SPLIT,
        model_dir=MODELS,
        metrics_path=METRICS / "eval.json",
        plots_dir=PLOTS,
    ),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nirgan", description=__doc__)
    parser.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
    sub = parser.add_subparsers(dest="command", required=True)
    stage = sub.add_parser("stage", help="run one pipeline stage")
    stage.add_argument("name", choices=list(STAGES))
    sub.add_parser("check-params", help="validate the params file and exit")
    args = parser.parse_args(argv)

    try:
        cfg = load_config(args.params)
        if args.command == "check-params":
            check_data_paths(cfg, origin=args.params)
            print(f"{args.params}: ok")
            return 0
        STAGES[args.name](cfg)
    except (ConfigError, DataError, FileNotFoundError) as exc:  # a missing input names its file
        print(f"nirgan: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except ServiceError as exc:
        print(f"nirgan: {' '.join(str(exc).split())}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
