"""The built-in digital twin: paired rig renders and NIR-like faces with known labels.

No real NIR face data is public, so ``collect`` defaults to this generator (DESIGN.md,
"The built-in digital twin"). Everything is numpy + OpenCV on one core and is fully
determined by ``TwinConfig`` (the seed included).

API
---
``render_dataset(twin_cfg: TwinConfig) -> Iterator[TwinPair]``
    every pair of every recording (one recording per subject and camera), in order
    subject, camera, frame. ``count_pairs(twin_cfg)`` says how many there will be.
``TwinPair``
    ``source`` (H, W, 3) uint8 RGB rig render; ``target`` (H, W) uint8 NIR-like face;
    ``subject``, ``camera``, ``frame``; ``labels`` {name: degrees} for ``LABELS``;
    ``glasses``; ``disturbance`` (one of ``DISTURBANCES``); ``eyes`` (2, 2) float, the
    pixel (x, y) of the rig's two iris centres in the *target* geometry (image-left eye
    first), the ground truth that alignment checks compare against.
``SOURCE_COLOURS``
    the colour code of the source renders (thesis Fig. 3.3): skin red, eye whites green,
    irises (pupils included) blue, glasses yellow. Background is black.

Geometry
--------
One head rig in head units (head half-width 1): head, nose, ears and neck ellipsoids
and two spherical eyeballs, ray-cast orthographically (a driver-monitoring camera sees
the face from far enough that perspective hardly matters). Both domains are rendered
from the same rays and the same eyeballs, so irises coincide pixel-exactly in a pair;
a subject's head ellipsoid is a little wider or taller than the rig's (identity), so
the face outline may differ by a few pixels, as a real person differs from a rig.

Camera frame: x to the image right, y up, z towards the camera. ``R = Rz(roll)
Rx(-pitch) Ry(yaw)`` maps head to camera coordinates, so positive ``head_yaw`` turns the
nose towards the image right, positive ``head_pitch`` lifts it, positive ``head_roll``
turns the head counter-clockwise as seen in the image. Gaze is the eyeballs' rotation
in the head (yaw towards head +x, pitch up). Mirroring the image negates yaw and roll
(head and gaze) and keeps pitch, which is ``nirgan.labels.FLIP_SIGN``.

Target shading: albedo x Lambert from an illuminator next to the lens, plus a small
specular term; irises dark with a bright pupil (the on-axis NIR "bright pupil"); each
camera has its own gain, black level, background and noise, and its exposure drifts
sinusoidally (+-12 %) during a recording (what mean normalisation mu0/mu removes).

Recordings: head pose, gaze, position and scale follow sums of two slow sinusoids (most
of a cycle or more per recording, within ``LIMITS``), so a recording sweeps its range and
its per-frame statistics have no long tails of their own.

Disturbances (ground truth in ``TwinPair.disturbance``), on ``disturbance_fraction`` of
all frames, spread evenly over recordings and never on two neighbouring frames, so a
per-recording IQR still has a clean majority:
  occlusion      a hand close to the illuminator (hence very bright) over part of the face;
  blur           a long-exposure motion blur: smeared and brighter;
  overexposure / underexposure   gain far above / below the camera's;
  misaligned     the source rendered at a clearly different position, yaw and roll.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np

from nirgan.config import TwinConfig
from nirgan.labels import LABELS

DISTURBANCES: tuple[str, ...] = ("none", "occlusion", "blur", "overexposure", "underexposure", "misaligned")

SOURCE_COLOURS: dict[str, tuple[int, int, int]] = {
    "skin": (255, 0, 0),
    "eye_white": (0, 255, 0),
    "iris": (0, 0, 255),
    "glasses": (255, 255, 0),
}

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
IRIS_COS = math.cos(math.radians(28.0))
PUPIL_COS = math.cos(math.radians(11.0))
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


@dataclass(frozen=True)
class TwinPair:
    subject: str
    camera: str
    frame: int
    source: np.ndarray
    target: np.ndarray
    labels: dict[str, float]
    glasses: bool
    disturbance: str
    eyes: np.ndarray

    @property
    def pair_id(self) -> str:
        return f"{self.subject}_{self.camera}/{self.frame:05d}"


# ------------------------------------------------------------------- identities & cameras
def _texture(rng: np.random.Generator, shape: tuple[int, int], out: int = 96) -> np.ndarray:
    return cv2.resize(rng.random(shape).astype(np.float32), (out, out), interpolation=cv2.INTER_CUBIC)


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
                light=light / np.linalg.norm(light),
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
    wave = sum(w * np.sin(2 * np.pi * f * t + p) for w, f, p in zip(weights, freq, phase))
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


# ------------------------------------------------------------------------------ geometry
def rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Head-to-camera rotation (degrees), see the module docstring for the signs."""
    y, p, r = (math.radians(v) for v in (yaw, -pitch, roll))
    ry = np.array([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
    rx = np.array([[1, 0, 0], [0, math.cos(p), -math.sin(p)], [0, math.sin(p), math.cos(p)]])
    rz = np.array([[math.cos(r), -math.sin(r), 0], [math.sin(r), math.cos(r), 0], [0, 0, 1]])
    return (rz @ rx @ ry).astype(np.float32)


def gaze_vector(gaze_yaw: float, gaze_pitch: float) -> np.ndarray:
    gy, gp = math.radians(gaze_yaw), math.radians(gaze_pitch)
    return np.array([math.sin(gy) * math.cos(gp), math.sin(gp), math.cos(gy) * math.cos(gp)], np.float32)


def project(points: np.ndarray, pose: Pose) -> tuple[np.ndarray, np.ndarray]:
    """Head-unit points (N, 3) -> pixel (N, 2) and camera depth (N,)."""
    cam = points @ rotation(pose.yaw, pose.pitch, pose.roll).T
    px = np.stack([pose.x + pose.scale * cam[:, 0], pose.y - pose.scale * cam[:, 1]], axis=1)
    return px, cam[:, 2]


def iris_centres(pose: Pose) -> np.ndarray:
    """Pixel (x, y) of both iris centres (image-left eye, i.e. head -x, first)."""
    g = gaze_vector(pose.gaze_yaw, pose.gaze_pitch)
    eyes = np.array([[-EYE_X, EYE_Y, EYE_Z], [EYE_X, EYE_Y, EYE_Z]], np.float32) + EYE_R * g
    return project(eyes, pose)[0]


def _coeffs(R: np.ndarray, centre: np.ndarray, axes: np.ndarray) -> tuple[float, ...]:
    """The ray/ellipsoid equation ``a s^2 + b s + c = 0`` with b and c as polynomials in (X, Y).

    A ray through the camera-plane point (X, Y) is ``X u + Y v + s w`` in head coordinates
    (u, v, w the rows of R); expanding the ellipsoid equation once per part keeps the
    per-pixel work to a few multiply-adds on 2-D arrays.
    """
    u, v, w = R.astype(np.float64)
    inv = 1.0 / axes.astype(np.float64) ** 2
    c = centre.astype(np.float64)
    return (
        float(w * w @ inv),
        float(2 * (u * w) @ inv), float(2 * (v * w) @ inv), float(-2 * (c * w) @ inv),
        float((u * u) @ inv), float((v * v) @ inv), float(2 * (u * v) @ inv),
        float(-2 * (u * c) @ inv), float(-2 * (v * c) @ inv), float((c * c) @ inv - 1),
    )


def _cast(R: np.ndarray, X: np.ndarray, Y: np.ndarray, centre: np.ndarray, axes: np.ndarray) -> np.ndarray:
    """Camera depth of each ray's visible hit with an ellipsoid (-inf on a miss).

    ``w`` points at the camera, so the larger root is the visible surface.
    """
    a, bx, by, b0, cxx, cyy, cxy, cx, cy, c0 = _coeffs(R, centre, axes)
    b = bx * X + (by * Y + b0)
    c = (cxx * X + cxy * Y + cx) * X + ((cyy * Y + cy) * Y + c0)
    disc = b * b - (4 * a) * c
    s = (np.sqrt(np.maximum(disc, 0)) - b) * (0.5 / a)
    s[disc < 0] = -np.inf
    return s.astype(np.float32, copy=False)


class _View:
    """The rays of one pose over the window of the frame the head can cover."""

    def __init__(self, pose: Pose, width: int, height: int) -> None:
        r = pose.scale
        self.pose = pose
        self.R = rotation(pose.yaw, pose.pitch, pose.roll)
        self.x0 = int(np.clip(math.floor(pose.x - 1.8 * r), 0, width - 1))
        self.x1 = int(np.clip(math.ceil(pose.x + 1.8 * r) + 1, self.x0 + 1, width))
        self.y0 = int(np.clip(math.floor(pose.y - 1.85 * r), 0, height - 1))
        self.y1 = height
        self.X = ((np.arange(self.x0, self.x1, dtype=np.float32) - pose.x) / r)[None, :]
        self.Y = ((pose.y - np.arange(self.y0, self.y1, dtype=np.float32)) / r)[:, None]
        self.window = (slice(self.y0, self.y1), slice(self.x0, self.x1))
        # The parts every head shares (nose, ears, neck), cast once per pose.
        self.fixed = [(kind, _cast(self.R, self.X, self.Y, c, a), c, a) for kind, c, a in FIXED_PARTS]

    def surface(self, head_axes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, list]:
        """Object id, depth and winning part index of each pixel in the window."""
        parts = [(HEAD, _cast(self.R, self.X, self.Y, HEAD_C, head_axes), HEAD_C, head_axes), *self.fixed]
        depth = parts[0][1].copy()
        best = np.zeros(depth.shape, np.uint8)
        for i, (_, d, _, _) in enumerate(parts[1:], start=1):
            nearer = d > depth
            depth[nearer] = d[nearer]
            best[nearer] = i
        kinds = np.array([k for k, *_ in parts], np.uint8)
        obj = np.where(np.isfinite(depth), kinds[best], BG).astype(np.uint8)
        return obj, depth, best, parts

    def point(self, depth: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        s = np.where(np.isfinite(depth), depth, 0.0).astype(np.float32)
        u, v, w = self.R
        return tuple(u[i] * self.X + v[i] * self.Y + w[i] * s for i in range(3))

    def eyes(
        self, obj: np.ndarray, nose_depth: np.ndarray, aperture: float, light: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Eye map (0 skin, 1 sclera, 2 iris, 3 pupil) and, given a head-frame light, eyeball Lambert.

        The eyeball shows through the lid opening wherever the face is hit there and the
        nose is not in front of it. Each eye is cast only in a small box around it.
        """
        eye = np.zeros(obj.shape, np.uint8)
        lambert = np.zeros(obj.shape, np.float32) if light is not None else None
        g = gaze_vector(self.pose.gaze_yaw, self.pose.gaze_pitch)
        u, v, w = self.R
        half = int(math.ceil(0.3 * self.pose.scale))
        for sign in (-1.0, 1.0):
            centre = np.array([sign * EYE_X, EYE_Y, EYE_Z], np.float32)
            cx, cy = project(centre[None], self.pose)[0][0]
            cols = slice(max(0, int(cx) - half - self.x0), max(0, int(cx) + half + 1 - self.x0))
            rows = slice(max(0, int(cy) - half - self.y0), max(0, int(cy) + half + 1 - self.y0))
            X, Y = self.X[:, cols], self.Y[rows]
            if X.size == 0 or Y.size == 0:
                continue
            s = _cast(self.R, X, Y, centre, np.full(3, EYE_R, np.float32))
            hit = np.isfinite(s)
            s0 = np.where(hit, s, 0.0)
            q = [u[i] * X + v[i] * Y + w[i] * s0 - centre[i] for i in range(3)]
            dx = q[0] / APERTURE_W
            opening = APERTURE_H * aperture * np.clip(1 - dx * dx, 0, 1) ** 0.7
            inside = hit & (np.abs(dx) < 1) & (np.abs(q[1] + (EYE_Y - APERTURE_Y)) < opening) & (obj[rows, cols] != BG)
            inside &= s >= nose_depth[rows, cols]
            cosang = (q[0] * g[0] + q[1] * g[1] + q[2] * g[2]) / EYE_R
            code = np.where(cosang > PUPIL_COS, 3, np.where(cosang > IRIS_COS, 2, 1)).astype(np.uint8)
            eye[rows, cols] = np.where(inside, code, eye[rows, cols])
            if lambert is not None:
                lam = np.clip((q[0] * light[0] + q[1] * light[1] + q[2] * light[2]) / EYE_R, 0, 1)
                lambert[rows, cols] = np.where(inside, lam, lambert[rows, cols])
        return eye, lambert


@dataclass
class _Surface:
    """What the target shading needs for one pose and one subject, over the view window."""

    obj: np.ndarray
    depth: np.ndarray
    x: np.ndarray  # head-coordinate hit point
    y: np.ndarray
    z: np.ndarray
    lambert: np.ndarray
    spec: np.ndarray
    eye: np.ndarray


def _target_surface(view: _View, subj: Subject, cam: Camera, expr: Expression = NEUTRAL) -> _Surface:
    obj, depth, best, parts = view.surface(subj.head_axes)
    x, y, z = view.point(depth)
    # Lights into head coordinates, so normals never need rotating.
    light = view.R.T @ cam.light
    half = cam.light + np.array([0, 0, 1], np.float32)
    half = view.R.T @ (half / np.linalg.norm(half))
    centres = np.array([c for _, _, c, _ in parts], np.float32)
    inv = np.array([1 / a**2 for _, _, _, a in parts], np.float32)
    nx = (x - centres[best, 0]) * inv[best, 0]
    ny = (y - centres[best, 1]) * inv[best, 1]
    nz = (z - centres[best, 2]) * inv[best, 2]
    norm = np.sqrt(nx * nx + ny * ny + nz * nz) + 1e-12
    lambert = np.clip((nx * light[0] + ny * light[1] + nz * light[2]) / norm, 0, 1)
    spec = np.clip((nx * half[0] + ny * half[1] + nz * half[2]) / norm, 0, 1)
    eye, eye_lambert = view.eyes(obj, parts[1][1], _aperture(subj, expr), light)
    lambert = np.where(eye > 0, eye_lambert, lambert)
    return _Surface(obj, depth, x, y, z, lambert, spec, eye)


# ---------------------------------------------------------------------------- glasses
def _glasses_geometry() -> list[np.ndarray]:
    """The standard glasses in head units: two rims, a bridge and the temple arms."""
    t = np.linspace(0, 2 * np.pi, 41)
    lines = []
    for sign in (-1.0, 1.0):
        x = sign * 0.41 + 0.27 * np.cos(t)
        y = 0.03 + 0.18 * np.sign(np.sin(t)) * np.abs(np.sin(t)) ** 0.8
        off = np.abs(x) - 0.41
        z = 1.24 - 0.25 * off.clip(0, None) - 0.05 * off**2
        lines.append(np.stack([x, y, z], 1))
        arm = np.linspace(0, 1, 12)[:, None]
        lines.append(np.array([sign * 0.68, 0.08, 1.14]) * (1 - arm) + np.array([sign * 0.99, 0.12, 0.0]) * arm)
    bx = np.linspace(-0.14, 0.14, 9)
    lines.append(np.stack([bx, 0.09 + 0.03 * np.cos(bx / 0.14 * np.pi / 2), np.full_like(bx, 1.23)], 1))
    return [line.astype(np.float32) for line in lines]


GLASSES_LINES = _glasses_geometry()


def _glasses_polylines(view: _View, depth: np.ndarray) -> list[np.ndarray]:
    """Pixel polylines of the parts of the glasses not hidden behind the head."""
    h, w = depth.shape
    visible = []
    for pts in GLASSES_LINES:
        px, d = project(pts, view.pose)
        ci = np.round(px[:, 0]).astype(int) - view.x0
        ri = np.round(px[:, 1]).astype(int) - view.y0
        inside = (ci >= 0) & (ci < w) & (ri >= 0) & (ri < h)
        behind = np.full(len(pts), -np.inf, np.float32)
        behind[inside] = depth[ri[inside], ci[inside]]
        ok = d >= behind - 0.05
        start = None
        for k in range(len(ok) + 1):
            if k < len(ok) and ok[k]:
                start = k if start is None else start
            elif start is not None:
                if k - start >= 2:
                    visible.append(px[start:k])
                start = None
    return visible


def _draw_lines(img: np.ndarray, lines: list[np.ndarray], colour, thickness: int, aa: bool) -> None:
    pts = [np.round(line * 16).astype(np.int32) for line in lines]
    cv2.polylines(img, pts, False, colour, thickness, cv2.LINE_AA if aa else cv2.LINE_8, shift=4)


def _thickness(pose: Pose) -> int:
    return max(1, int(round(0.035 * pose.scale)))


# ------------------------------------------------------------------------------ renders
def render_source(view: _View, glasses: bool, width: int, height: int) -> np.ndarray:
    """The rig's colour-coded mask (thesis Fig. 3.3) for one view."""
    obj, depth, _, parts = view.surface(HEAD_A)
    eye, _ = view.eyes(obj, parts[1][1], 1.0)
    win = np.zeros((*obj.shape, 3), np.uint8)
    win[obj != BG] = SOURCE_COLOURS["skin"]
    win[eye == 1] = SOURCE_COLOURS["eye_white"]
    win[eye >= 2] = SOURCE_COLOURS["iris"]
    img = np.zeros((height, width, 3), np.uint8)
    img[view.window] = win
    if glasses:
        _draw_lines(img, _glasses_polylines(view, depth), SOURCE_COLOURS["glasses"], _thickness(view.pose), False)
    return img


def _sample(texture: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    n = texture.shape[0]
    iu = np.clip(((u + 1.3) * ((n - 1) / 2.6)).astype(np.int32), 0, n - 1)
    iv = np.clip(((1.7 - v) * ((n - 1) / 3.6)).astype(np.int32), 0, n - 1)
    return texture[iv, iu]


FACE_BOX = np.array([[x, y, z] for x in (-0.8, 0.8) for y in (-0.98, 0.5) for z in (0.3, 1.4)], np.float32)


def _face_window(view: _View, shape: tuple[int, int]) -> tuple[slice, slice]:
    """The part of the view window where the facial features can be (fewer pixels to paint)."""
    px, _ = project(FACE_BOX, view.pose)
    c0, r0 = np.floor(px.min(0)).astype(int) - np.array([view.x0, view.y0]) - 1
    c1, r1 = np.ceil(px.max(0)).astype(int) - np.array([view.x0, view.y0]) + 2
    return slice(max(0, r0), max(0, min(shape[0], r1))), slice(max(0, c0), max(0, min(shape[1], c1)))


def _aperture(subj: Subject, expr: Expression) -> float:
    """The subject's lid opening under an expression (exactly ``subj.aperture`` when neutral)."""
    return subj.aperture * (1.0 - expr.eyelid_closure)


def _albedo(sf: _Surface, subj: Subject, face: tuple[slice, slice], expr: Expression = NEUTRAL) -> np.ndarray:
    alb = subj.skin * (0.93 + 0.14 * _sample(subj.skin_texture, sf.x, sf.y))
    alb[sf.obj == NECK] *= 0.55  # in the chin's shadow
    alb[face] *= _features(sf.obj[face], sf.x[face], sf.y[face], sf.z[face], subj, expr)
    x, y, z = sf.x, sf.y, sf.z
    head = sf.obj == HEAD
    ax = np.abs(x)
    if subj.beard > 0:
        # Chin and jaw below the mouth, light enough to keep the mouth readable.
        tex = 0.7 + 0.6 * _sample(subj.beard_texture, x, y)
        jaw = y < -0.62 - 0.28 * np.clip(1 - (ax / 0.9) ** 2, 0, 1)
        beard = head & (z > -0.2) & jaw
        alb = np.where(beard, alb * subj.beard * tex, alb)
    # Hair: above the hairline, coming down the sides (longer hair lower), and on the
    # back of the head.
    tex = 0.65 + 0.7 * _sample(subj.hair_texture, x, y)
    drop = (0.45 + 0.5 * subj.hair_length) * np.clip((ax - 0.62) / 0.3, 0, 1)
    back = (z < -0.1) & (y > -0.5 - subj.hair_length)
    hair = (head & ((y > subj.hairline - 0.22 * x * x - drop) | back)) | ((sf.obj == EAR) & (subj.hair_length > 0.7))
    alb = np.where(hair, subj.hair * tex, alb)
    eye_alb = np.array([0.0, 0.72, 0.16, 0.5], np.float32)[sf.eye]
    alb = np.where(sf.eye > 0, eye_alb, alb)
    return np.where(sf.obj != BG, alb, 0.0).astype(np.float32)


def _features(
    obj: np.ndarray, x: np.ndarray, y: np.ndarray, z: np.ndarray, subj: Subject, expr: Expression = NEUTRAL
) -> np.ndarray:
    """Albedo factors of the facial features (sockets, lids, brows, mouth, nostrils).

    The expression terms are added to the neutral geometry (adding zero leaves every float
    as it was) and the features only an expression has are painted only when it has them,
    so a neutral face is the same bytes as before the controls existed.
    """
    front = (obj == HEAD) & (z > 0.3)
    ax = np.abs(x)
    # Darker skin in the eye sockets and under the brows: the strongest cue a face detector uses.
    dx = (ax - EYE_X) / 0.26
    dy = (y - EYE_Y - 0.03) / 0.15
    socket = np.clip(1 - (dx * dx + dy * dy), 0, 1)
    factor = np.where(front, 1 - 0.4 * socket, 1.0)
    # Lid line and lashes along the upper edge of the opening, a softer line below.
    ex = (ax - EYE_X) / APERTURE_W
    lid = APERTURE_H * _aperture(subj, expr) * np.clip(1 - ex * ex, 0, 1) ** 0.7
    upper = (y - APERTURE_Y) - lid
    factor = np.where(front & (np.abs(ex) < 1.12) & (upper > -0.005) & (upper < 0.028), factor * 0.35, factor)
    lower = (APERTURE_Y - y) - lid
    factor = np.where(front & (np.abs(ex) < 1.0) & (lower > -0.005) & (lower < 0.012), factor * 0.7, factor)
    # Brows.
    bx = (ax - 0.42) / 0.26
    # bx runs from -1 at the inner end of a brow to +1 at its outer end.
    brow_line = EYE_Y + 0.17 + 0.05 * (1 - bx * bx) + expr.brow_raise + expr.brow_inner * (0.5 * (1 - bx))
    brows = front & (np.abs(bx) < 1) & (np.abs(y - brow_line) < subj.brow_thickness * (1 - 0.5 * bx * bx))
    factor = np.where(brows, factor * subj.brow, factor)
    if expr.brow_inner < 0:  # the frown's vertical crease between the brows
        crease = front & (np.abs(ax - 0.05) < 0.018) & (np.abs(y - EYE_Y - 0.14) < 0.09 * min(1.0, -expr.brow_inner / 0.06))
        factor = np.where(crease, factor * 0.55, factor)
    if expr.nose_wrinkle > 0:  # creases across the bridge, between and below the eyes
        # bunched skin shades the whole bridge; a few creases cross it
        creases = np.abs(np.sin((y - EYE_Y + 0.05) * (np.pi / 0.1))) > 0.6
        bridge = (front | (obj == NOSE)) & (ax < 0.18) & (y < EYE_Y + 0.1) & (y > EYE_Y - 0.3)
        factor = np.where(bridge, factor * (1 - 0.25 * expr.nose_wrinkle), factor)
        factor = np.where(bridge & creases, factor * (1 - 0.4 * expr.nose_wrinkle), factor)
    # Mouth: lips a little darker, the line between them dark. The expression bends the line
    # (corners up or down), stretches the lips and opens a dark gap between them.
    mx = x / (0.3 * (1 + expr.mouth_width))
    bend = expr.mouth_corners * (mx * mx)
    half = (0.075 + expr.mouth_open) * np.sqrt(np.clip(1 - mx * mx, 0, 1))
    lips = front & (np.abs(mx) < 1) & (np.abs(y + 0.8 - bend) < half)
    factor = np.where(lips, factor * 0.65, factor)
    line = front & (np.abs(mx) < 0.9) & (np.abs(y + 0.8 - 0.03 * mx * mx - bend) < 0.016)
    factor = np.where(line, factor * 0.3, factor)
    if expr.mouth_open > 0:
        gap = front & (np.abs(mx) < 0.9) & (np.abs(y + 0.8 - 0.03 * mx * mx - bend) < expr.mouth_open * np.sqrt(np.clip(1 - mx * mx / 0.81, 0, 1)))
        factor = np.where(gap, factor * 0.12, factor)
    # Nostrils and the shadow under the nose.
    nostril = (obj == NOSE) & (((ax - 0.065) / 0.05) ** 2 + ((y + 0.56) / 0.032) ** 2 < 1)
    factor = np.where(nostril, factor * 0.25, factor)
    return np.where(front & (ax < 0.16) & (y < -0.58) & (y > -0.66), factor * 0.75, factor)


def render_target(
    view: _View, subj: Subject, cam: Camera, width: int, height: int, expression: Expression = NEUTRAL
) -> np.ndarray:
    """The NIR-like face as float32 on a 0..255 scale, before the camera's gain and noise."""
    sf = _target_surface(view, subj, cam, expression)
    alb = _albedo(sf, subj, _face_window(view, sf.obj.shape), expression)
    lambert = sf.lambert**1.3
    face = 255.0 * (alb * (0.12 + 0.88 * lambert) + 0.12 * sf.spec**40 * (sf.obj != BG))

    rows = np.linspace(-1, 1, height, dtype=np.float32)[:, None]
    cols = np.linspace(-1, 1, width, dtype=np.float32)[None, :]
    img = cam.background + cam.background_slope[0] * cols + cam.background_slope[1] * rows
    win = img[view.window]
    img[view.window] = np.where(sf.obj != BG, face, win)
    if subj.glasses:
        _draw_lines(img, _glasses_polylines(view, sf.depth), 50.0, _thickness(view.pose), True)
        # Small glints of the illuminator on the lenses.
        for sign in (-1.0, 1.0):
            glint, _ = project(np.array([[sign * 0.33, 0.11, 1.24]], np.float32), view.pose)
            cv2.circle(img, tuple(int(round(v)) for v in glint[0]), max(1, int(view.pose.scale * 0.02)), 230.0, -1)
    return cv2.GaussianBlur(img, (0, 0), 0.6)


def _camera(img: np.ndarray, cam: Camera, rng: np.random.Generator, gain: float = 1.0) -> np.ndarray:
    noise = rng.standard_normal(img.shape, dtype=np.float32)
    return np.clip(cam.black + 0.5 + (cam.gain * gain) * img + cam.noise * noise, 0, 255).astype(np.uint8)


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
    direction = np.array([math.cos(math.radians(angle - 90)), math.sin(math.radians(angle - 90))])
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
    kernel /= kernel.sum()
    return cv2.GaussianBlur(cv2.filter2D(img, -1, kernel), (0, 0), 0.08 * pose.scale) * 1.6


def _misalign(pose: Pose, rng: np.random.Generator, width: int, height: int) -> Pose:
    shift = 0.6 * pose.scale * np.array([math.cos(a := rng.uniform(0, 2 * math.pi)), math.sin(a)])
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


def render_dataset(twin_cfg: TwinConfig) -> Iterator[TwinPair]:
    """Every pair of the twin, recording by recording (deterministic in ``twin_cfg``)."""
    subjects = make_subjects(twin_cfg)
    cameras = make_cameras(twin_cfg)
    plan = _plan_disturbances(twin_cfg)
    gains = {"overexposure": 2.6, "underexposure": 0.3}
    for i, subj in enumerate(subjects):
        for j, cam in enumerate(cameras):
            rng = np.random.default_rng([twin_cfg.seed, 4, i, j])
            poses = make_trajectory(rng, twin_cfg.frames, twin_cfg.width, twin_cfg.height)
            # The camera's auto-exposure drifts slowly around its gain during a recording.
            t = np.linspace(0, 1, twin_cfg.frames)
            exposure = 1 + 0.12 * np.sin(2 * np.pi * rng.uniform(1.0, 2.0) * t + rng.uniform(0, 2 * np.pi))
            for f, pose in enumerate(poses):
                kind = plan[(i, j)].get(f, "none")
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
