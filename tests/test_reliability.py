"""Interruptions with real signals (the in-process trials at every stop point are tests/test_interruptions.py),
disk full, leaked secrets, untrusted code, reproducibility."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT, write_splits
from entrypoint import main
from pipeline import generate as generate_module
from pipeline.errors import ConfigError, ResourceError
from pipeline.atomic import write_json_atomic


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_splits(tmp_path_factory.mktemp("data"), train=40, validation=2, test=12)


def job_args(command, tiny_model_dir, data_dir, out, *extra):
    return [sys.executable, "entrypoint.py", command, f"model.source={tiny_model_dir}", f"data.source={data_dir}",
            f"output.dir={out}", "train.max_steps=30", "train.logging_steps=1", "train.save_steps=1000",
            "train.per_device_train_batch_size=2", "generate.batch_size=1", "generate.max_new_tokens=12",
            "generate.stop_strings=[]", *extra]


def start(args, log_path):
    log = open(log_path, "w")
    return subprocess.Popen(args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT), log


def wait_for(predicate, process, timeout=240):
    """Polls for an event the job writes (a logged step, a written row), failing if the job ends first."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert process.poll() is None, "the job ended before it could be interrupted"
        assert time.monotonic() < deadline, "timed out waiting for the job"
        time.sleep(0.05)


def finish(args, **kwargs):
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600, **kwargs)


def test_disk_full_during_generate_keeps_the_earlier_rows(tiny_model_dir, data_dir, tmp_path, monkeypatch, capsys):
    assert main(job_args("train", tiny_model_dir, data_dir, tmp_path, "train.max_steps=2")[2:]) == 0
    adapter = (tmp_path / "train" / "adapter" / "adapter_model.safetensors").read_bytes()
    real_fsync, calls = os.fsync, []

    def full_disk(fd):
        calls.append(fd)
        if len(calls) == 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full_disk)
    code = main(job_args("generate", tiny_model_dir, data_dir, tmp_path, "train.max_steps=2")[2:])
    assert code == 3
    assert "No space left on device" in capsys.readouterr().err
    rows = (tmp_path / "generate" / "predictions.jsonl").read_text().splitlines()
    # generate.batch_size=1: one fsync per row; the fourth failed after its row was written (the fault is in
    # fsync alone), and the job stopped there: four whole base rows, none after.
    assert len(calls) == 4 and [json.loads(r)["model"] for r in rows] == ["base"] * 4
    assert (tmp_path / "train" / "adapter" / "adapter_model.safetensors").read_bytes() == adapter


