"""One model's predictions in two reports (a baseline and a candidate), matched row by row by id, for `compare`.

    rows = pair(baseline_predictions, candidate_predictions, "tuned", ["rougeL", "bleu"], tokenize="ko-mecab")
    rows.intervals(["rougeL"], samples, seed)                 # candidate minus baseline, 95% paired bootstrap
    rows.sensitivities({"rougeL": 0.01}, samples, seed)       # the change's standard error, the drop it catches
    rows.by_type({"rougeL": 0.05}, [], samples, seed)         # per question type: both values, interval, sensitivity
    rows.regressions(0.05)                                    # eval.stats.regression_buckets of per-row ROUGE-L

Each side is scored once per row (eval.metrics.ExampleScores); a question type's numbers reduce its rows' values,
exactly as the score stage's per-type table does, so a metric that looks at every row (the labels the references
use) means the same on a type's rows as in the report.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from eval import metrics, stats
from eval.predictions import read_predictions
from pipeline.errors import DataError

DIFFERENCE_METRIC = "rougeL"  # the per-row change that sorts rows into regressed / improved / unchanged


@dataclass
class PairedRows:
    """The matched rows in the candidate's order: ids, inputs and references, each side's rows as
    predictions.jsonl has them, and each side's per-example scores."""

    ids: list[str]
    inputs: list[str]
    references: list[str]
    sides: tuple[list[dict], list[dict]]  # (baseline rows, candidate rows)
    scores: tuple[metrics.ExampleScores, metrics.ExampleScores]

    def types(self) -> dict[str, list[int]]:
        """Row indices by the reference's "(type)" label (NO_LABEL without one), the largest type first."""
        return metrics.type_groups(self.references)

    def values(self, names: list[str], rows: list[int] | None = None) -> tuple[dict, dict]:
        """Each side's metrics `names` over `rows` (default: all rows)."""
        baseline, candidate = (scores.metrics(rows) for scores in self.scores)
        return {n: baseline[n] for n in names}, {n: candidate[n] for n in names}

    def intervals(self, names: list[str], samples: int, seed: int, rows: list[int] | None = None) -> dict:
        """Candidate minus baseline per metric, with its 95% paired-bootstrap interval, over `rows` (default: all)."""
        return stats.paired_bootstrap(*self.scores, names, samples, seed, rows=rows) if names else {}

    def sensitivities(self, limits: dict[str, float], samples: int, seed: int,
                      rows: list[int] | None = None) -> dict[str, stats.Sensitivity]:
        """Per metric: what a gate with its limit sees over `rows` (default: all): the standard error of the
        candidate-minus-baseline change, the smallest drop caught, the rows the limit needs (eval/stats.py)."""
        count = len(self.ids) if rows is None else len(rows)
        return {name: stats.Sensitivity(count, stats.standard_error(*self.scores, name, samples, seed, rows), limit)
                for name, limit in limits.items()}

    def by_type(self, limits: dict[str, float], unpairable: list[str], samples: int,
                seed: int) -> list[tuple[str, int, dict]]:
        """Per question type: (label, rows, {metric: (baseline, candidate, 95% interval of the change,
        sensitivity)}), the interval and sensitivity resampling that type's rows alone (no interval for the metrics
        in `unpairable`)."""
        found = []
        for label, rows in self.types().items():
            names = list(limits)
            before, after = self.values(names, rows)
            intervals = self.intervals([n for n in names if n not in unpairable], samples, seed, rows)
            sensitivities = self.sensitivities(limits, samples, seed, rows)
            found.append((label, len(rows), {
                n: (before[n], after[n], (intervals[n]["ci95_low"], intervals[n]["ci95_high"]) if n in intervals
                    else None, sensitivities[n]) for n in names}))
        return found

    def regressions(self, threshold: float) -> dict:
        """The rows whose per-row ROUGE-L fell (rose) by more than `threshold`, worst (best) first."""
        before, after = (scores.values[DIFFERENCE_METRIC] for scores in self.scores)
        return {"metric": DIFFERENCE_METRIC, **stats.regression_buckets(before, after, threshold, self.ids)}

    def shown(self, ids: list[str]) -> dict[str, dict]:
        """Rows `ids` as compare.html and the summary show them: input, reference, both outputs and scores."""
        where = {row_id: index for index, row_id in enumerate(self.ids)}
        before, after = (scores.values[DIFFERENCE_METRIC] for scores in self.scores)
        return {row_id: {"input": self.inputs[i], "reference": self.references[i],
                         "baseline": self.sides[0][i]["prediction"], "candidate": self.sides[1][i]["prediction"],
                         "baseline_score": float(before[i]), "candidate_score": float(after[i])}
                for row_id, i in ((row_id, where[row_id]) for row_id in ids)}


def pair(baseline_predictions: Path, candidate_predictions: Path, model: str, names: list[str],
         tokenize: str, baseline_model: str | None = None) -> PairedRows:
    """`model`'s rows of both files (on the baseline side `baseline_model`'s, default the same model: `gate plan`
    pairs a report's tuned model with its base) matched by id (DataError unless both hold the same ids), each side
    scored on the metrics `names` and ROUGE-L."""
    rows = [read_predictions(path)[which] for path, which in ((baseline_predictions, baseline_model or model),
                                                              (candidate_predictions, model))]
    by_id = {row["id"]: row for row in rows[0]}
    if sorted(by_id) != sorted(row["id"] for row in rows[1]):
        raise DataError(f"{baseline_predictions} and {candidate_predictions} do not hold the same rows of {model}")
    candidate = rows[1]
    baseline = [by_id[row["id"]] for row in candidate]
    references = [row["reference"] for row in baseline]
    registry = tuple(metrics.metric(name) for name in dict.fromkeys([*names, DIFFERENCE_METRIC]))
    scores = tuple(metrics.ExampleScores([row["prediction"] for row in side], references, tokenize, fields=side,
                                         registry=registry) for side in (baseline, candidate))
    return PairedRows([row["id"] for row in candidate], [row["input"] for row in baseline], references,
                      (baseline, candidate), scores)
