"""One typed config for the whole job: frozen dataclasses, loaded from YAML, with dotted CLI overrides.

    cfg = load_config("configs/demo.yaml", ["train.learning_rate=2e-4", "lora.target_modules=[q_proj,v_proj]"])

Unknown keys and wrong types raise ConfigError naming the dotted key, so a typo never silently falls back to
a default (the tutorial's `q_prog` typo is the cautionary tale).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import yaml

from pipeline.errors import ConfigError

EMBEDDED_GEMMA_270M = "embedded:gemma-3-270m"


@dataclass(frozen=True)
class ModelConfig:
    # A Hub id (google/gemma-3-1b-it), a local directory with safetensors, or embedded:gemma-3-270m.
    source: str = EMBEDDED_GEMMA_270M
    revision: Optional[str] = None
    # Where the embedded model is converted to; default: $HF_HOME/socratic-lora, else $XDG_CACHE_HOME/socratic-lora.
    cache_dir: Optional[str] = None
    # File holding a Hub token; otherwise HF_TOKEN or HF_TOKEN_FILE from the environment.
    token_file: Optional[str] = None
    # auto = bf16 on GPUs that support it, fp32 on CPU. float16 is refused for Gemma 3 (it overflows).
    dtype: Literal["auto", "bfloat16", "float32", "float16"] = "auto"
    attn_implementation: Literal["sdpa", "eager"] = "sdpa"


@dataclass(frozen=True)
class DataConfig:
    # A Hub dataset id, or a local directory holding {train,validation,test}.{jsonl,csv,parquet}.
    source: str = "data/sample"
    # Optional per-split files; they take precedence over `source` for that split.
    train_path: Optional[str] = None
    validation_path: Optional[str] = None
    test_path: Optional[str] = None
    revision: Optional[str] = None
    input_column: str = "input"
    target_column: str = "target"
    # The first N rows (not a random sample), so runs are comparable; null = the whole split.
    max_train_samples: Optional[int] = None
    max_eval_samples: Optional[int] = None


@dataclass(frozen=True)
class PromptConfig:
    # plain: the "### context: ...\n### question:" layout; chat: the same text inside the tokenizer's chat template.
    format: Literal["plain", "chat"] = "plain"


@dataclass(frozen=True)
class LoraConfig:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    bias: Literal["none", "all", "lora_only"] = "none"


@dataclass(frozen=True)
class TrainConfig:
    learning_rate: float = 1e-4
    num_train_epochs: float = 1.0
    max_steps: int = -1
    per_device_train_batch_size: int = 4
    gradient_accumulation_steps: int = 1
    optim: str = "adamw_torch"
    lr_scheduler_type: str = "linear"
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    logging_steps: int = 10
    save_steps: int = 50
    save_total_limit: int = 2
    seed: int = 42
    # Off by default: it trades ~40% speed for memory, which a 1B LoRA run does not need.
    gradient_checkpointing: bool = False
    padding_free: bool = True
    # Prompts longer than this are cut from the left of the context (the completion is never cut).
    max_prompt_tokens: int = 512


@dataclass(frozen=True)
class GenerateConfig:
    batch_size: int = 8
    max_new_tokens: int = 64
    max_prompt_tokens: int = 512
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 42
    # A question is one line: stop at the first newline.
    stop_strings: tuple[str, ...] = ("\n",)


@dataclass(frozen=True)
class ScoreConfig:
    bootstrap_samples: int = 1000
    seed: int = 12345
    num_examples: int = 10


@dataclass(frozen=True)
class OutputConfig:
    dir: str = "outputs/demo"


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    output: OutputConfig = field(default_factory=OutputConfig)


def load_config(path: str | Path | None, overrides: typing.Sequence[str] = ()) -> Config:
    raw: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}".replace("\n", " ")) from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
    for item in overrides:
        _apply_override(raw, item)
    cfg = _build(Config, raw, prefix="")
    validate(cfg)
    return cfg


def to_dict(cfg: Config) -> dict:
    """Plain dict (lists, not tuples) in field order: for YAML/JSON dumps."""
    def plain(value):
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value
    return plain(dataclasses.asdict(cfg))


def validate(cfg: Config) -> None:
    """Checks across fields that types alone cannot express."""
    positive = {
        "lora.r": cfg.lora.r, "lora.alpha": cfg.lora.alpha, "train.learning_rate": cfg.train.learning_rate,
        "train.per_device_train_batch_size": cfg.train.per_device_train_batch_size,
        "train.gradient_accumulation_steps": cfg.train.gradient_accumulation_steps,
        "train.logging_steps": cfg.train.logging_steps, "train.save_steps": cfg.train.save_steps,
        "train.max_prompt_tokens": cfg.train.max_prompt_tokens, "generate.batch_size": cfg.generate.batch_size,
        "generate.max_new_tokens": cfg.generate.max_new_tokens,
        "generate.max_prompt_tokens": cfg.generate.max_prompt_tokens,
    }
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{key} must be > 0, got {value}")
    if not 0.0 <= cfg.lora.dropout < 1.0:
        raise ConfigError(f"lora.dropout must be in [0, 1), got {cfg.lora.dropout}")
    if not 0.0 <= cfg.train.warmup_ratio < 1.0:
        raise ConfigError(f"train.warmup_ratio must be in [0, 1), got {cfg.train.warmup_ratio}")
    if not cfg.lora.target_modules:
        raise ConfigError("lora.target_modules must name at least one module")
    for key in ("max_train_samples", "max_eval_samples"):
        value = getattr(cfg.data, key)
        if value is not None and value <= 0:
            raise ConfigError(f"data.{key} must be > 0 or null, got {value}")
    if cfg.model.dtype == "float16" and is_gemma3_name(cfg.model.source):
        raise ConfigError("model.dtype=float16 is refused for Gemma 3: its activations overflow fp16 and the "
                          "loss turns NaN; use bfloat16 (GPU) or float32 (CPU), or auto")


def is_gemma3_name(source: str) -> bool:
    name = source.lower()
    return source == EMBEDDED_GEMMA_270M or "gemma-3" in name or "gemma3" in name


# --- building typed dataclasses from plain YAML values -------------------------------------------------------

def _apply_override(raw: dict, item: str) -> None:
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {item!r} is not of the form section.key=value")
    parts = key.split(".")
    cls = Config
    for depth, part in enumerate(parts):
        fields = {f.name: f for f in dataclasses.fields(cls)}
        if part not in fields:
            raise ConfigError(f"unknown config key: {key}")
        hint = typing.get_type_hints(cls)[part]
        is_last = depth == len(parts) - 1
        if dataclasses.is_dataclass(hint) != (not is_last):
            raise ConfigError(f"{key}: override a single value such as {key}.<field>=..., not a whole section"
                              if is_last else f"unknown config key: {key}")
        cls = hint
    node = raw
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"config section {part!r} must be a mapping")
    try:
        node[parts[-1]] = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        node[parts[-1]] = text


def _build(cls, raw, prefix: str):
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in names:
            raise ConfigError(f"unknown config key: {prefix}{key}")
    values = {}
    for name in names & raw.keys():
        hint = hints[name]
        key = prefix + name
        if dataclasses.is_dataclass(hint):
            values[name] = _build(hint, raw[name], key + ".")
        else:
            values[name] = _coerce(raw[name], hint, key)
    return cls(**values)


def _coerce(value, hint, key: str):
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner, key)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: must be one of {', '.join(map(str, args))}; got {value!r}")
        return value
    if origin is tuple:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if hint is float:
        # YAML 1.1 reads "2e-4" (no dot) as a string; accept any text that is a plain number.
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {type(value).__name__} {value!r}")
        return value
    raise TypeError(f"unsupported config type for {key}: {hint}")
