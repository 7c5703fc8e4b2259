"""Loading a model and its tokenizer from a resolved Source (pipeline/sources.py), and checking LoRA targets.

Only safetensors are ever loaded and `trust_remote_code` is never passed, so a checkpoint cannot run code. A Hub
source's token goes straight to `from_pretrained`. torch/transformers are imported inside the functions that need
them, so that importing this module costs nothing.
"""

from __future__ import annotations

import difflib
import json
import logging
import warnings
from pathlib import Path

from pipeline.config import ModelConfig
from pipeline.errors import ConfigError, ResourceError, first_line, hub_error, is_out_of_memory
from pipeline.sources import Source

log = logging.getLogger(__name__)
# PEFT (wrapping a model to train it, or to load an adapter in generate and export) and TRL read the deprecated
# `model.is_gradient_checkpointing`; the warning it raises is about their code, not anything a user can change. Set
# here, where every stage that loads a model passes, so that `generate` alone is as quiet as `run`.
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
# An unused special token whose name says what it is for, for a tokenizer without a pad token: a dedicated pad first.
PAD_CANDIDATES = ("pad", "unused", "reserved")


def resolve_dtype(cfg: ModelConfig):
    import torch

    if cfg.dtype == "auto":
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    return getattr(torch, cfg.dtype)


def load_tokenizer(cfg: ModelConfig, source: Source):
    """The model's tokenizer.json loaded as it is into the Rust tokenizer, for a Hub id and a local folder alike.

    transformers 5's AutoTokenizer rebuilds a GemmaTokenizer from tokenizer.json by parsing it in Python first: 33
    MB of JSON for Gemma's 262k vocabulary, whose freed objects stay in the process (RSS +150-200 MB for the whole
    run, measured). Loading the file straight into the Rust tokenizer gives the same ids and text (tested against
    AutoTokenizer on every sample row, plain and chat) in a third of the memory. A model without a tokenizer.json
    (none of Gemma 3's) falls back to AutoTokenizer. A tokenizer without a pad token gets one (set_pad_token).
    """
    from transformers import AutoTokenizer, TokenizersBackend

    from pipeline import cpu_tuning

    # Left padding, as GemmaTokenizer sets it: the side batched generation needs.
    options = dict(revision=source.revision, token=source.token, padding_side="left")
    if source.kind != "hub" and _would_parse_tokenizer_json(Path(source.location)):
        # transformers 5 saves a tokenizers-backed tokenizer without added_tokens_decoder (the embedded model's, a
        # save_pretrained copy), and on loading one it parses all of tokenizer.json in Python to rebuild that map
        # from its "added_tokens" (1.4 s of the 2.8 s load for Gemma's 262k vocabulary, measured): the same tokens
        # the Rust tokenizer reads from the same file. An empty map skips that parse; ids, text, special tokens
        # and a save_pretrained copy are the same (tests/test_models.py). A Hub model's config lists its tokens.
        options["added_tokens_decoder"] = {}
    with _hub_errors(source):
        try:
            tokenizer = TokenizersBackend.from_pretrained(source.location, **options)
        except ValueError:  # "Couldn't instantiate the backend tokenizer": no tokenizer.json
            tokenizer = AutoTokenizer.from_pretrained(source.location, **options)
    set_pad_token(tokenizer, source)
    cpu_tuning.release_freed_memory()
    return tokenizer


def _would_parse_tokenizer_json(folder: Path) -> bool:
    """A folder with a tokenizer.json whose tokenizer_config.json does not list added_tokens_decoder."""
    try:
        config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False  # no readable config: from_pretrained as it is, which reports what is wrong
    return (folder / "tokenizer.json").is_file() and "added_tokens_decoder" not in config


def set_pad_token(tokenizer, source: Source) -> None:
    """A pad token distinct from EOS, for training and generation alike (both load the tokenizer here).

    Padding with EOS (the tutorial's choice) masks EOS wherever padding is masked, and the model never learns to
    stop. A tokenizer whose pad token is missing or is EOS pads with an unused special token of its own vocabulary
    (Llama 3's <|finetune_right_pad_id|>, a Qwen2 <|..._pad|>, a <reserved...> or <unused...> one): one the model
    already has an embedding row for, never seen in text or in the chat template, so nothing is resized. A
    tokenizer with a pad token of its own (Gemma's <pad>) is left as it is.
    """
    if tokenizer.pad_token is not None and tokenizer.pad_token_id != tokenizer.eos_token_id:
        return
    used = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id}
    if getattr(tokenizer, "chat_template", None):
        turns = [{"role": "user", "content": "?"}, {"role": "assistant", "content": "?"}]
        used.update(tokenizer(tokenizer.apply_chat_template(turns, tokenize=False), add_special_tokens=False)
                    ["input_ids"])
    spare = {index: token.content for index, token in sorted(tokenizer.added_tokens_decoder.items())
             if token.special and index not in used}
    for word in PAD_CANDIDATES:
        chosen = next((index for index, content in spare.items() if word in content.lower()), None)
        if chosen is not None:
            tokenizer.pad_token = spare[chosen]
            log.info("the tokenizer of %s has no pad token apart from EOS: padding with %s (id %d), an unused "
                     "special token", source, spare[chosen], chosen)
            return
    raise ConfigError(f"the tokenizer of {source} has no pad token distinct from EOS and no unused special token "
                      "(pad, unused, reserved) to pad with; padding with EOS would mask EOS from the loss and the "
                      "model would never learn to stop")


def load_model(cfg: ModelConfig, source: Source, device=None):
    import torch
    import transformers

    from pipeline import cpu_tuning, families

    dtype = resolve_dtype(cfg)
    with _hub_errors(source):
        config = transformers.AutoConfig.from_pretrained(source.location, revision=source.revision, token=source.token)
        refusal = families.of(config).fp16_refusal
        if dtype == torch.float16 and refusal:
            raise ConfigError(f"model.dtype=float16 is refused for {source} ({config.model_type}): {refusal}; use "
                              "bfloat16 (GPU) or float32 (CPU), or auto")
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
