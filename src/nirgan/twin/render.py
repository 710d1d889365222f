"""The two renders of one view: the source (the rig's colour-coded mask) and the target (the NIR-like face).

``render_source`` paints ``SOURCE_COLOURS``; ``render_target`` shades the subject's head
(``_target_surface``: Lambert and specular from the camera's illuminator, eyeballs included)
with its albedo (skin texture, beard, hair and the facial features under an ``Expression``),
draws the glasses of both domains, and ``_camera`` applies a camera's gain, black level and noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from nirgan.twin import exact
from nirgan.twin.geometry import _View, project
from nirgan.twin.scene import (
    APERTURE_H,
    APERTURE_W,
    APERTURE_Y,
    BG,
    EAR,
    EYE_X,
    EYE_Y,
    HEAD,
    HEAD_A,
    NECK,
    NEUTRAL,
    NOSE,
    Camera,
    Expression,
    Pose,
    Subject,
)

SOURCE_COLOURS: dict[str, tuple[int, int, int]] = {
    "skin": (255, 0, 0),
    "eye_white": (0, 255, 0),
    "iris": (0, 0, 255),
    "glasses": (255, 255, 0),
}


_SOURCE_PALETTE = np.array([(0, 0, 0), SOURCE_COLOURS["skin"], SOURCE_COLOURS["eye_white"], SOURCE_COLOURS["iris"]],
                           np.uint8)


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
    light = exact.matmul(view.R.T, cam.light)
    half = cam.light + np.array([0, 0, 1], np.float32)
    half = exact.matmul(view.R.T, half / np.float32(exact.norm(half)))
    centres = np.array([c for _, _, c, _ in parts], np.float32)
    inv = np.array([1 / a**2 for _, _, _, a in parts], np.float32)
    # np.take of each column: the same values as centres[best, k], without 2-D fancy indexing
    nx = (x - np.take(centres[:, 0], best)) * np.take(inv[:, 0], best)
    ny = (y - np.take(centres[:, 1], best)) * np.take(inv[:, 1], best)
    nz = (z - np.take(centres[:, 2], best)) * np.take(inv[:, 2], best)
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
        x = sign * 0.41 + 0.27 * exact.cos(t)
        y = 0.03 + 0.18 * np.sign(exact.sin(t)) * exact.power(np.abs(exact.sin(t)), 0.8)
        off = np.abs(x) - 0.41
        z = 1.24 - 0.25 * off.clip(0, None) - 0.05 * off**2
        lines.append(np.stack([x, y, z], 1))
        arm = np.linspace(0, 1, 12)[:, None]
        lines.append(np.array([sign * 0.68, 0.08, 1.14]) * (1 - arm) + np.array([sign * 0.99, 0.12, 0.0]) * arm)
    bx = np.linspace(-0.14, 0.14, 9)
    lines.append(np.stack([bx, 0.09 + 0.03 * exact.cos(bx / 0.14 * np.pi / 2), np.full_like(bx, 1.23)], 1))
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
    view = view.cropped(HEAD_A)
    obj, depth, _, parts = view.surface(HEAD_A)
    eye, _ = view.eyes(obj, parts[1][1], 1.0)
    # one palette lookup: 0 background, 1 skin, 2 eye white, 3 iris (eyes lie on the face)
    code = (obj != BG).view(np.uint8)
    code = np.where(eye == 1, np.uint8(2), code)
    code = np.where(eye >= 2, np.uint8(3), code)
    win = np.take(_SOURCE_PALETTE, code, axis=0)
    img = np.zeros((height, width, 3), np.uint8)
    img[view.window] = win
    if glasses:
        _draw_lines(img, _glasses_polylines(view, depth), SOURCE_COLOURS["glasses"], _thickness(view.pose), False)
    return img


def _sample(texture: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    n = texture.shape[0]
    iu = ((u + 1.3) * ((n - 1) / 2.6)).astype(np.int32)
    iv = ((1.7 - v) * ((n - 1) / 3.6)).astype(np.int32)
    for i in (iu, iv):  # np.clip, in place and without its Python wrapper
        np.maximum(i, 0, out=i)
        np.minimum(i, n - 1, out=i)
    iv *= texture.shape[1]  # row stride of the flat texture
    iv += iu
    return np.take(texture, iv)


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
    lid = APERTURE_H * _aperture(subj, expr) * exact.power(np.clip(1 - ex * ex, 0, 1), 0.7)
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
        creases = np.abs(exact.sin((y - EYE_Y + 0.05) * (np.pi / 0.1))) > 0.6
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
    view = view.cropped(subj.head_axes)
    sf = _target_surface(view, subj, cam, expression)
    alb = _albedo(sf, subj, _face_window(view, sf.obj.shape), expression)
    lambert = exact.power(sf.lambert, 1.3)
    fg = sf.obj != BG
    # the highlight on the head only (0 ** 40 is 0): the same bits, and no work on the background
    face = 255.0 * (alb * (0.12 + 0.88 * lambert) + 0.12 * exact.power(np.where(fg, sf.spec, 0), 40) * fg)

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
    # (black + 0.5) + gain * img + noise * sigma, in place: the same roundings in the same dtypes
    out = img * (cam.gain * gain)
    out += cam.black + 0.5
    noise *= cam.noise
    out += noise
    return np.clip(out, 0, 255, out=out).astype(np.uint8)
