"""The adapters a generate pass evaluates, checked against the base model, and merged into it one at a time.

    resolved(cfg, output_dir, cache) -> ([Adapter], identities)     check(adapter, model, cfg)
    with merged(model, adapter) as tuned: ...        with applied(model, adapter or None) as model: ...

Each adapter's source (pipeline/sources.py: a folder or a Hub id at a revision, with the token) is resolved once,
here, identified by content (adapter_identity, for the generate stage's inputs) and used as it is by the checks
and the loading.

"tuned" is the adapter trained in <output>/train (or model.adapter, which skips training), then the named
`generate.adapters`, then, with score.checkpoints, every training checkpoint still on disk ("checkpoint-N").
Before any generation each adapter is checked against the loaded base model: the base it names, its target
modules, its rank and the shapes of its weights; a mismatch is exit 2 naming both sides. Only safetensors
adapters are accepted: a pickle (.bin) file can run code when loaded.

Merging gives the fastest decoding (no LoRA matmuls per token), but merging and unmerging in bf16 rounds the
base weights. So the weights an adapter touches are copied before it is merged and copied back after: the base
model is bit-for-bit the same for every adapter and for the base rows, whatever ran before.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path

from pipeline import identity, models, sources
from pipeline.config import Config
from pipeline.errors import ConfigError, hub_error
from pipeline.sources import Source

ADAPTER_WEIGHTS, ADAPTER_CONFIG = "adapter_model.safetensors", "adapter_config.json"


@dataclass(frozen=True)
class Adapter:
    name: str  # the model name in predictions.jsonl and the report
    source: Source  # its key is the config key it came from, for error messages


def adapters_to_evaluate(cfg: Config, output_dir: Path) -> list[Adapter]:
    """Every adapter of this run, in order, each local one checked to be a safetensors adapter directory."""
    trained = Path(output_dir) / "train" / "adapter"
    adapters = configured(cfg)
    if not cfg.model.adapter:
        adapters.insert(0, Adapter("tuned", Source("local", str(trained), "the train stage's adapter")))
    if cfg.score.checkpoints and not cfg.model.adapter:
        summary = trained.parent / "train_summary.json"
        last_step = json.loads(summary.read_text(encoding="utf-8"))["steps"] if summary.is_file() else None
        found = sorted(trained.parent.glob("checkpoints/checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
        # The checkpoint of the last step holds the tuned adapter's weights: its rows would be the tuned rows.
        adapters += [Adapter(path.name, Source("local", str(path), "score.checkpoints")) for path in found
                     if int(path.name.split("-")[1]) != last_step]
    for adapter in adapters:
        check_files(adapter, trained)
    return adapters


def configured(cfg: Config) -> list[Adapter]:
    """The adapters the config names: model.adapter (as "tuned") and generate.adapters."""
    tuned = [Adapter("tuned", sources.adapter_source(cfg.model.adapter, "model.adapter", cfg.model,
                                                     cfg.model.adapter_revision))] if cfg.model.adapter else []
    return tuned + [Adapter(name, sources.adapter_source(text, f"generate.adapters.{name}", cfg.model))
                    for name, text in cfg.generate.adapters.items()]


def resolved(cfg: Config, output_dir: Path, cache: Path) -> tuple[list[Adapter], dict[str, dict]]:
    """Every adapter of this run (adapters_to_evaluate) and what each one is (adapter_identity, for a stage's
    inputs), each Hub one pinned to the commit its revision resolves to now, so that what is loaded is what the
    stage recorded. `cache`: the file-hash cache's folder (sources.cache_root)."""
    adapters = adapters_to_evaluate(cfg, output_dir)
    found = {a.name: adapter_identity(a.source, cache) for a in adapters}
    return [dataclasses.replace(a, source=identity.pinned(a.source, found[a.name])) for a in adapters], found


def adapter_identity(source: Source, cache: Path) -> dict:
    """A local adapter by the sha256 of its config and weights (a new adapter at the same path is not the old
    one); a Hub adapter by the commit its revision resolves to."""
    if source.kind != "hub":
        folder = Path(source.location)
        return identity.file_hashes([folder / ADAPTER_CONFIG, folder / ADAPTER_WEIGHTS], cache)
    return {"hub": source.location, "commit": identity.hub_commit(source, ADAPTER_CONFIG)}


