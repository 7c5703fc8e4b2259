"""`compare`: the overall gate and its rules, the per-question-type gate, the rows that regressed between baseline
and candidate (summary and compare.html), and reading reports of schema 3.0 and 3.1.

The reports come from the real score stage over predictions written here (test_report.scored_run); every
expected number is computed by hand from how the predictions were made: an output equal to its reference has
ROUGE-L 1, an empty output 0.
"""

import hashlib
import json
import math
import random
import re

import numpy as np
import pytest

from conftest import ROOT, korean_rows
from entrypoint import main
from eval import metrics, report_reader, stats
from eval import report as report_module
from eval.report_view import signed
from test_report import WRONG, read, scored_run, two_thirds_right

# 100 test rows over five question types of very different sizes (as the real split's range from 35% to < 1%).
TYPE_ROWS = {"이유와 근거 묻기": 45, "의미 명확히 하기": 35, "함의와 결과 따져보기": 12, "다른 관점 생각하기": 5,
             "가정 살펴보기": 3}
LABELS = [label for label, n in TYPE_ROWS.items() for _ in range(n)]
random.Random(0).shuffle(LABELS)
ROWS = [{"input": row["input"] + " 버스가 늘면 교통 체증도 줄어든다고 한다.", "target": f"({label}) {i}번 주장에서 말하는 깨끗함은 무엇을 뜻하나요?"}
        for i, (row, label) in enumerate(zip(korean_rows(len(LABELS)), LABELS))]
BIG, SMALL, LARGEST = "의미 명확히 하기", "가정 살펴보기", "이유와 근거 묻기"
ROWS_OF = {label: [i for i, row_label in enumerate(LABELS) if row_label == label] for label in TYPE_ROWS}
MISSED = set(ROWS_OF[LARGEST][:5])  # empty in the baseline, right in candidate A: improved
BROKEN_BIG = set(ROWS_OF[BIG][:10])  # right in the baseline, empty in candidate A: 10 of the big type's 35 rows
HALF_RIGHT = set(ROWS_OF[LARGEST][10:12])  # the label dropped in candidate A: partly worse


def question_only(reference: str) -> str:
    return reference.split(") ", 1)[1]


def baseline_tuned(i, reference):
    return "" if i in MISSED else reference


def candidate_one_type(i, reference):
    """Regresses the big type (10 of 35 rows) and the small type (all 3 rows); fixes MISSED; drops two labels."""
    if i in BROKEN_BIG or i in ROWS_OF[SMALL]:
        return ""
    return question_only(reference) if i in HALF_RIGHT else reference


def candidate_small_type_only(i, reference):
    return "" if i in ROWS_OF[SMALL] else baseline_tuned(i, reference)


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    return {name: scored_run(root / name, tuned, rows=ROWS)[1] for name, tuned in
            (("baseline", baseline_tuned), ("one_type", candidate_one_type), ("small_type", candidate_small_type_only))}


def gate(baseline, candidate, *args):
    return main(["compare", "--baseline", str(baseline), "--candidate", str(candidate), *args])


def type_line(out: str, label: str) -> list[str]:
    """The cells after the label of the type's row in the text table: rows, metric, baseline, candidate, change,
    interval ("n/a" or two cells), limit, result."""
    return next(line for line in out.splitlines() if line.startswith(label))[len(label):].split()


