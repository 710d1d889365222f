"""The dataset: every recording of every subject and camera, frame by frame, with planted disturbances.

``render_dataset`` yields ``TwinPair``s (``count_pairs`` says how many); ``_plan_disturbances``
decides which frames get which of ``DISTURBANCES`` and ``_occlude``, ``_blur`` and
``_misalign`` plant them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import cv2
import numpy as np

from nirgan.config import TwinConfig
from nirgan.labels import LABELS
from nirgan.twin import exact
from nirgan.twin.geometry import _View, iris_centres
from nirgan.twin.render import _camera, render_source, render_target
from nirgan.twin.scene import Camera, Pose, Subject, make_cameras, make_subjects, make_trajectory
from nirgan.workers import ordered_map

DISTURBANCES: tuple[str, ...] = ("none", "occlusion", "blur", "overexposure", "underexposure", "misaligned")


@dataclass(frozen=True)
class TwinPair:
    subject: str
    camera: str
    frame: int
    source: np.ndarray | bytes  # bytes: the image as ``render_dataset``'s ``encode`` gave it
    target: np.ndarray | bytes
    labels: dict[str, float]
    glasses: bool
    disturbance: str
    eyes: np.ndarray

    @property
    def pair_id(self) -> str:
        return f"{self.subject}_{self.camera}/{self.frame:05d}"


# --------------------------------------------------------------------------- disturbances
def _plan_disturbances(twin_cfg: TwinConfig) -> dict[tuple[int, int], dict[int, str]]:
    """Which frame of which recording gets which disturbance (the hidden ground truth)."""
    rng = np.random.default_rng([twin_cfg.seed, 3])
    recordings = [(i, j) for i in range(twin_cfg.subjects) for j in range(twin_cfg.cameras)]
    total = round(twin_cfg.disturbance_fraction * len(recordings) * twin_cfg.frames)
    capacity = (twin_cfg.frames + 1) // 2  # at most every other frame
    counts = dict.fromkeys(recordings, 0)
    order = rng.permutation(len(recordings))
    k = 0
    while total > 0:
        rec = recordings[order[k % len(order)]]
        if counts[rec] < capacity:
            counts[rec] += 1
            total -= 1
        k += 1
    kinds = [DISTURBANCES[1 + n % (len(DISTURBANCES) - 1)] for n in range(sum(counts.values()))]
    kinds = [kinds[n] for n in rng.permutation(len(kinds))]
    plan: dict[tuple[int, int], dict[int, str]] = {}
    for rec in recordings:
        n = counts[rec]
        # n non-adjacent frames: choose n of frames-n+1 slots, then spread them apart.
        slots = np.sort(rng.choice(twin_cfg.frames - n + 1, size=n, replace=False)) + np.arange(n)
        plan[rec] = {int(f): kinds.pop() for f in slots}
    return plan


def _occlude(img: np.ndarray, pose: Pose, rng: np.random.Generator) -> np.ndarray:
    """A bright hand over a third to a half of the face."""
    mask = np.zeros(img.shape, np.float32)
    s = pose.scale
    angle = rng.uniform(-60, 60)
    centre = np.array([pose.x + rng.uniform(-0.5, 0.5) * s, pose.y + rng.uniform(-0.2, 0.7) * s])
    cv2.ellipse(mask, (int(centre[0]), int(centre[1])), (int(0.75 * s), int(0.6 * s)), angle, 0, 360, 1.0, -1)
    direction = np.array([exact.cos1(math.radians(angle - 90)), exact.sin1(math.radians(angle - 90))])
    across = np.array([-direction[1], direction[0]])
    for f in range(4):
        base = centre + direction * 0.5 * s + across * (f - 1.5) * 0.3 * s
        tip = base + direction * rng.uniform(0.5, 0.75) * s
        cv2.line(mask, tuple(int(v) for v in base), tuple(int(v) for v in tip), 1.0, max(2, int(0.24 * s)))
    mask = cv2.GaussianBlur(mask, (0, 0), 1.5)
    hand = 235.0 + 15.0 * cv2.GaussianBlur(rng.random(img.shape).astype(np.float32), (0, 0), 6)
    return img * (1 - mask) + hand * mask


def _blur(img: np.ndarray, pose: Pose, rng: np.random.Generator) -> np.ndarray:
    length = max(5, int(0.5 * pose.scale))
    kernel = np.zeros((length, length), np.float32)
    kernel[length // 2, :] = 1.0
    rot = cv2.getRotationMatrix2D(((length - 1) / 2, (length - 1) / 2), rng.uniform(0, 180), 1.0)
    kernel = cv2.warpAffine(kernel, rot, (length, length))
    kernel /= np.float32(math.fsum(kernel.ravel().tolist()))  # a sum in a fixed order
    return cv2.GaussianBlur(cv2.filter2D(img, -1, kernel), (0, 0), 0.08 * pose.scale) * 1.6


def _misalign(pose: Pose, rng: np.random.Generator, width: int, height: int) -> Pose:
    shift = 0.6 * pose.scale * np.array([exact.cos1(a := rng.uniform(0, 2 * math.pi)), exact.sin1(a)])
    return Pose(
        pose.yaw + rng.choice([-1, 1]) * rng.uniform(15, 25),
        pose.pitch,
        pose.roll + rng.choice([-1, 1]) * rng.uniform(8, 15),
        pose.gaze_yaw,
        pose.gaze_pitch,
        float(np.clip(pose.x + shift[0], 0.3 * width, 0.7 * width)),
        float(np.clip(pose.y + shift[1], 0.35 * height, 0.65 * height)),
        pose.scale,
    )


# ------------------------------------------------------------------------------ dataset
def count_pairs(twin_cfg: TwinConfig) -> int:
    return twin_cfg.subjects * twin_cfg.cameras * twin_cfg.frames


def render_dataset(twin_cfg: TwinConfig, workers: int = 1,
                   encode: Callable[[np.ndarray], bytes] | None = None) -> Iterator[TwinPair]:
    """Every pair of the twin, recording by recording (deterministic in ``twin_cfg``).

    Recordings are independent (each has its own random stream), so ``workers`` processes
    render them side by side; the pairs come out in the same order and the same bytes
    whatever the number of workers. The workers are spawned, so a script that asks for them
    calls this under ``if __name__ == "__main__":``, as multiprocessing requires.

    ``encode`` (a module-level function, e.g. :func:`nirgan.io.encode_png`): each pair's source
    and target come as ``encode(image)``, computed where the pair was rendered. Encoding is
    then spread over the workers too, and a fraction of the bytes crosses between processes.
    """
    # Subjects, cameras and the disturbance plan are made once here and handed to each
    # recording (a worker would otherwise rebuild every subject's textures per recording).
    subjects, cameras, plan = make_subjects(twin_cfg), make_cameras(twin_cfg), _plan_disturbances(twin_cfg)
    recordings = [(twin_cfg, subjects[i], cameras[j], plan[(i, j)], i, j, encode)
                  for i in range(twin_cfg.subjects) for j in range(twin_cfg.cameras)]
    if workers <= 1 or len(recordings) <= 1:
        for rec in recordings:
            yield from _render_recording(*rec)
        return
    # One recording per job; the order of the pairs, and their bytes, do not depend on the workers.
    for pairs in ordered_map(_recording_pairs, recordings, workers, what="twin rendering", setup=_worker_setup):
        yield from pairs


def _worker_setup() -> None:
    cv2.setNumThreads(1)  # one process per core already


def _recording_pairs(*recording: object) -> list[TwinPair]:
    return list(_render_recording(*recording))


def _render_recording(twin_cfg: TwinConfig, subj: Subject, cam: Camera, kinds: dict[int, str], i: int,
                      j: int, encode: Callable[[np.ndarray], bytes] | None = None) -> Iterator[TwinPair]:
    """The frames of subject ``i`` (``subj``) on camera ``j`` (``cam``), ``kinds`` its disturbances."""
    gains = {"overexposure": 2.6, "underexposure": 0.3}
    rng = np.random.default_rng([twin_cfg.seed, 4, i, j])
    poses = make_trajectory(rng, twin_cfg.frames, twin_cfg.width, twin_cfg.height)
    # The camera's auto-exposure drifts slowly around its gain during a recording.
    t = np.linspace(0, 1, twin_cfg.frames)
    exposure = 1 + 0.12 * exact.sin(2 * np.pi * rng.uniform(1.0, 2.0) * t + rng.uniform(0, 2 * np.pi))
    for f, pose in enumerate(poses):
        kind = kinds.get(f, "none")
        with exact.scalar_opencv():
            view = _View(pose, twin_cfg.width, twin_cfg.height)
            clean = render_target(view, subj, cam, twin_cfg.width, twin_cfg.height)
            if kind == "occlusion":
                clean = _occlude(clean, pose, rng)
            elif kind == "blur":
                clean = _blur(clean, pose, rng)
            target = _camera(clean, cam, rng, exposure[f] * gains.get(kind, 1.0))
            if kind == "misaligned":
                view = _View(_misalign(pose, rng, twin_cfg.width, twin_cfg.height), twin_cfg.width, twin_cfg.height)
            source = render_source(view, subj.glasses, twin_cfg.width, twin_cfg.height)
        labels = dict(zip(LABELS, (pose.yaw, pose.pitch, pose.roll, pose.gaze_yaw, pose.gaze_pitch)))
        if encode is not None:
            source, target = encode(source), encode(target)
        yield TwinPair(
            subject=subj.name,
            camera=cam.name,
            frame=f,
            source=source,
            target=target,
            labels=labels,
            glasses=subj.glasses,
            disturbance=kind,
            eyes=iris_centres(pose),
        )
