"""Export: the adapter merged into its base model, for serving stacks that take one model folder, kept only once
it is shown to generate what base + adapter generates.

    export(cfg, out, output_dir) -> out/{model.safetensors, config.json, generation_config.json, tokenizer files,
                                         README.md, export_summary.json}

Peers' users report quality drops after merging (unsloth #2534, #1519, #1593; LLaMA-Factory #5930) that nobody
checked. Here the base model + adapter (PEFT, not merged) generates the first export.check_rows test rows; the
adapter is merged (PEFT's merge_and_unload), saved into a temporary sibling of `out`, loaded back from there, and
generates the same rows. In float32 every row must be identical, token for token. In bf16 merging rounds the
merged weights to bf16, so the share of identical rows must reach export.min_identical_share. Otherwise: exit 1,
and nothing is left at `out` (the folder is renamed into place only after the check). The check decodes greedily
whatever generate.do_sample says; the saved generation config holds the decoding the job evaluated with.
The log says first what will be written and the memory it takes (minutes of loading and generating follow), then
one line per phase as it ends.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import shutil
import subprocess
import time
from pathlib import Path

import torch

from pipeline import adapters, card, data, identity, models, sources, tokenized
from pipeline.atomic import atomic_path
from pipeline.config import Config
from pipeline.decode import Decoding, decode_batch, decode_row
from pipeline.errors import ConfigError, UserError
from pipeline.runtime import ROOT, peak_memory
from pipeline.stage import StageRecord

log = logging.getLogger(__name__)

TOKENIZER_FILES = ("tokenizer*", "special_tokens_map.json", "added_tokens.json", "chat_template*")
# Peak memory beyond the weights: torch and the libraries, the check's generation. Measured: 0.76 GiB (Gemma 3 270M,
# float32, CPU, 32 rows: peak RSS 1.76 GiB for 1.0 GiB of weights).
PEAK_OVERHEAD_GIB = 0.8


class MergedModelDiffers(UserError):
    """The merged model does not generate what base + adapter generates (exit 1, like a regression)."""

    exit_code = 1


def export(cfg: Config, out: Path, output_dir: Path, results: card.Results | None = None,
           train: dict | None = None) -> Path:
    """`results` and `train`: what the score and train stages measured about this adapter, for the card
    (eval/card.py, evidence)."""
    out = Path(out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out {out} exists and is not empty: export never overwrites; name a new folder")
    warn_if_tracked(out)
    started = time.perf_counter()
    # The tuned adapter of this config (model.adapter, else the one trained in <output>/train), its files checked.
    only_tuned = dataclasses.replace(cfg, generate=dataclasses.replace(cfg.generate, adapters={}),
                                     score=dataclasses.replace(cfg.score, checkpoints=False))
    # A Hub adapter or model: pinned to the commit it resolves to now.
    cache = sources.cache_root(cfg.model)
    [adapter], found = adapters.resolved(only_tuned, output_dir, cache)
    rows = data.load_split(cfg.data, "test", sources.hf_token(cfg.model), limit=cfg.export.check_rows)
    source = sources.model_source(cfg.model)
    dtype = models.resolve_dtype(cfg.model)
    if source.kind != "hub":  # a local folder's safetensors headers give the size before anything is loaded
        log_plan(out, weights_in(Path(source.location)), dtype, len(rows))
    progress = Progress()
    model_id = identity.model_identity(source, cache)
    source = identity.pinned(source, model_id)
    record = StageRecord("export", out, identity.export_inputs(cfg, data.fingerprint(rows, data.INPUT_FIELDS),
                                                               model_id, found[adapter.name]))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = models.load_tokenizer(cfg.model, source)
    base = models.load_model(cfg.model, source, device=device).eval()
    adapters.check(adapter, base, cfg)

    from peft import PeftModel

    tuned = PeftModel.from_pretrained(base, adapter.source.location, revision=adapter.source.revision,
                                      token=adapter.source.token).eval()
    if source.kind == "hub":  # downloaded now: counted in memory (tied weights once, as they are saved)
        log_plan(out, base.num_parameters(), dtype, len(rows))
    progress.done("load", f"the base model ({str(dtype).removeprefix('torch.')}, {device.type}) and the adapter")
    prompts, _ = tokenized.prompt_ids(tokenizer, rows, cfg)
    evaluated = tokenized.decoding(tokenizer, cfg)
    greedy = dataclasses.replace(evaluated, do_sample=False)
    batch_size = cfg.generate.batch_size if cfg.generate.batch_size != "auto" else cfg.generate.max_batch_size
    expected = generate_ids(tuned, tokenizer, prompts, greedy, batch_size)
    progress.done("check 1/2", f"base + adapter generated the first {len(rows)} test rows")
    merged = merge(tuned)
    dtype = merged.dtype
    progress.done("merge", "the adapter merged into the base weights")
    with atomic_path(out) as tmp:
        save(merged, tmp, source, evaluated)
        progress.done("save", f"{size_text(sum(p.stat().st_size for p in tmp.iterdir()))} written (weights, "
                              "tokenizer, configs)")
        del tuned, base, merged  # one model in memory at a time
        saved = models.load_model(cfg.model, sources.Source("local", str(tmp), "--out"), device=device).eval()
        actual = generate_ids(saved, tokenizer, prompts, greedy, batch_size)
        summary = {**compare(rows, expected, actual, tokenizer, greedy, dtype, cfg), "device": device.type,
                   # what was merged, by the sha256 of its weights (or Hub id and revision), and into what: no paths
                   "adapter": found[adapter.name],
                   "base_model": card.hub_base_model(cfg.model) or card.adapter_base_name(cfg.model),
                   "seconds": round(time.perf_counter() - started, 1)}
        progress.done("check 2/2", f"the saved model, loaded back, generated them again: {summary['identical_rows']} "
                                   f"of {len(rows)} identical")
        if not summary["passed"]:
            log.error("export: %s", json.dumps(summary, ensure_ascii=False))
            first = summary["differing_rows"][0]
            raise MergedModelDiffers(
                f"the merged model differs from base + adapter: {summary['identical_rows']} of {len(rows)} test rows "
                f"identical in {summary['dtype']} (required share {summary['required_share']}; first: {first['id']}"
                f", {first['base_plus_adapter']!r} vs {first['merged']!r}); nothing was written to {out}")
        card.write_card(tmp / "README.md", card.model_card(cfg, train, results, merged=summary))
        dataclasses.replace(record, directory=tmp).finish({**summary, "files": sorted(
            [p.name for p in tmp.iterdir()] + ["export_summary.json"])})
    log.info("export: merged model in %s (%d of %d rows identical, %.0f s; peak memory %s)", out,
             summary["identical_rows"], len(rows), summary["seconds"], memory_text(peak_memory()))
    return out


class Progress:
    """One log line per phase of the export as it ends, with its seconds: loading, generating and saving a model
    take minutes, and the libraries' own progress bars do not say which of the export's phases is running."""

    def __init__(self):
        self.since = time.perf_counter()

    def done(self, phase: str, what: str) -> None:
        now = time.perf_counter()
        log.info("export: %s: %s in %.1f s", phase, what, now - self.since)
        self.since = now


def log_plan(out: Path, parameters: int, dtype: torch.dtype, rows: int) -> None:
    """What the export will write, the memory it needs, and its phases. The merged model has the base model's
    parameters, in model.dtype; one model is in memory at a time (PEFT merges in place; the saved copy is loaded
    after the first is freed), plus the runtime and the check's generation (PEAK_OVERHEAD_GIB)."""
    size = parameters * dtype.itemsize
    log.info("export: the merged weights will take %s in %s (%s parameters x %d bytes, %s), plus the tokenizer's "
             "files; expected peak memory about %.1f GiB", size_text(size), out, f"{parameters:,}", dtype.itemsize,
             str(dtype).removeprefix("torch."), size / 2**30 + PEAK_OVERHEAD_GIB)
    log.info("export: phases: load, check 1/2 (base + adapter generate the first %d test rows), merge, save, "
             "check 2/2 (the saved model, loaded back, generates them again)", rows)