def check_files(adapter: Adapter, trained: Path | None = None) -> None:
    """A local adapter is a folder with adapter_config.json and safetensors weights (pickle files are refused)."""
    if adapter.source.kind == "hub":
        return  # fetched and checked when the model is loaded
    path, key = Path(adapter.source.location), adapter.source.key
    if (path / "adapter_model.bin").is_file() and not (path / ADAPTER_WEIGHTS).is_file():
        raise ConfigError(f"{key}: {path / 'adapter_model.bin'} is a pickle file, which can run code when "
                            f"loaded: only {ADAPTER_WEIGHTS} is accepted")
    if not (path / ADAPTER_WEIGHTS).is_file() or not (path / ADAPTER_CONFIG).is_file():
        if path == trained:
            raise ConfigError(f"no trained adapter in {path}: run the train stage first (or set model.adapter)")
        raise ConfigError(f"{key}: {path} is not a LoRA adapter directory ({ADAPTER_CONFIG} and "
                            f"{ADAPTER_WEIGHTS} expected)")


def check(adapter: Adapter, model, cfg: Config) -> None:
    """The adapter fits the loaded base model: the base it names, its target modules, its rank and weight shapes."""
    from safetensors import safe_open

    config_path, weights_path = (_fetch(adapter.source, name) for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS))
    config = json.loads(Path(config_path).read_text(encoding="utf-8"))
    where = f"{adapter.source.key} ({adapter.source})"
    named = config.get("base_model_name_or_path")
    if named and _model_name(named) != _model_name(cfg.model.source):
        raise ConfigError(f"{where} was trained on base model {named!r}, but model.source is {cfg.model.source!r}")
    targets = config.get("target_modules") or []
    if isinstance(targets, str):  # a regular expression over module names
        if not any(re.fullmatch(targets, name) for name, _ in model.named_modules()):
            raise ConfigError(f"{where}: its target_modules pattern {targets!r} matches no module of "
                              f"{cfg.model.source}")
    else:
        models.check_target_modules(model, targets, cfg.model.source, key=f"{where}: target_modules")
    modules = dict(model.named_modules())
    with safe_open(weights_path, framework="pt") as weights:
        for key in weights.keys():
            match = re.fullmatch(r"(?:base_model\.model\.)?(.+)\.lora_([AB])\.weight", key)
            if not match or match.group(1) not in modules:
                continue
            module, shape = modules[match.group(1)], tuple(weights.get_slice(key).get_shape())
            rank = _rank(config, match.group(1))
            expected = (rank, module.in_features) if match.group(2) == "A" else (module.out_features, rank)
            if shape != expected:
                raise ConfigError(f"{where}: {key} has shape {list(shape)}, but rank r={rank} (its "
                                  f"{ADAPTER_CONFIG}) on {cfg.model.source}'s {match.group(1)} "
                                  f"({module.in_features} -> {module.out_features}) needs {list(expected)}")


def applied(model, adapter: Adapter | None):
    """The model with `adapter` merged while inside (merged); the base model itself for None."""
    return contextlib.nullcontext(model) if adapter is None else merged(model, adapter)


@contextlib.contextmanager
def merged(model, adapter: Adapter):
    """The base model with `adapter` merged into its weights while inside; the base weights bit for bit after."""
    from peft import PeftModel

    config = json.loads(Path(_fetch(adapter.source, ADAPTER_CONFIG)).read_text(encoding="utf-8"))
    whole = set(config.get("modules_to_save") or [])  # modules the adapter replaces outright when unloaded
    touched = {name: param.detach().clone() for name, param in model.named_parameters(remove_duplicate=False)
               if _is_target(name.rsplit(".", 1)[0], config.get("target_modules") or [])
               or whole & set(name.split("."))}
    tuned = PeftModel.from_pretrained(model, adapter.source.location, revision=adapter.source.revision,
                                      token=adapter.source.token).merge_and_unload().eval()
    try:
        yield tuned
    finally:
        for name, saved in touched.items():
            tuned.get_parameter(name).data.copy_(saved)


def _is_target(module_name: str, targets) -> bool:
    if isinstance(targets, str):
        return re.fullmatch(targets, module_name) is not None
    return module_name.rsplit(".", 1)[-1] in targets


def _rank(config: dict, module_name: str) -> int:
    for pattern, rank in (config.get("rank_pattern") or {}).items():
        if re.search(pattern, module_name):
            return rank
    return config["r"]


def _model_name(source: str) -> str:
    """google/gemma-3-1b-it, /models/gemma-3-1b-it and gemma-3-1b-it name the same model; so do
    embedded:gemma-3-270m and the folder it is converted into (which checkpoints record)."""
    return source.rstrip("/").rsplit("/", 1)[-1].removeprefix("embedded:")


def _fetch(source: Source, filename: str) -> str:
    if source.kind != "hub":
        return str(Path(source.location) / filename)
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(source.location, filename, revision=source.revision, token=source.token)
    except Exception as exc:
        raise hub_error(exc, f"{source.key}: cannot fetch {filename} of {source.location!r} from the Hub",
                        "download the adapter where there is network and name its local directory") from None
