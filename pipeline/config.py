"""One typed config for the whole job: frozen dataclasses, loaded from YAML, with dotted CLI overrides.

    cfg = load_config("configs/demo.yaml", ["train.learning_rate=2e-4", "lora.target_modules=[q_proj,v_proj]"])

Unknown keys and wrong types raise ConfigError naming the dotted key, so a typo never silently falls back to
a default (the tutorial's `q_prog` typo is the cautionary tale).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional, Union

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
    # auto = bf16 on GPUs that support it, fp32 on CPU. float16 is refused for Gemma 3 when the model's config is
    # read (its activations overflow fp16 and the loss turns NaN).
    dtype: Literal["auto", "bfloat16", "float32", "float16"] = "auto"
    attn_implementation: Literal["sdpa", "eager"] = "sdpa"
    # An existing LoRA adapter to evaluate as "tuned" instead of training one: a local directory with
    # adapter_config.json + adapter_model.safetensors, or a Hub id (at adapter_revision). `run` then skips training.
    adapter: Optional[str] = None
    adapter_revision: Optional[str] = None


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
    # A column holding the question type (the English SoQG layout: thought / question / label): the target then
    # becomes "(label) question", the layout type accuracy and the per-type table read. null: the target carries it.
    label_column: Optional[str] = None
    # The first N rows (not a random sample), so runs are comparable; null = the whole split.
    max_train_samples: Optional[int] = None
    max_validation_samples: Optional[int] = None
    max_test_samples: Optional[int] = None


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
    # The Trainer's own search: halve the batch on an out-of-memory error and retry (GPU).
    auto_find_batch_size: bool = False
    # Trainer integrations to log to (each must be installed); the score stage logs its metrics to the same run.
    report_to: tuple[Literal["tensorboard", "mlflow", "wandb", "trackio"], ...] = ()
    # Also save the tokenizer into the adapter folder. Off: training never changes the tokenizer, and the copy is
    # 33 MB next to a 6 MB adapter; serving loads the base model's own.
    save_tokenizer: bool = False


@dataclass(frozen=True)
class GenerateConfig:
    # auto: start at max_batch_size and halve on an out-of-memory error (accelerate's find_executable_batch_size).
    batch_size: Union[int, Literal["auto"]] = 8
    max_batch_size: int = 64
    max_new_tokens: int = 64
    max_prompt_tokens: int = 512
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 42
    # A question is one line: stop at the first newline that follows some text.
    stop_strings: tuple[str, ...] = ("\n",)
    # More adapters to evaluate in the same pass, {name: local dir or Hub id}: the base model is loaded once.
    adapters: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ScoreConfig:
    # How ROUGE and BLEU split text into tokens: Korean morphemes (mecab-ko), sacrebleu's 13a or intl for
    # space-separated languages, or characters.
    tokenize: Literal["ko-mecab", "13a", "intl", "char"] = "ko-mecab"
    bootstrap_samples: int = 1000
    seed: int = 12345
    num_examples: int = 10
    # The model the paired-bootstrap deltas are taken against.
    reference: str = "base"
    # Also evaluate every training checkpoint still on disk (one metric point per saved step in the report).
    checkpoints: bool = False


@dataclass(frozen=True)
class ExportConfig:
    # `export` generates the first N test rows with the merged model and with base + adapter before it keeps the
    # merged model: greedy outputs must be identical in float32.
    check_rows: int = 32
    # In bf16 (or fp16) merging rounds the weights: the share of identical rows below which export fails (exit 1).
    # Measured on CPU, 32 rows: 0.84 on Gemma 3 270M with a random r=16 adapter, 0.81 on the tests' tiny model; a
    # merge with a tampered weight (tests/test_export.py) shared none.
    min_identical_share: float = 0.75


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
    export: ExportConfig = field(default_factory=ExportConfig)
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
    """Checks across fields that types alone cannot express. Values only the installed transformers/TRL can judge
    (optimizer and scheduler names) are checked by the train stage before any model loads."""
    positive = {
        "lora.r": cfg.lora.r, "lora.alpha": cfg.lora.alpha, "train.learning_rate": cfg.train.learning_rate,
        "train.per_device_train_batch_size": cfg.train.per_device_train_batch_size,
        "train.gradient_accumulation_steps": cfg.train.gradient_accumulation_steps,
        "train.logging_steps": cfg.train.logging_steps, "train.save_steps": cfg.train.save_steps,
        "train.max_prompt_tokens": cfg.train.max_prompt_tokens, "generate.max_batch_size": cfg.generate.max_batch_size,
        "generate.max_new_tokens": cfg.generate.max_new_tokens,
        "generate.max_prompt_tokens": cfg.generate.max_prompt_tokens,
        "score.bootstrap_samples": cfg.score.bootstrap_samples, "export.check_rows": cfg.export.check_rows,
    }
    if cfg.generate.batch_size != "auto":
        positive["generate.batch_size"] = cfg.generate.batch_size
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{key} must be > 0, got {value}")
    non_negative = {"score.num_examples": cfg.score.num_examples, "score.seed": cfg.score.seed,
                    "train.seed": cfg.train.seed, "generate.seed": cfg.generate.seed,
                    "train.weight_decay": cfg.train.weight_decay, "train.max_grad_norm": cfg.train.max_grad_norm,
                    "train.num_train_epochs": cfg.train.num_train_epochs}
    for key, value in non_negative.items():
        if value < 0:
            raise ConfigError(f"{key} must be >= 0, got {value}")
    if cfg.train.max_steps != -1 and cfg.train.max_steps <= 0:
        raise ConfigError(f"train.max_steps must be > 0, or -1 to train for train.num_train_epochs; got "
                          f"{cfg.train.max_steps}")
    if not 0.0 <= cfg.lora.dropout < 1.0:
        raise ConfigError(f"lora.dropout must be in [0, 1), got {cfg.lora.dropout}")
    if not 0.0 <= cfg.train.warmup_ratio < 1.0:
        raise ConfigError(f"train.warmup_ratio must be in [0, 1), got {cfg.train.warmup_ratio}")
    if not cfg.generate.temperature > 0:
        raise ConfigError(f"generate.temperature must be > 0, got {cfg.generate.temperature}")
    if not 0.0 < cfg.generate.top_p <= 1.0:
        raise ConfigError(f"generate.top_p must be in (0, 1], got {cfg.generate.top_p}")
    if not 0.0 <= cfg.export.min_identical_share <= 1.0:
        raise ConfigError(f"export.min_identical_share must be in [0, 1], got {cfg.export.min_identical_share}")
    if not cfg.lora.target_modules:
        raise ConfigError("lora.target_modules must name at least one module")
    for key in ("max_train_samples", "max_validation_samples", "max_test_samples"):
        value = getattr(cfg.data, key)
        if value is not None and value <= 0:
            raise ConfigError(f"data.{key} must be > 0 or null, got {value}")
    for name in cfg.generate.adapters:
        if name in RESERVED_MODEL_NAMES or not MODEL_NAME.fullmatch(name) or name.startswith("checkpoint-"):
            raise ConfigError(f"generate.adapters: {name!r} cannot name an adapter: use letters, digits, '.', '_' "
                              f"or '-', not {', '.join(RESERVED_MODEL_NAMES)} or checkpoint-N")
    known = {*RESERVED_MODEL_NAMES, *cfg.generate.adapters}
    if cfg.score.reference not in known and not CHECKPOINT_NAME.fullmatch(cfg.score.reference):
        raise ConfigError(f"score.reference: {cfg.score.reference!r} is not a model of this run "
                          f"({', '.join(sorted(known))}, or checkpoint-N with score.checkpoints)")
    for integration in cfg.train.report_to:
        package = TRACKER_PACKAGES[integration]
        if importlib.util.find_spec(package) is None:
            raise ConfigError(f"train.report_to: {integration} needs the {package} package, which is not "
                              f"installed (pip install {package}), or remove it from train.report_to")


# Models every run has: the base model and the tuned one (trained here, or model.adapter).
RESERVED_MODEL_NAMES = ("base", "tuned")
MODEL_NAME = re.compile(r"[A-Za-z0-9._-]+")
CHECKPOINT_NAME = re.compile(r"checkpoint-[0-9]+")
TRACKER_PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb", "trackio": "trackio"}
# Keys that were renamed or split: naming the new keys beats a bare "unknown key".
REMOVED_KEYS = {
    "data.max_eval_samples": "data.max_eval_samples was split into data.max_validation_samples (validation loss) "
                             "and data.max_test_samples (the rows generated and scored); set those instead",
}


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
            raise unknown_key(key)
        hint = typing.get_type_hints(cls)[part]
        is_last = depth == len(parts) - 1
        if typing.get_origin(hint) is dict and depth == len(parts) - 2:  # generate.adapters.NAME=path
            break
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
            raise unknown_key(f"{prefix}{key}")
    values = {}
    for name in names & raw.keys():
        hint = hints[name]
        key = prefix + name
        if dataclasses.is_dataclass(hint):
            values[name] = _build(hint, raw[name], key + ".")
        else:
            values[name] = _coerce(raw[name], hint, key)
    return cls(**values)


def unknown_key(key: str) -> ConfigError:
    return ConfigError(REMOVED_KEYS.get(key, f"unknown config key: {key}"))


def _coerce(value, hint, key: str):
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return _coerce(value, options[0], key)
        for inner in options:  # int | Literal["auto"]: the first type that takes the value
            try:
                return _coerce(value, inner, key)
            except ConfigError:
                pass
        expected = " or ".join(", ".join(map(str, typing.get_args(o))) if typing.get_origin(o) is Literal
                               else f"a value of type {o.__name__}" for o in options)
        raise ConfigError(f"{key}: expected {expected}; got {value!r}")
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of name: value, got {type(value).__name__} {value!r}")
        return {_coerce(k, args[0], f"{key} (a name)"): _coerce(v, args[1], f"{key}.{k}") for k, v in value.items()}
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
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if not math.isfinite(value):  # nan passes every range check (all comparisons are false) and fails late
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {type(value).__name__} {value!r}")
        return value
    raise TypeError(f"unsupported config type for {key}: {hint}")
