"""What every stage shares: what its outputs depend on, atomic writes, stopping on a signal, and facts to record.

A stage directory (<output>/train, <output>/generate) holds stage.json with what the stage's outputs depend on
(its `inputs`: the config keys of STAGE_CONFIG and, by content, the rows, model, prompt and adapters it used, from
pipeline/identity.py) and their hash, written only once the stage's inputs are validated. Rerunning with the same
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
from pipeline.errors import ConfigError, ResourceError, Stopped

log = logging.getLogger(__name__)

# The config keys each stage's outputs depend on (a section, a section.key, or -section.key to leave one out),
# beside what the stage reads by content (rows, model, prompt, adapters: pipeline/identity.py). Where a thing is
# identified by content its location is not here (data paths, model.source, adapter paths): the same content at
# another path is the same input. Cache locations, tokens, checkpoint frequency, batch sizes and trackers change
# no output. The score stage depends on everything: its report shows the whole config.
STAGE_CONFIG = {
    "train": ("model.dtype", "model.attn_implementation", "prompt", "lora",
              "train", "-train.save_steps", "-train.save_total_limit", "-train.report_to"),
    "generate": ("model.dtype", "model.attn_implementation", "prompt",
                 "generate", "-generate.batch_size", "-generate.max_batch_size", "-generate.adapters"),
    "score": ("model", "data", "prompt", "lora", "train", "generate", "score"),
}
# What counts as a stage's outputs (an empty checkpoints/ folder, which the Trainer makes at once, does not).
STAGE_OUTPUTS = {"train": ("checkpoints/checkpoint-*", "adapter", "train_summary.json"),
                 "generate": ("predictions*.jsonl", "generate_summary.json")}
PACKAGES = ("torch", "transformers", "peft", "trl", "accelerate", "datasets", "sacrebleu", "rouge-score")


def stage_inputs(cfg: Config, stage: str, content: dict) -> dict:
    """What `stage`'s outputs depend on: its config keys and `content` (identities of what it reads)."""
    resolved, selected = to_dict(cfg), {}
    for item in STAGE_CONFIG[stage]:
        section, _, key = item.lstrip("-").partition(".")
        if item.startswith("-"):
            del selected[section][key]
        elif key:
            selected.setdefault(section, {})[key] = resolved[section][key]
        else:
            selected[section] = dict(resolved[section])
    return {"config": selected, **content}


def inputs_hash(inputs: dict) -> str:
    text = json.dumps(inputs, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def recorded_inputs(stage_dir: Path) -> dict | None:
    marker = stage_dir / "stage.json"
    return json.loads(marker.read_text(encoding="utf-8")).get("inputs") if marker.is_file() else None


def differences(recorded: dict, current: dict, prefix: str = "") -> list[str]:
    """Where two inputs differ, as "key: recorded -> current" (long values such as hashes shortened)."""
    found = []
    for key in sorted(set(recorded) | set(current), key=str):
        a, b, name = recorded.get(key), current.get(key), f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            found += differences(a, b, name + ".")
        elif a != b:
            found.append(f"{name}: {_short(a)} -> {_short(b)}")
    return found


def _short(value) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 40 else text[:37] + "..."


def check_up_to_date(stage_dir: Path, stage: str, inputs: dict, command: str) -> None:
    """For a stage that reads another's outputs: ConfigError naming what changed when `stage_dir` was made from
    other inputs than `inputs` (the current config, data, model...), and the command that redoes it."""
    recorded = recorded_inputs(stage_dir)
    if recorded is None:
        raise ConfigError(f"{stage_dir} records no inputs (made by an older version?): rerun {command}")
    changed = differences(recorded, inputs)
    if changed:
        shown = "; ".join(changed[:4]) + (f"; and {len(changed) - 4} more" if len(changed) > 4 else "")
        raise ConfigError(f"the {stage} outputs in {stage_dir} were made from other inputs ({shown}): "
                          f"rerun {command} with this config")


def recorded_hash(stage_dir: Path) -> str | None:
    """The inputs hash stage_dir was made from; None when it was never claimed; "older-version" for a stage.json
    of a version that recorded config keys only (its outputs are not taken for this version's)."""
    marker = stage_dir / "stage.json"
    if not marker.is_file():
        return None
    return json.loads(marker.read_text(encoding="utf-8")).get("inputs_hash") or "older-version"


def check_stage_dir(stage_dir: Path, stage: str, digest: str) -> None:
    """Before any work: ConfigError when a train directory holds checkpoints or an adapter of another config."""
    recorded = recorded_hash(stage_dir)
    if stage == "train" and recorded not in (None, digest) and _outputs(stage_dir, stage):
        raise ConfigError(f"{stage_dir} holds a train stage made from other inputs (the model, data, prompt, lora "
                          f"or train settings changed): set output.dir to a new directory or remove it")


def claim_stage_dir(stage_dir: Path, stage: str, inputs: dict) -> None:
    """Once the stage's inputs are validated: records them in stage_dir/stage.json (main process first). A
    generate directory made from other inputs has its outputs moved aside first."""
    digest = inputs_hash(inputs)
    check_stage_dir(stage_dir, stage, digest)
    recorded = recorded_hash(stage_dir)
    if recorded == digest:
        return
    if recorded is not None and _outputs(stage_dir, stage):  # generate: keep the old predictions, start over
        aside = stage_dir.parent / "superseded" / f"{stage}-{recorded}"
        aside.mkdir(parents=True, exist_ok=True)
        for path in _outputs(stage_dir, stage) + [stage_dir / "stage.json"]:
            path.rename(aside / path.name)
        log.warning("%s: its inputs changed since %s was made; its outputs were moved to %s", stage, stage_dir, aside)
    stage_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(stage_dir / "stage.json", {"stage": stage, "inputs_hash": digest, "inputs": inputs})


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


def install_stop_handlers() -> None:
    """First thing in the process: SIGTERM/SIGINT stop the job at once (exit 143/130) wherever it is: converting
    or loading a model, between stages, scoring. Inside a stage's stop_on_signal they wait for its next safe point.

    Python as PID 1 (a container's ENTRYPOINT in exec form, as in this image) would otherwise ignore SIGTERM: the
    kernel applies no default action to PID 1, so `docker stop` or a pod deletion waited for SIGKILL.
    """
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _stop_now)


def _stop_now(signum, frame):
    raise Stopped(signum, f"stopped by {signal.Signals(signum).name}; finished outputs are kept: rerun the same "
                          "command to resume")


@contextlib.contextmanager
def stop_on_signal():
    """While active, SIGTERM/SIGINT only record the signal, so the stage can stop at a safe point (after a training
    step, with a checkpoint; after a flushed generation batch) and raise Interrupted. A second signal stops at once.

    Kubernetes sends SIGTERM on preemption and eviction, then SIGKILL after the grace period (30 s by default).
    """
    received: list[int] = []

    def record(signum, frame):
        if received:
            raise Stopped(signum, f"stopped at once by a second {signal.Signals(signum).name}; finished outputs "
                                  "are kept: rerun the same command to resume")
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
