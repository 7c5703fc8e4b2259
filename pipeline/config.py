"""One typed config for the whole job: frozen pydantic dataclasses, loaded from YAML, with dotted CLI overrides.

The defaults are the embedded demo's, configs/demo.yaml: no --config runs exactly what `make demo` runs (and
finds its outputs up to date). Other configs state every value they need (the 1B configs: learning rate, logging
and save steps, batch size, max_new_tokens); tests/test_config.py holds both to it.

    cfg = load_config("configs/demo.yaml", ["train.learning_rate=2e-4", "lora.target_modules=[q_proj,v_proj]"])

Unknown keys and wrong types raise ConfigError naming the dotted key, so a typo never silently falls back to
a default (the tutorial's `q_prog` typo is the cautionary tale). The sections are pydantic dataclasses: types and
ranges are declared on the fields and checked by pydantic, strictly (`1` is no bool, `1.0` or "16" no int), and
the sections stay plain dataclasses to the rest of the job (`dataclasses.replace` validates again).
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import importlib
import importlib.util
import re
import typing
from importlib import metadata
from dataclasses import field
from pathlib import Path
from typing import Annotated, Literal, Optional, Union

import yaml
from pydantic import (BeforeValidator, ConfigDict, Field, StrictBool, StrictInt, StrictStr, TypeAdapter, ValidationError,
                      model_validator)
from pydantic.dataclasses import dataclass

from pipeline.errors import ConfigError
from pipeline.prompt import STYLES

EMBEDDED_GEMMA_270M = "embedded:gemma-3-270m"


def _number_text(value):
    # YAML 1.1 reads "2e-4" (no dot) as a string; accept any text that is a plain number.
    try:
        return float(value) if isinstance(value, str) else value
    except ValueError:
        return value


def _listed(value):
    return [value] if isinstance(value, str) else value  # `stop_strings: "\n"` is a list of one


section = functools.partial(dataclass, frozen=True, config=ConfigDict(extra="forbid"))
Positive = Annotated[StrictInt, Field(gt=0)]
NonNegative = Annotated[StrictInt, Field(ge=0)]
# nan passes every range check (all comparisons are false) and fails late.
Number = Annotated[float, BeforeValidator(_number_text), Field(strict=True, allow_inf_nan=False)]
Names = Annotated[tuple[StrictStr, ...], BeforeValidator(_listed)]


@section
class ModelConfig:
    # A Hub id (google/gemma-3-1b-it), a local directory with safetensors, or embedded:gemma-3-270m.
    source: StrictStr = EMBEDDED_GEMMA_270M
    revision: Optional[StrictStr] = None
    # Where the embedded model is converted to; default: $HF_HOME/socratic-lora, else $XDG_CACHE_HOME/socratic-lora.
    cache_dir: Optional[StrictStr] = None
    # File holding a Hub token; otherwise HF_TOKEN or HF_TOKEN_FILE from the environment.
    token_file: Optional[StrictStr] = None
    # auto = bf16 on GPUs that support it, fp32 on CPU. float16 is refused for Gemma 3 when the model's config is
    # read (its activations overflow fp16 and the loss turns NaN).
    dtype: Literal["auto", "bfloat16", "float32", "float16"] = "auto"
    attn_implementation: Literal["sdpa", "eager"] = "sdpa"
    # An existing LoRA adapter to evaluate as "tuned" instead of training one: a local directory with
    # adapter_config.json + adapter_model.safetensors, or a Hub id (at adapter_revision). `run` then skips training.
    adapter: Optional[StrictStr] = None
    adapter_revision: Optional[StrictStr] = None


@section
class DataConfig:
    # A Hub dataset id, or a local directory holding {train,validation,test}.{jsonl,csv,parquet}.
    source: StrictStr = "data/sample"
    # Optional per-split files; they take precedence over `source` for that split.
    train_path: Optional[StrictStr] = None
    validation_path: Optional[StrictStr] = None
    test_path: Optional[StrictStr] = None
    revision: Optional[StrictStr] = None
    input_column: StrictStr = "input"
    target_column: StrictStr = "target"
    # A column holding the question type (the English SoQG layout: thought / question / label): the target then
    # becomes "(label) question", the layout type accuracy and the per-type table read. null: the target carries it.
    label_column: Optional[StrictStr] = None
    # At most N rows of the split (chosen by `sample`); null = the whole split.
    max_train_samples: Optional[Positive] = None
    max_validation_samples: Optional[Positive] = None
    max_test_samples: Optional[Positive] = None
    # Which rows max_*_samples keep: first, the first N (comparable with runs made before `sample` existed; a split
    # ordered by source or type gives an unrepresentative subset); random, a uniform sample drawn by sample_seed;
    # stratified, the split's question-type proportions (largest remainder), each type at least one row. The same
    # seed and data choose the same rows for every model and run (pipeline/data.py).
    sample: Literal["first", "random", "stratified"] = "first"
    sample_seed: NonNegative = 0


@section
class PromptConfig:
    # A prompt style of pipeline/prompt.py (STYLES): plain, the "### context: ...\n### question:" layout; chat, the
    # same text inside the tokenizer's chat template.
    format: Literal[tuple(STYLES)] = "plain"


@section
class LoraConfig:
    r: Positive = 16
    alpha: Positive = 32
    dropout: Annotated[Number, Field(ge=0, lt=1)] = 0.05
    target_modules: Annotated[Names, Field(min_length=1)] = ("q_proj", "k_proj", "v_proj", "o_proj")
    bias: Literal["none", "all", "lora_only"] = "none"


@section
class TrainConfig:
    learning_rate: Annotated[Number, Field(gt=0)] = 3e-4
    num_train_epochs: Annotated[Number, Field(ge=0)] = 1.0
    max_steps: StrictInt = -1
    per_device_train_batch_size: Positive = 4
    gradient_accumulation_steps: Positive = 1
    optim: StrictStr = "adamw_torch"
    lr_scheduler_type: StrictStr = "linear"
    warmup_ratio: Annotated[Number, Field(ge=0, lt=1)] = 0.0
    weight_decay: Annotated[Number, Field(ge=0)] = 0.0
    max_grad_norm: Annotated[Number, Field(ge=0)] = 1.0
    logging_steps: Positive = 5
    save_steps: Positive = 25
    save_total_limit: StrictInt = 2
    seed: NonNegative = 42
    # Off by default: it trades ~40% speed for memory, which a 1B LoRA run does not need.
    gradient_checkpointing: StrictBool = False
    padding_free: StrictBool = True
    # Prompts longer than this are cut from the left of the context (the completion is never cut).
    max_prompt_tokens: Positive = 512
    # The Trainer's own search: halve the batch on an out-of-memory error and retry (GPU).
    auto_find_batch_size: StrictBool = False
    # Trainer integrations to log to (each must be installed); the score stage logs its metrics to the same run.
    report_to: Annotated[tuple[Literal["tensorboard", "mlflow", "wandb", "trackio"], ...],
                         BeforeValidator(_listed)] = ()
    # Also save the tokenizer into the adapter folder. Off: training never changes the tokenizer, and the copy is
    # 33 MB next to a 6 MB adapter; serving loads the base model's own.
    save_tokenizer: StrictBool = False


@section
class GenerateConfig:
    # auto: start at max_batch_size (on CUDA: at the rows that fit in free GPU memory, at most max_batch_size;
    # pipeline/batch_size.py) and halve on an out-of-memory error (accelerate's find_executable_batch_size).
    batch_size: Union[Positive, Literal["auto"]] = 48
    max_batch_size: Positive = 64
    # Which decoder generates (pipeline/decode.py, decoder()): auto is the greedy loop on a CPU (for a family with
    # a fast spec) and transformers' generate with a static KV cache and a compiled forward on CUDA; `loop`,
    # `generate` (stock, dynamic cache) and `static` force one. Sampling always runs `generate`.
    decoder: Literal["auto", "loop", "generate", "static"] = "auto"
    max_new_tokens: Positive = 48
    max_prompt_tokens: Positive = 512
    do_sample: StrictBool = False
    temperature: Annotated[Number, Field(gt=0)] = 1.0
    top_p: Annotated[Number, Field(gt=0, le=1)] = 1.0
    seed: NonNegative = 42
    # Where a row ends, once some text precedes it. null: the prompt style's (plain and chat: a newline, a question
    # is one line), filled in when the config is loaded; [] for none (stop tokens and max_new_tokens only).
    stop_strings: Optional[Names] = None
    # More adapters to evaluate in the same pass, {name: local dir or Hub id}: the base model is loaded once.
    adapters: dict[StrictStr, StrictStr] = field(default_factory=dict)
    # A folder kept between runs (a CI cache): each model's rows stored there by what they depend on (model,
    # adapter, prompt, decoding, test inputs, packages, device) and reused instead of generated again: the base
    # model's rows serve every adapter gated against it. null: none.
    prediction_cache: Optional[StrictStr] = None


@section
class ScoreConfig:
    # How ROUGE and BLEU split text into tokens: Korean morphemes (mecab-ko), sacrebleu's 13a or intl for
    # space-separated languages, or characters.
    tokenize: Literal["ko-mecab", "13a", "intl", "char"] = "ko-mecab"
    bootstrap_samples: Positive = 1000
    seed: NonNegative = 12345
    num_examples: NonNegative = 10
    # The model the paired-bootstrap deltas are taken against.
    reference: StrictStr = "base"
    # Also evaluate every training checkpoint still on disk (one metric point per saved step in the report).
    checkpoints: StrictBool = False
    # The `semantic` metric (e5 cosine of prediction and reference questions, eval/semantic.py): null runs it when
    # its estimated time is under a minute (the demo: seconds; not the 10,573-row split on a CPU), true/false force
    # it. The score log says which and what it costs either way.
    semantic: Optional[StrictBool] = None
    # A row regressed (improved) when its ROUGE-L fell (rose) against score.reference's by more than this.
    regression_threshold: Annotated[Number, Field(ge=0)] = 0.05
    # Warn (every report format, `run`'s summary; compare --fail-on-warnings gates it) when a model's outputs equal
    # score.reference's on at least this share of rows: an adapter that changed nothing.
    identical_warning: Annotated[Number, Field(ge=0, le=1)] = 0.95


@section
class ExportConfig:
    # `export` generates the first N test rows with the merged model and with base + adapter before it keeps the
    # merged model: greedy outputs must be identical in float32.
    check_rows: Positive = 32
    # In bf16 (or fp16) merging rounds the weights: the share of identical rows below which export fails (exit 1).
    # Measured on CPU, 32 rows: 0.84 on Gemma 3 270M with a random r=16 adapter, 0.81 on the tests' tiny model; a
    # merge with a tampered weight (tests/test_export.py) shared none.
    min_identical_share: Annotated[Number, Field(ge=0, le=1)] = 0.75


@section
class OutputConfig:
    dir: StrictStr = "outputs/demo"


@section
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

    @model_validator(mode="after")
    def _style_stop_strings(self):
        """generate.stop_strings left unset: the prompt style's, so that every reader (decoding, hashes, report,
        card) sees the strings that are in effect."""
        if self.generate.stop_strings is None:
            stops = STYLES[self.prompt.format].stop_strings
            object.__setattr__(self, "generate", dataclasses.replace(self.generate, stop_strings=stops))
        return self


def load_config(path: str | Path | None, overrides: typing.Sequence[str] = ()) -> Config:
    raw = _raw_config(path, overrides)
    try:
        cfg = TypeAdapter(Config).validate_python(raw)
    except ValidationError as exc:
        raise _config_error(exc.errors(), overrides) from None
    validate(cfg)
    return cfg


def output_dir_of(path: str | Path | None, overrides: typing.Sequence[str] = ()) -> str | None:
    """output.dir as a config that fails its checks still gives it (the file's or an override's, else the
    default), so that the error can be logged there; None when the file or an override cannot be read at all or
    output.dir itself is not text."""
    try:
        output = _raw_config(path, overrides).get("output", {})
    except ConfigError:
        return None
    value = output.get("dir", OutputConfig().dir) if isinstance(output, dict) else None
    return value if isinstance(value, str) else None


def to_yaml(cfg: Config) -> str:
    """The config as YAML in field order; text with a line break or another control character double-quoted with
    escapes (stop_strings: ["\\n\\n"]), where PyYAML's default folds it over lines as '\\n\\n    '."""
    return yaml.dump(to_dict(cfg), Dumper=_EscapingDumper, sort_keys=False, allow_unicode=True)


