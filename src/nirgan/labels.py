"""The pose and gaze labels that travel with every pair, in one fixed order."""

LABELS: tuple[str, ...] = ("head_yaw", "head_pitch", "head_roll", "gaze_yaw", "gaze_pitch")

# A horizontal flip mirrors the face: yaw and roll change sign, pitch does not.
FLIP_SIGN: tuple[float, ...] = (-1.0, 1.0, -1.0, -1.0, 1.0)

# The rig's geometric domain, degrees (|label| at most this). Past +-90 of head yaw or pitch the
# rig turns its face away from the camera; roll is an angle in the image plane; an eyeball
# rotated past 90 degrees looks into the head. A label outside it is a unit or typing error
# (720 typed for 72), never a pose.
LABEL_BOUNDS: dict[str, float] = {
    "head_yaw": 90.0, "head_pitch": 90.0, "head_roll": 180.0, "gaze_yaw": 90.0, "gaze_pitch": 90.0,
}
