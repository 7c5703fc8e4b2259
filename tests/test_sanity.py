"""Whether a report's numbers can be believed (eval/sanity.py): sanity counters, warnings, type accuracy next to
its baselines, regressed rows, per-type deltas and the semantic metric, by hand and in what the score stage
writes (report.json, report.md, report.html, the printed summary) and what `compare --fail-on-warnings` decides.

The reports come from the real score stage over predictions written here (test_report.scored_run); semantic
embeds with conftest's character_embedder (no model loads).
"""

import copy
import json
import logging

import jsonschema
import numpy as np
import pytest

from conftest import ROOT, character_embedder, korean_rows
from entrypoint import main
from eval import metrics, sanity, semantic, stats
from eval import report as report_module
from eval.report_reader import ADDED_IN_3_1
from eval.report import markdown, summary_table
from test_report import N, config_for, read, scored_run

# 40 rows whose types are unbalanced: the majority type (20 rows) is not what uniform guessing scores (1/4).
TYPES = ["이유와 근거 묻기"] * 20 + ["의미 명확히 하기"] * 10 + ["가정 살펴보기"] * 6 + ["다른 관점 생각하기"] * 4
ROWS = [{**row, "target": f"({label}) " + row["target"].split(") ", 1)[1]}
        for row, label in zip(korean_rows(N), TYPES)]


def varied(i, reference):
    """A base model's output: a different question per row, no label."""
    return f"{i}번 주장은 어디서 나온 것인가요?"


def score_args(out):
    """The CLI arguments of config_for's config (the same inputs: the report is up to date)."""
    return [f"model.source={out / 'inputs' / 'model'}", f"data.source={out / 'inputs' / 'data'}", f"output.dir={out}",
            "score.bootstrap_samples=300"]


# --- by hand -----------------------------------------------------------------------------------------------------

def test_sanity_counters_by_hand():
    """Rows: base a?, b?, c?, d?; tuned a?, b?, ",", ",": half identical to base, the two commas constant."""
    references = ["(A) 가나다라?", "(A) 마바사?", "(B) 아자차?", "(B) 카타?"]  # 6+5+5+4 = 20 characters
    block = sanity.sanity({"base": ["a?", "b?", "c?", "d?"], "tuned": ["a?", "b?", ",", ","]}, references, "base",
                          tokenize="13a")
    assert block["base"]["identical_to_reference"] is None and block["tuned"]["identical_to_reference"] == 0.5
    assert block["tuned"]["constant_output"] == 0.5 and block["base"]["constant_output"] == 0.0
    assert block["tuned"]["most_common_output"] == {"text": ",", "count": 2}
    assert block["tuned"]["no_type_prefix"] == 1.0 and block["tuned"]["empty"] == 0.0
    assert block["tuned"]["length_ratio"] == pytest.approx(6 / sum(map(len, references)))
    assert sanity.warnings(block, "base", identical_limit=0.95, constant_limit=0.6) == []
    found = sanity.warnings(block, "base", identical_limit=0.5, constant_limit=0.5)
    assert [(w["model"], w["kind"], w["value"], w["limit"]) for w in found] == [
        ("tuned", "identical_to_reference", 0.5, 0.5), ("tuned", "constant_output", 0.5, 0.5)]


def test_types_block_by_hand():
    """References A x3, B x1: majority A (3/4), chance 1/2. A model always answering A: accuracy 3/4, F1 of A
    2*3/(4+3), of B 0 -> macro-F1 3/7."""
    references = ["(A) 가?", "(A) 나?", "(A) 다?", "(B) 라?"]
    block = sanity.types({"tuned": ["(A) 가?"] * 4, "base": ["가?", "(B) 나?", "(C) 다?", "(B) 라?"]}, references)
    assert block["labels"] == ["A", "B"] and block["reference_distribution"] == {"A": 3, "B": 1}
    assert (block["majority_label"], block["majority_baseline"], block["chance_baseline"]) == ("A", 0.75, 0.5)
    assert block["models"]["tuned"] == {"accuracy": 0.75, "macro_f1": pytest.approx(3 / 7),
                                        "predicted_distribution": {"A": 4}}
    assert block["models"]["base"]["predicted_distribution"] == {"B": 2, "(no label)": 1, "C": 1}
    assert block["models"]["base"]["macro_f1"] == pytest.approx((0 + 2 * 1 / 3) / 2)  # B: TP 1, 2 guessed, 1 real


