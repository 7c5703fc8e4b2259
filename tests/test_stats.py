"""eval/stats.py's sensitivity of a gate, and `entrypoint.py gate plan` on the committed baseline: every expected
number computed here from the closed form (standard error sd / sqrt(rows), detectable drop 2.487 standard errors,
rows needed rows x (detectable / limit)^2) on per-row values drawn or read here."""

import json
import math

import numpy as np
import pytest

from conftest import ROOT
from entrypoint import main
from eval import metrics, stats

BASELINE = ROOT / "examples" / "baseline-report.json"
PREDICTIONS = ROOT / "examples" / "baseline-predictions.jsonl"


def drawn(values: np.ndarray) -> metrics.ExampleScores:
    """ExampleScores of one made-up metric "x" whose per-row values are `values`, a mean of them (the closed form
    applies) and "x_corpus", the same values reduced by another function (the bootstrap standard error applies)."""
    x = metrics.Metric("x", metrics.HIGHER, lambda rows: np.array([f["x"] for f in rows.fields]), (None, None),
                       fields=("x",))
    corpus = metrics.Metric("x_corpus", metrics.HIGHER, x.per_example, (None, None), fields=("x",),
                            reduce=lambda v: float(np.sum(v) / len(v)))
    return metrics.ExampleScores(["?"] * len(values), ["?"] * len(values), fields=[{"x": v} for v in values],
                                 registry=(x, corpus))


@pytest.mark.parametrize("sd, rows", [(0.2, 400), (0.05, 2000), (1.0, 150)])
def test_standard_error_and_detectable_drop_match_the_closed_form(sd, rows):
    rng = np.random.default_rng(7)
    baseline = rng.uniform(0, 1, rows)
    noise = rng.normal(0, 1, rows)
    candidate = baseline - 0.01 + sd * (noise - noise.mean()) / noise.std(ddof=1)  # changes of standard deviation sd
    a, b = drawn(baseline), drawn(candidate)
    closed = sd / math.sqrt(rows)
    for name in ("x", "x_corpus"):  # the closed form's path and the bootstrap's
        error = stats.standard_error(a, b, name, samples=2000, seed=3)
        assert error == pytest.approx(closed, rel=0.05)
        assert stats.Sensitivity(rows, error, 0.01).detectable == pytest.approx(2.487 * closed, rel=0.05)


def test_a_limit_below_the_detectable_drop_names_the_rows_it_needs():
    sensitivity = stats.Sensitivity(60, 0.0157, 0.01)  # the example: 60 rows, detectable 0.039
    assert sensitivity.detectable == pytest.approx(0.039, abs=5e-4) and not sensitivity.visible
    assert sensitivity.rows_needed == math.ceil(60 * (2.487 * 0.0157 / 0.01) ** 2) == 915
    assert sensitivity.warning("rougeL") == ("rougeL: limit 0.01 is below what these 60 rows can detect (0.039); "
                                             "about 915 rows would")
    assert stats.Sensitivity(60, 0.0157, 0.04).visible and stats.Sensitivity(60, 0.0, 0.0).visible
    assert stats.Sensitivity(60, 0.0157, 0.0).rows_needed is None  # no number of rows sees a zero limit


def plan_line(out: str, metric: str, label: str) -> list[str]:
    """The cells after metric and question type of the plan's row: limit, rows, se, detectable, rows needed,
    split rows needed."""
    line = next(line for line in out.splitlines() if line.startswith(metric + " ") and f" {label} " in line)
    return line.split(label, 1)[1].split()


def committed_rougeL() -> tuple[dict[str, np.ndarray], list[str]]:
    """Per-row ROUGE-L of base and tuned on the committed 60 rows, recomputed from the predictions, and the
    references."""
    report = json.loads(BASELINE.read_text(encoding="utf-8"))
    rows = [json.loads(line) for line in PREDICTIONS.read_text(encoding="utf-8").splitlines()]
    texts = {m: [r["prediction"] for r in rows if r["model"] == m] for m in ("base", "tuned")}
    references = [r["reference"] for r in rows if r["model"] == "base"]
    return {m: metrics.ExampleScores(t, references, report["metric_settings"]["tokenize"],
                                     registry=(metrics.metric("rougeL"),)).values["rougeL"]
            for m, t in texts.items()}, references


def closed_form(per_row: dict[str, np.ndarray], indices: np.ndarray, limit: float) -> tuple[float, float, int]:
    """Standard error, detectable drop and rows needed of `limit`, from the tuned-minus-base changes on `indices`."""
    changes = (per_row["tuned"] - per_row["base"])[indices]
    error = changes.std(ddof=1) / math.sqrt(len(indices))
    return error, 2.487 * error, math.ceil(len(indices) * (2.487 * error / limit) ** 2)


def test_the_committed_baseline_against_itself_shows_the_sensitivity_of_its_own_spread(capsys):
    """Identical outputs have no spread of their own: the gate says what a 0.01 limit can see by the spread of the
    candidate's tuned minus base (marked *, named in the warning), the closed form's numbers."""
    per_row, _ = committed_rougeL()
    error, detectable, needed = closed_form(per_row, np.arange(60), 0.01)
    assert main(["compare", "--baseline", str(BASELINE), "--baseline-predictions", str(PREDICTIONS),
                 "--candidate", str(BASELINE), "--candidate-predictions", str(PREDICTIONS),
                 "--max-drop", "rougeL=0.01"]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("rougeL drop")).split()
    assert line[-5:] == ["0.0100", f"{error:.4f}*", f"{detectable:.4f}*", "point", "ok"]
    assert (f"WARNING (sensitivity): rougeL: limit 0.01 is below what these 60 rows can detect ({detectable:.3f}) "
            f"(by the spread of tuned - base: the candidate changed no row's score); about {needed:,} rows would") \
        in out
    assert out.splitlines()[-1] == "PASSED"


def test_gate_plan_on_the_committed_baseline_prints_the_closed_form(capsys):
    """Without a candidate: the spread of tuned minus base over the committed 60 rows, said to be an upper
    bound. ROUGE-L per row recomputed here from the predictions; the plan's numbers are the closed form's."""
    per_row, references = committed_rougeL()
    assert main(["gate", "plan", "--baseline", str(BASELINE), "--baseline-predictions", str(PREDICTIONS),
                 "--max-drop", "rougeL=0.01", "--max-drop-per-type", "rougeL=0.05"]) == 0
    out = capsys.readouterr().out
    assert "tuned minus base" in out and "upper bound" in out

    error, detectable, needed = closed_form(per_row, np.arange(60), 0.01)
    assert plan_line(out, "rougeL", "(all rows)") == ["0.01", "60", f"{error:.4f}", f"{detectable:.4f}",
                                                      f"{needed:,}", f"{needed:,}"]
    assert 800 < needed < 1200  # the estimate: about 920 rows for a 0.01 limit on this spread
    largest = metrics.type_groups(references)
    label, indices = next(iter(largest.items()))
    error, detectable, needed = closed_form(per_row, np.array(indices), 0.05)
    split = math.ceil(max(needed, 30) / (len(indices) / 60))  # at the type's share, and at least 30 of its rows
    assert plan_line(out, "rougeL", label) == ["0.05", str(len(indices)), f"{error:.4f}", f"{detectable:.4f}",
                                               f"{needed:,}", f"{split:,}"]


def test_gate_plan_needs_the_predictions(capsys):
    assert main(["gate", "plan", "--baseline", str(BASELINE), "--max-drop", "rougeL=0.01"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--baseline-predictions" in err
