import copy
import json

import jsonschema
import pytest

from conftest import korean_rows
from entrypoint import main
from eval import report as report_module
from eval.score import score
from pipeline.config import Config, OutputConfig, ScoreConfig
from pipeline.stage import write_json_atomic

N = 12


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """A finished train + generate on disk (synthetic summaries and predictions), then the real score stage."""
    out = tmp_path_factory.mktemp("out")
    (out / "train").mkdir()
    (out / "generate").mkdir()
    write_json_atomic(out / "train" / "train_summary.json", {
        "steps": 3, "loss_curve": [[1, 3.0], [2, 2.5], [3, 2.0]], "validation_loss": 2.1,
        "trainable_parameters": 1000, "adapted_modules": ["k_proj", "o_proj", "q_proj", "v_proj"],
        "examples_per_second": 1.5, "tokens_per_second": 100.0, "peak_memory": {"cpu_rss_gib": 1.0},
        "wall_seconds": 12.0})
    write_json_atomic(out / "generate" / "generate_summary.json", {
        "models": {m: {"rows": N, "rows_per_second": 1.0, "tokens_per_second": 10.0, "hit_max_new_tokens_rate": r,
                       "mean_new_tokens": 20.0} for m, r in (("base", 0.5), ("tuned", 0.0))},
        "prompts_truncated": 0, "max_new_tokens": 48, "batch_size": 8, "peak_memory": {}, "wall_seconds": 30.0,
        "device": "cpu", "device_name": "CPU (2 cores)"})
    rows = korean_rows(N)
    lines = []
    for model in ("base", "tuned"):
        for i, row in enumerate(rows):
            prediction = row["target"] if model == "tuned" and i % 3 else "이것은 전혀 다른 문장입니다"
            lines.append({"id": f"test:{i}", "model": model, "input": row["input"], "reference": row["target"],
                          "prediction": prediction, "raw": prediction, "new_tokens": 10,
                          "hit_max_new_tokens": model == "base" and i % 2 == 0})
    (out / "generate" / "predictions.jsonl").write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in lines), encoding="utf-8")
    cfg = Config(output=OutputConfig(dir=str(out)), score=ScoreConfig(bootstrap_samples=200))
    return cfg, out, score(cfg, out)


def test_report_files_exist_and_json_validates(scored):
    _, out, report_path = scored
    report = json.loads(report_path.read_text(encoding="utf-8"))
    report_module.validate(report)
    assert (out / "report.md").read_text(encoding="utf-8").startswith("# Evaluation report")
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report["rows"] == N and len(report["examples"]) == 10
    assert report["metrics"]["tuned"]["rougeL"] > report["metrics"]["base"]["rougeL"]
    assert report["metrics"]["base"]["hit_max_new_tokens_rate"] == 0.5
    assert report["deltas"]["rougeL"]["delta"] > 0
    assert set(report["per_type"]["tuned"]) == {"의미 명확히 하기", "가정 살펴보기", "이유와 근거 묻기",
                                                "함의와 결과 따져보기", "다른 관점 생각하기"}
    assert report["stage_seconds"]["train"] == 12.0 and report["git"]["commit"]
    assert "의미 명확히 하기" in report_path.read_text(encoding="utf-8")  # ensure_ascii=False


def test_schema_rejects_a_report_missing_a_metric(scored):
    report = json.loads(scored[2].read_text(encoding="utf-8"))
    broken = copy.deepcopy(report)
    del broken["metrics"]["tuned"]["bleu"]
    with pytest.raises(jsonschema.ValidationError):
        report_module.validate(broken)


def test_score_is_skipped_when_up_to_date(scored):
    cfg, out, report_path = scored
    before = report_path.read_bytes()
    assert score(cfg, out) == report_path and report_path.read_bytes() == before


def fake_report(tmp_path, name, rouge_l, p_value=0.01):
    report = {"metrics": {"base": {"rougeL": 0.10, "bleu": 5.0}, "tuned": {"rougeL": rouge_l, "bleu": 10.0}},
              "deltas": {"rougeL": {"delta": rouge_l - 0.10, "ci95_low": 0.0, "ci95_high": 0.1, "p_value": p_value},
                         "bleu": {"delta": 5.0, "ci95_low": 1.0, "ci95_high": 9.0, "p_value": 0.001}}}
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(report))
    return str(path)


@pytest.mark.parametrize("candidate_rouge, expected_exit", [(0.28, 1), (0.295, 0), (0.35, 0)])
def test_compare_gates_on_the_allowed_drop(tmp_path, capsys, candidate_rouge, expected_exit):
    baseline = fake_report(tmp_path, "baseline", 0.30)
    candidate = fake_report(tmp_path, "candidate", candidate_rouge)
    code = main(["compare", "--baseline", baseline, "--candidate", candidate, "--max-drop", "rougeL=0.01,bleu=0.5"])
    assert code == expected_exit
    out = capsys.readouterr().out
    assert "rougeL drop" in out and ("REGRESSED" in out) == (expected_exit == 1)


def test_compare_require_improvement_needs_significance(tmp_path, capsys):
    baseline = fake_report(tmp_path, "baseline", 0.30)
    weak = fake_report(tmp_path, "weak", 0.30, p_value=0.2)
    args = ["compare", "--baseline", baseline, "--candidate", weak, "--max-drop", "rougeL=0.01"]
    assert main(args) == 0
    assert main(args + ["--require-improvement"]) == 1
    assert main(["compare", "--baseline", baseline, "--candidate", weak, "--max-drop", "rouge_typo=0.01"]) == 2
    assert "unknown metric 'rouge_typo'" in capsys.readouterr().err
