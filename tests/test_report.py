"""The score stage's report, and the `compare` gate on reports made from predictions written here."""

import copy
import json

import jsonschema
import pytest

from conftest import korean_rows
from entrypoint import main
from eval import report as report_module
from eval.score import score
from pipeline.config import Config, DataConfig, OutputConfig, ScoreConfig
from pipeline.stage import write_json_atomic

N = 40
WRONG = "이것은 전혀 다른 문장입니다"


def scored_run(out, tuned, base=None, rows=None, extra=None, **score_settings):
    """A finished train + generate on disk (synthetic summaries and predictions), then the real score stage.
    `tuned(i, reference)` gives the tuned prediction of row i; base predictions are WRONG unless given."""
    rows = rows or korean_rows(N)
    models = {"base": base or (lambda i, ref: WRONG), "tuned": tuned, **(extra or {})}
    (out / "train").mkdir(parents=True, exist_ok=True)
    (out / "generate").mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "train" / "train_summary.json", {
        "steps": 3, "loss_curve": [[1, 3.0], [2, 2.5], [3, 2.0]], "validation_loss": 2.1,
        "trainable_parameters": 1000, "adapted_modules": ["k_proj", "o_proj", "q_proj", "v_proj"],
        "examples_per_second": 1.5, "tokens_per_second": 100.0, "peak_memory": {"cpu_rss_gib": 1.0},
        "wall_seconds": 12.0})
    write_json_atomic(out / "generate" / "generate_summary.json", {
        "models": {m: {"rows": len(rows), "rows_per_second": 1.0, "tokens_per_second": 10.0,
                       "hit_max_new_tokens_rate": 0.0, "mean_new_tokens": 20.0} for m in models},
        "prompts_truncated": 0, "max_new_tokens": 48, "batch_size": 8, "peak_memory": {}, "wall_seconds": 30.0,
        "device": "cpu", "device_name": "CPU (2 cores)"})
    lines = []
    for model, predict in models.items():
        for i, row in enumerate(rows):
            prediction = predict(i, row["target"])
            lines.append({"id": f"test:{i}", "model": model, "input": row["input"], "reference": row["target"],
                          "prediction": prediction, "raw": prediction, "new_tokens": 10,
                          "hit_max_new_tokens": model == "base" and i % 2 == 0})
    (out / "generate" / "predictions.jsonl").write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in lines), encoding="utf-8")
    cfg = Config(data=DataConfig(max_test_samples=len(rows)), output=OutputConfig(dir=str(out)),
                 score=ScoreConfig(**{"bootstrap_samples": 300, **score_settings}))
    return out, score(cfg, out)


def two_thirds_right(i, reference):
    return reference if i % 3 else WRONG


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    return scored_run(tmp_path_factory.mktemp("out"), two_thirds_right)


def read(path):
    return json.loads(path.read_text(encoding="utf-8"))


def test_report_files_exist_and_json_validates(scored):
    out, report_path = scored
    report = read(report_path)
    report_module.validate(report)
    assert (out / "report.md").read_text(encoding="utf-8").startswith("# Evaluation report")
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report["rows"] == N and len(report["examples"]) == 10 and report["models"] == ["base", "tuned"]
    assert report["metrics"]["tuned"]["rougeL"] > report["metrics"]["base"]["rougeL"]
    assert report["metrics"]["base"]["hit_max_new_tokens_rate"] == 0.5
    assert report["deltas"]["tuned"]["rougeL"]["delta"] == pytest.approx(
        report["metrics"]["tuned"]["rougeL"] - report["metrics"]["base"]["rougeL"])
    assert report["reference"] == "base"
    assert set(report["per_type"]["tuned"]) == {"의미 명확히 하기", "가정 살펴보기", "이유와 근거 묻기",
                                                "함의와 결과 따져보기", "다른 관점 생각하기"}
    assert report["test_set"]["rows"] == N and len(report["test_set"]["sha256"]) == 64
    assert report["metric_settings"]["tokenize"] == "ko-mecab"
    assert (out / report["predictions"]["path"]).resolve() == (out / "generate" / "predictions.jsonl").resolve()
    assert report["stage_seconds"]["train"] == 12.0
    assert "의미 명확히 하기" in report_path.read_text(encoding="utf-8")  # ensure_ascii=False


def test_schema_rejects_a_report_missing_a_metric(scored):
    broken = copy.deepcopy(read(scored[1]))
    del broken["metrics"]["tuned"]["bleu"]
    with pytest.raises(jsonschema.ValidationError):
        report_module.validate(broken)


def test_score_is_skipped_when_up_to_date(scored):
    out, report_path = scored
    before = report_path.read_bytes()
    cfg = Config(data=DataConfig(max_test_samples=N), output=OutputConfig(dir=str(out)),
                 score=ScoreConfig(bootstrap_samples=300))
    assert score(cfg, out) == report_path and report_path.read_bytes() == before


def test_git_commit_comes_from_the_environment_without_a_checkout(tmp_path, monkeypatch):
    """In the container there is no .git: the commit is $GIT_COMMIT."""
    import subprocess

    from eval import score as score_module

    def no_git(*args, **kwargs):
        raise FileNotFoundError("git")

    monkeypatch.setattr(subprocess, "run", no_git)
    monkeypatch.setenv("GIT_COMMIT", "0123abcd")
    assert score_module.git_state() == {"commit": "0123abcd", "dirty": None}
    monkeypatch.delenv("GIT_COMMIT")
    assert score_module.git_state() == {"commit": None, "dirty": None}


