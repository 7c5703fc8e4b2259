"""Data parallel for real, on CPU processes over gloo: two processes on one node, two "nodes" on localhost through
torch's c10d rendezvous, and a SIGTERM to the launcher in the middle of training and of generation."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT, write_splits

pytestmark = [pytest.mark.subprocess, pytest.mark.timeout(900)]

LAUNCH = [sys.executable, "-m", "pipeline.launch"]
TIMEOUT = 600


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_splits(tmp_path_factory.mktemp("data"), train=48, validation=2, test=11)


def job(tiny_model_dir, data_dir, out, *extra):
    return [f"model.source={tiny_model_dir}", f"data.source={data_dir}", f"output.dir={out}",
            "train.per_device_train_batch_size=2", "train.save_steps=100", "train.logging_steps=1",
            "generate.batch_size=1", "generate.max_new_tokens=8", "generate.stop_strings=[]",
            "score.bootstrap_samples=20", *extra]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(args, **kwargs):
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT, **kwargs)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def wait_for(predicate, process, what, timeout=TIMEOUT):
    """Polls for an event the job writes (a logged step, a written row), failing if the job ends first."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert process.poll() is None, f"the job ended before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def adapter_weights(out):
    return load_file(out / "train" / "adapter" / "adapter_model.safetensors")


# The run both tests share: 12 steps of DDP training, 24 new tokens per row.
RUN = ("train.max_steps=12", "generate.max_new_tokens=24")


@pytest.fixture(scope="module")
def two_nodes(tiny_model_dir, data_dir, tmp_path_factory):
    """`run` as two single-process "nodes" that meet through a c10d rendezvous on localhost, as the Indexed Job in
    k8s/job-multinode.yaml starts them: DDP training, generation sharded across both, one merged file. It is also
    the uninterrupted run the SIGTERM trial ends equal to (two processes either way)."""
    out = tmp_path_factory.mktemp("two-nodes")
    rendezvous = ["--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
                  "--rdzv-endpoint", f"127.0.0.1:{free_port()}", "--rdzv-id", "two-nodes-test"]
    command = ["entrypoint.py", "run", *job(tiny_model_dir, data_dir, out, *RUN)]
    # One thread per process, as torchrun sets for the two processes of one node (the SIGTERM trial's): here both
    # "nodes" share this machine's cores, and the same thread count makes the same sums, bit for bit.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    nodes = [subprocess.Popen(LAUNCH + rendezvous + command, cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for node in nodes:
        _, err = node.communicate(timeout=TIMEOUT)
        assert node.returncode == 0, err[-3000:]
    return out


def test_two_nodes_train_generate_and_score_once(two_nodes, tiny_model_dir, data_dir, tmp_path):
    summary = json.loads((two_nodes / "train" / "train_summary.json").read_text())
    assert summary["steps"] == 12 and summary["trainable_parameters"] == 13_312
    assert json.loads((two_nodes / "generate" / "generate_summary.json").read_text())["processes"] == 2
    assert sorted(p.name for p in (two_nodes / "generate").glob("predictions*")) == ["predictions.jsonl"]
    assert json.loads((two_nodes / "report.json").read_text())["rows"] == 11
    # One process with the same adapter writes the same bytes.
    single = tmp_path / "single"
    shutil.copytree(two_nodes / "train", single / "train")
    run([sys.executable, "entrypoint.py", "generate", *job(tiny_model_dir, data_dir, single, *RUN)])
    merged = (two_nodes / "generate" / "predictions.jsonl").read_bytes()
    assert merged.count(b"\n") == 22
    assert merged == (single / "generate" / "predictions.jsonl").read_bytes()


@pytest.mark.slow
def test_sigterm_to_the_launcher_stops_every_rank_at_the_same_step_and_the_rerun_matches(two_nodes, tiny_model_dir,
                                                                                       data_dir, tmp_path):
    launch = LAUNCH + ["--standalone", "--nproc-per-node", "2", "entrypoint.py"]
    out, straight = tmp_path / "interrupted", two_nodes  # the same job, two processes, never stopped
    # A checkpoint every 4 steps, only the newest kept: the rerun's saves delete the checkpoint it resumed from.
    train = job(tiny_model_dir, data_dir, out, *RUN, "train.save_steps=4", "train.save_total_limit=1")
    log = out / "job.log"
    process = subprocess.Popen(launch + ["train", *train], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    wait_for(lambda: log.is_file() and "step 3/12" in log.read_text(), process, "training step 3")
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=TIMEOUT)
    assert process.returncode == 143, err[-3000:]
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("launch: stopped by SIGTERM")
    checkpoints = sorted((out / "train" / "checkpoints").glob("checkpoint-*"))
    assert len(checkpoints) == 1 and not (out / "train" / "train_summary.json").exists()
    stopped_at = int(checkpoints[0].name.split("-")[1])
    assert 3 <= stopped_at < 12
    assert sorted(p.name for p in checkpoints[0].glob("rng_state*.pth")) == ["rng_state_0.pth", "rng_state_1.pth"]

    run(launch + ["train", *train])
    summary = json.loads((out / "train" / "train_summary.json").read_text())
    assert summary["steps"] == 12 and summary["resumed_from"].endswith(f"checkpoint-{stopped_at}")
    assert not checkpoints[0].exists()  # rotated away before the end, and the run finished all the same
    a, b = adapter_weights(out), adapter_weights(straight)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # Generation: each rank flushes its finished rows and stops; the rerun resumes both shards.
    generate = job(tiny_model_dir, data_dir, out, *RUN)
    process = subprocess.Popen(launch + ["generate", *generate], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    shards = lambda: list((out / "generate").glob("predictions.rank*-of-2.jsonl"))  # noqa: E731
    wait_for(lambda: sum(p.read_text().count("\n") for p in shards()) >= 2, process, "two written rows")
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=TIMEOUT)
    assert process.returncode == 143, err[-3000:]
    kept = sum(p.read_text().count("\n") for p in shards())
    assert 2 <= kept < 44 and not (out / "generate" / "generate_summary.json").exists()
    run(launch + ["generate", *generate])
    assert json.loads((out / "generate" / "generate_summary.json").read_text())["resumed_rows"] == kept
    assert (out / "generate" / "predictions.jsonl").read_bytes() == (
        straight / "generate" / "predictions.jsonl").read_bytes()


def test_a_bad_config_under_the_launcher_exits_2_not_1(tiny_model_dir, data_dir, tmp_path):
    done = subprocess.run(LAUNCH + ["--standalone", "--nproc-per-node", "2", "entrypoint.py", "train",
                                    *job(tiny_model_dir, data_dir, tmp_path, "lora.target_modules=[q_prog]")],
                          cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and "q_prog (did you mean q_proj?)" in done.stderr
