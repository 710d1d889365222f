"""The built-in digital twin (being split into submodules; the code is in :mod:`nirgan.twin.render`)."""

from __future__ import annotations

from nirgan.twin.render import (
    DISTURBANCES,
    HEAD_A,
    LIMITS,
    NEUTRAL,
    SCALE,
    SOURCE_COLOURS,
    Camera,
    Expression,
    Pose,
    Subject,
    TwinPair,
    _camera,
    _View,
    count_pairs,
    gaze_vector,
    iris_centres,
    make_cameras,
    make_subjects,
    make_trajectory,
    project,
    render_dataset,
    render_source,
    render_target,
    rotation,
)

__all__ = [
    "DISTURBANCES", "HEAD_A", "LIMITS", "NEUTRAL", "SCALE", "SOURCE_COLOURS", "Camera", "Expression", "Pose",
    "Subject", "TwinPair", "_View", "_camera", "count_pairs", "gaze_vector", "iris_centres", "make_cameras",
    "make_subjects", "make_trajectory", "project", "render_dataset", "render_source", "render_target", "rotation",
]
