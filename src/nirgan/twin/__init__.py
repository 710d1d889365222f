"""The built-in digital twin: paired rig renders and NIR-like faces with known labels.

No real NIR face data is public, so ``collect`` defaults to this generator (DESIGN.md,
"The built-in digital twin"). Everything is numpy + OpenCV, fully determined by
``TwinConfig`` (the seed included), and the same bytes on every x86-64 CPU (``exact``) and
for any number of worker processes (``render_dataset(cfg, workers=n)``).

API
---
``render_dataset(twin_cfg: TwinConfig, workers: int = 1) -> Iterator[TwinPair]``
    every pair of every recording (one recording per subject and camera), in order
    subject, camera, frame; ``workers`` processes render recordings side by side. ``count_pairs(twin_cfg)`` says how many there will be.
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

Modules
-------
One submodule per step, each importing only those above it:
``scene``     the rig's constants, ``Subject``, ``Expression``, ``Camera``, ``Pose`` and how a
              ``TwinConfig`` draws the subjects, the cameras and the recordings' trajectories;
``geometry``  rotation, projection, iris centres and the orthographic ray casting (``_View``);
``render``    ``render_source`` and ``render_target`` of one view (glasses, albedo, facial
              features, shading) and the camera's gain and noise (``_camera``);
``dataset``   ``TwinPair``, the planted disturbances, ``count_pairs`` and ``render_dataset``.
The names other code uses are imported here: use them as ``nirgan.twin.<name>``.
"""

from __future__ import annotations

from nirgan.twin.dataset import DISTURBANCES, TwinPair, count_pairs, render_dataset
from nirgan.twin.geometry import _View, gaze_vector, iris_centres, project, rotation
from nirgan.twin.render import SOURCE_COLOURS, _camera, render_source, render_target
from nirgan.twin.scene import (
    HEAD_A,
    LIMITS,
    NEUTRAL,
    SCALE,
    Camera,
    Expression,
    Pose,
    Subject,
    make_cameras,
    make_subjects,
    make_trajectory,
)

# The public API, plus the two renderer internals that generation.rig and expression.twin
# drive directly (_View, _camera).
__all__ = [
    "DISTURBANCES", "HEAD_A", "LIMITS", "NEUTRAL", "SCALE", "SOURCE_COLOURS", "Camera", "Expression", "Pose",
    "Subject", "TwinPair", "_View", "_camera", "count_pairs", "gaze_vector", "iris_centres", "make_cameras",
    "make_subjects", "make_trajectory", "project", "render_dataset", "render_source", "render_target", "rotation",
]
