"""Statistics over per-row scores (eval/metrics.py's ExampleScores): how sure a change is, and what a gate can see.

    paired_bootstrap(scores_a, scores_b, names, samples, seed)   # b minus a, resampling the same rows
    standard_error(scores_a, scores_b, name, samples, seed)      # of the change b - a at these rows
    Sensitivity(rows, standard_error, limit)                     # the smallest drop a gate catches; rows it needs
    regression_buckets(ref_values, model_values, threshold, ids) # rows regressed / improved / unchanged
    wilson_interval(successes, rows)                             # a share's 95% interval (type accuracy's)

The sensitivity is that of a one-sided test at alpha 0.05 with 80% power: a true drop of DETECTABLE_Z (2.487)
standard errors of the change is caught four times in five. A limit below it decides on noise: a candidate truly
as good as the baseline fails or passes by which rows were drawn. The standard error shrinks as 1/sqrt(rows), so the
rows a limit needs are rows x (detectable / limit)^2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from eval.metrics import ExampleScores, mean

Z_ALPHA = 1.645  # one-sided alpha 0.05
Z_POWER = 0.842  # 80% power
DETECTABLE_Z = Z_ALPHA + Z_POWER  # 2.487 standard errors
FLOAT_NOISE = 1e-12  # 0.55 - 0.5 is 0.05000000000000004: a difference of exactly the threshold stays unchanged


def resample_indices(rows: int | np.ndarray, samples: int, seed: int) -> np.ndarray:
    """`samples` resamples (with replacement) of `rows` (a row count, or the row indices to draw from)."""
    pool = np.arange(rows) if isinstance(rows, int) else np.asarray(rows)
    return pool[np.random.default_rng(seed).integers(0, len(pool), size=(samples, len(pool)))]


def paired_bootstrap(a: ExampleScores, b: ExampleScores, names: list[str] | None = None, samples: int = 1000,
                     seed: int = 12345, rows=None) -> dict[str, dict[str, float]]:
    """b minus a for each metric (default: those flagged delta), resampling the same row indices for both (they
    must score the same rows); `rows`: only these rows (a question type's), resampled among themselves (default:
    all rows).

    Per metric: delta (on all rows), the 95% percentile interval of the resampled deltas, and a one-sided p-value
    for "b is not better" (the share of resamples in which b is not better in the metric's direction, add-one
    smoothed). Corpus metrics are recomputed from summed per-sentence sufficient statistics (as sacrebleu's own
    paired bootstrap does), so 1,000 resamples of 10k rows take seconds.
    """
    if a.references != b.references:
        raise ValueError("paired bootstrap needs both models scored on the same references")
    names = [name for name, m in a.computed.items() if m.delta] if names is None else names
    pool = np.arange(a.rows) if rows is None else np.asarray(rows)
    indices = resample_indices(pool, samples, seed)
    full_a, full_b = a.metrics(pool), b.metrics(pool)
    result = {}
    for name in names:
        deltas = b.resampled(name, indices) - a.resampled(name, indices)
        low, high = np.percentile(deltas, [2.5, 97.5])
        not_better = np.sum(deltas * (a.computed[name].direction or 1) <= 0)
        result[name] = {"delta": full_b[name] - full_a[name], "ci95_low": float(low), "ci95_high": float(high),
                        "p_value": float((not_better + 1) / (samples + 1))}
    return result


def standard_error(a: ExampleScores, b: ExampleScores, name: str, samples: int, seed: int, rows=None) -> float:
    """The standard error of metric `name`'s change b - a over `rows` (default: all). A mean of per-row values
    (ROUGE, rates, semantic): the closed form, the per-row differences' standard deviation over sqrt(rows). A
    corpus score (BLEU, chrF) or another reduce has no per-row difference: the standard deviation of its paired-
    bootstrap deltas (`samples` resamples drawn with `seed`, as paired_bootstrap draws them)."""
    pool = np.arange(a.rows) if rows is None else np.asarray(rows)
    if len(pool) < 2:
        return 0.0
    if a.computed[name].reduce is mean:
        differences = b.values[name][pool] - a.values[name][pool]
        return float(differences.std(ddof=1) / math.sqrt(len(pool)))
    indices = resample_indices(pool, samples, seed)
    return float((b.resampled(name, indices) - a.resampled(name, indices)).std(ddof=1))


@dataclass(frozen=True)
class Sensitivity:
    """What a gate on one metric can see at `rows` rows: the standard error of the change, the smallest drop it
    catches (DETECTABLE_Z standard errors) and, for `limit`, whether the limit is at least that and the rows the
    limit would need to be (rows x (detectable / limit)^2, rounded up)."""

    rows: int
    standard_error: float
    limit: float
    changes: str = ""  # whose per-row changes the standard error is of, where not the gate's own pair

    @property
    def detectable(self) -> float:
        return DETECTABLE_Z * self.standard_error

    @property
    def visible(self) -> bool:
        """Whether a drop of the limit is caught at 80% power (a zero limit is never visible but when the change
        has no spread at all)."""
        return self.limit + FLOAT_NOISE >= self.detectable

    @property
    def rows_needed(self) -> int | None:
        """The rows at which the limit becomes visible; None for a zero limit (no number of rows is enough)."""
        if self.limit <= 0:
            return None if self.detectable > 0 else self.rows
        return math.ceil(self.rows * (self.detectable / self.limit) ** 2 - FLOAT_NOISE)

    def warning(self, name: str) -> str:
        """The one line said when the limit is not visible."""
        needed = (f"about {self.rows_needed:,} rows would" if self.rows_needed is not None
                  else "no number of rows can see a zero limit")
        source = f" (by the spread of {self.changes})" if self.changes else ""
        return (f"{name}: limit {self.limit:g} is below what these {self.rows:,} rows can detect "
                f"({self.detectable:.3f}){source}; {needed}")


def wilson_interval(successes: int, rows: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval of a share (successes of rows): unlike share +- 1.96 standard errors, it stays
    in [0, 1] and keeps its width at shares near 0 or 1 and at few rows."""
    if rows == 0:
        return 0.0, 1.0
    share = successes / rows
    centre = (share + z * z / (2 * rows)) / (1 + z * z / rows)
    half = z * math.sqrt(share * (1 - share) / rows + z * z / (4 * rows * rows)) / (1 + z * z / rows)
    return max(0.0, centre - half), min(1.0, centre + half)


