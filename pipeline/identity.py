"""What a stage's outputs depend on, by content, and where they were made.

    train_inputs(cfg, splits, source)  -> what the train stage's outputs depend on (pipeline/stage.py hashes it)
    generate_inputs(cfg, output_dir, test, source) -> the adapters to evaluate (pinned) and the generate stage's
    model_identity(cfg.model, source)  -> {"files": {name: sha256}} (a folder) or {"hub": id, "commit": sha}
    adapter_identity(source, cfg.model) -> the sha256 of its config and weights, or its Hub commit
    pinned(source, identity)           -> the Source at the commit its identity recorded (a Hub one)
    prompt_identity(fmt)               -> the prompt style (template, framing, leading space, stops), stop rules' code
    code_identity()                    -> a sha256 over the score stage's metric and report code
    provenance()                       -> the commit (and whether it had edits), packages and hardware of this run

The rows a stage uses are identified in pipeline/data.py (fingerprint). A stage is skipped only when all of these
are unchanged (pipeline/stage.py), so an edited data file, a model or adapter replaced at the same path or moved on
the Hub under the same revision, or a new prompt template redo the stage, while the same content at another path
does not. A Hub model or adapter is identified by the commit its revision resolves to, and loaded at that commit.
`source` is a pipeline/sources.Source: its location and token are never part of an identity.

Files are identified by their sha256. Hashing a 2 GB checkpoint takes seconds, so a stat cache in the model cache
dir (file-hashes.json: path -> size, mtime in ns, inode, sha256) skips files untouched since they were hashed, as
git's index does; a file rewritten in place gets a new mtime and is hashed again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import subprocess
from pathlib import Path

from pipeline.config import Config, ModelConfig
from pipeline.errors import hub_error
from pipeline.sources import Source, cache_root

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
# Files of a model folder that change no output.
IGNORED_FILES = ("README.md", ".gitattributes", "LICENSE")


def train_inputs(cfg: Config, splits: dict[str, list[dict]], source: Source) -> dict:
    """The train stage's config keys, its training and validation rows, the base model and the prompt."""
    from pipeline import data
    from pipeline.stage import stage_inputs

    return stage_inputs(cfg, "train", {
        "train_rows": data.fingerprint(splits["train"]), "validation_rows": data.fingerprint(splits["validation"]),
        "model": model_identity(cfg.model, source), "prompt": prompt_identity(cfg.prompt.format)})


def generate_inputs(cfg: Config, output_dir: Path, test: list[dict], source: Source) -> tuple[list, dict]:
    """The adapters a generate pass evaluates (Hub ones pinned to their commit) and the stage's inputs: its config
    keys, the test rows, the base model, the prompt and every adapter by content."""
    from pipeline import adapters as adapters_module
    from pipeline import data
    from pipeline.stage import stage_inputs

    adapters = adapters_module.adapters_to_evaluate(cfg, output_dir)
    found = adapters_module.identities(adapters, cfg)
    inputs = stage_inputs(cfg, "generate", {
        "test_rows": data.fingerprint(test), "model": model_identity(cfg.model, source),
        "prompt": prompt_identity(cfg.prompt.format), "adapters": found})
    return adapters_module.pinned(adapters, found), inputs


def pinned(source: Source, identity: dict) -> Source:
    """The source at the commit a Hub model or adapter resolved to (unchanged for a folder), so that what is
    loaded is what the stage recorded."""
    import dataclasses

    return dataclasses.replace(source, revision=identity["commit"]) if "commit" in identity else source


def model_identity(cfg: ModelConfig, source: Source) -> dict:
    """A local model folder by the sha256 of each of its files (the stat cache under cfg's cache dir); a Hub model
    by the commit its revision resolves to (load it pinned() to that commit)."""
    if source.kind != "hub":
        files = sorted(p for p in Path(source.location).iterdir() if p.is_file() and not p.name.startswith(".")
                       and p.name not in IGNORED_FILES)
        return {"files": file_hashes(files, cache_root(cfg))}
    return {"hub": source.location, "commit": hub_commit(source, "config.json")}


def adapter_identity(source: Source, cfg: ModelConfig) -> dict:
    """A local adapter by the sha256 of its config and weights (a new adapter at the same path is not the old
    one); a Hub adapter by the commit its revision resolves to."""
    from pipeline.adapters import ADAPTER_CONFIG, ADAPTER_WEIGHTS

    if source.kind != "hub":
        folder = Path(source.location)
        return file_hashes([folder / ADAPTER_CONFIG, folder / ADAPTER_WEIGHTS], cache_root(cfg))
    return {"hub": source.location, "commit": hub_commit(source, ADAPTER_CONFIG)}


def hub_commit(source: Source, filename: str) -> str:
    """The commit a Hub source's revision (default main) resolves to now. It comes from the file's place in the
    Hub cache (snapshots/<commit>/<file>), so it also works offline from a cache (HF_HUB_OFFLINE=1)."""
    from huggingface_hub import hf_hub_download

    try:
        path = hf_hub_download(source.location, filename, revision=source.revision, token=source.token)
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
    import dataclasses
    import inspect

    from pipeline import decode
    from pipeline.prompt import STYLES

    rules = "".join(inspect.getsource(f) for f in (decode.decode_row, decode.stop_index, decode.stop_length,
                                                   decode._ends_row))
    style = json.loads(json.dumps(dataclasses.asdict(STYLES[fmt])))  # as stage.json records it: lists, not tuples
    return {**style, "stop_rules": hashlib.sha256(rules.encode("utf-8")).hexdigest()[:16]}


def code_identity() -> str:
    """A sha256 over the code that turns predictions into a report: every file under eval/ whose suffix is .py,
    .json, .html or .j2 (the metrics, report and score modules, the report schema, the pages' templates) and the
    text normalization they share."""
    digest = hashlib.sha256()
    eval_files = [path for path in (ROOT / "eval").rglob("*") if path.suffix in (".py", ".json", ".html", ".j2")]
    for path in sorted([*eval_files, ROOT / "pipeline" / "text.py"]):
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
        try:
            from pipeline.stage import write_json_atomic

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


# --- provenance: the code, packages and machine a stage ran with ----------------------------------------------

def provenance() -> dict:
    from pipeline.stage import package_versions

    return {"git": git_state(), "packages": package_versions(), "hardware": hardware()}


def git_state() -> dict:
    """The commit this code came from ($GIT_COMMIT in a container without .git) and whether it had edits."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                check=True, timeout=30).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                                    capture_output=True, text=True, check=True, timeout=30).stdout.strip())
        return {"commit": commit, "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"commit": os.environ.get("GIT_COMMIT") or None, "dirty": None}


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
