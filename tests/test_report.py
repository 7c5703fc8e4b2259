"""The score stage's report, and the `compare` gate on reports made from predictions written here."""

import copy
import json
import os
from dataclasses import replace
from importlib import metadata

import jsonschema
import numpy as np
import pytest

from pathlib import Path

from conftest import ROOT, korean_rows, write_jsonl
from entrypoint import main
from eval import metrics
from eval import report as report_module
from eval import card
from eval import score as score_module
from eval.score import checkpoint_points, score, tracked_values
from pipeline import identity, runtime
from pipeline.atomic import write_json_atomic
from pipeline.config import Config, load_config

N = 40
WRONG = "이것은 전혀 다른 문장입니다"


def scored_run(out, tuned, base=None, rows=None, extra=None, **score_settings):
    """A finished train + generate on disk (synthetic summaries, predictions and the stage records the real stages
    write), then the real score stage. `tuned(i, reference)` gives the tuned prediction of row i; base predictions
    are WRONG unless given. The model and adapters are stand-in files: score identifies them by content only."""
    rows = rows or korean_rows(N)
    models = {"base": base or (lambda i, ref: WRONG), "tuned": tuned, **(extra or {})}
    cfg = config_for(out, rows, extra, **score_settings)
    record_finished_stages(cfg, out)
    write_json_atomic(out / "train" / "train_summary.json", {
        "steps": 3, "loss_curve": [[1, 3.0], [2, 2.5], [3, 2.0]], "first_loss": 3.0, "last_loss": 2.0,
        "validation_loss": 2.1, "train_rows": 4, "validation_rows": 2, "per_device_train_batch_size": 4,
        "trainable_parameters": 1000, "total_parameters": 100000, "dtype": "float32", "device": "cpu",
        "adapted_modules": ["k_proj", "o_proj", "q_proj", "v_proj"],
        "examples_per_second": 1.5, "tokens_per_second": 100.0, "peak_memory": {"cpu_rss_gib": 1.0},
        "wall_seconds": 12.0, "provenance": runtime.provenance()})
    write_json_atomic(out / "generate" / "generate_summary.json", {
        "models": {m: {"rows": len(rows), "rows_per_second": 1.0, "tokens_per_second": 10.0,
                       "hit_max_new_tokens_rate": 0.0, "mean_new_tokens": 20.0} for m in models},
        "prompts_truncated": 0, "max_new_tokens": 48, "batch_size": 8, "peak_memory": {}, "wall_seconds": 30.0,
        "device": "cpu", "provenance": runtime.provenance()})
    lines = []
    for model, predict in models.items():
        for i, row in enumerate(rows):
            prediction = predict(i, row["target"])
            lines.append({"id": f"test:{i}", "model": model, "input": row["input"], "reference": row["target"],
                          "prediction": prediction, "raw": prediction, "new_tokens": 10,
                          "hit_max_new_tokens": model == "base" and i % 2 == 0})
    (out / "generate" / "predictions.jsonl").write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in lines), encoding="utf-8")
    return out, score(cfg, out)


def config_for(out, rows, extra=None, overrides=(), **score_settings) -> Config:
    """The run's config: its test split is `rows` (a data folder under out/inputs), the model and each adapter
    are small stand-in files."""
    inputs = out / "inputs"
    for split, split_rows in (("train", korean_rows(4, 500)), ("validation", korean_rows(2, 600)), ("test", rows)):
        if not (inputs / "data" / f"{split}.jsonl").is_file():
            write_jsonl(inputs / "data" / f"{split}.jsonl", split_rows)
    (inputs / "model").mkdir(parents=True, exist_ok=True)
    (inputs / "model" / "config.json").write_text('{"model_type": "gemma3_text"}')
    (inputs / "model" / "model.safetensors").write_bytes(b"stand-in weights")
    adapters = {name: str(inputs / "adapters" / name) for name in extra or {}}
    for folder in [out / "train" / "adapter", *map(Path, adapters.values())]:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "adapter_config.json").write_text('{"r": 16}')
        (folder / "adapter_model.safetensors").write_bytes(f"stand-in adapter {folder.name}".encode())
    settings = [f"{key}={value}" for key, value in {"bootstrap_samples": 300, **score_settings}.items()]
    return load_config(None, [f"model.source={inputs / 'model'}", f"data.source={inputs / 'data'}",
                              f"output.dir={out}", *[f"generate.adapters.{k}={v}" for k, v in adapters.items()],
                              *[f"score.{s}" for s in settings], *overrides])