def test_a_type_that_regresses_fails_its_gate_while_the_average_passes(reports, capsys):
    """The acceptance case: overall ROUGE-L falls from 0.95 to 0.85 and a bit (the two half-right rows), within
    0.15; the big type falls from 1.0 to 25/35, beyond its 0.05."""
    args = ["--max-drop", "rougeL=0.15"]
    assert gate(reports["baseline"], reports["one_type"], *args) == 0  # the overall gate alone passes
    capsys.readouterr()
    assert gate(reports["baseline"], reports["one_type"], *args, "--max-drop-per-type", "rougeL=0.05",
                "--min-type-rows", "30") == 1
    out = capsys.readouterr().out
    assert next(line for line in out.splitlines() if line.startswith("rougeL drop")).split()[-1] == "ok"
    assert type_line(out, BIG)[:5] == ["35", "rougeL", "1.0000", f"{25 / 35:.4f}", f"{25 / 35 - 1:+.4f}"]
    assert type_line(out, BIG)[-1] == "REGRESSED"
    assert type_line(out, LARGEST)[:3] == ["45", "rougeL", f"{40 / 45:.4f}"] and type_line(out, LARGEST)[-1] == "ok"
    # three rows, all regressed, but too few to judge: shown, not gated
    assert type_line(out, SMALL)[:4] == ["3", "rougeL", "1.0000", "0.0000"]
    assert out.count("too few rows to judge (< 30)") == 3  # the types of 12, 5 and 3 rows


def test_a_type_under_min_type_rows_is_not_gated(reports, capsys):
    args = ["--max-drop", "rougeL=0.15", "--max-drop-per-type", "rougeL=0.05"]
    assert gate(reports["baseline"], reports["small_type"], *args) == 0
    assert "too few rows to judge (< 30)" in " ".join(type_line(capsys.readouterr().out, SMALL))
    assert gate(reports["baseline"], reports["small_type"], *args, "--min-type-rows", "3") == 1
    assert type_line(capsys.readouterr().out, SMALL)[-1] == "REGRESSED"


@pytest.mark.parametrize("rule", ["significant", "non-inferior"])
def test_the_interval_of_a_type_resamples_its_rows_alone(reports, capsys, rule):
    """Under the interval rules a type's interval is the paired bootstrap over that type's rows: the same as
    scoring those 35 rows on their own, with the candidate report's samples and seed."""
    assert gate(reports["baseline"], reports["one_type"], "--max-drop-per-type", "rougeL=0.05", "--rule", rule) == 1
    line = " ".join(type_line(capsys.readouterr().out, BIG))
    rows = ROWS_OF[BIG]
    references = [ROWS[i]["target"] for i in rows]
    a, b = (metrics.ExampleScores([tuned(i, ROWS[i]["target"]) for i in rows], references)
            for tuned in (baseline_tuned, candidate_one_type))
    settings = json.loads(reports["one_type"].read_text(encoding="utf-8"))["config"]["score"]
    alone = stats.paired_bootstrap(a, b, ["rougeL"], settings["bootstrap_samples"], settings["seed"])["rougeL"]
    assert alone["ci95_high"] < 0 and f"[{alone['ci95_low']:+.4f}, {alone['ci95_high']:+.4f}]" in line
    assert line.endswith("REGRESSED")


def test_without_predictions_the_point_rule_reads_the_per_type_tables(reports, tmp_path, capsys):
    moved = tmp_path / "baseline.json"  # a committed baseline without its predictions
    moved.write_bytes(reports["baseline"].read_bytes())
    args = ["--max-drop-per-type", "rougeL=0.05"]
    assert gate(moved, reports["one_type"], *args) == 1
    out = capsys.readouterr().out
    assert type_line(out, BIG)[:6] == ["35", "rougeL", "1.0000", f"{25 / 35:.4f}", f"{25 / 35 - 1:+.4f}", "n/a"]
    assert "no intervals: the predictions of" in out and "rows by per-row" not in out
    assert gate(moved, reports["one_type"], *args, "--rule", "significant") == 2
    assert "needs the paired interval" in capsys.readouterr().err
    assert gate(moved, reports["one_type"], "--max-drop-per-type", "rouge1=0.05") == 2  # not in the per-type table
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no per-type rouge1" in err


