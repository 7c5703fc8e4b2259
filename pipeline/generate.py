"""Generate stage: a question for every test row, from the base model and from each adapter of the run.

    generate(cfg, output_dir) -> <output>/generate/{predictions.jsonl, generate_summary.json}

Reads top to bottom: setup (the test rows, the model and every adapter resolved and identified; skipped when
finished from the same inputs; every adapter checked against the loaded model before the first row) / generate
(pipeline/batches.py: one pass per model) / save (pipeline/predictions.py: the files merged; the summary last).

With generate.prediction_cache, a model whose rows an earlier run generated from the same inputs
(pipeline/prediction_cache.py) is not run again: its rows are copied from there.

The base model is loaded once. Its rows come first; then each adapter (pipeline/adapters.py: the tuned one, any
generate.adapters, training checkpoints with score.checkpoints) is merged into the same weights in turn and
taken out again bit for bit. Prompts are the training prompts, token for token.

Rows are generated in batches sorted by prompt length (less padding), appended and fsynced batch by batch, so a
crash loses at most the batch in flight; a rerun skips the (id, model) pairs already written. At the end the
file is rewritten in (model, original row) order, so an interrupted-and-resumed run ends with the same bytes as
an uninterrupted one. generate.batch_size=auto starts at generate.max_batch_size and halves it on an
out-of-memory error (accelerate's find_executable_batch_size), keeping the rows already written.

Data parallel: under torchrun (or accelerate launch), on one node or several, each process takes every N-th row
and writes its own shard file; the main process merges the shards in the original order into one file.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

from pipeline import adapters as adapters_module
from pipeline import attention, data, identity, models, sources
from pipeline.batches import Work, run_model
from pipeline.config import Config
from pipeline.errors import Interrupted
from pipeline.prediction_cache import PredictionCache
from pipeline.predictions import merge_predictions, read_done, summarize
from pipeline.runtime import peak_memory, process_state
from pipeline.signals import stop_on_signal
from pipeline.stage import StageRecord
from pipeline.tokenized import decoding, prompt_ids

log = logging.getLogger(__name__)


def generate(cfg: Config, output_dir: Path) -> Path:
    stage_dir = Path(output_dir) / "generate"
    predictions_path = stage_dir / "predictions.jsonl"
    started = time.perf_counter()
    state = process_state()  # one process, or one of N under torchrun

    # --- setup: everything checked before the first row is generated ----------------------------------------
    token = sources.hf_token(cfg.model)  # for a Hub dataset (the model's source resolves its own)
    test = data.sample_split(cfg.data, "test", token)
    test_inputs = data.fingerprint(test, data.INPUT_FIELDS)  # generation never reads a reference
    with state.local_main_process_first():  # one process per node converts the embedded model
        source = sources.model_source(cfg.model)
    cache = sources.cache_root(cfg.model)
    adapters, found = adapters_module.resolved(cfg, output_dir, cache)  # by content, Hub ones pinned
    model_id = identity.model_identity(source, cache)
    source = identity.pinned(source, model_id)  # what is loaded is what the stage records
    record = StageRecord("generate", stage_dir, identity.generate_inputs(cfg, test_inputs, model_id, found))
    if record.up_to_date():
        log.info("generate: already finished in %s from the same inputs, skipping", stage_dir)
        return stage_dir
    tokenizer = models.load_tokenizer(cfg.model, source)
    model = models.load_model(cfg.model, source, device=state.device).eval()
    for adapter in adapters:
        adapters_module.check(adapter, model, cfg)
    with state.main_process_first():  # only now: a run that fails its checks leaves earlier predictions in place
        record.claim()
    stops = decoding(tokenizer, cfg)
    prompts, truncated = prompt_ids(tokenizer, test, cfg)
    work = Work(rows=test, prompts=prompts, decoding=stops, batch_size=cfg.generate.batch_size,
                max_batch_size=cfg.generate.max_batch_size, seed=cfg.generate.seed)
    shard_path = predictions_path if state.num_processes == 1 else (
        stage_dir / f"predictions.rank{state.process_index}-of-{state.num_processes}.jsonl")
    done = read_done(stage_dir, shard_path)  # whatever process count wrote them
    state.wait_for_everyone()  # every process has read the files before any appends to its own
    mine = range(state.process_index, len(test), state.num_processes)
    kept = PredictionCache(Path(cfg.generate.prediction_cache).expanduser(), record.inputs, state.device,
                           model.dtype) if cfg.generate.prediction_cache else None
    reused = kept.fill(shard_path, [test[i] for i in mine], done) if kept else {}  # added to `done`

    # --- generate: the base model, then each adapter merged into the same weights -----------------------------
    per_model, names = {}, ["base"] + [a.name for a in adapters]
    with stop_on_signal() as received, shard_path.open("a", encoding="utf-8") as out:
        for adapter in [None] + adapters:
            name = adapter.name if adapter else "base"
            todo = [i for i in mine if (test[i]["id"], name) not in done]
            if not todo:
                per_model[name] = {"generated_rows": 0, **({"cached_rows": reused[name]} if name in reused else {})}
                continue
            with adapters_module.applied(model, adapter) as current:  # merged into the same weights, or base
                per_model[name] = run_model(current, tokenizer, name, todo, work, out, received)
            if work.batch_size == "auto":  # the next model starts from the size that fit
                work = dataclasses.replace(work, max_batch_size=per_model[name]["batch_size"])
        out.close()
        # the loop only for a family with it (pipeline/families.py); none when every row was resumed or reused
        used = next((stats["decoder"] for stats in per_model.values() if "decoder" in stats), None)
        state.wait_for_everyone()
        # --- save: the files merged in the original order, then the summary (its presence marks the end) ------
        if state.is_main_process:
            rows = merge_predictions(predictions_path, [row["id"] for row in test], names)
            models_summary = summarize(rows, per_model, names)
            if kept:
                kept.keep(rows, skip=reused)
            record.finish({
                "rows": len(test), "models": models_summary,
                "processes": state.num_processes, "device": state.device.type,
                "dtype": str(model.dtype).removeprefix("torch."),
                "model_type": model.config.model_type, "decoder": used, "attention": attention.describe(model),
                "prompts_truncated": truncated, "resumed_rows": len(done),
                "max_new_tokens": cfg.generate.max_new_tokens,
                "batch_size": next((s["batch_size"] for s in reversed(per_model.values()) if "batch_size" in s), None),
                "batch_size_setting": cfg.generate.batch_size, "wall_seconds": round(time.perf_counter() - started, 1),
                "peak_memory": peak_memory()})
            log.info("generate: %d rows x %d models of %s (model type %s) in %.0f s with the %s -> %s", len(test),
                     len(names), cfg.model.source, model.config.model_type, time.perf_counter() - started,
                     used or "rows of earlier runs only", predictions_path)
        state.wait_for_everyone()
    if received:  # it came after the last batch (merging, saving): the stage is done, the run stops here
        raise Interrupted(received[0], "stopped after the generate stage finished: rerun the same command to continue")
    return stage_dir