def record_finished_stages(cfg: Config, out) -> None:
    """stage.json of train and generate, as the stages record them when they start."""
    for record in score_module.upstream(cfg, out)[1]:
        record.claim()


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
    assert score(config_for(out, korean_rows(N)), out) == report_path and report_path.read_bytes() == before


def test_report_records_each_stage_provenance(scored):
    report = read(scored[1])
    for stage in ("train", "generate", "score"):  # the git state of the code each stage runs
        here = runtime.git_state(score_module.SCORE_CODE if stage == "score" else runtime.PIPELINE_CODE)
        assert report["provenance"][stage]["git"] == here
        assert report["provenance"][stage]["packages"]["sacrebleu"] == metadata.version("sacrebleu")
    assert report["provenance"]["same_commit"] is True
    assert report["provenance"]["score"]["hardware"]["cpu_count"] == os.cpu_count()


def test_stages_from_different_commits_are_flagged(tmp_path):
    out, report_path = scored_run(tmp_path, two_thirds_right)
    summary = read(out / "generate" / "generate_summary.json")
    summary["provenance"]["git"] = {"commit": "0" * 40, "dirty": False}
    write_json_atomic(out / "generate" / "generate_summary.json", summary)
    (out / "report.json").unlink()  # the summaries are not inputs: only a new report shows them
    report = read(score(config_for(out, korean_rows(N)), out))
    assert report["provenance"]["same_commit"] is False
    assert "the stages ran from different commits" in (out / "report.md").read_text(encoding="utf-8")


def test_an_edited_reference_is_rescored_from_the_data(tmp_path):
    """An edited test reference: `score` rescores (exit 0) against the references of the data; the predictions,
    which generation made without reading any reference, are untouched."""
    out, report_path = scored_run(tmp_path, two_thirds_right)
    old, predictions = read(report_path), (out / "generate" / "predictions.jsonl").read_bytes()
    assert "test:7" in old["regressions"]["tuned"]["improved"]["ids"]  # tuned wrote the old reference word for word
    rows = korean_rows(N)
    rows[7]["target"] = f"(이유와 근거 묻기) {WRONG}"  # now base's prediction is the reference but for its label
    write_jsonl(out / "inputs" / "data" / "test.jsonl", rows)
    assert main(["score", f"model.source={out / 'inputs' / 'model'}", f"data.source={out / 'inputs' / 'data'}",
                 f"output.dir={out}", "score.bootstrap_samples=300"]) == 0
    new = read(report_path)
    assert (out / "generate" / "predictions.jsonl").read_bytes() == predictions
    assert new["test_set"]["sha256"] != old["test_set"]["sha256"] and new["test_set"]["rows"] == N
    assert "test:7" in new["regressions"]["tuned"]["regressed"]["ids"]  # the edited row's scores changed
    assert new["metrics"]["base"]["rougeL"] > old["metrics"]["base"]["rougeL"]
    # the gate never pairs rows against the old references still written in predictions.jsonl
    assert main(["compare", "--baseline", str(report_path), "--candidate", str(report_path)]) == 2


def test_score_refuses_predictions_made_under_another_generate_config(scored, capsys):
    out, report_path = scored
    before = report_path.read_bytes()
    args = [f"model.source={out / 'inputs' / 'model'}", f"data.source={out / 'inputs' / 'data'}", f"output.dir={out}",
            "score.bootstrap_samples=300"]
    assert main(["score", *args, "generate.max_new_tokens=999"]) == 2
    err = capsys.readouterr().err
    made_with = load_config(None).generate.max_new_tokens  # the fixture generated with the default
    assert f"config.generate.max_new_tokens: {made_with} -> 999" in err and "entrypoint.py generate" in err
    assert report_path.read_bytes() == before
    assert main(["score", *args]) == 0 and report_path.read_bytes() == before  # same inputs: up to date


def test_changed_metric_code_rescores(tmp_path, monkeypatch):
    out, report_path = scored_run(tmp_path, two_thirds_right)
    before = read(report_path)["inputs_hash"]
    assert score(config_for(out, korean_rows(N)), out) == report_path and read(report_path)["inputs_hash"] == before
    monkeypatch.setattr(identity, "code_identity", lambda files: "0" * 16)  # as if eval/metrics.py had been edited
    assert read(score(config_for(out, korean_rows(N)), out))["inputs_hash"] != before


PAGE_TEMPLATES = sorted(path.name for path in (ROOT / "eval" / "templates").glob("*.j2"))


