"""What each stage's outputs depend on, by content: the config keys it reads (STAGE_CONFIG) and the identities of
what it reads (rows, model, prompt, adapters, code). pipeline/stage.py records and compares them.

    train_inputs(cfg, train_rows, validation_rows, model)   -> the train stage's inputs
    generate_inputs(cfg, test_inputs, model, adapters)      -> the generate stage's: the test ids and inputs, never
                                                               the references (generation does not read them)
    score_inputs(cfg, test_rows, made_from, predictions, code, engines) -> the score stage's: the references too
    export_inputs(cfg, check_inputs, model, adapter)        -> the merged model's
    model_identity(source, cache)      -> {"files": {name: sha256}} (a folder) or {"hub": id, "commit": sha}
    pinned(source, identity)           -> the Source at the commit its identity recorded (a Hub one)
    prompt_identity(fmt)               -> the prompt style (template, framing, leading space, stops), stop rules' code
    code_identity(files)               -> a sha256 over the files of code a stage's outputs depend on
    file_hashes(paths, cache_dir), file_sha256(path), hub_commit(source, filename)

Adapters are identified in pipeline/adapters.py (adapter_identity), rows in pipeline/data.py (fingerprint): the
caller resolves what a stage reads and hands the identities in; `cache` is the folder of the file-hash cache
(pipeline/sources.cache_root). A stage is skipped only when all of these are unchanged, so an edited data file, a
model or adapter replaced at the same path or moved on the Hub under the same revision, or a new prompt template
redo the stage, while the same content at another path does not. A Hub model or adapter is identified by the
commit its revision resolves to, and loaded at that commit. `source` is a pipeline/sources.Source: its location
and token are never part of an identity.

Files are identified by their sha256. Hashing a 2 GB checkpoint takes seconds, so a stat cache in the model cache
dir (file-hashes.json: path -> size, mtime in ns, inode, sha256) skips files untouched since they were hashed, as
git's index does; a file rewritten in place gets a new mtime and is hashed again. Entries of files that no longer
exist are dropped whenever the cache is written.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
import logging
import os
from pathlib import Path

import huggingface_hub

from pipeline.atomic import write_json_atomic
from pipeline.config import Config, to_dict
from pipeline.errors import hub_error
from pipeline.prompt import STYLES
from pipeline.sources import Source

log = logging.getLogger(__name__)

# Files of a model folder that change no output.
IGNORED_FILES = ("README.md", ".gitattributes", "LICENSE")
# The config keys each stage's outputs depend on (a section, a section.key, or -section.key to leave one out),
# beside what the stage reads by content. A new key of a section listed whole is in at once; a key that changes
# no output (cache locations, tokens, checkpoint frequency, batch sizes, trackers) is left out here. Where a thing
# is identified by content its location is not here (data paths, model.source, adapter paths): the same content
# at another path is the same input. The score stage depends on everything: its report shows the whole config.
STAGE_CONFIG = {
    "train": ("model.dtype", "model.attn_implementation", "prompt", "lora",
              "train", "-train.save_steps", "-train.save_total_limit", "-train.report_to"),
    "generate": ("model.dtype", "model.attn_implementation", "prompt",
                 "generate", "-generate.batch_size", "-generate.max_batch_size", "-generate.adapters",
                 "-generate.prediction_cache"),
    "score": ("model", "data", "prompt", "lora", "train", "generate", "score"),
    "export": ("model.dtype", "model.attn_implementation", "prompt", "generate", "-generate.adapters",
               "-generate.prediction_cache", "export"),
}


def train_inputs(cfg: Config, train_rows: dict, validation_rows: dict, model: dict) -> dict:
    """The train stage's config keys, its training and validation rows (data.fingerprint), the base model and the
    prompt."""
    prompt = prompt_identity(cfg.prompt.format)
    return {**config_inputs(cfg, "train"), "train_rows": train_rows, "validation_rows": validation_rows,
            "model": model, "prompt": prompt}


def generate_inputs(cfg: Config, test_inputs: dict, model: dict, adapters: dict[str, dict]) -> dict:
    """The generate stage's config keys, the test rows' ids and inputs (data.fingerprint of data.INPUT_FIELDS: an
    edited reference changes no prediction, the score stage reads references from the data), the base model, the
    prompt and every adapter."""
    prompt = prompt_identity(cfg.prompt.format)
    return {**config_inputs(cfg, "generate"), "test_inputs": test_inputs, "model": model, "prompt": prompt,
            "adapters": adapters}


def score_inputs(cfg: Config, test_rows: dict, made_from: dict[str, str], predictions: Path, code: list[Path],
                 engines: dict) -> dict:
    """The whole config (the report shows it), the test rows with their references, the inputs hashes of the
    stages it reads (`made_from`), the predictions' sha256, the scoring `code` and the `engines` (packages,
    embedding backend) that compute the numbers."""
    return {**config_inputs(cfg, "score"), "test_rows": test_rows, **made_from,
            "predictions": file_sha256(predictions), "code": code_identity(code), **engines}


def export_inputs(cfg: Config, check_inputs: dict, model: dict, adapter: dict) -> dict:
    """The merged model's: its config keys (the decoding it is checked and saved with), the rows it is checked on,
    the base model and the adapter merged into it."""
    return {**config_inputs(cfg, "export"), "check_inputs": check_inputs, "model": model, "adapter": adapter}


def config_inputs(cfg: Config, stage: str) -> dict:
    """{"config": the config keys of STAGE_CONFIG[stage]}, as the resolved config has them."""
    resolved, selected = to_dict(cfg), {}
    for item in STAGE_CONFIG[stage]:
        section, _, key = item.lstrip("-").partition(".")
        if item.startswith("-"):
            del selected[section][key]
        elif key:
            selected.setdefault(section, {})[key] = resolved[section][key]
        else:
            selected[section] = dict(resolved[section])
    return {"config": selected}


def pinned(source: Source, identity: dict) -> Source:
    """The source at the commit a Hub model or adapter resolved to (unchanged for a folder), so that what is
    loaded is what the stage recorded."""
    return dataclasses.replace(source, revision=identity["commit"]) if "commit" in identity else source


def model_identity(source: Source, cache: Path) -> dict:
    """A local model folder by the sha256 of each of its files (the stat cache in `cache`); a Hub model by the
    commit its revision resolves to (load it pinned() to that commit)."""
    if source.kind != "hub":
        files = sorted(p for p in Path(source.location).iterdir() if p.is_file() and not p.name.startswith(".")
                       and p.name not in IGNORED_FILES)
        return {"files": file_hashes(files, cache)}
    return {"hub": source.location, "commit": hub_commit(source, "config.json")}


def hub_commit(source: Source, filename: str) -> str:
    """The commit a Hub source's revision (default main) resolves to now. It comes from the file's place in the
    Hub cache (snapshots/<commit>/<file>), so it also works offline from a cache (HF_HUB_OFFLINE=1). Called as
    huggingface_hub.hf_hub_download, so that a test can stand in for the Hub."""
    try:
        path = huggingface_hub.hf_hub_download(source.location, filename, revision=source.revision,
                                               token=source.token)
    except Exception as exc:
        raise hub_error(exc, f"{source.key}: cannot resolve {source.location!r} at revision "
                             f"{source.revision or 'main'}",
                        "download it where there is network and use its local directory") from None
    return Path(path).parent.name


def prompt_identity(fmt: str) -> dict:
    """What shapes the text a model is given and where its answer is cut: the prompt style named `fmt`, every
    field of it (pipeline/prompt.py: name, framing, template, the completion's leading space, stop strings), and
    the code of the stop rules (pipeline/decode.py), so that editing either regenerates. The stop tokens a style
    derives from the tokenizer are covered by the model's identity (its tokenizer files)."""
    rules = "".join(function_sources(Path(__file__).with_name("decode.py"), STOP_RULES))
    style = json.loads(json.dumps(dataclasses.asdict(STYLES[fmt])))  # as stage.json records it: lists, not tuples
    return {**style, "stop_rules": hashlib.sha256(rules.encode("utf-8")).hexdigest()[:16]}


# The functions of pipeline/decode.py that decide where a row's text ends.
STOP_RULES = ("decode_row", "stop_index", "stop_length", "_ends_row")


def function_sources(path: Path, names: tuple[str, ...]) -> list[str]:
    """The source lines of the top-level functions `names` of a module file, as inspect.getsource gives them, read
    without importing the module (decode.py imports torch; a stage's identity, and `model fetch`, need none)."""
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines(keepends=True)
    found = {node.name: "".join(lines[min([node.lineno, *(d.lineno for d in node.decorator_list)]) - 1:node.end_lineno])
             for node in ast.parse(text).body if isinstance(node, ast.FunctionDef)}
    return [found[name] for name in names]


def code_identity(files: list[Path]) -> str:
    """A sha256 over `files` (by name and content, in name order): the code a stage's outputs depend on."""
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(path.name.encode("utf-8") + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def file_hashes(paths: list[Path], cache_dir: Path) -> dict[str, str]:
    """{file name: sha256} for `paths`, reusing a hash from the stat cache when the file is untouched."""
    cache_path = Path(cache_dir) / "file-hashes.json"
    try:
        cache = json.loads(cache_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        cache = {}
    found, changed = {}, False
    for path in paths:
        stat = path.stat()
        key, seen = str(path.resolve()), [stat.st_size, stat.st_mtime_ns, stat.st_ino]
        entry = cache.get(key)
        if not entry or entry[:3] != seen:
            cache[key], changed = [*seen, file_sha256(path)], True
        found[path.name] = cache[key][3]
    if changed:
        # Only files that still exist are kept: every adapter or model folder ever hashed (a test's, last month's
        # run's) would otherwise stay in a file that each stage reads and rewrites whole.
        cache = {key: entry for key, entry in cache.items() if os.path.exists(key)}
        try:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(cache_path, cache)
        except Exception as exc:  # noqa: BLE001 - a read-only cache only costs hashing again next time
            log.debug("cannot write the file-hash cache %s: %s", cache_path, exc)
    return found


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
