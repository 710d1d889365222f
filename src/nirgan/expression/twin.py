"""The built-in twin rendering facial expressions: labelled grayscale NIR faces, offline.

The expression pipeline needs a folder-per-label set with known identities that runs
without any download; this module renders one from the NIR twin (:mod:`nirgan.twin`): the
same persistent subjects (face shape, albedo, brows, hair, beard, eye size, glasses; the
twin's ``s00`` of a seed is this module's ``s00``), the same cameras (gain, black level,
noise, background, illuminator), the same head-pose and gaze trajectories and exposure
drift. Only the target (NIR) domain is rendered; the expression lives in the renderer's
:class:`~nirgan.twin.Expression` controls.

Each subject is one recording of ``len(expressions) x frames_per_expression`` frames
filmed by one camera (subjects take the cameras in turn); the expressions come in a shuffled
order along the recording, so pose does not give the label away. Each frame draws its
expression's strength from ``[intensity_low, intensity_high]`` and a small independent
jitter on every control (a neutral face is never perfectly still), so classes overlap at
their weak ends, as posed expressions of real people do.

API
---
``PRESETS``  expression name -> its :class:`~nirgan.twin.Expression` at strength 1.
``render_expressions(cfg) -> Iterator[ExpressionFrame]``  every frame, subject by subject.
``count_frames(cfg)``  how many frames that is.
``preview_grid(first, expressions)``  one frame per (subject, expression): rows subjects.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np

from nirgan import twin
from nirgan.twin import exact
from nirgan.config import ExpressionTwinConfig, TwinConfig

Expression = twin.Expression

# Strength-1 controls (head units; eyelid_closure a fraction). Chosen after FACS-style
# descriptions of the seven basic expressions: happy lifts the mouth corners and narrows
# the eyes; sad drops the corners and raises the inner brows; angry lowers and knits the
# brows over pressed lips; disgust wrinkles the nose and lifts the upper lip; fear raises
# and knits the brows, widens the eyes and stretches an open mouth; surprise raises the
# brows, widens the eyes and drops the jaw.
PRESETS: dict[str, Expression] = {
    "neutral": Expression(),
    "happy": Expression(mouth_corners=0.2, mouth_open=0.03, mouth_width=0.2, eyelid_closure=0.45),
    "sad": Expression(mouth_corners=-0.2, brow_inner=0.18, eyelid_closure=0.3),
    "angry": Expression(mouth_corners=-0.04, mouth_width=-0.3, brow_raise=-0.06, brow_inner=-0.14, eyelid_closure=0.2),
    "disgust": Expression(
        mouth_corners=-0.12, mouth_open=0.05, mouth_width=-0.1, brow_raise=-0.05, brow_inner=-0.05, eyelid_closure=0.5,
        nose_wrinkle=1.0,
    ),
    "fear": Expression(
        mouth_corners=-0.04, mouth_open=0.07, mouth_width=0.3, brow_raise=0.1, brow_inner=0.1, eyelid_closure=-0.6
    ),
    "surprise": Expression(mouth_open=0.18, mouth_width=-0.3, brow_raise=0.16, eyelid_closure=-0.7),
}

# Per-frame jitter (standard deviation) of each control, whatever the expression.
JITTER = Expression(
    mouth_corners=0.01, mouth_open=0.005, mouth_width=0.03, brow_raise=0.01, brow_inner=0.01, eyelid_closure=0.05
)


@dataclass(frozen=True)
class ExpressionFrame:
    subject: str
    camera: str
    expression: str
    frame: int  # index within this subject's frames of this expression
    image: np.ndarray  # (H, W) uint8 NIR
    intensity: float
    controls: Expression
    pose: twin.Pose  # head pose, gaze, centre and scale (pixels) of the frame

    @property
    def sample_id(self) -> str:
        return f"{self.subject}/{self.expression}/{self.frame:03d}"


def count_frames(cfg: ExpressionTwinConfig) -> int:
    return cfg.subjects * len(cfg.expressions) * cfg.frames_per_expression


def draw_controls(name: str, intensity: float, rng: np.random.Generator) -> Expression:
    """The preset at this strength plus the per-frame jitter; openings and wrinkles stay >= 0."""
    preset = PRESETS[name]
    values = {}
    for f in dataclasses.fields(Expression):
        v = intensity * getattr(preset, f.name) + getattr(JITTER, f.name) * rng.standard_normal()
        values[f.name] = float(max(0.0, v) if f.name in ("mouth_open", "nose_wrinkle") else v)
    return Expression(**values)


def _twin_config(cfg: ExpressionTwinConfig) -> TwinConfig:
    """The NIR twin whose subjects and cameras this set films."""
    return TwinConfig(
        seed=cfg.seed, subjects=cfg.subjects, cameras=cfg.cameras, width=cfg.width, height=cfg.height,
        glasses_fraction=cfg.glasses_fraction, disturbance_fraction=0.0,
    )


def render_expressions(cfg: ExpressionTwinConfig) -> Iterator[ExpressionFrame]:
    """Every frame, subject by subject (deterministic in ``cfg``)."""
    tcfg = _twin_config(cfg)
    subjects = twin.make_subjects(tcfg)
    cameras = twin.make_cameras(tcfg)
    n = len(cfg.expressions) * cfg.frames_per_expression
    for i, subj in enumerate(subjects):
        cam = cameras[i % len(cameras)]
        rng = np.random.default_rng([cfg.seed, 40, i])
        poses = twin.make_trajectory(rng, n, cfg.width, cfg.height)
        t = np.linspace(0, 1, n)
        exposure = 1 + 0.12 * exact.sin(2 * np.pi * rng.uniform(1.0, 2.0) * t + rng.uniform(0, 2 * np.pi))
        order = rng.permutation(np.repeat(np.arange(len(cfg.expressions)), cfg.frames_per_expression))
        seen = dict.fromkeys(cfg.expressions, 0)
        for k, pose in enumerate(poses):
            name = cfg.expressions[order[k]]
            intensity = float(rng.uniform(cfg.intensity_low, cfg.intensity_high))
            controls = draw_controls(name, intensity, rng)
            with exact.scalar_opencv():
                view = twin._View(pose, cfg.width, cfg.height)
                clean = twin.render_target(view, subj, cam, cfg.width, cfg.height, controls)
                image = twin._camera(clean, cam, rng, float(exposure[k]))
            yield ExpressionFrame(subj.name, cam.name, name, seen[name], image, intensity, controls, pose)
            seen[name] += 1


def preview_grid(first: Mapping[tuple[str, str], np.ndarray], expressions: tuple[str, ...], max_rows: int = 8) -> np.ndarray:
    """One frame per (subject, expression) from ``first``: rows subjects, columns expressions."""
    subjects = sorted({s for s, _ in first})[:max_rows]
    h, w = next(iter(first.values())).shape
    grid = np.zeros((len(subjects) * h, len(expressions) * w), np.uint8)
    for r, s in enumerate(subjects):
        for c, e in enumerate(expressions):
            if (s, e) in first:
                grid[r * h : (r + 1) * h, c * w : (c + 1) * w] = first[(s, e)]
    return grid