@pytest.mark.parametrize("name", PAGE_TEMPLATES)
def test_every_page_template_is_part_of_the_scoring_code(tmp_path, name):
    """report.html is an output of score: editing any of its templates (eval/templates/, the page, report.html's,
    compare.html's and the macros they share) must not leave a finished score stage "up to date"."""
    import shutil

    assert len(PAGE_TEMPLATES) >= 4  # page, report, compare, macros: the glob found the templates
    shutil.copytree(score_module.ROOT / "eval", tmp_path / "eval")
    (tmp_path / "pipeline").mkdir()
    shutil.copy(score_module.ROOT / "pipeline" / "text.py", tmp_path / "pipeline")
    before = identity.code_identity(score_module.scoring_code(tmp_path))
    template = tmp_path / "eval" / "templates" / name
    template.write_text(template.read_text(encoding="utf-8") + "<!-- edited -->", encoding="utf-8")
    assert identity.code_identity(score_module.scoring_code(tmp_path)) != before


def test_git_commit_comes_from_the_environment_without_a_checkout(tmp_path, monkeypatch):
    """In the container there is no .git: the commit is $GIT_COMMIT."""
    import subprocess

    def no_git(*args, **kwargs):
        raise FileNotFoundError("git")

    monkeypatch.setattr(subprocess, "run", no_git)
    monkeypatch.setenv("GIT_COMMIT", "0123abcd")
    assert runtime.git_state() == {"commit": "0123abcd", "dirty": None}
    monkeypatch.delenv("GIT_COMMIT")
    assert runtime.git_state() == {"commit": None, "dirty": None}


def test_dirty_means_edits_to_the_code_a_stage_runs(tmp_path, monkeypatch):
    """`make bench` rewriting bench/results.json (or an edited README) changes no output: the stage is not "dirty";
    an edit to the code it runs is."""
    import subprocess

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    for path in ("entrypoint.py", "pipeline/stage.py", "eval/metrics.py", "bench/results.json", "README.md"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("v1\n")
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "v1")
    monkeypatch.setattr(runtime, "ROOT", tmp_path)
    (tmp_path / "bench" / "results.json").write_text("v2\n")
    (tmp_path / "README.md").write_text("v2\n")
    assert runtime.git_state()["dirty"] is False
    assert runtime.git_state(score_module.SCORE_CODE)["dirty"] is False
    (tmp_path / "eval" / "metrics.py").write_text("v2\n")
    assert runtime.git_state()["dirty"] is False  # train and generate do not run eval/
    assert runtime.git_state(score_module.SCORE_CODE)["dirty"] is True
    (tmp_path / "pipeline" / "stage.py").write_text("v2\n")
    assert runtime.git_state()["dirty"] is True


def test_more_models_and_another_reference(tmp_path):
    out, report_path = scored_run(tmp_path, two_thirds_right, extra={"prod": lambda i, ref: ref},
                                  reference="prod")
    report = read(report_path)
    assert report["models"] == ["base", "tuned", "prod"] and report["reference"] == "prod"
    assert set(report["deltas"]) == {"base", "tuned"} and report["deltas"]["tuned"]["rougeL"]["delta"] < 0
    markdown = (out / "report.md").read_text(encoding="utf-8")
    assert "| metric | base | tuned | prod |" in markdown and "Paired bootstrap against prod" in markdown


def gate(baseline, candidate, *args):
    return main(["compare", "--baseline", str(baseline), "--candidate", str(candidate), *args])


# --- everything read from the metric registry ---------------------------------------------------------------------

def no_question_mark(rows: metrics.Rows) -> np.ndarray:
    return np.array([not p.endswith("?") for p in rows.predictions], float)


EXTRA = metrics.Metric("no_question_mark_rate", metrics.LOWER, no_question_mark, (0, 1), title="outputs without ?",
                       hub_type="rate", headline=True, delta=True, per_type=True, checkpoint=True, tracked=True)


@pytest.fixture
def extra_metric(monkeypatch):
    """A metric that exists only in this test, registered as one more entry."""
    monkeypatch.setattr(metrics, "REGISTRY", metrics.REGISTRY + (EXTRA,))
    return EXTRA.name