def weights_in(folder: Path) -> int:
    """Parameters in a model folder's safetensors files, read from their headers (no weight is loaded)."""
    from safetensors import safe_open

    count = 0
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(path, framework="pt") as weights:
            count += sum(math.prod(weights.get_slice(name).get_shape()) for name in weights.keys())
    return count


def warn_if_tracked(out: Path) -> None:
    """A merged model is gigabytes: inside this checkout and not ignored by git, it would show in `git status` and
    be one `git add -A` away from a commit. Said, not refused: the user may mean it. No git, no check."""
    target = out.resolve()
    if not target.is_relative_to(ROOT):
        return
    try:
        ignored = subprocess.run(["git", "check-ignore", "-q", str(target)], cwd=ROOT, capture_output=True)
    except OSError:
        return
    if ignored.returncode == 1:  # 0: ignored; 128: not a git checkout
        log.warning("export: --out %s is inside the repository and not ignored by git: the model's files will show "
                    "in `git status`; a folder under outputs/ is ignored", out)


def size_text(size: int) -> str:
    return f"{size / 1e9:.2f} GB" if size >= 1e9 else f"{size / 1e6:.1f} MB"


def memory_text(peak: dict[str, float]) -> str:
    return ", ".join(f"{value:.2f} GiB {name.removesuffix('_gib').replace('_', ' ')}" for name, value in peak.items())


