"""A labelled NIR dataset, written shard by shard (README "Generate a labelled dataset").

Layout of ``out_dir``::

    images/<shard:05d>/<index:08d>.png   8-bit grayscale PNGs
    shards/<shard:05d>.parquet           that shard's rows, written last: the shard's commit mark
    labels.parquet                       all rows (nirgan.generation.finalize), columns below
    dataset.json                         the card: model, git commit, spec, counts, eval metrics
    contact_sheet.png, label_distributions.png
    .plan.json                           the spec and model the shards were made with (its identity:
                                         nirgan.generation.output)
    .framing.json                        the rig framing's calibration (made once, read by every shard)
    .lock                                held (flock) by the run writing the folder, empty

Columns: ``file`` (relative to out_dir), ``index``, ``shard``, the requested ``LABELS`` (degrees)
and ``glasses`` (null where a folder rig's labels are unknown: the card's ``labels`` says how many),
``table_row`` (labels-table row, -1 when drawn from the ranges), ``source``
(the rig's recipe of the source render), ``latent_seed`` (z = ``torch.randn(latent_dim,
generator=torch.Generator().manual_seed(latent_seed))``), ``attempt``, ``overflow`` (-1, or the
shard's overflow row that replaced a requested row the label check kept rejecting),
``rejected`` (images dropped for this slot before this one), ``model_name``, ``model_version``,
``estimated_<label>`` and ``error_<label>`` (estimated - requested, degrees), ``label_error_max``
(max absolute error over the labels), ``label_ok`` (within ``max_label_error_deg``; null when off).

Per image: the rig renders the source, the generator draws from a z seeded by (seed, index,
attempt), the image is quantised to 8 bits, and the label estimator of evaluate reads that
quantised image (what a consumer will load). With ``max_label_error_deg`` an image further off
is dropped and counted, the slot retried with a new latent up to ``max_attempts``, then filled
from the shard's overflow rows, so every shard holds exactly its count.

Reliability: a shard's images go to a temporary folder renamed into place, then its parquet is
written atomically; a shard with its parquet is complete and left as it is, so a rerun after a
kill redoes only unfinished shards, with the same bytes (same rows, latents, batches). Memory is
bounded by one shard: :func:`nirgan.generation.finalize.finalize` streams the shard tables into
labels.parquet.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from nirgan.config import Config, ConfigError, DetectConfig, GenerateConfig, OutputError, TwinConfig
from nirgan.devices import effective_precision
from nirgan.generation.output import FRAMING_CACHE, MARKER, claimed, writing
from nirgan.generation.rig import RIG_LIMITS, SourceRig, built_in_rig, calibrate, check_spec, folder_rig
from nirgan.generation.spec import LabelRows, read_label_table, validate_rows
from nirgan.io import atomic_dir, file_sha256, write_table
from nirgan.labels import LABELS
from nirgan.models.artifacts import Sampler, load_pose_estimator, load_sampler
from nirgan.models.pose_estimator import PoseEstimator, predict
from nirgan.workers import ordered_map

log = logging.getLogger("nirgan.generate")

_LATENT_STREAM, _OVERFLOW_LATENT_STREAM = 3, 4
PHASES = ("render", "generate", "label_check", "encode", "io")


@dataclass(frozen=True)
class DatasetPlan:
    out_dir: Path
    count: int
    shard_size: int
    n_shards: int
    spec: GenerateConfig
    model: dict
    detect: DetectConfig = field(default_factory=DetectConfig)  # the built-in rig frames like detect
    twin: TwinConfig = field(default_factory=TwinConfig)
    precision: str = "fp32"  # what spec.precision runs as on the plan's device (nirgan.devices.effective_precision)

    def shard_range(self, index: int) -> range:
        return range(index * self.shard_size, min((index + 1) * self.shard_size, self.count))

    def shard_table(self, index: int) -> Path:
        return self.out_dir / "shards" / f"{index:05d}.parquet"


# --------------------------------------------------------------------------------- plan
def plan_dataset(cfg: Config, out_dir: Path, model: dict, device: str = "cpu",
                 overwrite: bool = False) -> DatasetPlan:
    """:func:`open_dataset`, releasing the folder's lock at once (a caller that writes shards
    afterwards, such as the generate-nir flow's tasks, is then the folder's only writer itself)."""
    with open_dataset(cfg, out_dir, model, device, overwrite) as plan:
        return plan


@contextlib.contextmanager
def open_dataset(cfg: Config, out_dir: Path, model: dict, device: str = "cpu",
                 overwrite: bool = False) -> Iterator[DatasetPlan]:
    """Validate everything a shard will need (spec, rig, labels table, model files) before any
    work, then claim ``out_dir`` (:func:`nirgan.generation.output.claimed`: its lock is held until
    the block ends; a folder of the same dataset keeps its complete shards, one of another
    dataset is refused unless ``overwrite``, a non-empty folder that is no dataset always).
    ``device``: the kind of device the shards run on, which decides what ``generate.precision``
    runs as (bf16 only where it is native), a part of the bytes."""
    spec, out_dir = cfg.generate, Path(out_dir)
    check_spec(spec)
    plan = DatasetPlan(out_dir=out_dir, count=spec.count, shard_size=spec.shard_size,
                       n_shards=-(-spec.count // spec.shard_size), spec=spec, model=dict(model),
                       detect=cfg.detect, twin=cfg.collect.twin,
                       precision=effective_precision(spec.precision, torch.device(device)))
    label_rows(plan)  # a bad labels table fails here, naming its row and key
    if not Path(model["generator"]).is_file():
        raise ConfigError(f"generate.model: {model['generator']} does not exist (run the train stage first)")
    if spec.max_label_error_deg is not None and model.get("label_estimator") is None:
        raise ConfigError("generate.max_label_error_deg needs the label estimator (label_estimator.pt, written by "
                          f"the baselines stage) beside the generator; {model['generator']} has none")
    if spec.rig == "folder":
        _refuse_unknown_labels(spec, _folder(plan)[1], model)
    # what the bytes depend on: not where the dataset or the model file lies (output.NOT_IDENTITY
    # says which of these keys do not decide the dataset's identity)
    fingerprint = {"spec": spec.model_dump(mode="json", exclude={"out_dir", "model"}), "precision": plan.precision,
                   # the built-in rig's framing follows detect's crop and the twin's cameras
                   "rig": ({"detect": cfg.detect.model_dump(mode="json", include=RIG_DETECT_KEYS),
                            "twin": cfg.collect.twin.model_dump(mode="json")}
                           if spec.rig == "twin" or spec.rig_framing != "none" else None),
                   "generator_sha256": file_sha256(model["generator"]),
                   "estimator_sha256": file_sha256(model["label_estimator"]) if model.get("label_estimator") else None,
                   # a table edited in place asks for other rows under the same path
                   **{f"{key}_sha256": file_sha256(getattr(spec, key)) for key in ("labels_table", "rig_labels")
                      if getattr(spec, key) is not None and Path(getattr(spec, key)).is_file()}}
    with claimed(out_dir, fingerprint, [len(plan.shard_range(k)) for k in range(plan.n_shards)], overwrite):
        if spec.rig == "twin":
            _rig(plan)  # calibrate once here, into FRAMING_CACHE, so shard workers read it, not redo it
        elif spec.rig_framing != "none":  # the folder rig's framing, the same way (in-process it is cached already)
            calibrate(plan.detect, plan.twin, cache=out_dir / FRAMING_CACHE)
        yield plan


def _refuse_unknown_labels(spec: GenerateConfig, rows: pd.DataFrame, model: dict) -> None:
    """Rows whose labels are unknown can be generated only by a generator that does not read
    labels, and never under a label check (there is nothing to check against)."""
    unknown = int(rows[list(LABELS)].isna().any(axis=1).sum())
    if not unknown:
        return
    what = (f"{unknown} of {len(rows)} folder rig rows have unknown labels "
            f"({'no generate.rig_labels' if spec.rig_labels is None else 'empty cells in ' + str(spec.rig_labels)})")
    if spec.max_label_error_deg is not None:
        raise ConfigError(f"generate.max_label_error_deg: {what}, so no image can be checked against them; "
                          "remove max_label_error_deg or give every label in generate.rig_labels")
    label_dim = load_sampler(model["generator"]).label_dim
    if label_dim:
        raise ConfigError(f"generate.rig_labels: {what}, but the generator {model['generator']} is conditioned on "
                          f"{label_dim} pose/gaze labels; give them in generate.rig_labels")


# the detect keys the built-in rig reads (generation/rig.py): the dataset fingerprint holds these
RIG_DETECT_KEYS = {"margin", "crop_size", "min_face_size", "min_probability"}


# ------------------------------------------------------------------------------ inputs
_CACHE: dict[tuple, Any] = {}


def _cached(key: tuple, make: Any) -> Any:
    """One loaded model / rig / table per process (a worker writes many shards of one plan)."""
    if key not in _CACHE:
        if len(_CACHE) > 8:
            _CACHE.clear()
        _CACHE[key] = make()
    return _CACHE[key]


def label_rows(plan: DatasetPlan) -> LabelRows:
    spec = plan.spec
    if spec.rig == "folder":
        return LabelRows(spec, _folder(plan)[1])
    if spec.labels_table is not None:
        table = _cached(("table", spec.labels_table), lambda: read_label_table(spec.labels_table, RIG_LIMITS))
        return LabelRows(spec, table)
    return LabelRows(spec)


def _folder(plan: DatasetPlan) -> tuple[SourceRig, pd.DataFrame]:
    spec = plan.spec

    def make() -> tuple[SourceRig, pd.DataFrame]:
        framing = None
        if spec.rig_framing != "none":  # the box comes from the built-in rig's calibration (generation.framing)
            ours = (plan.out_dir / MARKER).is_file()  # never write into a folder before it is claimed
            framing = calibrate(plan.detect, plan.twin, cache=plan.out_dir / FRAMING_CACHE if ours else None
                                ).for_renders(spec.rig_framing, plan.detect)
        labels = Path(spec.rig_labels) if spec.rig_labels is not None else None
        rig, frame = folder_rig(Path(spec.rig_path), labels, spec.image_size, framing)
        return rig, validate_rows(frame, str(spec.rig_labels or spec.rig_path), unknown_ok=True)

    return _cached(("folder", spec.rig_path, spec.rig_labels, spec.image_size, spec.rig_framing, plan.detect,
                    plan.twin), make)


def _rig(plan: DatasetPlan) -> SourceRig:
    if plan.spec.rig == "folder":
        return _folder(plan)[0]
    return _cached(("twin", plan.spec.image_size, plan.detect, plan.twin),
                   lambda: built_in_rig(plan.spec.image_size, plan.detect, plan.twin,
                                        cache=plan.out_dir / FRAMING_CACHE))


def _networks(model: dict, device: str) -> tuple[Sampler, PoseEstimator | None]:
    def make() -> tuple[Sampler, PoseEstimator | None]:
        sampler = load_sampler(model["generator"], map_location=device)
        est = model.get("label_estimator")
        estimator = load_pose_estimator(est, map_location=device).to(device) if est is not None else None
        return sampler, estimator

    return _cached(("nets", str(model["generator"]), str(model.get("label_estimator")), device), make)


def latent_seed(seed: int, *key: int) -> int:
    """A 63-bit seed for one image's z, from (seed, stream, ...) only."""
    a, b = np.random.SeedSequence([seed, *key]).generate_state(2, np.uint32)
    return int((int(a) << 31) ^ int(b))


