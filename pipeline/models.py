"""Loading a model and its tokenizer from a resolved Source (pipeline/sources.py), and checking LoRA targets.

Only safetensors are ever loaded and `trust_remote_code` is never passed, so a checkpoint cannot run code. A Hub
source's token goes straight to `from_pretrained`. torch/transformers are imported inside the functions that need
them, so that importing this module costs nothing.
"""

from __future__ import annotations

import difflib

from pipeline import sources
from pipeline.config import ModelConfig
from pipeline.errors import ConfigError, ResourceError, first_line, hub_error, is_out_of_memory
from pipeline.sources import Source


def resolve_dtype(cfg: ModelConfig):
    import torch

    if cfg.dtype == "auto":
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    return getattr(torch, cfg.dtype)


def load_tokenizer(cfg: ModelConfig, source: Source | None = None):
    """The model's tokenizer.json loaded as it is into the Rust tokenizer, for a Hub id and a local folder alike.

    transformers 5's AutoTokenizer rebuilds a GemmaTokenizer from tokenizer.json by parsing it in Python first: 33
    MB of JSON for Gemma's 262k vocabulary, whose freed objects stay in the process (RSS +150-200 MB for the whole
    run, measured). Loading the file straight into the Rust tokenizer gives the same ids and text (tested against
    AutoTokenizer on every sample row, plain and chat) in a third of the memory. A model without a tokenizer.json
    (none of Gemma 3's) falls back to AutoTokenizer.
    """
    from transformers import AutoTokenizer, TokenizersBackend

    from pipeline import cpu_tuning

    source = source or sources.model_source(cfg)
    # Left padding, as GemmaTokenizer sets it: the side batched generation needs.
    options = dict(revision=source.revision, token=source.token, padding_side="left")
    with _hub_errors(source):
        try:
            tokenizer = TokenizersBackend.from_pretrained(source.location, **options)
        except ValueError:  # "Couldn't instantiate the backend tokenizer": no tokenizer.json
            tokenizer = AutoTokenizer.from_pretrained(source.location, **options)
    cpu_tuning.release_freed_memory()
    return tokenizer


def load_model(cfg: ModelConfig, source: Source | None = None, device=None):
    import torch
    import transformers

    from pipeline import cpu_tuning

    source = source or sources.model_source(cfg)
    dtype = resolve_dtype(cfg)
    with _hub_errors(source):
        config = transformers.AutoConfig.from_pretrained(source.location, revision=source.revision, token=source.token)
        if dtype == torch.float16 and config.model_type.startswith("gemma3"):
            raise ConfigError(f"model.dtype=float16 is refused for {source} ({config.model_type}): Gemma 3's "
                              "activations overflow fp16 and the loss turns NaN; use bfloat16 (GPU) or float32 "
                              "(CPU), or auto")
        model = transformers.AutoModelForCausalLM.from_pretrained(
            source.location, revision=source.revision, token=source.token, dtype=dtype,
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

    def __init__(self, source: Source):
        self.source = source

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc is None or isinstance(exc, (ResourceError, ConfigError)) or not isinstance(exc, Exception):
            return False
        if is_out_of_memory(exc):
            return False  # exit 3 from the CLI, naming the keys to lower
        if self.source.kind != "hub":  # config.json and safetensors are there (check_model_folder): unloadable
            raise ConfigError(f"{self.source.key}: cannot load the model from {self.source}: {first_line(exc)}"
                              ) from None
        raise hub_error(exc, f"{self.source.key}: cannot load {self.source.location!r} from the Hub",
                        "download the model where there is network and set model.source to its local directory, "
                        "or use embedded:gemma-3-270m") from None
