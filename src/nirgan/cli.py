"""Command line: ``nirgan stage <name>`` runs one pipeline stage on the default paths.

dvc.yaml calls these commands; the paths here are the ones declared there as deps and
outs. ``nirgan check-params`` validates params.yaml without running anything: types, ranges
and finiteness, that the data paths it names exist and the labels table has the columns collect
needs, that every device it asks for is on this machine, and that every params key the
dvc.yaml beside it declares is in the file (DVC would otherwise stop at that stage, late). A
configured evaluate.fid_weights / lpips_weights file that is missing or not the reference file is
a warning line on stderr, not an error (exit 0): those figures are optional.
``nirgan export`` writes the trained generator for use outside Python
(:mod:`nirgan.models.export_formats`; it never replaces a file or folder that is not an export);
``--image-size`` follows augment.image_size's rule.
``nirgan promote`` outside a project needs ``MLFLOW_TRACKING_URI``: it never creates a new
``mlflow.db`` where it happens to run (nor does generate). ``nirgan generate [--count N]
[--model REF] [--out DIR] [--spec YAML] [--overwrite]`` writes a labelled dataset (params
``generate``, overridden by the spec file's keys and then by the flags; an error about a
``generate`` key names the file or flags it came from).

A params error (:class:`ConfigError`), a data error (:class:`DataError`) or a missing input
file ends the command with one line on stderr, naming the file, row and key, and exit code 2;
no traceback, which is kept for real bugs.
"""

from __future__ import annotations

import argparse
import re
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
    load_config,
    parse_config,
)
from nirgan.cores import size_threads
from nirgan.data_paths import check_data_paths, pipeline_stages

RAW = Path("data/raw")
CROPS = Path("data/crops")
CLEAN = Path("data/clean")
PREPARED = Path("data/prepared")
SPLIT = Path("data/split")
MODELS = Path("models")
METRICS = Path("metrics")
PLOTS = Path("plots")
GENERATED = Path("data/generated")
# where the stages' atomic writes leave temporary siblings when killed (nirgan.io.sweep_stale)
OUTPUT_PARENTS = (Path("."), Path("data"), MODELS, METRICS, PLOTS, GENERATED, GENERATED / "images",
                  GENERATED / "shards")


def _stage(module: str) -> Callable[..., dict[str, Any]]:
    """The ``run`` of ``nirgan.stages.<module>`` (NIR) or of ``nirgan.expression.stages.<module>``
    (``<module>_expression``). Each import is written out, so import tools (and
    tests/test_structure.py) see every stage the CLI can run; each runs only when its stage does,
    so ``nirgan check-params`` does not wait for torch and the detector."""
    match module:
        case "collect":
            from nirgan.stages import collect as stage
        case "detect":
            from nirgan.stages import detect as stage
        case "clean":
            from nirgan.stages import clean as stage
        case "augment":
            from nirgan.stages import augment as stage
        case "split":
            from nirgan.stages import split as stage
        case "baselines":
            from nirgan.stages import baselines as stage
        case "train":
            from nirgan.stages import train as stage
        case "collect_expression":
            from nirgan.expression.stages import collect as stage
        case "detect_expression":
            from nirgan.expression.stages import detect as stage
        case "clean_expression":
            from nirgan.expression.stages import clean as stage
        case "augment_expression":
            from nirgan.expression.stages import augment as stage
        case "split_expression":
            from nirgan.expression.stages import split as stage
        case "train_expression":
            from nirgan.expression.stages import train as stage
        case "evaluate":
            from nirgan.stages import evaluate as stage
        case "evaluate_expression":
            from nirgan.expression.stages import evaluate as stage
        case "generate":
            from nirgan.stages import generate as stage
        case _:
            raise KeyError(f"no stage module {module!r}")
    return stage.run