# ---------------------------------------------------------------------------- one shard
class _Timer:
    def __init__(self) -> None:
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self._t = time.perf_counter()
        self._cpu = time.process_time()

    def cpu(self) -> float:
        return time.process_time() - self._cpu

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.seconds[phase] += now - self._t
        self._t = now


def write_shard(plan: DatasetPlan, index: int, device: str = "cpu") -> dict:
    """Write shard ``index`` (idempotent: a complete shard is left as it is) and return its summary:
    {shard, images, dropped, attempts, overflow, seconds: {phase: wall s}, cpu_seconds, skipped}."""
    if not 0 <= index < plan.n_shards:
        raise ValueError(f"shard {index} is outside the plan's 0..{plan.n_shards - 1}")
    table_path = plan.shard_table(index)
    if table_path.exists():
        return {**_summary(pd.read_parquet(table_path, columns=["rejected", "overflow"]), index), "skipped": True}
    timer = _Timer()
    sampler, estimator = _networks(plan.model, device)
    rig, rows = _rig(plan), label_rows(plan)
    slots = plan.shard_range(index)
    with writing(plan.out_dir, f"writing shard {index}"), _one_cpu_thread(device):
        with atomic_dir(plan.out_dir / "images" / f"{index:05d}") as tmp:
            records = _fill(plan, index, slots, rows, rig, sampler, estimator, device, tmp, timer)
        table = pd.DataFrame(records).sort_values("index", kind="stable").reset_index(drop=True)
        write_table(table, table_path)  # last: the shard's commit mark
        timer.lap("io")
    return {**_summary(table, index), "seconds": timer.seconds, "cpu_seconds": timer.cpu(), "skipped": False}


