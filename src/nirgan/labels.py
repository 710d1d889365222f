"""The pose and gaze labels that travel with every pair, in one fixed order."""

LABELS: tuple[str, ...] = ("head_yaw", "head_pitch", "head_roll", "gaze_yaw", "gaze_pitch")

# A horizontal flip mirrors the face: yaw and roll change sign, pitch does not.
FLIP_SIGN: tuple[float, ...] = (-1.0, 1.0, -1.0, -1.0, 1.0)