def test_regression_buckets_match_a_hand_count_and_the_summary_lists_the_worst(reports, capsys):
    assert gate(reports["baseline"], reports["one_type"], "--max-drop", "rougeL=0.15", "--format", "markdown") == 0
    out = capsys.readouterr().out
    fully = sorted(BROKEN_BIG | set(ROWS_OF[SMALL]))  # 1 -> 0: the worst, in row order
    assert len(fully) == 13 and len(HALF_RIGHT) == 2 and len(MISSED) == 5
    assert "15 regressed, 5 improved, 80 unchanged" in out
    listed = [line.split("`")[1] for line in out.splitlines() if line.startswith("| `test:")]
    assert listed == [f"test:{i}" for i in fully[:10]]  # the ten worst, worst first
    first = ROWS[fully[0]]
    assert (f"| `test:{fully[0]}` | -1.0000 | {first['input'][:59]}… | {first['target']} | {first['target']} | "
            "(empty) |") in out
    assert gate(reports["baseline"], reports["one_type"], "--max-drop", "rougeL=0.15") == 0  # the text format
    out = capsys.readouterr().out
    assert "15 regressed, 5 improved, 80 unchanged" in out and f"worst regressed: test:{fully[0]} -1.0000," in out
    # a change of exactly the threshold is no change: at 1.0 nothing moved
    assert gate(reports["baseline"], reports["one_type"], "--max-drop", "rougeL=0.15",
                "--regression-threshold", "1") == 0
    assert "0 regressed, 0 improved, 100 unchanged" in capsys.readouterr().out


def test_compare_html_holds_the_checks_the_types_and_the_worst_rows(reports, tmp_path, capsys):
    path = tmp_path / "gate" / "compare.html"
    assert gate(reports["baseline"], reports["one_type"], "--max-drop", "rougeL=0.15", "--max-drop-per-type",
                "rougeL=0.05", "--html", str(path)) == 1
    page = path.read_text(encoding="utf-8")
    assert "FAILED" in page and "<table id=type-checks>" in page and page.count("too few rows to judge") == 3
    shown = re.findall(r'<article class=row id="row-test:(\d+)"', page)
    fully = sorted(BROKEN_BIG | set(ROWS_OF[SMALL]))
    assert shown[:13] == [str(i) for i in fully] and set(shown[13:]) == {str(i) for i in HALF_RIGHT}
    assert "15 regressed, 5 improved, 80 unchanged" in page and ROWS[fully[0]]["input"] in page
    assert not [p for p in path.parent.iterdir() if p.name != "compare.html"]  # written through a temporary file
    capsys.readouterr()


@pytest.mark.parametrize("value", ["rougeL=nan", "rougeL=inf", "rougeL=-0.1", "rougeL", "rougeL=x", "", ",",
                                   "rouge_typo=0.1", "mean_chars=1"])
def test_bad_per_type_limits_are_exit_2_naming_the_option(reports, capsys, value):
    assert gate(reports["baseline"], reports["one_type"], "--max-drop-per-type", value) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--max-drop-per-type" in err


@pytest.mark.parametrize("args, says", [(["--min-type-rows", "0"], "--min-type-rows"),
                                        (["--regression-threshold", "nan"], "--regression-threshold"),
                                        (["--regression-threshold", "-1"], "--regression-threshold"),
                                        ([], "nothing to gate")])
