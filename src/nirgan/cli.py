"""Command line: ``nirgan stage <name>`` runs one pipeline stage on the default paths.

dvc.yaml calls these commands; the paths here are the ones declared there as deps and
outs. ``nirgan check-params`` validates params.yaml (and that the data paths it names
exist) without running anything. ``nirgan export`` writes the trained generator for use
outside Python (:mod:`nirgan.models.export_formats`). ``nirgan generate [--count N] [--model REF] [--out DIR]
[--spec YAML]`` writes a labelled dataset (params ``generate``, overridden by the spec file's
keys and then by the flags).

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

import yaml

from nirgan.config import (
    Config,
    ConfigError,
    DataError,
    OutputError,
    ServiceError,
    check_data_paths,
    load_config,
    parse_config,
)

RAW = Path("data/raw")
CROPS = Path("data/crops")
CLEAN = Path("data/clean")
PREPARED = Path("data/prepared")
SPLIT = Path("data/split")
MODELS = Path("models")
METRICS = Path("metrics")
PLOTS = Path("plots")
GENERATED = Path("data/generated")


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
    "generate": lambda cfg: _stage("generate")(
        cfg, out_dir=GENERATED, model_ref=cfg.generate.model, metrics_path=METRICS / "eval.json"
    ),
}


def _export(cfg: Config, args: argparse.Namespace) -> int:
    from nirgan.models import export_formats

    try:
        formats = export_formats.parse_formats(args.format)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    model = Path(args.model)
    model = model / "generator.pt" if model.is_dir() else model
    size = args.image_size or cfg.augment.image_size
    card = export_formats.export_generator(model, Path(args.out), formats, size)
    for fmt, name in card["files"].items():
        print(f"{Path(args.out) / name}: max |{fmt} - eager| {card['parity_max_abs_diff'][fmt]}")
    return 0
def _generate_config(cfg: Config, args: argparse.Namespace) -> Config:
    """params.yaml's ``generate``, then the spec file's keys, then the flags; validated as one section."""
    section = cfg.generate.model_dump(mode="json")
    origin = args.params
    if args.spec:
        origin = args.spec
        try:
            spec = yaml.safe_load(Path(args.spec).read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"{args.spec}: no such spec file") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{args.spec}: not valid YAML: {exc}") from None
        if not isinstance(spec, dict):
            raise ConfigError(f"{args.spec}: a spec is a mapping of generate keys")
        section.update(spec["generate"] if set(spec) == {"generate"} else spec)  # with or without the header
    for key in ("count", "model", "out_dir"):
        if getattr(args, key) is not None:
            section[key] = getattr(args, key)
    return cfg.model_copy(update={"generate": parse_config({"generate": section}, origin=origin).generate})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nirgan", description=__doc__)
    parser.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
    sub = parser.add_subparsers(dest="command", required=True)
    stage = sub.add_parser("stage", help="run one pipeline stage")
    stage.add_argument("name", choices=list(STAGES))
    sub.add_parser("check-params", help="validate the params file and exit")
    export = sub.add_parser("export", help="write the generator as ONNX / TorchScript / torch.export (README, Export)")
    export.add_argument("--model", default=str(MODELS), help="generator.pt or its folder (default: %(default)s)")
    export.add_argument("--out", default=str(MODELS / "export"), help="output folder (default: %(default)s)")
    export.add_argument("--format", default="onnx,torchscript", help="comma-separated: onnx, torchscript, pt2 "
                        "(default: %(default)s)")
    export.add_argument("--image-size", type=int, default=None, help="S of the inputs (default: augment.image_size)")
    _add_promote(sub)
    gen = sub.add_parser("generate", help="write a labelled NIR dataset (params generate, README)")
    gen.add_argument("--count", type=int, help="images (default: generate.count)")
    gen.add_argument("--model", help="model folder or models:/nirgan-generator@<alias> (default: generate.model)")
    gen.add_argument("--out", dest="out_dir", help="dataset folder (default: generate.out_dir)")
    gen.add_argument("--spec", help="YAML with generate keys (ranges, labels_table, seed, ...)")
    args = parser.parse_args(argv)

    try:
        if args.command == "promote":
            return _promote(args)
        cfg = load_config(args.params)
        if args.command == "check-params":
            check_data_paths(cfg, origin=args.params)
            print(f"{args.params}: ok")
            return 0
        if args.command == "export":
            return _export(cfg, args)
        if args.command == "generate":
            cfg = _generate_config(cfg, args)
            _stage("generate")(cfg, out_dir=Path(cfg.generate.out_dir), model_ref=cfg.generate.model,
                               metrics_path=METRICS / "eval.json")
            return 0
        STAGES[args.name](cfg)
    except (ConfigError, DataError, OutputError, FileNotFoundError) as exc:  # a missing input names its file
        print(f"nirgan: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except ServiceError as exc:
        print(f"nirgan: {' '.join(str(exc).split())}", file=sys.stderr)
        return 3
    return 0


def _add_promote(sub: Any) -> None:
    from nirgan.tracking import CANDIDATE, CHAMPION

    promote = sub.add_parser("promote", help="move a registry alias (default: @champion to the @candidate version)")
    promote.add_argument("--from", dest="from_alias", default=CANDIDATE, help="alias to promote (default: %(default)s)")
    promote.add_argument("--version", type=int, help="promote this version number instead of --from's")
    promote.add_argument("--alias", default=CHAMPION, help="alias to move (default: %(default)s)")


def _promote(args: argparse.Namespace) -> int:
    """``nirgan promote``: one line ``nirgan-generator@champion: 2 -> 3`` (``none`` when unset)."""
    from nirgan import tracking

    old = tracking.alias_version(args.alias)
    new = tracking.promote(args.from_alias, args.alias, args.version)
    print(f"{tracking.REGISTERED_MODEL}@{args.alias}: {old or 'none'} -> {new}"
          + (" (unchanged)" if old == new else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