# --- the gate -------------------------------------------------------------------------------------------------

def gate(baseline, candidate, *args):
    return main(["compare", "--baseline", str(baseline), "--candidate", str(candidate), *args])


def test_an_identical_candidate_passes_the_paired_gate(scored, tmp_path, capsys):
    _, candidate = scored_run(tmp_path / "again", two_thirds_right)
    assert gate(scored[1], candidate, "--max-drop", "rougeL=0,bleu=0,empty_rate=0") == 0
    out = capsys.readouterr().out
    assert "rule: paired" in out and "REGRESSED" not in out and out.count(" paired ") >= 3


def test_a_real_drop_fails_and_noise_passes_under_the_paired_rule(scored, tmp_path, capsys):
    _, worse = scored_run(tmp_path / "worse", lambda i, ref: ref if i % 3 == 1 else WRONG)  # a third right
    assert gate(scored[1], worse, "--max-drop", "rougeL=0.01") == 1
    assert "REGRESSED" in capsys.readouterr().out
    # one row of 40 worse: a drop beyond the limit, but within the noise of 40 rows
    _, noisy = scored_run(tmp_path / "noisy", lambda i, ref: WRONG if i == 1 else two_thirds_right(i, ref))
    assert gate(scored[1], noisy, "--max-drop", "rougeL=0.01") == 0
    out = capsys.readouterr().out
    assert "paired" in out and "ok" in out
    assert gate(scored[1], noisy, "--max-drop", "rougeL=0.01", "--unpaired") == 1  # the drop alone would fail
    assert "unpaired" in capsys.readouterr().out


def test_a_rise_of_a_lower_is_better_metric_fails(scored, tmp_path, capsys):
    _, emptier = scored_run(tmp_path / "emptier", lambda i, ref: "" if i < 20 else two_thirds_right(i, ref))
    assert gate(scored[1], emptier, "--max-drop", "empty_rate=0") == 1
    assert "empty_rate" in capsys.readouterr().out
    assert gate(scored[1], emptier, "--max-drop", "empty_rate=0", "--unpaired") == 1
    assert gate(emptier, scored[1], "--max-drop", "empty_rate=0") == 0  # fewer empty rows is no regression
    assert gate(scored[1], emptier, "--max-drop", "mean_chars=1") == 2
    assert "no better direction" in capsys.readouterr().err


def test_reports_of_different_test_slices_are_refused(scored, tmp_path, capsys):
    _, fewer = scored_run(tmp_path / "fewer", two_thirds_right, rows=korean_rows(30))
    assert gate(scored[1], fewer, "--max-drop", "rougeL=0.01") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "different test set" in err and "40 rows" in err and "30 rows" in err
    assert gate(scored[1], fewer, "--max-drop", "rougeL=0.5", "--allow-different-data") == 0
    out = capsys.readouterr().out
    assert "allowed by --allow-different-data: different test set" in out and "rule: unpaired" in out


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
    old["schema_version"] = "2.0"
    (tmp_path / "partial.json").write_text(json.dumps(old))
    assert gate(tmp_path / "partial.json", scored[1], "--max-drop", "rougeL=0.01") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a valid report.json" in err and "test_set" in err
    assert gate(scored[1], scored[1], "--max-drop", "rougeL=0.01", "--model", "base", "--require-improvement") == 2
    assert "no test of base against base" in capsys.readouterr().err


def test_baseline_predictions_elsewhere_and_markdown(scored, tmp_path, capsys):
    """A committed baseline report without its generate/ folder pairs with --baseline-predictions."""
    report = tmp_path / "baseline-report.json"
    report.write_bytes(scored[1].read_bytes())
    _, candidate = scored_run(tmp_path / "candidate", two_thirds_right)
    assert gate(report, candidate, "--max-drop", "rougeL=0.01") == 0
    assert "rule: unpaired: the predictions of" in capsys.readouterr().out
    args = ["--max-drop", "rougeL=0.01", "--baseline-predictions", str(scored[0] / "generate/predictions.jsonl"),
            "--format", "markdown", "--require-improvement"]
    assert gate(report, candidate, *args) == 0
    out = capsys.readouterr().out
    assert out.startswith("| check | baseline | candidate |") and "| rougeL drop |" in out
    assert "rougeL vs base" in out and "**PASSED**" in out and "rule: paired" in out
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


def test_more_models_and_another_reference(tmp_path):
    out, report_path = scored_run(tmp_path, two_thirds_right, extra={"prod": lambda i, ref: ref},
                                  reference="prod")
    report = read(report_path)
    assert report["models"] == ["base", "tuned", "prod"] and report["reference"] == "prod"
    assert set(report["deltas"]) == {"base", "tuned"} and report["deltas"]["tuned"]["rougeL"]["delta"] < 0
    markdown = (out / "report.md").read_text(encoding="utf-8")
    assert "| metric | base | tuned | prod |" in markdown and "Paired bootstrap against prod" in markdown