def test_bad_gate_options_are_exit_2(reports, capsys, args, says):
    limits = ["--max-drop", "rougeL=0.1"] if args else []
    assert gate(reports["baseline"], reports["one_type"], *limits, *args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and says in err


def test_exit_codes_through_the_command_line(reports, capsys):
    """0: nothing regressed; 1: a regression; 2: the user's error (here a metric no report has)."""
    codes = [gate(reports["baseline"], reports["baseline"], "--max-drop", "rougeL=0"),
             gate(reports["baseline"], reports["one_type"], "--max-drop", "rougeL=0.01"),
             gate(reports["baseline"], reports["one_type"], "--max-drop", "bleurt=0.01")]
    assert codes == [0, 1, 2]
    assert "unknown metric 'bleurt'" in capsys.readouterr().err


# --- sensitivity and the verdict line ---------------------------------------------------------------------------

def small_type_sensitivity(limit: float) -> tuple[float, float, int]:
    """The closed form for candidate small_type against the baseline: per-row ROUGE-L changes of -1 on the small
    type's 3 rows (right in the baseline, empty in the candidate) and 0 on the other 97, a known standard deviation;
    the standard error sd / sqrt(100), the detectable drop 2.487 of them, and the rows `limit` needs."""
    changes = np.zeros(len(ROWS))
    changes[ROWS_OF[SMALL]] = -1.0
    error = changes.std(ddof=1) / math.sqrt(len(ROWS))
    return error, 2.487 * error, math.ceil(len(ROWS) * (2.487 * error / limit) ** 2)


def check_line(out: str, name: str) -> list[str]:
    return next(line for line in out.splitlines() if line.startswith(name)).split()


def test_the_sensitivity_matches_the_closed_form_and_a_limit_below_it_warns(reports, capsys):
    error, detectable, needed = small_type_sensitivity(0.01)
    known = math.sqrt(0.03 * 0.97) / math.sqrt(100)  # the population sd of the changes, sqrt(p (1 - p))
    assert gate(reports["baseline"], reports["small_type"], "--max-drop", "rougeL=0.01") == 1
    out = capsys.readouterr().out
    cells = check_line(out, "rougeL drop")  # ..., limit, se, detectable, rule, result
    assert cells[-5] == "0.0100" and cells[-2:] == ["point", "REGRESSED"]
    assert float(cells[-4]) == pytest.approx(known, rel=0.05) and float(cells[-4]) == pytest.approx(error, abs=5e-5)
    assert float(cells[-3]) == pytest.approx(2.487 * known, rel=0.05)
    assert (f"WARNING (sensitivity): rougeL: limit 0.01 is below what these 100 rows can detect ({detectable:.3f}); "
            f"about {needed:,} rows would") in out
    assert out.splitlines()[-1] == "FAILED: rougeL drop REGRESSED"  # the verdict, last
    # a limit at or above the detectable drop: no warning, and the verdict line on a pass
    assert gate(reports["baseline"], reports["small_type"], "--max-drop", "rougeL=0.05") == 0
    out = capsys.readouterr().out
    assert "WARNING (sensitivity)" not in out and out.splitlines()[-1] == "PASSED"


def test_require_power_exits_2_only_for_a_limit_below_the_detectable_drop(reports, capsys):
    _, detectable, needed = small_type_sensitivity(0.01)
    assert gate(reports["baseline"], reports["small_type"], "--max-drop", "rougeL=0.01", "--require-power") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--require-power: rougeL: limit 0.01" in err and f"about {needed:,} rows" in err
    # at 0.05 (above 0.042) the gate is powered: the verdict decides, as without the flag
    assert gate(reports["baseline"], reports["small_type"], "--max-drop", "rougeL=0.05", "--require-power") == 0
    assert gate(reports["baseline"], reports["small_type"], "--max-drop", "rougeL=0.02") == 1  # a drop of 0.03
    assert gate(reports["baseline"], reports["small_type"], "--max-drop", "rougeL=0.045", "--require-power") == 0
    capsys.readouterr()


def test_every_format_says_the_verdict_and_the_sensitivity(reports, tmp_path, capsys):
    _, detectable, needed = small_type_sensitivity(0.01)
    path = tmp_path / "compare.html"
    assert gate(reports["baseline"], reports["small_type"], "--max-drop", "rougeL=0.01", "--format", "markdown",
                "--html", str(path)) == 1
    captured = capsys.readouterr()
    assert "error:" not in captured.err  # a failed gate is a verdict, not an error
    lines = captured.out.splitlines()
    assert lines[-1] == "**FAILED**: rougeL drop REGRESSED"
    assert f"- WARNING (sensitivity): rougeL: limit 0.01 is below what these 100 rows can detect ({detectable:.3f})" \
        in captured.out
    header = next(line for line in lines if line.startswith("| check |"))
    assert "| limit | se | detectable | rule | result |" in header
    page = path.read_text(encoding="utf-8")
    assert "<th>detectable</th>" in page and f"about {needed:,} rows would" in page
    assert "<li>rougeL drop REGRESSED</li>" in page


def test_an_improvement_check_has_no_limit_and_its_p_value_is_its_rule(reports, capsys):
    assert gate(reports["baseline"], reports["baseline"], "--max-drop", "rougeL=0.05", "--require-improvement") == 0
    line = " ".join(check_line(capsys.readouterr().out, "rougeL vs base"))
    assert "0.0500" not in line and " — — — better than base: p " in line and "(< 0.05 needed)" in line


def test_a_change_that_rounds_to_zero_has_one_sign():
    assert [signed(v) for v in (-1e-9, 0.0, -0.0, 1e-9, -0.00005, 0.25)] == [
        "+0.0000", "+0.0000", "+0.0000", "+0.0000", "-0.0001", "+0.2500"]


# --- schema versions --------------------------------------------------------------------------------------------

# The top-level keys of a schema 3.0 report (its schema's "required"): a 3.0 report has these and nothing else.
KEYS_3_0 = ("schema_version", "created_at", "config", "inputs_hash", "test_set", "metric_settings", "predictions",
            "provenance", "stage_seconds", "rows", "models", "reference", "metrics", "deltas", "per_type",
            "checkpoints", "train", "adapter", "generate", "examples")


def as_version(report: dict, version: str) -> dict:
    """`report` as the score stage of schema `version` would have written it: the version in the report and in
    its metric settings, whose fingerprint covers it; a 3.0 report has only 3.0's blocks."""
    result = {k: v for k, v in report.items() if version != "3.0" or k in KEYS_3_0}
    settings = {k: v for k, v in report["metric_settings"].items() if k != "fingerprint"} | {"schema_version": version}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode("utf-8")).hexdigest()[:16]
    return {**result, "schema_version": version, "metric_settings": {**settings, "fingerprint": digest}}


