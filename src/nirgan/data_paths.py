"""The files params point at, checked before any work: run by ``nirgan check-params`` (so ``make
repro`` fails before any stage) and by collect (:func:`check_data_paths`), and the pipeline's
``dvc.yaml`` they are checked against (:func:`pipeline_stages`, which check-params also reads to
find the params keys each stage declares).

Not part of :func:`nirgan.config.load_config`: later stages load the same params where the raw
folder may be absent (DVC restored collect's output).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from nirgan.config import Config, ConfigError

DOMAINS = ("target", "source")


def pipeline_stages(params: Path) -> tuple[Path, dict[str, Any]]:
    """The ``dvc.yaml`` beside the params file ``params`` and its stages (empty where there is no
    such file, or it is not valid YAML: DVC itself reports a broken dvc.yaml, naming it)."""
    dvc_yaml = params.parent / "dvc.yaml"
    try:
        stages = (yaml.safe_load(dvc_yaml.read_text()) or {}).get("stages") or {}
    except (OSError, yaml.YAMLError, AttributeError):
        return dvc_yaml, {}
    return dvc_yaml, stages if isinstance(stages, dict) else {}


def check_data_paths(cfg: Config, params: Path = Path("params.yaml")) -> None:
    """The input collect will read exists, has the layout its source needs, and lies outside every
    output of the pipeline whose params file is ``params`` (errors name that file)."""
    c, origin = cfg.collect, str(params)
    if c.source in ("twin", "expression_twin") or c.path is None:
        return
    if not c.path.exists():
        hint = " (a leading ~ is not expanded: write the full path)" if str(c.path).startswith("~") else ""
        raise ConfigError(f"{origin}: collect.path: {c.path} does not exist{hint}")
    _check_not_an_output(c.path, "collect.path", params, reads=(".",) if c.source == "label_folders" else DOMAINS)
    if c.source == "fer2013":
        if not c.path.is_file():
            raise ConfigError(f"{origin}: collect.path: {c.path} is not a file; collect.source=fer2013 needs the CSV")
        return
    if not c.path.is_dir():
        raise ConfigError(f"{origin}: collect.path: {c.path} is a file; collect.source={c.source} needs a folder")
    for domain in ("target", "source") if c.source != "label_folders" else ():
        if not (c.path / domain).is_dir():
            raise ConfigError(f"{origin}: collect.path: {c.path} has no {domain}/ folder (thesis layout)")
    if c.labels is not None:
        labels = c.labels if c.labels.exists() or c.labels.is_absolute() else c.path / c.labels
        if not labels.is_file():
            raise ConfigError(f"{origin}: collect.labels: {c.labels} does not exist (looked here and under {c.path})")
        _check_not_an_output(labels, "collect.labels", params, reads=())


def _check_not_an_output(path: Path, key: str, params: Path, reads: tuple[str, ...]) -> None:
    """Refuse input inside a stage output of the pipeline (the dvc.yaml beside ``params``): DVC
    deletes a stage's outputs before running it, and collect replaces its own, so such data would
    be gone before it was read. An output inside the folders collect reads (``reads``, relative to
    ``path``) would be read back as input on the next run."""
    dvc_yaml, stages = pipeline_stages(params)
    real = path.resolve()
    for name, stage in stages.items():
        for out in (stage or {}).get("outs") or []:
            # outputs are relative to their dvc.yaml's folder, wherever the command runs
            out_path = (dvc_yaml.parent / (next(iter(out)) if isinstance(out, dict) else str(out))).resolve()
            if real == out_path or out_path in real.parents:
                raise ConfigError(f"{params}: {key}: {path} is inside {out_path}, an output of stage {name!r} "
                                  f"of {dvc_yaml}, which DVC and the stage delete before they write it: "
                                  "keep your data elsewhere")
            if any(real / part == out_path or real / part in out_path.parents for part in reads):
                raise ConfigError(f"{params}: {key}: {path} holds {out_path}, an output of stage {name!r} of "
                                  f"{dvc_yaml}, where collect reads its input: it would be read back as input")