def test_per_type_deltas_resample_each_types_rows():
    references = ["(A) 가?"] * 6 + ["(B) 나?"] * 2
    base = metrics.ExampleScores(["다른 말?"] * 8, references)
    tuned = metrics.ExampleScores(references[:6] + ["다른 말?"] * 2, references)
    deltas = sanity.per_type_deltas({"base": base, "tuned": tuned}, "base", samples=200, seed=1)
    assert set(deltas) == {"tuned"} and list(deltas["tuned"]) == ["A", "B"]
    assert deltas["tuned"]["A"]["rows"] == 6 and deltas["tuned"]["B"]["rows"] == 2
    alone = stats.paired_bootstrap(metrics.ExampleScores(["다른 말?"] * 6, references[:6]),
                                     metrics.ExampleScores(references[:6], references[:6]), ["rougeL"], 200, 1)
    assert deltas["tuned"]["A"]["rougeL"] == alone["rougeL"]
    assert deltas["tuned"]["B"]["rougeL"]["delta"] == 0.0


# --- in the score stage ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def unchanged(tmp_path_factory):
    """An adapter that changed nothing: tuned's outputs are base's, row for row."""
    return scored_run(tmp_path_factory.mktemp("unchanged"), varied, base=varied)


def test_an_adapter_that_changes_nothing_is_warned_about_everywhere(unchanged, capsys):
    out, report_path = unchanged
    report = read(report_path)
    assert report["schema_version"] == "3.1"
    assert report["sanity"]["tuned"]["identical_to_reference"] == 1.0
    assert report["sanity"]["base"]["identical_to_reference"] is None
    assert [(w["model"], w["kind"], w["value"], w["limit"]) for w in report["warnings"]] == [
        ("tuned", "identical_to_reference", 1.0, 0.95)]
    message = report["warnings"][0]["message"]
    assert "tuned: 100% of its outputs are identical to base's" in message
    md = (out / "report.md").read_text(encoding="utf-8")
    assert md.splitlines()[2].startswith("**Warnings:**") and message in md.splitlines()[2]
    assert summary_table(report).splitlines()[0] == f"WARNING: {message}"  # what `run` prints
    assert main(["score", *score_args(out)]) == 0  # up to date: it prints the warnings of the report
    assert f"WARNING: {message}" in capsys.readouterr().out
    assert report["regressions"]["tuned"]["unchanged"]["count"] == N
    assert report["regressions"]["tuned"]["regressed"] == {"count": 0, "ids": []}
    html = (out / "report.html").read_text(encoding="utf-8")  # report.html: every row, browsable
    assert html.startswith("<!DOCTYPE html>") and all(f"test:{i}" in html for i in range(N))