class _EscapingDumper(yaml.SafeDumper):
    pass


def _text(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=None if text.isprintable() else '"')


_EscapingDumper.add_representer(str, _text)


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
    if cfg.train.max_steps != -1 and cfg.train.max_steps <= 0:
        raise ConfigError(f"train.max_steps must be > 0, or -1 to train for train.num_train_epochs; got "
                          f"{cfg.train.max_steps}")
    for name in cfg.generate.adapters:
        if name in RESERVED_MODEL_NAMES or not MODEL_NAME.fullmatch(name) or name.startswith("checkpoint-"):
            raise ConfigError(f"generate.adapters: {name!r} cannot name an adapter: use letters, digits, '.', '_' "
                              f"or '-', not {', '.join(RESERVED_MODEL_NAMES)} or checkpoint-N")
    known = {*RESERVED_MODEL_NAMES, *cfg.generate.adapters}
    if cfg.score.reference not in known and not CHECKPOINT_NAME.fullmatch(cfg.score.reference):
        raise ConfigError(f"score.reference: {cfg.score.reference!r} is not a model of this run "
                          f"({', '.join(sorted(known))}, or checkpoint-N with score.checkpoints)")
    for key, value, module, enum in (("train.optim", cfg.train.optim, "training_args", "OptimizerNames"),
                                     ("train.lr_scheduler_type", cfg.train.lr_scheduler_type, "trainer_utils",
                                      "SchedulerType")):
        allowed = transformers_choices(module, enum)
        if value not in allowed:
            raise ConfigError(f"{key}: {value!r} is not one of transformers {metadata.version('transformers')}'s "
                              f"values: {', '.join(allowed)}")
    if cfg.train.lr_scheduler_type in SCHEDULERS_NEEDING_EVALUATION:
        raise ConfigError(f"train.lr_scheduler_type: {cfg.train.lr_scheduler_type!r} steps on an evaluation metric, "
                          "and training here runs no evaluation (validation loss is taken once, at the end)")
    for integration in cfg.train.report_to:
        package = TRACKER_PACKAGES[integration]
        if importlib.util.find_spec(package) is None:
            raise ConfigError(f"train.report_to: {integration} needs the {package} package, which is not "
                              f"installed (pip install {package}), or remove it from train.report_to")