# Each stage's entry, given the config and the params file it came from.
STAGES: dict[str, Callable[[Config, Path], dict[str, Any]]] = {
    "collect": lambda cfg, params: _stage("collect")(cfg, out_dir=RAW, params=params),
    "detect": lambda cfg, _: _stage("detect")(cfg, raw_dir=RAW, out_dir=CROPS),
    "clean": lambda cfg, _: _stage("clean")(cfg, crops_dir=CROPS, out_dir=CLEAN),
    "augment": lambda cfg, _: _stage("augment")(cfg, crops_dir=CROPS, clean_dir=CLEAN, out_dir=PREPARED),
    "split": lambda cfg, _: _stage("split")(cfg, prepared_dir=PREPARED, out_dir=SPLIT),
    "baselines": lambda cfg, _: _stage("baselines")(cfg, prepared_dir=PREPARED, split_dir=SPLIT, model_dir=MODELS),
    "train": lambda cfg, _: _stage("train")(
        cfg, prepared_dir=PREPARED, split_dir=SPLIT, out_dir=MODELS, metrics_path=METRICS / "train.json"
    ),
    "collect_expression": lambda cfg, params: _stage("collect_expression")(cfg, out_dir=RAW, params=params),
    "detect_expression": lambda cfg, _: _stage("detect_expression")(cfg, raw_dir=RAW, out_dir=CROPS),
    "clean_expression": lambda cfg, _: _stage("clean_expression")(cfg, crops_dir=CROPS, out_dir=CLEAN),
    "augment_expression": lambda cfg, _: _stage("augment_expression")(cfg, crops_dir=CROPS, clean_dir=CLEAN,
                                                                   out_dir=PREPARED),
    "split_expression": lambda cfg, _: _stage("split_expression")(cfg, prepared_dir=PREPARED, out_dir=SPLIT),
    "train_expression": lambda cfg, _: _stage("train_expression")(
        cfg, prepared_dir=PREPARED, split_dir=SPLIT, out_dir=MODELS, metrics_path=METRICS / "train_expression.json"
    ),
    "evaluate_expression": lambda cfg, _: _stage("evaluate_expression")(
        cfg, prepared_dir=PREPARED, split_dir=SPLIT, model_dir=MODELS, metrics_path=METRICS / "eval_expression.json",
        plots_dir=PLOTS,
    ),
    "evaluate": lambda cfg, _: _stage("evaluate")(
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
    # data/generated is DVC's output: dvc repro deletes it before this stage, and DVC's cache keeps
    # every version, so a run by hand after a params change replaces it as dvc repro would
    "generate": lambda cfg, _: _stage("generate")(
        cfg, out_dir=GENERATED, model_ref=cfg.generate.model, metrics_path=METRICS / "eval.json", overwrite=True
    ),
}


def _check_table_columns(cfg: Config, origin: str) -> None:
    """collect.labels has the columns collect needs, by its header alone (nothing else is read),
    so a wrong table stops check-params rather than collect."""
    c = cfg.collect
    if c.labels is None or c.path is None or c.source in ("twin", "expression_twin", "fer2013"):
        return
    import pandas as pd
    import pyarrow.parquet as pq

    from nirgan.labels import LABELS

    path = c.labels if c.labels.exists() or c.labels.is_absolute() else c.path / c.labels
    source = c.source
    needed = ("file", "subject") if source == "label_folders" else ("pair_id", *LABELS)
    try:
        if path.suffix.lower() == ".csv":
            columns = list(pd.read_csv(path, nrows=0).columns)
        elif path.suffix.lower() in (".parquet", ".pq"):
            columns = list(pq.read_schema(path).names)
        else:
            raise ConfigError(f"{origin}: collect.labels: {path} must be .csv or .parquet")
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"{origin}: collect.labels: cannot read {path}: {str(exc).splitlines()[0]}") from None
    missing = [col for col in needed if col not in columns]
    if missing:
        raise ConfigError(f"{origin}: collect.labels: {path} lacks column(s) {', '.join(missing)} "
                          f"(collect.source {source} needs {', '.join(needed)}; it has {', '.join(map(str, columns))})")


_MISSING = object()


