"""The interquartile-range outlier rule of thesis 3.1.4, shared by both families' clean stages."""

from __future__ import annotations

import numpy as np


def iqr_outliers(values: np.ndarray, k: float) -> tuple[np.ndarray, float, float]:
    """Thesis 3.1.4: ``(mask, lower, upper)`` with ``mask`` true outside [Q1 - k IQR, Q3 + k IQR].

    Quartiles are numpy's default ``linear`` (type 7) quantiles over the finite values.
    Non-finite values (an image that could not be measured) are always outliers. With no
    finite value at all, every value is an outlier and both bounds are NaN.
    """
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    if not finite.any():
        return np.ones(values.shape, dtype=bool), float("nan"), float("nan")
    q1, q3 = np.quantile(values[finite], [0.25, 0.75])
    iqr = q3 - q1
    lower, upper = float(q1 - k * iqr), float(q3 + k * iqr)
    with np.errstate(invalid="ignore"):
        mask = ~finite | (values < lower) | (values > upper)
    return mask, lower, upper
