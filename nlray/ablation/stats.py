"""Mean and 95% t-interval over seeds: what an ablation row reports."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

from scipy import stats


@dataclass(frozen=True)
class Interval:
    """mean ± half_width (a two-sided t-interval for the mean); half_width is None with one value."""

    mean: float
    half_width: Optional[float]
    n: int

    def text(self, scale: float = 100.0, digits: int = 1) -> str:
        """``72.5 ± 0.4`` (in % by default); ``72.5 (n=1)`` when there is nothing to spread over."""
        if self.half_width is None:
            return f"{self.mean * scale:.{digits}f} (n=1)"
        return f"{self.mean * scale:.{digits}f} ± {self.half_width * scale:.{digits}f}"


def t_interval(values: Sequence[float], level: float = 0.95) -> Interval:
    """mean ± t_{(1+level)/2, n-1} · s / √n, s the sample standard deviation (n-1 in its denominator)."""
    n = len(values)
    if n == 0:
        raise ValueError("t_interval needs at least one value")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level={level!r} must be in (0, 1)")
    mean = math.fsum(values) / n
    if n == 1:
        return Interval(mean, None, 1)
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    return Interval(mean, float(stats.t.ppf((1.0 + level) / 2.0, n - 1)) * sd / math.sqrt(n), n)