def _check_declared_params(params: Path) -> None:
    """Every params key that the dvc.yaml beside ``params`` declares for a stage is in the file.
    DVC itself checks a stage's keys only when it reaches that stage: a params file without
    ``detect:`` would otherwise fail at detect, after collect's work, however valid it is."""
    pipeline, stages = pipeline_stages(params)
    data = yaml.safe_load(params.read_text()) or {}
    for name, stage in stages.items():
        for entry in (stage or {}).get("params") or []:
            # "section" or "section.key" in params.yaml, or {file: [keys]} in another file
            keys = [entry] if isinstance(entry, str) else (entry or {}).get(params.name) or []
            for key in keys:
                node: Any = data
                for part in key.split("."):  # a key written as null is there (DVC tracks it)
                    node = node[part] if isinstance(node, dict) and part in node else _MISSING
                if node is _MISSING:
                    raise ConfigError(f"{params}: {key}: missing, and stage {name} of {pipeline} declares it "
                                      f"(write the section, even as '{key.split('.')[-1]}: {{}}' for its defaults)")


def _check_train_needs(cfg: Config, origin: str) -> None:
    """The train stage's own checks before its first step (:func:`nirgan.training.resume.check_config`:
    the VGG-19 file a vgg19 loss needs, the discriminator layers a perceptual loss reads), made here
    too: under ``make repro`` the train stage starts only after collect to baselines have run.
    They import torch, so only where such a loss is configured."""
    t = cfg.train
    if not {t.perceptual, t.sd_image_distance, t.ir_distance} & {"vgg19", "discriminator"}:
        return
    from nirgan.models.vgg19 import MissingWeightsError
    from nirgan.training.resume import check_config

    try:
        check_config(cfg, world_size=1)
    except MissingWeightsError as exc:
        keys = [f"train.{k}" for k in ("perceptual", "sd_image_distance", "ir_distance") if getattr(t, k) == "vgg19"]
        raise ConfigError(f"{origin}: {' / '.join(keys)}: vgg19: {exc}") from None
    except ValueError as exc:
        raise ConfigError(f"{origin}: {exc}") from None


def _weights_warnings(cfg: Config, origin: str) -> list[str]:
    """One line per configured evaluate.*_weights file that evaluate will not use. A warning, not
    an error: FID and LPIPS are optional figures that evaluate reports as "unavailable" with this
    same reason, and ``make repro`` runs check-params first, so an error would stop the whole
    pipeline (training included) over one optional figure."""
    from nirgan.metrics.weights import configured_problems

    return [f"{origin}: {key}: {why}; evaluate will report {key.split('.')[1].removesuffix('_weights')} as "
            '"unavailable" with this reason (the figure is optional: nothing else is held up)'
            for key, why in configured_problems(cfg.evaluate)]


def _export_image_size(cfg: Config, value: int | None) -> int:
    """--image-size by the rule of augment.image_size (the generators halve it five times), or
    augment.image_size itself when it is not given."""
    if value is None:
        return cfg.augment.image_size
    try:
        parse_config({"augment": {"image_size": value}})
    except ConfigError as exc:
        rule = str(exc).rsplit("augment.image_size: ", 1)[-1]
        raise ConfigError(f"--image-size {value}: {rule} (the generators halve the size five times: a multiple "
                          "of 32 from 64, as augment.image_size and generate.image_size)") from None
    return value


def _export(cfg: Config, args: argparse.Namespace) -> int:
    from nirgan.models import export_formats

    size = _export_image_size(cfg, args.image_size)  # before the model is read: a typo costs nothing
    try:
        formats = export_formats.parse_formats(args.format)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    model = Path(args.model)
    model = model / "generator.pt" if model.is_dir() else model
    card = export_formats.export_generator(model, Path(args.out), formats, size)
    for fmt, name in card["files"].items():
        print(f"{Path(args.out) / name}: max |{fmt} - eager| {card['parity_max_abs_diff'][fmt]}")
    return 0
_GENERATE_FLAGS = {"count": "--count", "model": "--model", "out_dir": "--out"}


def _generate_config(cfg: Config, args: argparse.Namespace) -> tuple[Config, dict[str, str]]:
    """params.yaml's ``generate``, then the spec file's keys, then the flags; validated as one
    section. Also returns where each key came from (the params file, the spec file or the flags),
    so that a later error about a key can name it."""
    section = cfg.generate.model_dump(mode="json")
    origin = args.params
    origins = dict.fromkeys(section, args.params)
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
        if set(spec) == {"generate"}:  # with or without the header
            spec = spec["generate"]
            if not isinstance(spec, dict):
                held = "nothing" if spec is None else f"{spec!r:.40}"
                raise ConfigError(f"{args.spec}: generate: holds {held}, not a mapping of generate keys "
                                  "(count: 2000, seed: 0, ...)")
        section.update(spec)
        origins.update(dict.fromkeys(map(str, spec), args.spec))
    parse_config({"generate": section}, origin=origin)  # so a bad file is blamed on the file
    flags = {key: getattr(args, key) for key in _GENERATE_FLAGS if getattr(args, key) is not None}
    if flags:
        section.update(flags)
        origin = "the command line (" + " ".join(f"{_GENERATE_FLAGS[k]} {v}" for k, v in flags.items()) + ")"
        origins.update(dict.fromkeys(flags, origin))
    return cfg.model_copy(update={"generate": parse_config({"generate": section}, origin=origin).generate}), origins


