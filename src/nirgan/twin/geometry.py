"""Where the rig lands in the image: rotation, projection and orthographic ray casting.

``rotation``, ``gaze_vector``, ``project`` and ``iris_centres`` follow the conventions of the
package docstring; ``_View`` holds the rays of one pose and casts the head, its fixed parts and
the eyeballs, the shared geometry both renders are made from.
"""

from __future__ import annotations

import copy
import math
from functools import lru_cache

import numpy as np

from nirgan.twin import exact
from nirgan.twin.scene import (
    APERTURE_H,
    APERTURE_W,
    APERTURE_Y,
    BG,
    EYE_R,
    EYE_X,
    EYE_Y,
    EYE_Z,
    FIXED_PARTS,
    HEAD,
    HEAD_C,
    IRIS_COS,
    PUPIL_COS,
    Pose,
)


# ------------------------------------------------------------------------------ geometry
# A frame asks for its pose's rotation and gaze about ten times (view, projections, glints,
# eyes); each is a few dozen small numpy calls, so they are computed once per pose (read-only).
@lru_cache(maxsize=256)
def rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Head-to-camera rotation (degrees), see the package docstring for the signs."""
    (cy, cp, cr), (sy, sp, sr) = (exact.cos(np.radians([yaw, -pitch, roll])), exact.sin(np.radians([yaw, -pitch, roll])))
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    out = exact.matmul(exact.matmul(rz, rx), ry).astype(np.float32)
    out.flags.writeable = False
    return out


@lru_cache(maxsize=256)
def gaze_vector(gaze_yaw: float, gaze_pitch: float) -> np.ndarray:
    (cy, cp), (sy, sp) = exact.cos(np.radians([gaze_yaw, gaze_pitch])), exact.sin(np.radians([gaze_yaw, gaze_pitch]))
    out = np.array([sy * cp, sp, cy * cp], np.float32)
    out.flags.writeable = False
    return out


def project(points: np.ndarray, pose: Pose) -> tuple[np.ndarray, np.ndarray]:
    """Head-unit points (N, 3) -> pixel (N, 2) and camera depth (N,)."""
    cam = exact.matmul(points, rotation(pose.yaw, pose.pitch, pose.roll).T)
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
    dot = exact.dot
    return (
        dot(w * w, inv),
        dot(2 * (u * w), inv), dot(2 * (v * w), inv), dot(-2 * (c * w), inv),
        dot(u * u, inv), dot(v * v, inv), dot(2 * (u * v), inv),
        dot(-2 * (u * c), inv), dot(-2 * (v * c), inv), dot(c * c, inv) - 1,
    )


def _cast(R: np.ndarray, X: np.ndarray, Y: np.ndarray, centre: np.ndarray, axes: np.ndarray) -> np.ndarray:
    """Camera depth of each ray's visible hit with an ellipsoid (-inf on a miss).

    ``w`` points at the camera, so the larger root is the visible surface.
    """
    return _cast_in_box(R, X, Y, centre, axes)[0]


def _cast_in_box(R: np.ndarray, X: np.ndarray, Y: np.ndarray, centre: np.ndarray,
                 axes: np.ndarray) -> tuple[np.ndarray, tuple[slice, slice]]:
    """:func:`_cast`, casting only the rays in the box around the ellipsoid's outline, and that
    box (rows, cols) of the window.

    The nose and ears cover a few percent of the window, so casting (and comparing) only
    there saves most of their work; each ray's arithmetic is the same as over the whole
    window, so are its bits, and every ray outside the box misses.
    """
    rows, cols = _outline_box(R, X[0], Y[:, 0], centre, axes)
    out = np.full((Y.shape[0], X.shape[1]), -np.inf, np.float32)
    out[rows, cols] = _cast_all(R, X[:, cols], Y[rows], centre, axes)
    return out, (rows, cols)


# How far outside its outline (head units) an ellipsoid's box reaches: several pixels at any
# scale the twin draws, so no ray the full cast would hit is left out.
_BOX_MARGIN = 0.1


def _outline_box(R: np.ndarray, x: np.ndarray, y: np.ndarray, centre: np.ndarray,
                 axes: np.ndarray) -> tuple[slice, slice]:
    """Rows of ``y`` (descending) and columns of ``x`` (ascending) that can see the ellipsoid:
    it projects to ``u.c +/- |A u|`` across and ``v.c +/- |A v|`` up (A its axes)."""
    u, v = R[0].astype(np.float64), R[1].astype(np.float64)
    c, a = centre.astype(np.float64), axes.astype(np.float64)
    half_x = float(np.sqrt(((u * a) ** 2).sum())) + _BOX_MARGIN
    half_y = float(np.sqrt(((v * a) ** 2).sum())) + _BOX_MARGIN
    mid_x, mid_y = float((u * c).sum()), float((v * c).sum())
    c0 = int(np.searchsorted(x, mid_x - half_x))
    c1 = max(c0, int(np.searchsorted(x, mid_x + half_x, side="right")))
    # y descends: count the rows above the box's top, then those down to its bottom
    r0 = int((y > mid_y + half_y).sum())
    r1 = max(r0, int((y >= mid_y - half_y).sum()))
    return slice(r0, r1), slice(c0, c1)


def _cast_all(R: np.ndarray, X: np.ndarray, Y: np.ndarray, centre: np.ndarray, axes: np.ndarray) -> np.ndarray:
    """:func:`_cast` over every ray of ``X`` (1, W) x ``Y`` (H, 1)."""
    a, bx, by, b0, cxx, cyy, cxy, cx, cy, c0 = _coeffs(R, centre, axes)
    b = bx * X + (by * Y + b0)
    c = (cxx * X + cxy * Y + cx) * X + ((cyy * Y + cy) * Y + c0)
    disc = b * b - (4 * a) * c
    s = (np.sqrt(np.maximum(disc, 0)) - b) * (0.5 / a)
    s[disc < 0] = -np.inf
    return s.astype(np.float32, copy=False)


def _shift(part: slice, start: int, stop: int) -> slice:
    """``part`` of a range, as a slice of its sub-range [start, stop)."""
    lo = min(max(part.start, start), stop) - start
    return slice(lo, max(lo, min(part.stop, stop) - start))


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
        self.fixed, self._fixed_boxes = [], []
        for kind, c, a in FIXED_PARTS:
            depth, box = _cast_in_box(self.R, self.X, self.Y, c, a)
            self.fixed.append((kind, depth, c, a))
            self._fixed_boxes.append(box)

    def cropped(self, head_axes: np.ndarray) -> _View:
        """This view over the box that holds every part (the head with ``head_axes``, the nose,
        ears and neck): the rays outside it all miss, so a render comes out the same bytes from
        about two thirds of the rays (the window is wide enough for any yaw)."""
        boxes = [_outline_box(self.R, self.X[0], self.Y[:, 0], HEAD_C, head_axes), *self._fixed_boxes]
        boxes = [(rows, cols) for rows, cols in boxes if rows.stop > rows.start and cols.stop > cols.start]
        if not boxes:
            return self
        r0, r1 = min(b[0].start for b in boxes), max(b[0].stop for b in boxes)
        c0, c1 = min(b[1].start for b in boxes), max(b[1].stop for b in boxes)
        view = copy.copy(self)
        view.x0, view.x1, view.y0, view.y1 = self.x0 + c0, self.x0 + c1, self.y0 + r0, self.y0 + r1
        view.X, view.Y = self.X[:, c0:c1], self.Y[r0:r1]
        view.window = (slice(view.y0, view.y1), slice(view.x0, view.x1))
        view.fixed = [(kind, d[r0:r1, c0:c1], c, a) for kind, d, c, a in self.fixed]
        view._fixed_boxes = [(_shift(rows, r0, r1), _shift(cols, c0, c1)) for rows, cols in self._fixed_boxes]
        return view

    def surface(self, head_axes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, list]:
        """Object id, depth and winning part index of each pixel in the window."""
        parts = [(HEAD, _cast(self.R, self.X, self.Y, HEAD_C, head_axes), HEAD_C, head_axes), *self.fixed]
        depth = parts[0][1].copy()
        best = np.zeros(depth.shape, np.uint8)
        for i, ((_, d, _, _), box) in enumerate(zip(self.fixed, self._fixed_boxes), start=1):
            d, near_depth, near_best = d[box], depth[box], best[box]  # views: outside, d is -inf
            nearer = d > near_depth
            near_depth[nearer] = d[nearer]
            near_best[nearer] = i
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
            opening = APERTURE_H * aperture * exact.power(np.clip(1 - dx * dx, 0, 1), 0.7)
            inside = hit & (np.abs(dx) < 1) & (np.abs(q[1] + (EYE_Y - APERTURE_Y)) < opening) & (obj[rows, cols] != BG)
            inside &= s >= nose_depth[rows, cols]
            cosang = (q[0] * g[0] + q[1] * g[1] + q[2] * g[2]) / EYE_R
            code = np.where(cosang > PUPIL_COS, 3, np.where(cosang > IRIS_COS, 2, 1)).astype(np.uint8)
            eye[rows, cols] = np.where(inside, code, eye[rows, cols])
            if lambert is not None:
                lam = np.clip((q[0] * light[0] + q[1] * light[1] + q[2] * light[2]) / EYE_R, 0, 1)
                lambert[rows, cols] = np.where(inside, lam, lambert[rows, cols])
        return eye, lambert