@functools.cache
def transformers_choices(module: str, enum: str) -> tuple[str, ...]:
    """The values of an enum of the installed transformers (training_args.OptimizerNames, trainer_utils.
    SchedulerType), read from its source: importing either module takes ~4.5 s (torch, peft), which checking a
    config (config show) must not cost. Imported after all when the source does not list them as plain strings."""
    spec = importlib.util.find_spec("transformers")
    try:
        tree = ast.parse((Path(spec.submodule_search_locations[0]) / f"{module}.py").read_text(encoding="utf-8"))
        body = next(node.body for node in tree.body if isinstance(node, ast.ClassDef) and node.name == enum)
        values = tuple(node.value.value for node in body if isinstance(node, ast.Assign)
                       and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str))
    except (OSError, SyntaxError, StopIteration):
        values = ()
    return values or tuple(member.value for member in getattr(importlib.import_module(f"transformers.{module}"), enum))


# TrainingArguments refuses these without an evaluation strategy, and the train stage sets none.
SCHEDULERS_NEEDING_EVALUATION = ("reduce_lr_on_plateau", "greedy")
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


def _raw_config(path: str | Path | None, overrides: typing.Sequence[str]) -> dict:
    """The file's sections with the overrides applied, not yet typed or checked."""
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
    raw = {name: {} if value is None else value for name, value in raw.items()}  # `train:` alone: the defaults
    for item in overrides:
        _apply_override(raw, item)
    return raw