def test_a_3_0_baseline_compares_with_a_3_1_candidate(reports, capsys):
    """Different fingerprints only because of the version: comparable, paired. A metric the 3.0 report lacks is
    "—" when not gated and exit 2 naming it and the version when gated."""
    baseline, candidate = (json.loads(reports[name].read_text(encoding="utf-8")) for name in ("baseline", "one_type"))
    old, new = as_version(baseline, "3.0"), as_version(candidate, "3.1")
    for model in old["metrics"]:
        del old["metrics"][model]["chrfpp"]  # as a metric 3.1 added
    paths = {"old": reports["baseline"].with_name("report-3.0.json"), "new": reports["one_type"].with_name("3.1.json")}
    for name, report in (("old", old), ("new", new)):
        paths[name].write_text(json.dumps(report, ensure_ascii=False), encoding="utf-8")
    assert gate(paths["old"], paths["new"], "--max-drop", "rougeL=0.15", "--max-drop-per-type", "rougeL=0.05") == 1
    out = capsys.readouterr().out
    assert "paired: 100 rows matched by id" in out and type_line(out, BIG)[-1] == "REGRESSED"
    assert next(line for line in out.splitlines() if line.startswith("chrfpp")).split() == [
        "chrfpp", "—", f"{candidate['metrics']['tuned']['chrfpp']:.4f}", "—"]
    for option in ("--max-drop", "--max-drop-per-type"):
        assert gate(paths["old"], paths["new"], option, "chrfpp=0.5") == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{option}: chrfpp is not in the baseline report" in err and "schema 3.0" in err
    assert gate(paths["new"], paths["new"], "--max-drop", "rougeL=0") == 0
    capsys.readouterr()
    # other settings still refuse, whatever the versions
    other = as_version({**candidate, "metric_settings": {**candidate["metric_settings"], "tokenize": "char"}}, "3.1")
    paths["new"].write_text(json.dumps(other, ensure_ascii=False), encoding="utf-8")
    assert gate(paths["old"], paths["new"], "--max-drop", "rougeL=0.15") == 2
    assert "different metric settings" in capsys.readouterr().err
    for version in ("2.0", "3.2"):
        paths["new"].write_text(json.dumps({**new, "schema_version": version}), encoding="utf-8")
        assert gate(paths["old"], paths["new"], "--max-drop", "rougeL=0.15") == 2
        assert f"schema version '{version}'" in capsys.readouterr().err


