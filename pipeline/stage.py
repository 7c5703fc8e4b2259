"""What every stage shares: which config sections it depends on, atomic writes, and "is this stage done?".

A stage directory (<output>/train, <output>/generate) holds stage.json with the hash of the config sections the
stage depends on. Rerunning with the same hash resumes or skips; a different hash is refused, so outputs of two
configs never mix in one directory.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import platform
import resource
import signal
import sys
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

from pipeline.config import Config, to_dict
from pipeline.errors import ConfigError, ResourceError

# The config sections each stage's outputs depend on (score reads everything).
STAGE_SECTIONS = {
    "train": ("model", "data", "prompt", "lora", "train"),
    "generate": ("model", "data", "prompt", "lora", "train", "generate"),
    "score": ("model", "data", "prompt", "lora", "train", "generate", "score"),
}
PACKAGES = ("torch", "transformers", "peft", "trl", "accelerate", "datasets", "sacrebleu", "rouge-score")


def config_hash(cfg: Config, sections: tuple[str, ...]) -> str:
    resolved = to_dict(cfg)
    text = json.dumps({s: resolved[s] for s in sections}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def claim_stage_dir(stage_dir: Path, stage: str, cfg: Config) -> str:
    """Creates stage_dir/stage.json, or checks that an existing one was made with the same config."""
    sections = STAGE_SECTIONS[stage]
    digest = config_hash(cfg, sections)
    marker = stage_dir / "stage.json"
    if marker.is_file():
        recorded = json.loads(marker.read_text(encoding="utf-8"))
        if recorded.get("config_hash") != digest:
            raise ConfigError(f"{stage_dir} holds a {stage} stage made with a different config (sections "
                              f"{', '.join(sections)} changed): set output.dir to a new directory or remove it")
        return digest
    stage_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(marker, {"stage": stage, "config_hash": digest,
                               "config": {s: to_dict(cfg)[s] for s in sections}})
    return digest


def write_json_atomic(path: Path, payload: dict) -> None:
    write_text_atomic(path, json.dumps(payload, ensure_ascii=False, indent=2) + "\n")


def write_text_atomic(path: Path, text: str) -> None:
    """Writes through a temporary file and a rename: a reader sees the old file or the new one, never half."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.errno == errno.ENOSPC:
            raise ResourceError(f"disk full while writing {path}; earlier outputs are intact") from None
        raise


@contextmanager
def stop_on_signal():
    """While active, SIGTERM/SIGINT only record the signal, so the stage can stop at a safe point (after a training
    step, with a checkpoint; after a flushed generation batch) and raise Interrupted. A second signal stops at once.

    Kubernetes sends SIGTERM on preemption and eviction, then SIGKILL after the grace period (30 s by default).
    """
    received: list[int] = []

    def record(signum, frame):
        if received:
            raise KeyboardInterrupt
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
    """This process's place under accelerate launch / torchrun (or the only process). Without a GPU it says so,
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