@contextlib.contextmanager
def _one_cpu_thread(device: str) -> Iterator[None]:
    """On the CPU a shard runs on one intra-op thread: its bytes then do not depend on the machine's
    core count, and cores are used by shards in parallel (:func:`write_shards`), which measured
    4x faster than two threads on one shard on a shared 2-core machine (README)."""
    if torch.device(device).type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# A shard worker's start (spawn, import torch, load the models) and the stage's own work beside
# two workers on two cores cost what some hundreds of images do on one CPU thread (about 17 ms
# each). The whole stage, the default model, 2-core Xeon, 2 workers against 1 (medians,
# benchmarks/generate_workers.py): 200 images 1.12x the time, 600 1.10x (0.93x in a run by hand),
# 1,500 0.78x, 4,000 0.62x (benchmarks/results/cpu_2026-12-06s15/).
IMAGES_PER_WORKER = 500


def auto_workers(count: int, device: str, cores: int) -> int:
    """``generate.workers: 0``: one shard process per CPU core, but no more than one per
    :data:`IMAGES_PER_WORKER` images (under that, the shards run in this process); 1 on a GPU."""
    if torch.device(device).type != "cpu":
        return 1
    return max(1, min(cores, count // IMAGES_PER_WORKER))


def write_shards(plan: DatasetPlan, device: str = "cpu", workers: int = 1) -> Iterator[dict]:
    """:func:`write_shard` for every shard in order, in ``workers`` processes (each one CPU thread
    on the CPU); yields each summary as its shard completes in order. Workers die with this process
    (a kill -9 leaves no orphan writing on), a worker's death raises instead of hanging
    (:mod:`nirgan.workers`), and a rerun skips the shards they completed."""
    workers = max(1, min(workers, plan.n_shards))
    log.info("generate: %d shard(s) in %s", plan.n_shards, f"{workers} worker processes" if workers > 1 else
             "this process")
    if workers == 1:
        for k in range(plan.n_shards):
            yield write_shard(plan, k, device)
        return
    yield from ordered_map(write_shard, [(plan, k, device) for k in range(plan.n_shards)], workers,
                           what="generate's shard writing")


def _summary(table: pd.DataFrame, index: int) -> dict:
    dropped = int(table["rejected"].sum())
    return {"shard": index, "images": len(table), "dropped": dropped, "attempts": len(table) + dropped,
            "overflow": int((table["overflow"] >= 0).sum())}


def _fill(plan: DatasetPlan, shard: int, slots: range, rows: LabelRows, rig: SourceRig, sampler: Sampler,
          estimator: PoseEstimator | None, device: str, folder: Path, timer: _Timer) -> list[dict]:
    """Every slot of the shard with an accepted image; returns its rows (images are in ``folder``)."""
    spec = plan.spec
    pending = rows.rows(slots)
    pending.insert(0, "index", np.asarray(slots, dtype=np.int64))
    pending["attempt"], pending["overflow"], pending["rejected"] = 0, -1, 0
    records: list[dict] = []
    next_overflow, overflow_limit = 0, max(16, 4 * len(slots) * spec.max_attempts)
    while len(pending):
        retry = []
        for start in range(0, len(pending), spec.batch_size):
            batch = pending.iloc[start : start + spec.batch_size].reset_index(drop=True)
            ok = _batch(plan, shard, batch, rig, sampler, estimator, device, folder, timer, records)
            retry.append(batch[~ok])
        failed = pd.concat(retry, ignore_index=True) if retry else pending.iloc[:0]
        if not len(failed):
            break
        failed["rejected"] += 1
        failed["attempt"] += 1
        spent = failed["attempt"] >= spec.max_attempts
        if spent.any():
            n = int(spent.sum())
            if next_overflow + n > overflow_limit:
                raise ConfigError(f"generate.max_label_error_deg: {spec.max_label_error_deg} rejects nearly every "
                                  f"image of shard {shard} ({next_overflow} overflow rows used); raise it or improve "
                                  "the model")
            fresh = rows.overflow(shard, range(next_overflow, next_overflow + n))
            for col in fresh.columns:
                failed.loc[spent, col] = fresh[col].to_numpy()
            failed.loc[spent, "overflow"] = np.arange(next_overflow, next_overflow + n)
            failed.loc[spent, "attempt"] = 0
            next_overflow += n
        pending = failed
    return records


def _batch(plan: DatasetPlan, shard: int, batch: pd.DataFrame, rig: SourceRig, sampler: Sampler,
           estimator: PoseEstimator | None, device: str, folder: Path, timer: _Timer,
           records: list[dict]) -> np.ndarray:
    """Render, generate, check and (when accepted) write one batch; returns which were accepted."""
    import cv2

    spec = plan.spec
    timer.lap("io")
    sources = torch.from_numpy(rig.render(batch)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
    timer.lap("render")
    seeds = [latent_seed(spec.seed, *((_LATENT_STREAM, i, a) if o < 0 else (_OVERFLOW_LATENT_STREAM, shard, o, a)))
             for i, a, o in zip(batch["index"], batch["attempt"], batch["overflow"])]
    z = torch.stack([torch.randn(sampler.latent_dim, generator=torch.Generator().manual_seed(s)) for s in seeds])
    requested = batch[list(LABELS)].to_numpy(np.float32)
    autocast = torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=plan.precision == "bf16")
    with torch.inference_mode(), autocast:
        images = sampler.generate(sources, z, requested, batch_size=len(batch))
        pixels = ((images[:, 0].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        timer.lap("generate")
        if estimator is not None:
            estimated = predict(estimator, pixels[:, None].float().div(127.5).sub(1.0), batch_size=len(batch))
            estimated = estimated.astype(np.float32)
        else:
            estimated = np.full(requested.shape, np.nan, np.float32)
    timer.lap("label_check")
    error = estimated - requested
    worst = np.abs(error).max(1)
    limit = spec.max_label_error_deg
    ok = np.ones(len(batch), bool) if limit is None else worst <= limit
    pixels = pixels.numpy()
    for k in np.flatnonzero(ok):
        row = batch.iloc[k]
        index = int(row["index"])
        name = f"{index:08d}.png"
        encoded, png = cv2.imencode(".png", pixels[k])
        if not encoded:
            raise OutputError(f"{folder / name}: PNG encoding failed")
        timer.lap("encode")
        (folder / name).write_bytes(png.tobytes())
        timer.lap("io")
        records.append({
            "file": f"images/{shard:05d}/{name}", "index": index, "shard": shard,
            **{c: float(row[c]) for c in LABELS}, "glasses": None if pd.isna(row["glasses"]) else bool(row["glasses"]),
            "table_row": int(row["table_row"]),
            "source": rig.recipe(row), "latent_seed": seeds[k], "attempt": int(row["attempt"]),
            "overflow": int(row["overflow"]), "rejected": int(row["rejected"]),
            "model_name": str(plan.model.get("name")), "model_version": str(plan.model.get("version")),
            **{f"estimated_{c}": float(estimated[k, j]) for j, c in enumerate(LABELS)},
            **{f"error_{c}": float(error[k, j]) for j, c in enumerate(LABELS)},
            "label_error_max": float(worst[k]), "label_ok": None if limit is None else bool(ok[k]),
        })
    return ok
