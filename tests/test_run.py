"""End to end: `run` on the tiny model (and once on the real embedded Gemma 3 270M), as a user runs it."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import unicodedata

import pytest

from conftest import ROOT, write_splits
from entrypoint import main
from eval.report import validate

ENGLISH = ROOT / "tests" / "data" / "soqg-english"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_splits(tmp_path_factory.mktemp("data"), train=8, validation=2, test=4)


def run_args(tiny_model_dir, data_dir, out, *extra):
    return ["run", f"model.source={tiny_model_dir}", f"data.source={data_dir}", f"output.dir={out}",
            "train.max_steps=2", "train.save_steps=1", "generate.max_new_tokens=4", "score.bootstrap_samples=50",
            *extra]


def read_json(path):
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def finished(tiny_model_dir, data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    assert main(run_args(tiny_model_dir, data_dir, out)) == 0
    return out


def test_run_on_the_tiny_model_then_rerun_skips_every_stage(finished, tiny_model_dir, data_dir, capsys):
    report = read_json(finished / "report.json")
    validate(report)
    assert report["rows"] == 4 and report["train"]["steps"] == 2
    produced = {p: p.stat().st_mtime_ns for p in finished.rglob("*") if p.is_file() and p.name != "job.log"}
    capsys.readouterr()
    assert main(run_args(tiny_model_dir, data_dir, finished)) == 0
    out = capsys.readouterr().out
    assert "rougeL" in out and f"report: {finished / 'report.json'}" in out
    assert {p: p.stat().st_mtime_ns for p in finished.rglob("*") if p.is_file() and p.name != "job.log"} == produced
    assert "already finished" in (finished / "job.log").read_text(encoding="utf-8")


def test_every_file_and_folder_the_run_wrote_has_the_same_mode(finished):
    """Files 0o666 and folders 0o777 less the umask, the adapter's safetensors and the checkpoints included
    (safetensors writes 0600 by itself): a sidecar or another account can read every output."""
    umask = os.umask(0)
    os.umask(umask)
    modes = {path.relative_to(finished): path.stat().st_mode & 0o777 for path in finished.rglob("*")}
    assert any(path.match("checkpoints/checkpoint-*/adapter_model.safetensors") for path in modes)
    assert {path: oct(mode) for path, mode in modes.items()
            if mode != (0o777 if (finished / path).is_dir() else 0o666) & ~umask} == {}


def test_another_test_slice_regenerates_and_rescores_without_retraining(tiny_model_dir, data_dir, tmp_path):
    assert main(run_args(tiny_model_dir, data_dir, tmp_path, "data.max_test_samples=2")) == 0
    adapter = tmp_path / "train" / "adapter" / "adapter_model.safetensors"
    trained_at = adapter.stat().st_mtime_ns
    first = (tmp_path / "generate" / "predictions.jsonl").read_text()
    assert read_json(tmp_path / "report.json")["rows"] == 2
    # more test rows, and settings that change no output: a token file, the cache, the checkpoint frequency
    (tmp_path / "token").write_text("hf_unused")
    assert main(run_args(tiny_model_dir, data_dir, tmp_path, "data.max_test_samples=null", "train.save_steps=50",
                         f"model.cache_dir={tmp_path / 'cache'}", f"model.token_file={tmp_path / 'token'}")) == 0
    assert adapter.stat().st_mtime_ns == trained_at  # no retraining
    assert read_json(tmp_path / "report.json")["rows"] == 4
    superseded = list((tmp_path / "superseded").glob("generate-*/predictions.jsonl"))
    assert len(superseded) == 1 and superseded[0].read_text() == first  # the earlier predictions are kept


def test_a_failed_rerun_leaves_the_finished_predictions_in_place(finished, tiny_model_dir, data_dir, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    before = (out / "generate" / "predictions.jsonl").read_bytes()
    typo = ["generate", *run_args(tiny_model_dir, data_dir, out, f"model.source={tmp_path / 'typo'}")[1:]]
    assert main(typo) == 2  # a model folder that does not exist: a config error
    assert (out / "generate" / "predictions.jsonl").read_bytes() == before
    assert not (out / "superseded").exists()
    assert main(run_args(tiny_model_dir, data_dir, out)) == 0  # the corrected command: nothing to redo
    assert (out / "generate" / "predictions.jsonl").read_bytes() == before


def test_an_nfd_copy_of_the_sample_gives_the_same_predictions_and_metrics(tiny_model_dir, tmp_path):
    """data/sample saved as NFD (Hangul as jamo, as macOS often writes it) is the same data."""
    for split in ("train", "validation", "test"):
        text = (ROOT / "data" / "sample" / f"{split}.jsonl").read_text(encoding="utf-8")
        (tmp_path / "nfd").mkdir(exist_ok=True)
        (tmp_path / "nfd" / f"{split}.jsonl").write_text(unicodedata.normalize("NFD", text), encoding="utf-8")
    assert (tmp_path / "nfd" / "test.jsonl").read_bytes() != (ROOT / "data" / "sample" / "test.jsonl").read_bytes()
    limits = ("data.max_train_samples=8", "data.max_validation_samples=2", "data.max_test_samples=6")
    for name, source in (("nfc", ROOT / "data" / "sample"), ("nfd", tmp_path / "nfd")):
        assert main(run_args(tiny_model_dir, source, tmp_path / f"out-{name}", *limits)) == 0
    predictions = "generate/predictions.jsonl"
    assert (tmp_path / "out-nfd" / predictions).read_bytes() == (tmp_path / "out-nfc" / predictions).read_bytes()
    nfd, nfc = (read_json(tmp_path / f"out-{name}" / "report.json") for name in ("nfd", "nfc"))
    assert nfd["metrics"] == nfc["metrics"] and nfd["test_set"] == nfc["test_set"]


@pytest.mark.subprocess
def test_an_english_dataset_in_the_soqg_layout_end_to_end(tiny_model_dir, tmp_path):
    """The original English Socratic dataset keeps the question type in a `label` column."""
    result = subprocess.run(
        [sys.executable, "entrypoint.py", "run", "--config", "configs/demo.yaml", "score.tokenize=13a",
         f"data.source={ENGLISH}", "data.input_column=thought", "data.target_column=question",
         "data.label_column=label", f"model.source={tiny_model_dir}", f"output.dir={tmp_path}", "train.max_steps=2",
         "generate.max_new_tokens=4", "score.bootstrap_samples=50"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = read_json(tmp_path / "report.json")
    settings = report["metric_settings"]
    assert settings["tokenize"] == "13a" and "tok:13a" in settings["signatures"]["bleu"]
    assert set(report["per_type"]["tuned"]) == {"clarity", "assumptions", "reasons_evidence",
                                                "implication_consequences", "alternate_viewpoints_perspectives"}
    assert report["examples"][0]["reference"] == ("(clarity) What do you mean by better: for the workers, the "
                                                  "company, or the customers?")


def test_an_existing_adapter_is_evaluated_without_training(finished, tiny_model_dir, data_dir, tmp_path):
    assert main(run_args(tiny_model_dir, data_dir, tmp_path, f"model.adapter={finished / 'train' / 'adapter'}")) == 0
    assert not (tmp_path / "train").exists()
    tuned = [line for line in (tmp_path / "generate" / "predictions.jsonl").read_text().splitlines()
             if json.loads(line)["model"] == "tuned"]
    original = [line for line in (finished / "generate" / "predictions.jsonl").read_text().splitlines()
                if json.loads(line)["model"] == "tuned"]
    assert tuned == original
    report = read_json(tmp_path / "report.json")
    assert report["train"] is None and report["adapter"] == str(finished / "train" / "adapter")


def test_every_saved_checkpoint_gets_a_metric_point(tiny_model_dir, data_dir, tmp_path):
    assert main(run_args(tiny_model_dir, data_dir, tmp_path, "train.max_steps=3", "train.save_total_limit=5",
                         "score.checkpoints=true")) == 0
    report = read_json(tmp_path / "report.json")
    assert [c["step"] for c in report["checkpoints"]] == [1, 2, 3]
    # checkpoint-3 holds the tuned adapter's weights: its point is the tuned model's, not generated twice
    assert report["models"] == ["base", "tuned", "checkpoint-1", "checkpoint-2"]
    assert [c["model"] for c in report["checkpoints"]] == ["checkpoint-1", "checkpoint-2", "tuned"]
    assert all(set(c) >= {"rougeL", "bleu"} for c in report["checkpoints"])
    assert "## Training checkpoints" in (tmp_path / "report.md").read_text(encoding="utf-8")


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.timeout(1200)
def test_run_on_the_embedded_270m_end_to_end_and_stopped_early_then_rerun(embedded_dir, tmp_path):
    """The real default model, offline, through the CLI as a user runs it (a handful of rows); then the real-model
    interruption trial (tests/test_interruptions.py has the rest): the same run stopped by SIGTERM at its first
    steps and rerun ends with the same adapter bytes, predictions and metrics, though the checkpoint it resumed from
    was rotated away before the end (save_total_limit=1)."""
    def command(out):
        return [sys.executable, "entrypoint.py", "run", "--config", "configs/demo.yaml", f"output.dir={out}",
                "data.max_train_samples=12", "data.max_validation_samples=4", "data.max_test_samples=4",
                "train.logging_steps=1", "train.save_steps=1", "train.save_total_limit=1",
                "generate.max_new_tokens=16", "score.bootstrap_samples=100"]

    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    result = subprocess.run(command(straight), cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    report = read_json(straight / "report.json")
    validate(report)
    assert report["train"]["trainable_parameters"] == 1_474_560
    assert report["train"]["adapted_modules"] == ["k_proj", "o_proj", "q_proj", "v_proj"]
    assert report["rows"] == 4 and report["train"]["steps"] == 3
    curve = report["train"]["loss_curve"]
    assert curve[-1][1] < curve[0][1]
    assert (straight / "report.md").is_file() and (straight / "report.png").is_file()

    process = subprocess.Popen(command(stopped), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = stopped / "job.log"
    deadline = time.monotonic() + 600
    while not (log.is_file() and "train: step 1/3" in log.read_text(encoding="utf-8")):  # an event, polled
        assert process.poll() is None and time.monotonic() < deadline, "the run ended before its first step"
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=600) == 143
    resumed_from = [p.name for p in (stopped / "train" / "checkpoints").glob("checkpoint-*")]
    assert len(resumed_from) == 1 and int(resumed_from[0].split("-")[1]) < 3
    result = subprocess.run(command(stopped), cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (stopped / "train" / "checkpoints" / resumed_from[0]).exists()
    for path in ("train/adapter/adapter_model.safetensors", "generate/predictions.jsonl"):
        assert (stopped / path).read_bytes() == (straight / path).read_bytes(), path
    assert read_json(stopped / "report.json")["metrics"] == report["metrics"]


@pytest.mark.subprocess
def test_each_stage_alone_prints_no_warning_a_user_cannot_act_on(tiny_model_dir, data_dir, tmp_path):
    """train, generate (PEFT loads the adapter there too) and score as separate commands, as a user runs them: no
    library FutureWarning or UserWarning reaches the log (PEFT's read of the deprecated is_gradient_checkpointing
    warned in a `generate` run of its own)."""
    for stage in ("train", "generate", "score"):
        result = subprocess.run([sys.executable, "entrypoint.py", stage, *run_args(tiny_model_dir, data_dir,
                                                                                    tmp_path)[1:]],
                                cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        warned = [line for line in result.stderr.splitlines() if "Warning:" in line]
        assert warned == [], (stage, warned)


def test_run_ends_with_where_each_report_file_is(finished, tiny_model_dir, data_dir, capsys):
    capsys.readouterr()
    assert main(run_args(tiny_model_dir, data_dir, finished)) == 0
    last = capsys.readouterr().out.splitlines()[-4:]
    folder = finished.resolve()
    assert last == [f"report: {folder / 'report.json'}", f"{'':8}{folder / 'report.html'}  (open in a browser)",
                    f"{'':8}{folder / 'report.md'}", f"{'':8}{folder / 'report.png'}"]
    assert all(path.is_file() for path in (folder / "report.html", folder / "report.md", folder / "report.png"))