def test_disk_full_while_writing_json_leaves_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "summary.json"
    write_json_atomic(target, {"version": 1})

    def no_space(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", no_space)
    with pytest.raises(ResourceError, match="disk full while writing .*summary.json; earlier outputs are intact"):
        write_json_atomic(target, {"version": 2})
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {"version": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


@pytest.mark.subprocess
def test_the_token_appears_in_no_output_log_or_report(tiny_model_dir, data_dir, tmp_path):
    env_token, file_token = "hf_EnvTokenABCDEF123456789", "hf_FileTokenZYXWVU987654321"
    token_file = tmp_path / "token"
    token_file.write_text(file_token)
    out = tmp_path / "out"
    env = {**os.environ, "HF_TOKEN": env_token, "HF_TOKEN_FILE": str(token_file)}
    args = job_args("run", tiny_model_dir, data_dir, out, "train.max_steps=2", "score.bootstrap_samples=20")
    args.insert(2, "-v")  # debug logging: the most talkative the job gets
    result = finish(args, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    written = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.name == "report.json" for p in written)
    for token in (env_token, file_token):
        for fragment in (token, token[3:15], token[-10:]):
            assert fragment not in result.stdout + result.stderr
            for path in written:
                assert fragment.encode() not in path.read_bytes(), path


@pytest.mark.subprocess
def test_an_unexpected_error_after_the_model_loads_is_exit_4_with_one_line(tiny_model_dir, data_dir, tmp_path):
    """Never 1 (the regression code): 4, one line on stderr naming the log, the traceback in that log."""
    inject = ("import sys, entrypoint, pipeline.models as models\n"
              "load = models.load_model\n"
              "def broken(*args, **kwargs):\n"
              "    load(*args, **kwargs)\n"
              "    raise RuntimeError('injected fault after the model loaded')\n"
              "models.load_model = broken\n"
              "sys.exit(entrypoint.main(sys.argv[1:]))\n")
    result = finish([sys.executable, "-c", inject, *job_args("train", tiny_model_dir, data_dir, tmp_path)[2:]])
    assert result.returncode == 4, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [result.stderr.strip().splitlines()[-1]]
    assert errors[0].startswith("error: internal error: RuntimeError: injected fault after the model loaded")
    assert str(tmp_path / "job.log") in errors[0]
    log = (tmp_path / "job.log").read_text(encoding="utf-8")
    assert "Traceback" in log and "injected fault" in log


def test_out_of_memory_while_training_is_exit_3_naming_the_batch_size(tiny_model_dir, data_dir, tmp_path,
                                                                      monkeypatch, capsys):
    import transformers

    def no_memory(self, *args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 3.00 GiB")

    with monkeypatch.context() as small_gpu:
        small_gpu.setattr(transformers.Trainer, "train", no_memory)
        assert main(job_args("train", tiny_model_dir, data_dir, tmp_path)[2:]) == 3
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "train.per_device_train_batch_size=2" in err and "train.auto_find_batch_size=true" in err
    # Following the advice in the same output dir: nothing was saved, so the new batch size trains there.
    assert main(job_args("train", tiny_model_dir, data_dir, tmp_path, "train.max_steps=2",
                         "train.per_device_train_batch_size=1")[2:]) == 0


@pytest.mark.subprocess
@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_second_signal_stops_at_once_with_its_own_exit_code(tiny_model_dir, data_dir, tmp_path, second):
    """Through the real CLI: SIGTERM in the middle of a generation batch is recorded (the batch would finish and
    be written); a second signal stops at once with its own code (143, 130) and the batch in flight is not written."""
    out = tmp_path / "out"
    assert main(job_args("train", tiny_model_dir, data_dir, out, "train.max_steps=2")[2:]) == 0
    log_path = tmp_path / "generate.log"
    # 1,500 new tokens a row, no stop string: a batch of 8 takes seconds, long enough to be stopped in flight.
    process, log = start(job_args("generate", tiny_model_dir, data_dir, out, "generate.batch_size=8",
                                  "generate.max_new_tokens=1500"), log_path)
    wait_for(lambda: "generate base" in log_path.read_text(errors="replace"), process)
    process.send_signal(signal.SIGTERM)
    wait_for(lambda: "received SIGTERM" in log_path.read_text(errors="replace"), process)
    process.send_signal(second)
    assert process.wait(timeout=60) == 128 + second
    log.close()
    assert f"stopped at once by a second {second.name}" in log_path.read_text()
    assert (out / "generate" / "predictions.jsonl").read_text() == ""  # the first batch never finished


def converting(args, log_path, cache):
    """Starts a conversion of the embedded model into an empty cache and returns once it is under way."""
    process, log = start(args, log_path)
    wait_for(lambda: "converting the embedded Gemma 3 270M" in log_path.read_text(errors="replace"), process)
    return process, log


def assert_no_half_model(cache):
    left = sorted(str(p.relative_to(cache)) for p in cache.rglob("*") if "gemma-3-270m" in p.name)
    assert left == [], f"half a model left in the cache: {left}"


@pytest.mark.subprocess
def test_sigterm_during_the_embedded_conversion_exits_143_promptly_leaving_no_half_model(tmp_path):
    cache = tmp_path / "cache"
    args = [sys.executable, "entrypoint.py", "model", "fetch", f"model.cache_dir={cache}"]
    process, log = converting(args, tmp_path / "fetch.log", cache)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=10) == 143
    log.close()
    assert_no_half_model(cache)


@pytest.mark.subprocess
@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux unshare")
def test_sigterm_reaches_the_job_as_pid_1_of_a_pid_namespace(tmp_path):
    """As in the container: Python is PID 1, which the kernel shields from signals whose action is the default, so
    only a handler installed first thing makes `docker stop` work during a conversion."""
    probe = subprocess.run(["unshare", "-p", "-f", "--mount-proc", "true"], capture_output=True, timeout=60)
    if probe.returncode != 0:
        pytest.skip(f"cannot create a PID namespace here: {probe.stderr.decode().strip()}")
    cache = tmp_path / "cache"
    args = ["unshare", "-p", "-f", "--mount-proc", sys.executable, "entrypoint.py", "model", "fetch",
            f"model.cache_dir={cache}"]
    process, log = converting(args, tmp_path / "fetch.log", cache)
    children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
    assert len(children) == 1
    job = int(children[0])
    nspid = next(line for line in Path(f"/proc/{job}/status").read_text().splitlines() if line.startswith("NSpid:"))
    assert nspid.split()[-1] == "1"  # PID 1 in its own namespace
    os.kill(job, signal.SIGTERM)
    assert process.wait(timeout=10) == 143
    log.close()
    assert_no_half_model(cache)


REMOTE_CONFIG = """
from pathlib import Path
Path({marker!r}).write_text("configuration_evil.py ran")
from transformers import Gemma3TextConfig

class EvilConfig(Gemma3TextConfig):
    model_type = "evil_gemma"
"""
REMOTE_MODEL = """
from pathlib import Path
Path({marker!r}).write_text("modeling_evil.py ran")
from transformers import Gemma3ForCausalLM
from .configuration_evil import EvilConfig

class EvilForCausalLM(Gemma3ForCausalLM):
    config_class = EvilConfig
"""


REMOTE_TOKENIZER = """
from pathlib import Path
Path({marker!r}).write_text("tokenization_evil.py ran")
from transformers import TokenizersBackend

class EvilTokenizer(TokenizersBackend):
    pass
"""


def remote_code_model(tiny_model_dir, folder: Path, marker: Path, custom: str) -> Path:
    """The tiny model with custom code that writes `marker` when it runs, which only trust_remote_code=True loads.

    custom="model": config.json has a model_type transformers does not know and an auto_map pointing at
    configuration_evil.py / modeling_evil.py in the folder. custom="tokenizer": the model is a plain Gemma 3, but
    there is no tokenizer.json (so the job falls back to AutoTokenizer) and tokenizer_config.json's auto_map points
    at tokenization_evil.py."""
    shutil.copytree(tiny_model_dir, folder)
    if custom == "model":
        config = json.loads((folder / "config.json").read_text())
        config.update(model_type="evil_gemma", architectures=["EvilForCausalLM"],
                      auto_map={"AutoConfig": "configuration_evil.EvilConfig",
                                "AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"})
        (folder / "config.json").write_text(json.dumps(config))
        (folder / "configuration_evil.py").write_text(REMOTE_CONFIG.format(marker=str(marker)))
        (folder / "modeling_evil.py").write_text(REMOTE_MODEL.format(marker=str(marker)))
    else:
        (folder / "tokenizer.json").unlink()
        tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
        tokenizer_config.update(tokenizer_class="EvilTokenizer",
                                auto_map={"AutoTokenizer": [None, "tokenization_evil.EvilTokenizer"]})
        (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
        (folder / "tokenization_evil.py").write_text(REMOTE_TOKENIZER.format(marker=str(marker)))
    return folder


@pytest.mark.parametrize("custom", ["model", "tokenizer"])
def test_a_model_that_needs_remote_code_is_refused_and_its_code_never_runs(custom, tiny_model_dir, data_dir,
                                                                           tmp_path, capsys, monkeypatch):
    assert main(["config", "show", "model.trust_remote_code=true"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: unknown config key: model.trust_remote_code"]
    marker = tmp_path / "remote-code-ran"
    folder = remote_code_model(tiny_model_dir, tmp_path / "custom-code-model", marker, custom)
    out = tmp_path / "out"

    assert main(job_args("train", folder, data_dir, out)[2:]) == 2  # a config error: a retry fails the same way
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith(f"error: model.source: cannot load the model from {folder}: "), \
        errors
    if custom == "model":  # transformers' own reason (the tokenizer's: it has nothing else to build from)
        assert "contains custom code which must be executed" in errors[0]
    assert not marker.exists(), marker.read_text()
    assert not (out / "train").exists()

    # The control: with trust_remote_code=True, transformers does run the folder's code, so the refusal above is
    # the job's doing, not a broken fixture. (Its module cache in tmp_path, not the user's.)
    from transformers import AutoConfig, dynamic_module_utils

    monkeypatch.setattr(dynamic_module_utils, "HF_MODULES_CACHE", str(tmp_path / "modules"))
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    try:
        if custom == "model":
            assert type(AutoConfig.from_pretrained(folder, trust_remote_code=True)).__name__ == "EvilConfig"
        else:  # the class AutoTokenizer(trust_remote_code=True) would take (no tokenizer.json to build it from)
            assert dynamic_module_utils.get_class_from_dynamic_module(
                "tokenization_evil.EvilTokenizer", folder).__name__ == "EvilTokenizer"
    finally:
        for name in set(sys.modules) - before:
            del sys.modules[name]
    assert marker.read_text() == f"{'configuration' if custom == 'model' else 'tokenization'}_evil.py ran"


def test_pickle_adapters_are_refused(tiny_model_dir, data_dir, tmp_path):
    adapter = tmp_path / "train" / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text("{}")
    torch.save({"weights": torch.zeros(1)}, adapter / "adapter_model.bin")
    from pipeline.config import load_config
    cfg = load_config(None, [f"model.source={tiny_model_dir}", f"data.source={data_dir}", f"output.dir={tmp_path}"])
    with pytest.raises(ConfigError, match="pickle"):
        generate_module.generate(cfg, tmp_path)


def test_same_config_and_seed_give_bit_identical_adapters(tiny_model_dir, data_dir, tmp_path):
    adapters = []
    for name in ("a", "b"):
        assert main(job_args("train", tiny_model_dir, data_dir, tmp_path / name, "train.max_steps=3")[2:]) == 0
        adapters.append(load_file(tmp_path / name / "train" / "adapter" / "adapter_model.safetensors"))
    assert adapters[0].keys() == adapters[1].keys()
    assert all(torch.equal(adapters[0][k], adapters[1][k]) for k in adapters[0])
