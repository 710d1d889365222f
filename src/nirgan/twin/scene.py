"""The twin's scene: the head rig, the subjects, the cameras and the recordings' trajectories.

The rig's constants are in head units (head half-width 1; see the package docstring for the
frame), ``Subject`` and ``Camera`` are the persistent identities and cameras a ``TwinConfig``
draws, ``Expression`` the target face's controls, and ``Pose`` one frame of a recording: head
pose, gaze, centre and scale, following ``make_trajectory``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from nirgan.config import TwinConfig
from nirgan.twin import exact

# Trajectory limits in degrees (a driver's head and eyes, thesis-like ranges).
LIMITS = {"head_yaw": 35.0, "head_pitch": 20.0, "head_roll": 15.0, "gaze_yaw": 20.0, "gaze_pitch": 20.0}

# ---------------------------------------------------------------------------- the rig
HEAD_C = np.array([0.0, 0.15, 0.0], np.float32)
HEAD_A = np.array([1.0, 1.45, 1.15], np.float32)
NOSE_C = np.array([0.0, -0.28, 1.0], np.float32)
NOSE_A = np.array([0.19, 0.34, 0.3], np.float32)
EAR_C = np.array([0.97, -0.02, -0.1], np.float32)
EAR_A = np.array([0.12, 0.27, 0.2], np.float32)
NECK_C = np.array([0.0, -1.45, -0.2], np.float32)
NECK_A = np.array([0.6, 0.95, 0.62], np.float32)
EYE_X, EYE_Y, EYE_Z, EYE_R = 0.40, 0.05, 0.89, 0.19
APERTURE_W, APERTURE_H = 0.17, 0.08  # half-width/height of the lid opening
APERTURE_Y = EYE_Y - 0.015  # a relaxed upper lid covers the top of the iris
IRIS_COS = exact.cos1(math.radians(28.0))
PUPIL_COS = exact.cos1(math.radians(11.0))
SCALE = 0.225  # pixels per head unit, as a fraction of the frame's shorter side

# objects in the id map
BG, HEAD, NOSE, EAR, NECK = 0, 1, 2, 3, 4
FIXED_PARTS = [
    (NOSE, NOSE_C, NOSE_A),
    (EAR, EAR_C, EAR_A),
    (EAR, EAR_C * np.array([-1, 1, 1], np.float32), EAR_A),
    (NECK, NECK_C, NECK_A),
]


@dataclass(frozen=True)
class Subject:
    name: str
    head_axes: np.ndarray  # the subject's head ellipsoid (identity face shape)
    skin: float  # NIR albedo of skin
    skin_texture: np.ndarray  # low-frequency albedo variation, sampled in head (x, y)
    hair: float
    hair_texture: np.ndarray
    beard_texture: np.ndarray
    hairline: float
    hair_length: float  # how far side hair comes down (head units below the eyes)
    brow: float  # albedo factor of brows
    brow_thickness: float
    beard: float  # 0 = none, else albedo factor
    aperture: float  # eye opening height factor (identity eye size)
    glasses: bool


@dataclass(frozen=True)
class Expression:
    """Expression controls of the target face (head units unless said); all zero is the rig's
    relaxed face, and every NIR render uses exactly that (its bytes do not change).

    ``mouth_corners`` lifts (+, smile) or drops (-) the mouth corners; ``mouth_open`` opens a
    dark gap between the lips, as tall as this; ``mouth_width`` stretches (+) or purses (-) the
    lips, a fraction of their width; ``brow_raise`` moves both brows up (+) or down (-);
    ``brow_inner`` moves their inner ends only (+ the worried slant, - the frown, which also
    draws the vertical crease between them); ``eyelid_closure`` closes the lid opening by this
    fraction (negative widens it); ``nose_wrinkle`` (0..1) darkens creases across the nose
    bridge (the disgust wrinkle).
    """

    mouth_corners: float = 0.0
    mouth_open: float = 0.0
    mouth_width: float = 0.0
    brow_raise: float = 0.0
    brow_inner: float = 0.0
    eyelid_closure: float = 0.0
    nose_wrinkle: float = 0.0


NEUTRAL = Expression()


@dataclass(frozen=True)
class Camera:
    name: str
    gain: float
    black: float
    noise: float
    background: float
    background_slope: tuple[float, float]
    light: np.ndarray  # illuminator direction in camera coordinates


@dataclass(frozen=True)
class Pose:
    yaw: float
    pitch: float
    roll: float
    gaze_yaw: float
    gaze_pitch: float
    x: float  # head centre, pixels
    y: float
    scale: float  # pixels per head unit


# ------------------------------------------------------------------- identities & cameras
def _texture(rng: np.random.Generator, shape: tuple[int, int], out: int = 96) -> np.ndarray:
    noise = rng.random(shape).astype(np.float32)
    with exact.scalar_opencv():
        return cv2.resize(noise, (out, out), interpolation=cv2.INTER_CUBIC)


def make_subjects(twin_cfg: TwinConfig) -> list[Subject]:
    subjects = []
    n_glasses = round(twin_cfg.glasses_fraction * twin_cfg.subjects)
    wears = np.zeros(twin_cfg.subjects, bool)
    wears[np.random.default_rng([twin_cfg.seed, 7]).permutation(twin_cfg.subjects)[:n_glasses]] = True
    for i in range(twin_cfg.subjects):
        rng = np.random.default_rng([twin_cfg.seed, 1, i])
        bald = rng.random() < 0.1
        subjects.append(
            Subject(
                name=f"s{i:02d}",
                head_axes=HEAD_A * np.array([rng.uniform(0.94, 1.07), rng.uniform(0.96, 1.05), 1.0], np.float32),
                skin=rng.uniform(0.68, 0.85),
                skin_texture=_texture(rng, (6, 6)),
                hair=rng.uniform(0.12, 0.5),
                hair_texture=_texture(rng, (8, 48)),
                beard_texture=_texture(rng, (40, 40)),
                hairline=2.0 if bald else rng.uniform(0.78, 1.02),
                hair_length=rng.uniform(0.0, 1.0),
                brow=rng.uniform(0.25, 0.45),
                brow_thickness=rng.uniform(0.035, 0.06),
                beard=rng.uniform(0.75, 0.9) if rng.random() < 0.3 else 0.0,
                aperture=rng.uniform(0.88, 1.12),
                glasses=bool(wears[i]),
            )
        )
    return subjects


def make_cameras(twin_cfg: TwinConfig) -> list[Camera]:
    cams = []
    for j in range(twin_cfg.cameras):
        rng = np.random.default_rng([twin_cfg.seed, 2, j])
        light = np.array([rng.uniform(-0.15, 0.15), rng.uniform(-0.25, 0.05), 1.0], np.float32)
        cams.append(
            Camera(
                name=f"cam{j}",
                gain=rng.uniform(0.85, 1.25),
                black=rng.uniform(3.0, 12.0),
                noise=rng.uniform(1.5, 4.5),
                background=rng.uniform(18.0, 45.0),
                background_slope=(rng.uniform(-12, 12), rng.uniform(-12, 12)),
                light=light / np.float32(exact.norm(light)),
            )
        )
    return cams


# --------------------------------------------------------------------------- trajectories
def _smooth(rng: np.random.Generator, t: np.ndarray, amplitude: float) -> np.ndarray:
    """Sum of two slow sinusoids, bounded by ``amplitude``."""
    weights = rng.uniform(0.3, 1.0, 2)
    # At least most of a cycle per recording: a recording then sweeps its range back and
    # forth, so per-recording statistics have no long tails for a cleaner to trip over.
    freq = rng.uniform(0.7, 1.5, 2)
    phase = rng.uniform(0, 2 * np.pi, 2)
    wave = sum(w * exact.sin(2 * np.pi * f * t + p) for w, f, p in zip(weights, freq, phase))
    return amplitude * rng.uniform(0.7, 1.0) * wave / weights.sum()


def make_trajectory(rng: np.random.Generator, frames: int, width: int, height: int) -> list[Pose]:
    t = np.linspace(0.0, 1.0, frames)
    side = min(width, height)
    angles = {name: _smooth(rng, t, limit) for name, limit in LIMITS.items()}
    x = width / 2 + _smooth(rng, t, 0.1 * width)
    y = height * 0.52 + _smooth(rng, t, 0.05 * height)
    scale = SCALE * side * (1 + _smooth(rng, t, 0.08))
    return [
        Pose(
            float(angles["head_yaw"][k]), float(angles["head_pitch"][k]), float(angles["head_roll"][k]),
            float(angles["gaze_yaw"][k]), float(angles["gaze_pitch"][k]),
            float(x[k]), float(y[k]), float(scale[k]),
        )
        for k in range(frames)
    ]
