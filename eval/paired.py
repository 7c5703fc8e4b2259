"""One model's predictions in two reports (a baseline and a candidate), matched row by row by id, for `compare`.

    rows = pair(baseline_predictions, candidate_predictions, "tuned", ["rougeL", "bleu"], tokenize="ko-mecab")
    rows.intervals(["rougeL"], samples, seed)                 # candidate minus baseline, 95% paired bootstrap
    rows.by_type(["rougeL"], [], samples, seed)              # per question type: both values and that interval
    rows.regressions(0.05)                                    # eval.html.regression_buckets of per-row ROUGE-L

Each side is scored once per row (eval.metrics.ExampleScores); a question type's numbers reduce its rows' values,
exactly as the score stage's per-type table does, so a metric that looks at every row (the labels the references
use) means the same on a type's rows as in the report.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from eval import metrics
from eval.html import regression_buckets
from eval.score import read_predictions
from pipeline import data
from pipeline.errors import DataError
from pipeline.identity import file_sha256

DIFFERENCE_METRIC = "rougeL"  # the per-row change that sorts rows into regressed / improved / unchanged


def predictions_of(report: dict, report_path: Path, given: Path | None) -> Path | None:
    """The report's predictions.jsonl: `given`, or where the report says (relative to the report), if its hash
    still matches and its references are the ones the report was scored against; None when it is not there."""
    path = Path(given) if given else Path(report_path).parent / report["predictions"]["path"]
    if not path.is_file():
        return None
    if file_sha256(path) != report["predictions"]["sha256"]:
        raise DataError(f"{path} is not the predictions file {report_path} was scored from (its sha256 differs)")
    # The score stage reads references from the data: after an edited reference was rescored, the references that
    # generation wrote into the file are not the report's, and pairing its rows would score them against old ones.
    if data.fingerprint(read_predictions(path)["base"], ("id", "input", "reference"))["sha256"] != \
            report["test_set"]["sha256"]:
        raise DataError(f"the references in {path} are not those {report_path} was scored against (a reference was "
                        "edited and rescored): compare with --unpaired, or regenerate the predictions")
    return path


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
        return metrics.paired_bootstrap(*self.scores, names, samples, seed, rows=rows) if names else {}

    def by_type(self, names: list[str], unpairable: list[str], samples: int, seed: int) -> list[tuple[str, int, dict]]:
        """Per question type: (label, rows, {metric: (baseline, candidate, 95% interval of the change)}), the
        interval resampling that type's rows alone (None for the metrics in `unpairable`)."""
        found = []
        for label, rows in self.types().items():
            before, after = self.values(names, rows)
            intervals = self.intervals([n for n in names if n not in unpairable], samples, seed, rows)
            found.append((label, len(rows), {
                n: (before[n], after[n], (intervals[n]["ci95_low"], intervals[n]["ci95_high"]) if n in intervals
                    else None) for n in names}))
        return found

    def regressions(self, threshold: float) -> dict:
        """The rows whose per-row ROUGE-L fell (rose) by more than `threshold`, worst (best) first."""
        before, after = (scores.values[DIFFERENCE_METRIC] for scores in self.scores)
        return {"metric": DIFFERENCE_METRIC, **regression_buckets(before, after, threshold, self.ids)}

    def shown(self, ids: list[str]) -> dict[str, dict]:
        """Rows `ids` as compare.html and the summary show them: input, reference, both outputs and scores."""
        where = {row_id: index for index, row_id in enumerate(self.ids)}
        before, after = (scores.values[DIFFERENCE_METRIC] for scores in self.scores)
        return {row_id: {"input": self.inputs[i], "reference": self.references[i],
                         "baseline": self.sides[0][i]["prediction"], "candidate": self.sides[1][i]["prediction"],
                         "baseline_score": float(before[i]), "candidate_score": float(after[i])}
                for row_id, i in ((row_id, where[row_id]) for row_id in ids)}


def pair(baseline_predictions: Path, candidate_predictions: Path, model: str, names: list[str],
         tokenize: str) -> PairedRows:
    """`model`'s rows of both files matched by id (DataError unless both hold the same ids), each side scored on
    the metrics `names` and ROUGE-L."""
    rows = [read_predictions(path)[model] for path in (baseline_predictions, candidate_predictions)]
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
