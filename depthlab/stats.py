"""Mean +- sd over seeds, and its one-line form: what every table of experiments and sweeps shows."""
from __future__ import annotations

import math
from typing import Sequence


def mean_sd(values: Sequence[float]):
    """``(mean, sample sd, n)`` of the finite values; sd is 0 for n < 2; (nan, nan, 0) if none."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    n = len(vals)
    if n == 0:
        return math.nan, math.nan, 0
    m = sum(vals) / n
    sd = math.sqrt(sum((v - m) ** 2 for v in vals) / (n - 1)) if n > 1 else 0.0
    return m, sd, n


def fmt_mean_sd(values: Sequence[float], scale: float = 1.0, digits: int = 1, unit: str = "") -> str:
    """``"97.3 +- 0.4%"`` for several seeds, ``"97.3%"`` for one, ``"-"`` for none."""
    m, sd, n = mean_sd(values)
    if n == 0:
        return "-"
    if n == 1:
        return f"{m * scale:.{digits}f}{unit}"
    return f"{m * scale:.{digits}f} +- {sd * scale:.{digits}f}{unit}"