def merge(tuned):
    """The adapter merged into the base weights: the model that is saved and checked. (Its own function so that a
    test can alter what it returns and see the check fail.)"""
    return tuned.merge_and_unload()


def save(merged, folder: Path, source: sources.Source, evaluated: Decoding) -> None:
    """Weights (safetensors) and config, the generation config of the evaluated decoding, and the base model's own
    tokenizer files, byte for byte: the job's tokenizer is a transformers 5 TokenizersBackend, whose saved class
    name older transformers (and the serving stacks built on them) do not know."""
    merged.generation_config = generation_config(merged, evaluated)
    merged.save_pretrained(folder)
    base_folder = source.location
    if source.kind == "hub":  # its files are in the Hub cache since it was loaded
        from huggingface_hub import snapshot_download

        base_folder = snapshot_download(source.location, revision=source.revision, token=source.token,
                                        allow_patterns=list(TOKENIZER_FILES))
    for pattern in TOKENIZER_FILES:
        for path in Path(base_folder).glob(pattern):
            shutil.copyfile(path, folder / path.name)


def generation_config(model, decoding: Decoding):
    """What the job evaluated with, as the defaults that model.generate and vLLM read: greedy (or its sampling
    settings), max_new_tokens, the stop tokens. Stop strings stay out: model.generate would then require a
    tokenizer argument. The card says to keep the first line."""
    config = copy.deepcopy(model.generation_config)
    sampling = (dict(temperature=decoding.temperature, top_p=decoding.top_p, top_k=0) if decoding.do_sample
                else dict(temperature=None, top_p=None, top_k=None))
    config.update(do_sample=decoding.do_sample, max_new_tokens=decoding.max_new_tokens,
                  eos_token_id=list(decoding.stop_ids), pad_token_id=decoding.pad_id, **sampling)
    return config


def generate_ids(model, tokenizer, prompts: list[list[int]], decoding: Decoding, batch_size: int) -> list[list[int]]:
    """Each prompt's new token ids (to its stop), in the same batches for every model compared."""
    return [ids for start in range(0, len(prompts), batch_size)
            for ids in decode_batch(model, tokenizer, prompts[start:start + batch_size], decoding)]


def compare(rows: list[dict], expected: list[list[int]], actual: list[list[int]], tokenizer, decoding: Decoding,
            dtype: torch.dtype, cfg: Config) -> dict:
    """Rows whose greedy tokens are identical; the share required: all in float32, export.min_identical_share
    otherwise (merging rounds bf16 weights); the first differing rows as text."""
    same = [a == b for a, b in zip(expected, actual)]
    required = 1.0 if dtype == torch.float32 else cfg.export.min_identical_share
    differing = [{"id": row["id"], "base_plus_adapter": decode_row(tokenizer, a, decoding)["prediction"],
                  "merged": decode_row(tokenizer, b, decoding)["prediction"]}
                 for row, a, b, ok in zip(rows, expected, actual, same) if not ok]
    return {"dtype": str(dtype).removeprefix("torch."), "rows_checked": len(rows), "identical_rows": sum(same),
            "identical_share": round(sum(same) / len(rows), 4), "required_share": required,
            "passed": sum(same) >= required * len(rows), "differing_rows": differing[:5]}
