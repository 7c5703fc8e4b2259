"""Facts about the process a stage runs in, recorded with its outputs: where it stands among the processes of a
run, the code (commit, and edits to the code the stage runs), package versions, hardware and peak memory.

    process_state()          -> accelerate's PartialState (one process, or one of N under torchrun)
    provenance(code)         -> {"git": git_state(code), "packages": ..., "hardware": ...}
    peak_memory()            -> {"cpu_rss_gib": ..., "gpu_allocated_gib": ...}

torch and accelerate are imported only when asked for, so that commands which never load a model stay fast.
"""

from __future__ import annotations

import os
import platform
import resource
import subprocess
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("torch", "transformers", "peft", "trl", "accelerate", "datasets", "sacrebleu", "rouge-score")
# The code the model stages run (paths under ROOT): an uncommitted edit there makes their provenance "dirty"; an
# edit elsewhere (a README, bench/results.json that `make bench` rewrites) changes no output and does not.
PIPELINE_CODE = ("entrypoint.py", "pipeline")


def process_state():
    """This process's place under torchrun / accelerate launch (or the only process). Without a GPU it says so,
    which makes several processes one gloo group on CPUs instead of N unrelated single processes."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def provenance(code: tuple[str, ...] = PIPELINE_CODE) -> dict:
    """The commit (and whether `code` had edits), packages and hardware of this run."""
    return {"git": git_state(code), "packages": package_versions(), "hardware": hardware()}


def git_state(code: tuple[str, ...] = PIPELINE_CODE) -> dict:
    """The commit this code came from ($GIT_COMMIT in a container without .git) and whether the files under
    `code` (paths relative to the repository) had uncommitted edits."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                check=True, timeout=30).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", *code], cwd=ROOT,
                                    capture_output=True, text=True, check=True, timeout=30).stdout.strip())
        return {"commit": commit, "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"commit": os.environ.get("GIT_COMMIT") or None, "dirty": None}


def package_versions() -> dict[str, str]:
    versions = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def hardware() -> dict:
    import torch

    cuda = torch.cuda.is_available()
    return {"platform": platform.platform(), "cpu": cpu_model(), "cpu_count": os.cpu_count(),
            "accelerator": torch.cuda.get_device_name(0) if cuda else None,
            "accelerator_count": torch.cuda.device_count() if cuda else 0}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def peak_memory() -> dict[str, float]:
    """Peak resident memory of this process and, on CUDA, peak allocated GPU memory (GiB)."""
    import torch

    # ru_maxrss is KiB on Linux and bytes on macOS.
    scale = 1 if platform.system() == "Darwin" else 1024
    peak = {"cpu_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**30, 3)}
    if torch.cuda.is_available():
        peak["gpu_allocated_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    return peak
