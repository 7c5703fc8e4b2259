"""Train stage: LoRA SFT with TRL's SFTTrainer and PEFT.

    train(cfg, output_dir) -> <output>/train/{adapter/, checkpoints/, train_summary.json}

Reads top to bottom: setup (everything a user can get wrong is checked before the model loads: training
settings, every split the run will use, then the target modules) / train (resumes from the newest checkpoint;
all processes stop together on a signal) / save (adapter renamed into place, summary last, so its presence means
the stage finished). The tutorial's defects are designed out here: target modules are checked against the model,
padding uses a pad token distinct from EOS (pipeline/models.py, set_pad_token: EOS is never masked), and the loss
falls on the completion only. The Trainer's arguments, building and fitting are in pipeline/sft.py, its callbacks
in pipeline/callbacks.py, the tokenized examples in pipeline/tokenized.py.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import transformers

from pipeline import card, data, identity, models, sources, tracking
from pipeline.atomic import atomic_path
from pipeline.callbacks import RecordTrackerRuns
from pipeline.config import Config
from pipeline.errors import Interrupted
from pipeline.runtime import peak_memory
from pipeline.sft import build_trainer, describe_model, describe_run, fit, training_arguments
from pipeline.signals import stop_on_signal
from pipeline.stage import StageRecord
from pipeline.tokenized import sft_dataset

log = logging.getLogger(__name__)


def train(cfg: Config, output_dir: Path) -> Path:
    stage_dir = Path(output_dir) / "train"
    started = time.perf_counter()
    transformers.set_seed(cfg.train.seed)

    # --- setup -------------------------------------------------------------------------------------------------
    args = training_arguments(cfg, stage_dir / "checkpoints")
    splits = load_splits(cfg)
    with args.main_process_first(local=True):  # one process converts the embedded model, the others reuse it
        source = sources.model_source(cfg.model)
    model_id = identity.model_identity(source, sources.cache_root(cfg.model))
    source = identity.pinned(source, model_id)  # what is loaded is what the stage records
    record = StageRecord("train", stage_dir, identity.train_inputs(  # by content: the rows, the model, the prompt
        cfg, data.fingerprint(splits["train"]), data.fingerprint(splits["validation"]), model_id))
    if record.up_to_date():  # another config's checkpoints: refused, before any work
        log.info("train: already finished in %s from the same inputs, skipping", stage_dir)
        return stage_dir
    tokenizer = models.load_tokenizer(cfg.model, source)  # with a pad token distinct from EOS
    model = models.load_model(cfg.model, source)
    models.check_target_modules(model, cfg.lora.target_modules, cfg.model.source)
    with args.main_process_first(local=False):  # across nodes too: the output dir is shared
        record.claim()  # only now: a run that failed on its inputs leaves none
    overlap = data.warn_on_overlap(splits)
    train_set, truncated = sft_dataset(splits["train"], tokenizer, cfg)
    eval_set, _ = sft_dataset(splits["validation"], tokenizer, cfg)
    trainer = build_trainer(cfg, args, model, tokenizer, train_set, eval_set)
    adapted = describe_model(trainer)
    runs: dict = {}
    trainer.add_callback(RecordTrackerRuns(runs))

    with stop_on_signal() as received:
        # --- train ---------------------------------------------------------------------------------------------
        result, resumed, eval_loss = fit(trainer, cfg, received)
        # --- save (the main process; the others wait so that no one reads a half-written stage) --------------
        if trainer.is_world_process_zero():
            save(trainer, tokenizer, cfg, record, {
                "model_source": cfg.model.source, **adapted,
                "train_rows": len(train_set), "validation_rows": len(eval_set), "train_prompts_truncated": truncated,
                "inputs_shared_between_splits": overlap, "resumed_from": resumed.path if resumed else None,
                **describe_run(trainer, result, resumed), "validation_loss": round(eval_loss, 6),
                "wall_seconds": round(time.perf_counter() - started, 1), "trackers": runs})
        trainer.accelerator.wait_for_everyone()
    if received:  # it came after the last step (evaluating, saving): the stage is done, the run stops here
        raise Interrupted(received[0], "stopped after the train stage finished: rerun the same command to continue")
    return stage_dir


def load_splits(cfg: Config) -> dict[str, list[dict]]:
    """Every split the run uses, validated: the test split too, so that a bad test row never costs a training
    run (and train/test leakage is counted)."""
    return data.load_splits(cfg.data, sources.hf_token(cfg.model))


def save(trainer, tokenizer, cfg: Config, record: StageRecord, summary: dict) -> None:
    """The adapter (renamed into place), then train_summary.json: its presence marks the stage finished."""
    adapter_dir = save_adapter(trainer.model, tokenizer, record.directory, cfg)
    record.finish({
        **summary, "peak_memory": peak_memory(),
        "adapter_megabytes": round((adapter_dir / "adapter_model.safetensors").stat().st_size / 2**20, 2),
        "trackers": {**summary["trackers"], "tensorboard": tracking.tensorboard_dir(trainer)},
    })
    log.info("train: done; adapter in %s", adapter_dir)


def save_adapter(model, tokenizer, stage_dir: Path, cfg: Config) -> Path:
    """Saves the adapter to adapter/ through a temporary folder (never half written). adapter_config.json names
    the base model by Hub id or folder name, never by a path of this machine (pipeline/card.py); PEFT's README
    template (whose base_model is the cache path the model was loaded from) is replaced by a card built from the
    config, which the score stage fills with its numbers. The tokenizer only with train.save_tokenizer: training
    does not change it, and nothing reads it from here."""
    for config in model.peft_config.values():
        config.base_model_name_or_path = card.adapter_base_name(cfg.model)
    with atomic_path(stage_dir / "adapter") as tmp:
        # No embedding layers: only linear layers are adapted and the vocabulary is never resized ("auto" would
        # look the base model up on the Hub by the name set above, a network call that can hang offline).
        model.save_pretrained(tmp, safe_serialization=True, save_embedding_layers=False)
        card.write_card(tmp / "README.md", card.model_card(cfg))
        if cfg.train.save_tokenizer:
            tokenizer.save_pretrained(tmp)
    return stage_dir / "adapter"