def test_the_committed_baseline_report_is_readable(capsys):
    assert report_reader.load_report(ROOT / "examples" / "baseline-report.json")["schema_version"] in (
        report_reader.READABLE_VERSIONS)
    baseline = ROOT / "examples" / "baseline-report.json"
    assert gate(baseline, baseline, "--max-drop", "rougeL=0", "--max-drop-per-type", "rougeL=0", "--min-type-rows",
                "10", "--baseline-predictions", str(ROOT / "examples" / "baseline-predictions.jsonl")) == 0
    out = capsys.readouterr().out
    assert "no intervals: the predictions of" in out  # the candidate's are not beside it
    assert "question type" in out and "+0.0000" in out


# --- the overall gate (moved from test_report.py: its score runs are half of that file's time) ----------------

@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    return scored_run(tmp_path_factory.mktemp("out"), two_thirds_right)


@pytest.fixture(scope="module")
def scored_again(tmp_path_factory):
    """A second run with the same predictions as `scored`, scored on its own."""
    return scored_run(tmp_path_factory.mktemp("again"), two_thirds_right)


@pytest.mark.parametrize("rule", ["point", "significant", "non-inferior"])
def test_an_identical_candidate_passes_under_every_rule(scored, scored_again, capsys, rule):
    _, candidate = scored_again
    assert gate(scored[1], candidate, "--max-drop", "rougeL=0,bleu=0,empty_rate=0", "--rule", rule) == 0
    out = capsys.readouterr().out
    assert "REGRESSED" not in out and out.count("[+0.0000, +0.0000]") == 3 and out.count(f" {rule} ") == 3
    assert f"rule: {rule}:" in out and "paired: 40 rows matched by id" in out


def test_a_real_drop_fails_under_every_rule_and_noise_only_under_point_and_non_inferior(scored, tmp_path, capsys):
    _, worse = scored_run(tmp_path / "worse", lambda i, ref: ref if i % 3 == 1 else WRONG)  # a third right
    for rule in ("point", "significant", "non-inferior"):
        assert gate(scored[1], worse, "--max-drop", "rougeL=0.01", "--rule", rule) == 1
        assert "REGRESSED" in capsys.readouterr().out
    # one row of 40 worse: a drop beyond the limit, but within the noise of 40 rows
    _, noisy = scored_run(tmp_path / "noisy", lambda i, ref: WRONG if i == 1 else two_thirds_right(i, ref))
    assert gate(scored[1], noisy, "--max-drop", "rougeL=0.01") == 1  # the default rule enforces the limit as written
    assert "REGRESSED" in capsys.readouterr().out
    assert gate(scored[1], noisy, "--max-drop", "rougeL=0.01", "--rule", "significant") == 0
    assert gate(scored[1], noisy, "--max-drop", "rougeL=0.01", "--rule", "non-inferior") == 1
    assert gate(scored[1], noisy, "--max-drop", "rougeL=0.01", "--unpaired") == 1
    assert "no intervals: --unpaired" in capsys.readouterr().out
    assert gate(scored[1], noisy, "--max-drop", "rougeL=0.01", "--unpaired", "--rule", "significant") == 2
    assert "needs the paired interval" in capsys.readouterr().err


def test_a_rise_of_a_lower_is_better_metric_fails(scored, tmp_path, capsys):
    _, emptier = scored_run(tmp_path / "emptier", lambda i, ref: "" if i < 20 else two_thirds_right(i, ref))
    for rule in ("point", "significant", "non-inferior"):
        assert gate(scored[1], emptier, "--max-drop", "empty_rate=0", "--rule", rule) == 1
    assert "empty_rate" in capsys.readouterr().out
    assert gate(scored[1], emptier, "--max-drop", "empty_rate=0", "--unpaired") == 1
    assert gate(emptier, scored[1], "--max-drop", "empty_rate=0") == 0  # fewer empty rows is no regression
    assert gate(emptier, scored[1], "--max-drop", "empty_rate=0", "--rule", "non-inferior") == 0
    assert gate(scored[1], emptier, "--max-drop", "mean_chars=1") == 2
    assert "no better direction" in capsys.readouterr().err