def _blamed(exc: ConfigError, origins: dict[str, str]) -> ConfigError:
    """``exc`` naming the file (or flags) its ``generate.<key>`` came from: the checks after
    parsing (the rig's ranges, the labels table, the model) know the key, not the file."""
    match = re.match(r"generate\.(\w+)", str(exc))
    return ConfigError(f"{origins[match[1]]}: {exc}") if match and match[1] in origins else exc


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
    export.add_argument("--image-size", type=int, default=None,
                        help="S of the inputs and output: a multiple of 32 from 64, as augment.image_size "
                        "(default: augment.image_size; 0 or any other value is refused)")
    _add_promote(sub)
    gen = sub.add_parser("generate", help="write a labelled NIR dataset (params generate, README)")
    gen.add_argument("--count", type=int, help="images (default: generate.count)")
    gen.add_argument("--model", help="model folder or models:/nirgan-generator@<alias> (default: generate.model)")
    gen.add_argument("--out", dest="out_dir", help="dataset folder (default: generate.out_dir)")
    gen.add_argument("--spec", help="YAML with generate keys (ranges, labels_table, seed, ...)")
    gen.add_argument("--overwrite", action="store_true", help="delete a dataset of another spec or model in --out "
                     "(default: refuse, naming the settings that differ)")
    args = parser.parse_args(argv)

    try:
        if args.command == "promote":
            return _promote(args)
        cfg = load_config(args.params)
        try:  # torch/OpenMP pools sized to this process's cores, not the host's (nirgan.cores)
            size_threads()
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if args.command == "check-params":
            check_data_paths(cfg, Path(args.params))
            _check_table_columns(cfg, args.params)
            # 'auto' and 'cpu' are always there; only 'cuda' needs torch to answer, whose import
            # is most of this command's 2 s (and a train-nir run calls it for every workspace).
            if any(getattr(section, "device", None) == "cuda" for _, section in cfg):
                from nirgan.devices import check_devices

                check_devices(cfg, origin=args.params)
            _check_declared_params(Path(args.params))
            _check_train_needs(cfg, args.params)
            warnings = _weights_warnings(cfg, args.params)
            for line in warnings:
                print(f"nirgan: warning: {line}", file=sys.stderr)
            print(f"{args.params}: ok" + (f" ({len(warnings)} warning{'s' * (len(warnings) > 1)} on stderr)"
                                          if warnings else ""))
            return 0
        if args.command == "export":
            return _export(cfg, args)
        if args.command == "generate":
            cfg, origins = _generate_config(cfg, args)
            try:
                _stage("generate")(cfg, out_dir=Path(cfg.generate.out_dir), model_ref=cfg.generate.model,
                                   metrics_path=METRICS / "eval.json", overwrite=args.overwrite)
            except ConfigError as exc:
                raise _blamed(exc, origins) from None
            return 0
        from nirgan.io import sweep_stale

        sweep_stale(*OUTPUT_PARENTS)  # a stage DVC restored from its cache ran no code to clean its own
        STAGES[args.name](cfg, Path(args.params))
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

    if reason := tracking.missing_store():  # the default store would be a new, empty mlflow.db here
        raise ConfigError(f"{reason}; run promote in the project, or point MLFLOW_TRACKING_URI at its tracking server")
    old = tracking.alias_version(args.alias)
    new = tracking.promote(args.from_alias, args.alias, args.version)
    print(f"{tracking.REGISTERED_MODEL}@{args.alias}: {old or 'none'} -> {new}"
          + (" (unchanged)" if old == new else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