def regression_buckets(ref_values: Sequence[float], model_values: Sequence[float], threshold: float,
                       ids: Sequence[str]) -> dict:
    """Rows by the per-example difference model - reference: regressed below -threshold, improved above +threshold,
    unchanged otherwise (a difference of exactly the threshold, float noise aside, is unchanged). Counts and row ids:
    regressed worst first, improved best first, unchanged in row order; ties keep row order."""
    if not (len(ref_values) == len(model_values) == len(ids)):
        raise ValueError(f"{len(ref_values)} reference values, {len(model_values)} model values, {len(ids)} ids")
    if not threshold >= 0:
        raise ValueError(f"threshold must be >= 0, not {threshold}")
    differences = [float(m) - float(r) for r, m in zip(ref_values, model_values)]
    limit = threshold + FLOAT_NOISE
    order = sorted(range(len(ids)), key=lambda i: differences[i])
    regressed = [ids[i] for i in order if differences[i] < -limit]
    improved = [ids[i] for i in sorted(range(len(ids)), key=lambda i: -differences[i]) if differences[i] > limit]
    unchanged = [ids[i] for i in range(len(ids)) if -limit <= differences[i] <= limit]
    return {"threshold": threshold, **{name: {"count": len(bucket), "ids": bucket} for name, bucket in
                                        (("regressed", regressed), ("improved", improved), ("unchanged", unchanged))}}