@pytest.mark.parametrize("limit", ["nan", "inf", "-0.1", "x"])
def test_a_limit_must_be_a_finite_non_negative_number(scored, capsys, limit):
    assert gate(scored[1], scored[1], "--max-drop", f"rougeL={limit}") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "rougeL=" in err


def test_a_report_without_a_metric_is_compared_by_name(scored, tmp_path, capsys):
    """A report made before a metric was added (here: without chrfpp): gating that metric is exit 2 naming it and
    the report, never a KeyError; any other gate runs, and every table shows "—" for the missing values."""
    old = read(scored[1])
    for model in old["metrics"]:
        del old["metrics"][model]["chrfpp"]
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert gate(tmp_path / "old.json", scored[1], "--max-drop", "chrfpp=0.5") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "chrfpp is not in the baseline report" in err
    assert gate(scored[1], tmp_path / "old.json", "--max-drop", "chrfpp=0.5") == 2
    assert "chrfpp is not in the candidate report" in capsys.readouterr().err
    tuned = f"{read(scored[1])['metrics']['tuned']['chrfpp']:.4f}"
    for args in ((), ("--format", "markdown")):
        assert gate(tmp_path / "old.json", scored[1], "--max-drop", "rougeL=0.5", *args) == 0
        lines = capsys.readouterr().out.splitlines()
        assert next(line for line in lines if line.strip("| ").startswith("chrfpp")).split() == (
            ["|", "chrfpp", "|", "—", "|", tuned, "|", "—", "|"] if args else ["chrfpp", "—", tuned, "—"])
        assert "—" not in next(line for line in lines if line.strip("| ").startswith("rouge1 "))
    summary = report_module.summary_table(old).splitlines()
    assert next(line for line in summary if line.startswith("chrfpp")).split() == ["chrfpp", "—", "—"]
    assert "| chrfpp |" not in report_module.markdown(old)  # a metric no model has is not listed
    partial = read(scored[1])
    del partial["metrics"]["tuned"]["chrfpp"]
    assert f"| chrfpp | {partial['metrics']['base']['chrfpp']:.4f} | — (—) |" in report_module.markdown(partial)


def test_the_rules_on_the_committed_baseline_predictions(tmp_path, capsys):
    """The case that passed the old gate: 24 of the 60 demo rows revert to the base model's output and 3 others
    improve. The drop is several times the limit, but on 60 rows its 95% interval still reaches zero: the limit
    as written (point) and non-inferiority fail it; only `significant` lets it through. Identical predictions pass
    all three."""
    rows = [json.loads(line) for line in (ROOT / "examples" / "baseline-predictions.jsonl").read_text().splitlines()]
    base = [r["prediction"] for r in rows if r["model"] == "base"]
    tuned = [r["prediction"] for r in rows if r["model"] == "tuned"]
    test = [{"input": r["input"], "target": r["reference"]} for r in rows if r["model"] == "base"]
    reverted = set(range(0, 48, 2))  # 24 rows
    improved = {49, 53, 57}
    candidate_tuned = [test[i]["target"] if i in improved else base[i] if i in reverted else tuned[i]
                       for i in range(len(test))]
    settings = {"base": lambda i, ref: base[i], "rows": test, "bootstrap_samples": 1000}
    _, baseline = scored_run(tmp_path / "baseline", lambda i, ref: tuned[i], **settings)
    _, candidate = scored_run(tmp_path / "candidate", lambda i, ref: candidate_tuned[i], **settings)
    before, after = read(baseline)["metrics"]["tuned"]["rougeL"], read(candidate)["metrics"]["tuned"]["rougeL"]
    limit = 0.01
    assert before - after > 3 * limit  # several times the limit

    codes = {}
    for rule in ("point", "significant", "non-inferior"):
        assert gate(baseline, baseline, "--max-drop", f"rougeL={limit}", "--rule", rule) == 0  # identical
        capsys.readouterr()
        codes[rule] = gate(baseline, candidate, "--max-drop", f"rougeL={limit}", "--rule", rule)
        table = capsys.readouterr().out
        low, high = map(float, table.split("[", 1)[1].split("]", 1)[0].split(","))
        assert low < -3 * limit and high >= 0  # the interval still touches zero
    assert codes == {"point": 1, "significant": 0, "non-inferior": 1}


