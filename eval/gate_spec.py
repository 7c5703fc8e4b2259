"""What a regression gate checks (`entrypoint.py compare`), built once from the command line: one object, every
default written here once. Light on purpose (no metrics, no numpy): the command line reads its defaults.

    spec = GateSpec(max_drop=parse_limits("rougeL=0.01,bleu=0.5"), rule="significant")
    eval.compare.compare(baseline_path, candidate_path, spec)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import ConfigError

RULES = ("point", "significant", "non-inferior")
# A question type with fewer rows is shown, marked "too few rows to judge", and not gated (report.md, report.html,
# report.png and compare's per-type gate alike).
MIN_TYPE_ROWS = 30
ALPHA = 0.05  # --require-improvement: the one-sided p-value the candidate must beat its base model with
REGRESSION_THRESHOLD = 0.05  # a paired row regressed (improved) when its ROUGE-L fell (rose) by more than this

# The kinds of a report's warnings about a model (eval/sanity.py; report.schema.json's warning "kind").
WARNING_KINDS = ("identical_to_reference", "constant_output", "type_accuracy_at_majority", "type_collapse")


@dataclass(frozen=True)
class GateSpec:
    max_drop: dict[str, float] = field(default_factory=dict)  # metric -> allowed drop (rise, for failure rates)
    max_drop_per_type: dict[str, float] = field(default_factory=dict)  # the same within each question type
    min_type_rows: int = MIN_TYPE_ROWS
    model: str = "tuned"  # the model of both reports that is gated
    rule: str = "point"  # what a limit means: RULES (eval/compare.py's docstring)
    require_improvement: bool = False  # also: beat the base model on each gated metric, p < alpha
    alpha: float = ALPHA
    unpaired: bool = False  # do not pair the rows (no intervals, no sensitivity)
    baseline_predictions: Path | None = None  # when they are not where the baseline report says
    candidate_predictions: Path | None = None  # when they are not where the candidate report says
    allow_different_data: bool = False
    regression_threshold: float = REGRESSION_THRESHOLD
    fail_on_warnings: bool = False  # the candidate report's warnings about the model fail the gate (exit 1)
    allowed_warnings: tuple[str, ...] = ()  # warning kinds shown but never failing the gate (--allow-warning)
    require_power: bool = False  # a limit below what the rows can detect is a misconfiguration (exit 2)

    def __post_init__(self):
        if not self.max_drop and not self.max_drop_per_type:
            raise ConfigError("nothing to gate: name metrics in --max-drop or --max-drop-per-type")
        if self.rule not in RULES:
            raise ConfigError(f"--rule: {self.rule!r} is not one of {', '.join(RULES)}")
        if not (math.isfinite(self.regression_threshold) and self.regression_threshold >= 0):
            raise ConfigError(f"--regression-threshold: {self.regression_threshold} is not a non-negative finite "
                              "number")
        if self.min_type_rows < 1:
            raise ConfigError(f"--min-type-rows: {self.min_type_rows} is not a positive number of rows")
        unknown = [kind for kind in self.allowed_warnings if kind not in WARNING_KINDS]
        if unknown:
            raise ConfigError(f"--allow-warning: {', '.join(unknown)} is not a warning kind ({', '.join(WARNING_KINDS)})")
        if not 0 < self.alpha < 1:
            raise ConfigError(f"alpha: {self.alpha} is not a probability between 0 and 1")

    @property
    def gated(self) -> list[str]:
        """Every metric gated, overall or per type, each once."""
        return list(dict.fromkeys([*self.max_drop, *self.max_drop_per_type]))


def parse_limits(text: str | None, option: str = "--max-drop") -> dict[str, float]:
    """`metric=number,...` as {metric: limit}; {} for None (the option not given); ConfigError naming the item."""
    if text is None:
        return {}
    allowed = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        try:
            limit = float(value)
        except ValueError:
            raise ConfigError(f"{option}: {item!r} is not metric=number") from None
        if not sep or not math.isfinite(limit) or limit < 0:
            raise ConfigError(f"{option}: {item!r} is not metric=non-negative finite number")
        allowed[name.strip()] = limit
    if not allowed:
        raise ConfigError(f"{option} names no metric")
    return allowed


def parse_kinds(text: str | None) -> tuple[str, ...]:
    """`kind,kind` (--allow-warning) as a tuple; () for None. GateSpec checks each is a WARNING_KINDS kind."""
    return tuple(filter(None, (kind.strip() for kind in (text or "").split(","))))
