"""What every stage shares: what its outputs depend on, atomic writes, stopping on a signal, and facts to record.

A stage directory (<output>/train, <output>/generate) holds stage.json with the hash of the config keys its
outputs depend on (STAGE_INPUTS), written only once the stage's inputs are validated. Rerunning with the same
hash resumes or skips. A different hash:
- train: refused when the directory holds checkpoints or an adapter (outputs of two configs never mix); a
  directory with none (a run that failed before training) is simply taken over;
- generate: the old predictions are moved to <output>/superseded/generate-<hash>/ and generation starts over,
  so a new test slice regenerates without retraining and no finished work is deleted.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import platform
import resource
import shutil
import signal
import sys
from importlib import metadata
from pathlib import Path

from pipeline.config import Config, to_dict
from pipeline.errors import ConfigError, ResourceError, StoppedAtOnce

log = logging.getLogger(__name__)

# The config keys each stage's outputs depend on: a section, a section.key, or -section.key to leave one out.
# Cache locations, tokens, checkpoint frequency, batch sizes and trackers change no output.
STAGE_INPUTS = {
    "train": ("model", "-model.token_file", "-model.cache_dir", "-model.adapter", "-model.adapter_revision",
              "data", "-data.test_path", "-data.max_test_samples", "prompt", "lora",
              "train", "-train.save_steps", "-train.save_total_limit", "-train.report_to"),
    "generate": ("model", "-model.token_file", "-model.cache_dir", "data.source", "data.test_path", "data.revision",
                 "data.input_column", "data.target_column", "data.label_column", "data.max_test_samples", "prompt",
                 "generate", "-generate.batch_size", "-generate.max_batch_size", "score.checkpoints"),
    "score": ("model", "data", "prompt", "lora", "train", "generate", "score"),
}
# What counts as a stage's outputs (an empty checkpoints/ folder, which the Trainer makes at once, does not).
STAGE_OUTPUTS = {"train": ("checkpoints/checkpoint-*", "adapter", "train_summary.json"),
                 "generate": ("predictions*.jsonl", "generate_summary.json")}
PACKAGES = ("torch", "transformers", "peft", "trl", "accelerate", "datasets", "sacrebleu", "rouge-score")


def stage_hash(cfg: Config, stage: str, files: dict | None = None) -> str:
    """A hash of the config keys `stage` depends on, and of `files` (what its input files hold: the generate
    stage's adapters, by the hash of their weights, so a new adapter at the same path is not taken for the old)."""
    resolved, inputs = to_dict(cfg), {"files": files}
    for item in STAGE_INPUTS[stage]:
        section, _, key = item.lstrip("-").partition(".")
        if item.startswith("-"):
            del inputs[section][key]
        elif key:
            inputs.setdefault(section, {})[key] = resolved[section][key]
        else:
            inputs[section] = dict(resolved[section])
    text = json.dumps(inputs, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def recorded_hash(stage_dir: Path) -> str | None:
    marker = stage_dir / "stage.json"
    return json.loads(marker.read_text(encoding="utf-8")).get("config_hash") if marker.is_file() else None


def check_stage_dir(stage_dir: Path, stage: str, digest: str) -> None:
    """Before any work: ConfigError when a train directory holds checkpoints or an adapter of another config."""
    recorded = recorded_hash(stage_dir)
    if stage == "train" and recorded not in (None, digest) and _outputs(stage_dir, stage):
        raise ConfigError(f"{stage_dir} holds a train stage made with a different config (model, data, prompt, "
                          f"lora or train settings changed): set output.dir to a new directory or remove it")


def claim_stage_dir(stage_dir: Path, stage: str, cfg: Config, digest: str) -> None:
    """Once the stage's inputs are validated: records this config in stage_dir/stage.json (main process first).
    A generate directory made with a different config has its outputs moved aside first."""
    check_stage_dir(stage_dir, stage, digest)
    recorded = recorded_hash(stage_dir)
    if recorded == digest:
        return
    if recorded is not None and _outputs(stage_dir, stage):  # generate: keep the old predictions, start over
        aside = stage_dir.parent / "superseded" / f"{stage}-{recorded}"
        aside.mkdir(parents=True, exist_ok=True)
        for path in _outputs(stage_dir, stage) + [stage_dir / "stage.json"]:
            path.rename(aside / path.name)
        log.warning("%s: the config changed since %s was made; its outputs were moved to %s", stage, stage_dir, aside)
    stage_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(stage_dir / "stage.json", {"stage": stage, "config_hash": digest,
                                                 "config": {s: to_dict(cfg)[s] for s in STAGE_INPUTS["score"]}})


def _outputs(stage_dir: Path, stage: str) -> list[Path]:
    return [path for pattern in STAGE_OUTPUTS[stage] for path in sorted(stage_dir.glob(pattern))]


@contextlib.contextmanager
def atomic_path(path: Path, replace: bool = True):
    """Yields a temporary sibling of `path` to write a file or a whole folder into; on success it is renamed onto
    `path` (a folder replaces the old one; with replace=False an existing `path` is kept and ours dropped), on any
    failure removed. A reader sees the old version or the new one, never half. Disk full: ResourceError.
    What is renamed into place gets the modes of normalize_modes, whoever wrote it."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    _remove(tmp)
    try:
        yield tmp
        if path.exists() and not replace:
            _remove(tmp)
            return
        normalize_modes(tmp)
        if tmp.is_dir():
            _remove(path)
        os.replace(tmp, path)
    except OSError as exc:
        _remove(tmp)
        if exc.errno == errno.ENOSPC:
            raise ResourceError(f"disk full while writing {path}; earlier outputs are intact") from None
        raise
    except BaseException:
        _remove(tmp)
        raise


def normalize_modes(path: Path) -> None:
    """Files 0o666 and folders 0o777 less the umask (0644 / 0755 by default), as open() and mkdir() make them, for
    `path` and everything under it. safetensors writes its files 0600: a sidecar or another account that uploads
    the outputs could not read the adapter. Symbolic links are left alone (chmod would follow them)."""
    umask = os.umask(0)  # the only way to read it; set back at once
    os.umask(umask)
    if path.is_symlink():
        return
    if not path.is_dir():
        os.chmod(path, 0o666 & ~umask)
        return
    for root, _, files in os.walk(path):
        os.chmod(root, 0o777 & ~umask)
        for name in files:
            if not os.path.islink(os.path.join(root, name)):
                os.chmod(os.path.join(root, name), 0o666 & ~umask)


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: Path, payload: dict) -> None:
    write_text_atomic(path, json.dumps(payload, ensure_ascii=False, indent=2) + "\n")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def stop_on_signal():
    """While active, SIGTERM/SIGINT only record the signal, so the stage can stop at a safe point (after a training
    step, with a checkpoint; after a flushed generation batch) and raise Interrupted. A second signal stops at once.

    Kubernetes sends SIGTERM on preemption and eviction, then SIGKILL after the grace period (30 s by default).
    """
    received: list[int] = []

    def record(signum, frame):
        if received:
            raise StoppedAtOnce(signum)
        received.append(signum)
        print(f"received {signal.Signals(signum).name}: stopping at the next safe point "
              "(send it again to stop at once)", file=sys.stderr, flush=True)

    previous = {sig: signal.signal(sig, record) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def process_state():
    """This process's place under torchrun / accelerate launch (or the only process). Without a GPU it says so,
    which makes several processes one gloo group on CPUs instead of N unrelated single processes."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def package_versions() -> dict[str, str]:
    versions = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def peak_memory() -> dict[str, float]:
    """Peak resident memory of this process and, on CUDA, peak allocated GPU memory (GiB)."""
    import torch

    # ru_maxrss is KiB on Linux and bytes on macOS.
    scale = 1 if platform.system() == "Darwin" else 1024
    peak = {"cpu_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**30, 3)}
    if torch.cuda.is_available():
        peak["gpu_allocated_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    return peak
