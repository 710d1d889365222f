"""Arithmetic that gives the same bits on every x86-64 CPU, for the twin's renders.

The twin's bytes are its identity: DVC's run-cache, a shared remote and the committed
``dvc.lock`` only hit when two machines render the same frames. Three things made the renders
CPU-dependent (found by switching each library's CPU dispatch off in turn):

- numpy's transcendental ufuncs (``np.sin``, float ``**``) pick AVX-512, AVX2 or scalar code at
  run time, and those round differently in the last bit;
- ``@``, ``np.dot`` and ``np.linalg.norm`` go to the BLAS, whose kernels (and use of FMA) are
  chosen per CPU;
- OpenCV's filters (``GaussianBlur``, ``resize``, ``filter2D``, ``warpAffine``) dispatch to
  SSE, AVX2 or AVX-512 code with or without fused multiply-adds.

So the twin computes its transcendental functions here from IEEE-754 basic operations (``+ - *
/`` and ``sqrt``, which are correctly rounded on every CPU and never fused across numpy calls),
does its small matrix products term by term in a fixed order, and runs OpenCV with its
CPU dispatch and IPP turned off (``scalar_opencv``): the plain build, one code path for all CPUs.
The functions are accurate to a few units in the last place of float64, far below what the
renders' float32 and uint8 can show.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import cv2
import numpy as np

_LN2_HI = 6.93147180369123816490e-01  # ln 2 split so that k * _LN2_HI is exact for |k| < 2^20
_LN2_LO = 1.90821492927058770002e-10
# pi/2 in three parts of 33, 33 and 53 bits (fdlibm's pio2_1, pio2_2, pio2_3)
_PIO2 = (1.57079632673412561417e00, 6.07710050630396597660e-11, 2.02226624871116645580e-21)


def _poly(x: np.ndarray, coeffs: tuple[float, ...]) -> np.ndarray:
    """Horner's rule, highest coefficient first, one rounding per step (no fused multiply-add)."""
    acc = x * coeffs[0]  # the same bits as a constant array times x, one allocation
    acc += coeffs[1]
    for c in coeffs[2:]:
        acc *= x
        acc += c
    return acc


# Truncated series, each good to about 1e-13 relative over its reduced range: ample for
# float32 renders, and few terms keep the per-pixel cost low.
_EXP = tuple(1.0 / math.factorial(n) for n in range(11, -1, -1))  # |r| <= ln2/2
_ATANH = tuple(1.0 / n for n in range(15, 0, -2))  # atanh(s)/s as a series in s*s, |s| <= 0.172
_SIN = tuple((-1.0) ** (n // 2) / math.factorial(n) for n in range(15, 0, -2))  # sin(r)/r in r*r, |r| <= pi/4
_COS = tuple((-1.0) ** (n // 2) / math.factorial(n) for n in range(16, -1, -2))


def exp(x) -> np.ndarray:
    """e**x in float64."""
    x = np.asarray(x, np.float64)
    k = np.floor(x * (1.0 / _LN2_HI) + 0.5)
    r = (x - k * _LN2_HI) - k * _LN2_LO
    return np.ldexp(_poly(r, _EXP), k.astype(np.int32))


def log(x) -> np.ndarray:
    """Natural logarithm in float64 of positive x (-inf at 0)."""
    x = np.asarray(x, np.float64)
    return np.where(x > 0, _log_positive(x), -np.inf)


def _log_positive(x: np.ndarray) -> np.ndarray:
    # e * ln2_hi + (2 s P(s^2) + e * ln2_lo), s = (m - 1) / (m + 1), computed in place
    m, e = np.frexp(x)  # exact: x = m * 2**e, m in [0.5, 1)
    small = m < math.sqrt(0.5)
    np.multiply(m, 2.0, out=m, where=small)
    e = e.astype(np.float64)
    e -= small
    s = m - 1.0
    m += 1.0
    s /= m
    series = _poly(s * s, _ATANH)
    s *= 2.0
    series *= s  # (2 s) * P, as 2.0 * s * P rounds
    lo = e * _LN2_LO
    lo += series
    e *= _LN2_HI
    e += lo
    return e


def power(x, p: float) -> np.ndarray:
    """x**p for x >= 0 (0 at x == 0 for p > 0), in the dtype of x.

    Integer exponents go by repeated squaring; others as exp(p log x), on the positive
    entries only (most of a render's clipped shading terms are 0).
    """
    arr = np.asarray(x)
    dtype = arr.dtype if arr.dtype.kind == "f" else np.float64
    flat = arr.astype(np.float64).ravel()
    out = np.zeros_like(flat)  # only the nonzero entries are worked on: most of a clipped shading term is 0
    if float(p).is_integer() and p >= 1:
        nonzero = flat != 0
        out[nonzero] = _power_int(flat[nonzero], int(p))
    else:
        pos = flat > 0
        out[pos] = exp(p * _log_positive(flat[pos]))
    return out.reshape(arr.shape).astype(dtype)


def _power_int(x: np.ndarray, n: int) -> np.ndarray:
    result, base = None, x
    while n:
        if n & 1:
            result = base if result is None else result * base
        n >>= 1
        if n:
            base = base * base
    return result


def _reduce(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x = q * pi/2 + r with |r| <= pi/4 (Cody-Waite in three parts, exact for |x| < 1e5)."""
    q = np.floor(x * (2.0 / math.pi) + 0.5)
    r = ((x - q * _PIO2[0]) - q * _PIO2[1]) - q * _PIO2[2]
    return q.astype(np.int64) % 4, r


def sin(x) -> np.ndarray:
    x = np.asarray(x, np.float64)
    q, r = _reduce(x)
    r2 = r * r
    s, c = r * _poly(r2, _SIN), _poly(r2, _COS)
    return np.select([q == 0, q == 1, q == 2], [s, c, -s], -c)


def cos(x) -> np.ndarray:
    x = np.asarray(x, np.float64)
    q, r = _reduce(x)
    r2 = r * r
    s, c = r * _poly(r2, _SIN), _poly(r2, _COS)
    return np.select([q == 0, q == 1, q == 2], [c, -s, -c], s)


def sin1(x: float) -> float:
    return float(sin(x))


def cos1(x: float) -> float:
    return float(cos(x))


def matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` for small matrices (or a vector ``b``), summed term by term in a fixed order."""
    a, b = np.asarray(a), np.asarray(b)
    vec = b.ndim == 1
    b2 = b[:, None] if vec else b
    out = a[..., :, 0:1] * b2[0]
    for k in range(1, a.shape[-1]):
        out = out + a[..., :, k : k + 1] * b2[k]
    return out[..., 0] if vec else out


def dot(a: np.ndarray, b: np.ndarray) -> float:
    """Dot product of two short vectors, correctly rounded (``math.fsum``)."""
    return math.fsum(float(u) * float(v) for u, v in zip(np.asarray(a, np.float64), np.asarray(b, np.float64)))


def norm(v: np.ndarray) -> float:
    return math.sqrt(dot(v, v))


@contextmanager
def scalar_opencv() -> Iterator[None]:
    """OpenCV without CPU dispatch and IPP for the block: the same code path on every CPU."""
    optimized, ipp = cv2.useOptimized(), cv2.ipp.useIPP()
    cv2.setUseOptimized(False)
    cv2.ipp.setUseIPP(False)
    try:
        yield
    finally:
        cv2.ipp.setUseIPP(ipp)
        cv2.setUseOptimized(optimized)