def test_reports_of_different_test_slices_are_refused(scored, tmp_path, capsys):
    _, fewer = scored_run(tmp_path / "fewer", two_thirds_right, rows=korean_rows(30))
    assert gate(scored[1], fewer, "--max-drop", "rougeL=0.01") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "different test set" in err and "40 rows" in err and "30 rows" in err
    assert gate(scored[1], fewer, "--max-drop", "rougeL=0.5", "--allow-different-data") == 0
    out = capsys.readouterr().out
    assert "allowed by --allow-different-data: different test set" in out
    assert "no intervals: the reports score different rows" in out
    assert gate(scored[1], fewer, "--max-drop", "rougeL=0.5", "--allow-different-data", "--rule", "non-inferior") == 2


def test_reports_with_different_metric_settings_are_refused(scored, tmp_path, capsys):
    _, other = scored_run(tmp_path / "char", two_thirds_right, tokenize="char")
    assert gate(scored[1], other, "--max-drop", "rougeL=0.01") == 2
    assert "different metric settings" in capsys.readouterr().err


def test_a_report_of_another_schema_version_is_refused(scored, tmp_path, capsys):
    old = read(scored[1])
    old["schema_version"] = "1.0"
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert gate(tmp_path / "old.json", scored[1], "--max-drop", "rougeL=0.01") == 2
    assert "schema version '1.0'" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("{not json")
    assert gate(tmp_path / "bad.json", scored[1], "--max-drop", "rougeL=0.01") == 2
    capsys.readouterr()
    del old["test_set"]
    old["schema_version"] = report_module.SCHEMA_VERSION
    (tmp_path / "partial.json").write_text(json.dumps(old))
    assert gate(tmp_path / "partial.json", scored[1], "--max-drop", "rougeL=0.01") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a valid report.json" in err and "test_set" in err
    assert gate(scored[1], scored[1], "--max-drop", "rougeL=0.01", "--model", "base", "--require-improvement") == 2
    assert "no test of base against base" in capsys.readouterr().err


def test_baseline_predictions_elsewhere_and_markdown(scored, scored_again, tmp_path, capsys):
    """A committed baseline report without its generate/ folder pairs with --baseline-predictions."""
    report = tmp_path / "baseline-report.json"
    report.write_bytes(scored[1].read_bytes())
    _, candidate = scored_again
    assert gate(report, candidate, "--max-drop", "rougeL=0.01") == 0
    assert "no intervals: the predictions of" in capsys.readouterr().out
    args = ["--max-drop", "rougeL=0.01", "--baseline-predictions", str(scored[0] / "generate/predictions.jsonl"),
            "--format", "markdown", "--require-improvement"]
    assert gate(report, candidate, *args) == 0
    out = capsys.readouterr().out
    assert out.startswith("| check | baseline | candidate |") and "| rougeL drop |" in out
    assert "rougeL vs base" in out and "**PASSED**" in out and "- paired: 40 rows matched by id" in out
    tampered = tmp_path / "tampered.jsonl"
    tampered.write_text((scored[0] / "generate/predictions.jsonl").read_text().replace(WRONG, "다른"))
    assert gate(report, candidate, "--max-drop", "rougeL=0.01", "--baseline-predictions", str(tampered)) == 2


def test_require_improvement_needs_significance(scored, tmp_path, capsys):
    _, same = scored_run(tmp_path / "no-gain", lambda i, ref: WRONG)
    assert gate(same, same, "--max-drop", "rougeL=0.01") == 0
    assert gate(same, same, "--max-drop", "rougeL=0.01", "--require-improvement") == 1
    assert "FAILED" in capsys.readouterr().out
    assert gate(same, same, "--max-drop", "rouge_typo=0.01") == 2
    assert "unknown metric 'rouge_typo'" in capsys.readouterr().err