def test_one_registry_entry_reaches_the_schema_tables_card_trackers_and_gate(extra_metric, tmp_path, capsys):
    name = extra_metric
    out, report_path = scored_run(tmp_path / "a", two_thirds_right)  # tuned is WRONG (no "?") on 14 of 40 rows
    report = read(report_path)
    assert report["metrics"]["base"][name] == 1.0 and report["metrics"]["tuned"][name] == pytest.approx(14 / 40)
    assert report["deltas"]["tuned"][name]["delta"] == pytest.approx(14 / 40 - 1)
    by_type = {}  # korean_rows: row i has the (i % 5)-th label
    for i, row in enumerate(korean_rows(N)):
        by_type.setdefault(row["target"][1:].split(")")[0], []).append(float(i % 3 == 0))
    assert {label: row[name] for label, row in report["per_type"]["tuned"].items()} == pytest.approx(
        {label: sum(flags) / len(flags) for label, flags in by_type.items()})
    # the schema: required in a report of this version, in its range, optional for a reader of other versions
    broken = copy.deepcopy(report)
    broken["metrics"]["tuned"][name] = 35.0  # a percentage where a share belongs
    with pytest.raises(jsonschema.ValidationError, match="maximum"):
        report_module.validate(broken)
    for where in (("metrics", "tuned"), ("deltas", "tuned"), ("per_type", "tuned", "가정 살펴보기")):
        broken = copy.deepcopy(report)
        parent = broken
        for key in where:
            parent = parent[key]
        del parent[name]
        with pytest.raises(jsonschema.ValidationError, match=name):
            report_module.validate(broken)
        report_module.validate(broken, complete=False)
    # the tables: report.md (every metric, the deltas), run's summary, the card's index and results
    markdown = (out / "report.md").read_text(encoding="utf-8")
    assert f"| {name} | 1.0000 | 0.3500 (-0.6500) |" in markdown and f"| tuned | {name} | -0.6500 |" in markdown
    assert f"{name:<26}{1:>13.4f}{0.35:>13.4f}" in report_module.summary_table(report).splitlines()
    cfg = load_config(None, ["score.checkpoints=true"])
    model_card = card.model_card(cfg, report)
    assert {r.metric_config: (r.metric_type, r.metric_value) for r in model_card.data.eval_results}[name] == (
        "rate", report["metrics"]["tuned"][name])
    assert f"| {name} | 1.0000 | 0.3500 | -0.6500 | -0.6500 [" in model_card.text
    # the checkpoint table and the trackers' keys
    points = checkpoint_points(cfg, ["base", "tuned", "checkpoint-2"], report["metrics"] | {
        "checkpoint-2": report["metrics"]["base"]}, {"steps": 3})
    assert [p[name] for p in points] == [1.0, report["metrics"]["tuned"][name]]
    assert f"| {name} |" in report_module.markdown(report | {"checkpoints": points}).split("## Training checkpoints")[1]
    assert tracked_values(report["metrics"], ["tuned"])[f"eval/tuned/{name}"] == report["metrics"]["tuned"][name]
    # the gate, in the metric's direction (lower is better): more outputs without "?" is a rise that fails
    _, worse = scored_run(tmp_path / "b", lambda i, ref: WRONG)  # no "?" at all
    for rule in ("point", "significant"):
        assert gate(report_path, worse, "--max-drop", f"{name}=0.05", "--rule", rule) == 1
        assert f"{name} rise" in capsys.readouterr().out
        assert gate(worse, report_path, "--max-drop", f"{name}=0.05", "--rule", rule) == 0
    capsys.readouterr()


def test_the_gate_reads_direction_and_pairing_from_the_entry(extra_metric, tmp_path, capsys, monkeypatch):
    _, report_path = scored_run(tmp_path, two_thirds_right)
    unpaired = replace(EXTRA, pairable=False)
    monkeypatch.setattr(metrics, "REGISTRY", metrics.REGISTRY[:-1] + (unpaired,))
    assert gate(report_path, report_path, "--max-drop", f"{extra_metric}=0", "--rule", "significant") == 2
    assert "no meaningful paired interval" in capsys.readouterr().err
    assert gate(report_path, report_path, "--max-drop", f"{extra_metric}=0") == 0
    monkeypatch.setattr(metrics, "REGISTRY", metrics.REGISTRY[:-1] + (replace(EXTRA, direction=metrics.NEITHER),))
    assert gate(report_path, report_path, "--max-drop", f"{extra_metric}=0") == 2
    assert "no better direction" in capsys.readouterr().err


def test_a_metric_enabled_by_config_is_absent_from_reports_without_it(monkeypatch, tmp_path):
    optional = replace(EXTRA, enabled=lambda score_cfg: score_cfg.checkpoints)
    monkeypatch.setattr(metrics, "REGISTRY", metrics.REGISTRY + (optional,))
    report = read(scored_run(tmp_path, two_thirds_right)[1])  # validated when written: not required
    assert EXTRA.name not in report["metrics"]["tuned"] and EXTRA.name not in report["deltas"]["tuned"]
    assert optional in metrics.enabled(load_config(None, ["score.checkpoints=true"]).score)