def test_compare_fails_on_warnings_only_when_asked(unchanged, tmp_path, capsys):
    report_path = unchanged[1]
    args = ["compare", "--baseline", str(report_path), "--candidate", str(report_path), "--max-drop", "rougeL=0"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "WARNING in the candidate report: tuned: 100%" in out and "not gated (--fail-on-warnings" in out
    assert main([*args, "--fail-on-warnings"]) == 1
    assert "FAILED (--fail-on-warnings)" in capsys.readouterr().out
    assert main([*args, "--fail-on-warnings", "--format", "markdown"]) == 1
    assert "**FAILED**" in capsys.readouterr().out
    # a warning about another model does not fail the gated one; a 3.0 report carries none
    other = read(report_path)
    other["warnings"][0]["model"] = "prod"
    (tmp_path / "other.json").write_text(json.dumps(other, ensure_ascii=False), encoding="utf-8")
    assert main([*args[:4], str(tmp_path / "other.json"), *args[5:], "--fail-on-warnings"]) == 0
    # The committed demo warns about its tuned model's question types (one type for 78% of the rows): the gate
    # fails on that, unless those kinds are allowed (the CI example's choice for the demo's short training).
    baseline = ROOT / "examples" / "baseline-report.json"
    gate = ["compare", "--baseline", str(baseline), "--candidate", str(baseline), "--max-drop", "rougeL=0",
            "--fail-on-warnings"]
    assert main(gate) == 1
    assert main([*gate, "--allow-warning", "type_collapse,type_accuracy_at_majority"]) == 0


def test_constant_commas_are_warned_about(tmp_path):
    out, report_path = scored_run(tmp_path, lambda i, reference: ",", base=varied)
    report = read(report_path)
    assert report["sanity"]["tuned"]["constant_output"] == 1.0
    assert report["sanity"]["tuned"]["most_common_output"] == {"text": ",", "count": N}
    assert report["metrics"]["tuned"]["constant_output_rate"] == 1.0
    assert [(w["model"], w["kind"]) for w in report["warnings"]] == [("tuned", "constant_output")]
    md = (out / "report.md").read_text(encoding="utf-8")
    assert md.splitlines()[2].startswith("**Warnings:**") and "100% of its outputs repeat another row's" in md
    assert "| tuned | 0.000 | 1.000 | 0.000 | 0.000 | 1.000 |" in md  # identical, constant, empty, loop, no (type)


def test_always_the_majority_type_scores_the_majority_baseline_and_the_macro_f1_floor(tmp_path):
    """20 of 40 references are of the majority type: accuracy 20/40 = the majority baseline; macro-F1 is the
    majority type's F1 2*20/(40+20) over the 4 types = 1/6."""
    majority = TYPES[0]
    out, report_path = scored_run(tmp_path, lambda i, ref: f"({majority}) " + ref.split(") ", 1)[1], base=varied,
                                  rows=ROWS)
    types = read(report_path)["types"]
    assert types["majority_label"] == majority and types["majority_baseline"] == 0.5
    assert types["chance_baseline"] == 0.25
    assert types["models"]["tuned"]["accuracy"] == types["majority_baseline"]
    assert types["models"]["tuned"]["macro_f1"] == pytest.approx(1 / 6)
    assert types["models"]["tuned"]["predicted_distribution"] == {majority: N}
    assert types["models"]["base"]["predicted_distribution"] == {"(no label)": N}
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "| tuned | 0.500 | 0.167 | 0.500 | 0.250 |" in md
    assert f"| {majority} | 20 | 0 | 40 |" in md  # rows of the type: references, base, tuned
    assert "too few rows to judge" in md  # every type has fewer than 30 rows
    # and it cannot pass for skill: at the majority baseline, and every row one type (100% >= (1 + 50%) / 2)
    warnings = read(report_path)["warnings"]
    assert [(w["model"], w["kind"]) for w in warnings] == [("tuned", "type_accuracy_at_majority"),
                                                           ("tuned", "type_collapse")]
    assert warnings[1]["value"] == 1.0 and warnings[1]["limit"] == 0.75
    assert "which writes no type labels" in warnings[0]["message"]  # the delta against a base without labels
    assert all(w["message"] in md.splitlines()[2] for w in warnings)  # report.md's warnings line
    assert summary_table(read(report_path)).splitlines()[:2] == [f"WARNING: {w['message']}" for w in warnings]
    args = ["compare", "--baseline", str(report_path), "--candidate", str(report_path), "--max-drop", "rougeL=0"]
    assert main(args) == 0 and main([*args, "--fail-on-warnings"]) == 1
    allowed = ["--allow-warning", "type_collapse,type_accuracy_at_majority"]
    assert main([*args, "--fail-on-warnings", *allowed]) == 0  # shown, not gated
    assert main([*args, "--fail-on-warnings", "--allow-warning", "type_collapse"]) == 1  # the other still fails
    assert main([*args, "--allow-warning", "typo"]) == 2


def type_texts(counts: dict[str, int]) -> list[str]:
    return [f"({label}) 무엇인가요?" for label, n in counts.items() for _ in range(n)]


def test_type_scores_that_cannot_pass_for_skill_warn():
    """100 references: 30 A, 25 B, 25 C, 20 D. Always A: accuracy 0.30, the majority baseline. 90 rows A (the 30
    A rows right, 10 more right of B): accuracy 0.40, but one type on 90% of rows >= (1 + 30%) / 2 = 65%."""
    references = type_texts({"A": 30, "B": 25, "C": 25, "D": 20})
    majority = ["(A) 무엇인가요?"] * 100
    collapsed = ["(A) 무엇인가요?"] * 30 + type_texts({"B": 10}) + ["(A) 무엇인가요?"] * 60
    block = sanity.types({"base": ["무엇인가요?"] * 100, "majority": majority, "collapsed": collapsed}, references)
    assert block["majority_baseline"] == 0.3 and block["models"]["majority"]["accuracy"] == 0.3
    assert block["models"]["collapsed"]["accuracy"] == 0.4
    found = {(w["model"], w["kind"]): w for w in sanity.type_warnings(block, 100, "base")}
    assert set(found) == {("majority", "type_accuracy_at_majority"), ("majority", "type_collapse"),
                          ("collapsed", "type_collapse")}  # base writes no labels: nothing to mistake for skill
    assert found[("collapsed", "type_collapse")]["value"] == 0.9
    assert found[("collapsed", "type_collapse")]["limit"] == pytest.approx(0.65)
    low, _ = stats.wilson_interval(40, 100)  # 0.309: 0.40 is above 0.30 by more than its interval
    assert low > 0.3


def test_a_model_clearly_above_the_baseline_with_spread_types_does_not_warn():
    """70 of 100 right, the 30 wrong ones spread over the other types (no type on more than 40% of rows): no type
    warning."""
    references = type_texts({"A": 30, "B": 25, "C": 25, "D": 20})
    right = references[:70]
    wrong = [f"({[label for label in 'ABCD' if label != t[1]][k % 3]}) 무엇인가요?"
             for k, t in enumerate(references[70:])]
    block = sanity.types({"tuned": right + wrong}, references)
    assert block["models"]["tuned"]["accuracy"] == 0.7
    assert max(block["models"]["tuned"]["predicted_distribution"].values()) <= 40
    assert sanity.type_warnings(block, 100, "base") == []


def test_the_wilson_interval_by_hand():
    """20 of 60: centre (1/3 + 1.96^2/120) / (1 + 1.96^2/60), the closed form."""
    z, n, p = 1.96, 60, 20 / 60
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert stats.wilson_interval(20, 60) == pytest.approx((centre - half, centre + half))
    assert stats.wilson_interval(0, 10)[0] == 0.0 and stats.wilson_interval(10, 10)[1] == 1.0


def test_semantic_in_the_score_stage(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="eval.score")
    out, report_path = scored_run(tmp_path, lambda i, ref: ref if i % 2 else f"{i}번은 무엇인가요?")
    report = read(report_path)
    assert report["semantic"]["enabled"] and report["semantic"]["backend"] in semantic.BACKENDS
    assert report["semantic"]["identity"] == "character counts (tests)"
    assert "semantic is on" in report["semantic"]["reason"] and "semantic is on" in caplog.text
    # the numbers: conftest's embedder on the questions, recomputed here
    references = [row["target"] for row in korean_rows(N)]
    tuned = [ref if i % 2 else f"{i}번은 무엇인가요?" for i, ref in enumerate(references)]
    expected = semantic.similarities({"tuned": tuned}, references, character_embedder)["tuned"]
    assert report["metrics"]["tuned"]["semantic"] == pytest.approx(expected.mean())
    assert report["deltas"]["tuned"]["semantic"]["delta"] == pytest.approx(
        report["metrics"]["tuned"]["semantic"] - report["metrics"]["base"]["semantic"])
    assert all("semantic" in row for row in report["per_type"]["tuned"].values())
    assert all("semantic" in row for row in report["per_type_deltas"]["tuned"].values())
    assert report["semantic"]["texts"] == len(semantic.distinct_questions(
        {"base": ["이것은 전혀 다른 문장입니다"] * N, "tuned": tuned}, references))

    caplog.clear()
    off = read(report_module_score(out, "score.semantic=false"))
    assert "semantic" not in off["metrics"]["tuned"] and "semantic" not in off["deltas"]["tuned"]
    assert off["semantic"] == {**off["semantic"], "enabled": False, "backend": None, "texts": 0, "seconds": None}
    assert "semantic is off" in caplog.text and "score.semantic=false" in caplog.text
    assert off["inputs_hash"] != report["inputs_hash"]


def report_module_score(out, *overrides):
    from eval.score import score

    return score(config_for(out, korean_rows(N), overrides=overrides), out)


def test_the_semantic_engine_is_an_input_of_the_score_stage(unchanged, monkeypatch):
    out, report_path = unchanged
    before = read(report_path)["inputs_hash"]
    assert read(report_module_score(out))["inputs_hash"] == before
    monkeypatch.setattr(semantic, "backend", lambda folder=None: ("transformers", "e5 fp32, transformers 9", None))
    assert read(report_module_score(out))["inputs_hash"] != before


def test_the_schema_requires_the_3_1_blocks(unchanged):
    report = read(unchanged[1])
    report_module.validate(report)
    for key in ("semantic", "sanity", "warnings", "types", "regressions", "per_type_deltas"):
        broken = copy.deepcopy(report)
        del broken[key]
        with pytest.raises(jsonschema.ValidationError, match=key):
            report_module.validate(broken)
    broken = copy.deepcopy(report)
    broken["sanity"]["tuned"]["constant_output"] = 1.5
    with pytest.raises(jsonschema.ValidationError):
        report_module.validate(broken)


def test_the_metric_settings_keep_their_version_so_a_3_0_baseline_stays_comparable(unchanged):
    settings = read(unchanged[1])["metric_settings"]
    baseline = json.loads((ROOT / "examples" / "baseline-report.json").read_text(encoding="utf-8"))
    assert settings["schema_version"] == baseline["metric_settings"]["schema_version"] == "3.0"
    assert settings["fingerprint"] == baseline["metric_settings"]["fingerprint"]


def test_a_3_0_report_still_renders():
    committed = json.loads((ROOT / "examples" / "baseline-report.json").read_text(encoding="utf-8"))
    baseline = {**{k: v for k, v in committed.items() if k not in ADDED_IN_3_1}, "schema_version": "3.0"}
    md = markdown(baseline)
    assert md.startswith("# Evaluation report") and "## Sanity" not in md and "**Warnings:**" not in md
    assert not summary_table(baseline).startswith("WARNING")


def test_regressions_block_by_hand():
    values = {"base": np.array([0.5, 0.5, 0.5]), "tuned": np.array([0.4, 0.56, 0.5])}
    block = sanity.regressions(values, ["a", "b", "c"], "base", threshold=0.05)
    assert block["tuned"]["regressed"] == {"count": 1, "ids": ["a"]}
    assert block["tuned"]["improved"] == {"count": 1, "ids": ["b"]}
    assert block["tuned"]["metric"] == "rougeL" and block["tuned"]["threshold"] == 0.05


def test_semantic_is_gated_only_between_reports_of_one_engine(unchanged, tmp_path, capsys):
    report_path = unchanged[1]
    other = read(report_path)
    other["semantic"]["identity"] = "intfloat/multilingual-e5-small fp32, transformers 9"
    (tmp_path / "other.json").write_text(json.dumps(other, ensure_ascii=False), encoding="utf-8")
    args = ["compare", "--baseline", str(report_path), "--candidate", str(tmp_path / "other.json")]
    assert main([*args, "--max-drop", "semantic=0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "semantic was computed by different engines" in err
    assert main([*args, "--max-drop", "rougeL=0"]) == 0  # other metrics are not affected
    assert main([*args, "--max-drop", "semantic=0", "--allow-different-data"]) == 0