def _apply_override(raw: dict, item: str) -> None:
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {item!r} is not of the form section.key=value")
    *sections, name = key.split(".")
    if not sections:  # a section replaced whole would drop the file's other keys of it without a word
        raise ConfigError(f"{key}: override a single value such as {key}.<field>=..., not a whole section")
    node = raw
    for part in sections:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"config section {part!r} must be a mapping")
    try:
        node[name] = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        node[name] = text


def _config_error(errors: list[dict], overrides: typing.Sequence[str]) -> ConfigError:
    """One line naming the dotted key of pydantic's first error (all of a union's alternatives together)."""
    first, key, hint, alternatives = errors[0], "", Config, errors[:1]
    for part in first["loc"]:
        if typing.get_origin(hint) is dict:  # generate.adapters.NAME
            key, hint = f"{key}.{part}", None
        elif isinstance(part, int):
            key += f"[{part}]"
        elif dataclasses.is_dataclass(hint) and part in (names := [f.name for f in dataclasses.fields(hint)]):
            key, hint = f"{key}.{part}".lstrip("."), typing.get_type_hints(hint)[part]
        elif first["type"] == "unexpected_keyword_argument":
            return _unknown_key(f"{key}.{part}".lstrip("."), names, overrides)
        else:  # a tag: "[key]", or a union member's (generate.batch_size: int or "auto"), and then say what each takes
            alternatives = [e for e in errors if e["loc"][:-1] == first["loc"][:-1]]
            break
    wanted = " or ".join([first["msg"]] + [e["msg"].removeprefix("Input should be ") for e in alternatives[1:]])
    return ConfigError(f"{key}: {wanted}; got {first['input']!r}")


def _unknown_key(key: str, names: list[str], overrides: typing.Sequence[str]) -> ConfigError:
    if key in REMOVED_KEYS:
        return ConfigError(REMOVED_KEYS[key])
    given = next((o.partition("=")[0] for o in overrides if o.startswith(key + ".")), key)
    close = difflib.get_close_matches(key.rpartition(".")[2], names, n=1)
    return ConfigError(f"unknown config key: {given}" + (f" (did you mean {close[0]}?)" if close else ""))
