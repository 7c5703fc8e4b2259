"""Score stage: predictions.jsonl -> report.json / report.md / report.png.

    score(cfg, output_dir) -> <output>/report.json

Metrics for every model of the run on the same rows, paired-bootstrap deltas of each against the reference model
(score.reference, default base), a per-type table, metric points per training checkpoint (score.checkpoints)
and ten example rows. The report records what is needed to rerun it and to compare it fairly: the resolved
config and its hash, fingerprints of the test set and of the metric settings, where its predictions are (and
their hash), package versions, the git commit, the hardware and each stage's wall time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import subprocess
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import numpy as np

from eval import metrics
from eval.report import SCHEMA_VERSION, write_report
from pipeline import tracking
from pipeline.config import CHECKPOINT_NAME, Config, to_dict
from pipeline.errors import ConfigError, DataError, ResourceError
from pipeline.stage import package_versions, stage_hash

log = logging.getLogger(__name__)


def score(cfg: Config, output_dir: Path) -> Path:
    output_dir = Path(output_dir)
    report_path, predictions_path = output_dir / "report.json", output_dir / "generate" / "predictions.jsonl"
    digest = stage_hash(cfg, "score")
    if report_path.is_file() and predictions_path.is_file():  # up to date: same config, same predictions
        recorded = json.loads(report_path.read_text(encoding="utf-8"))
        if (recorded.get("config_hash"), recorded.get("predictions", {}).get("sha256")) == (
                digest, file_sha256(predictions_path)):
            log.info("score: %s is up to date, skipping", report_path)
            return report_path
    started = time.perf_counter()
    train_summary = read_json(output_dir / "train" / "train_summary.json", "train") if not cfg.model.adapter else {}
    generate_summary = read_json(output_dir / "generate" / "generate_summary.json", "generate")
    rows = read_predictions(predictions_path)
    names, references = list(rows), [r["reference"] for r in rows["base"]]
    if cfg.score.reference not in names:
        raise ConfigError(f"score.reference: {cfg.score.reference!r} is not among the models of "
                          f"{predictions_path} ({', '.join(names)})")

    scores = {name: metrics.ExampleScores([r["prediction"] for r in model_rows], references, cfg.score.tokenize)
              for name, model_rows in rows.items()}
    per_model = {name: {**s.metrics(), "hit_max_new_tokens_rate": float(np.mean([r["hit_max_new_tokens"]
                                                                                  for r in rows[name]]))}
                 for name, s in scores.items()}
    reference = scores[cfg.score.reference]
    deltas = {name: metrics.paired_bootstrap(reference, s, metrics.REPORTED_DELTAS, cfg.score.bootstrap_samples,
                                             cfg.score.seed)
              for name, s in scores.items() if name != cfg.score.reference}
    shown = [n for n in names if not CHECKPOINT_NAME.fullmatch(n)]
    picks = sorted(set(np.linspace(0, len(references) - 1, num=min(cfg.score.num_examples, len(references)))
                       .round().astype(int)))
    report = {
        "schema_version": SCHEMA_VERSION,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": to_dict(cfg),
        "config_hash": digest,
        "test_set": test_set_fingerprint(rows["base"]),
        "metric_settings": metric_settings(cfg),
        "predictions": {"path": os.path.relpath(predictions_path, output_dir), "sha256": file_sha256(predictions_path)},
        "packages": package_versions(),
        "git": git_state(),
        "hardware": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                     "accelerator": generate_summary.get("device_name", generate_summary.get("device"))},
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
    }
    report["stage_seconds"]["score"] = round(time.perf_counter() - started, 1)
    write_report(report, output_dir)
    if cfg.train.report_to and train_summary.get("trackers"):  # into the runs training logged to
        tracking.log_final_metrics(train_summary["trackers"], {f"eval/{name}/{metric}": per_model[name][metric]
                                                               for name in shown for metric in TRACKED},
                                   step=train_summary.get("steps") or 0)
    log.info("score: %s", report_path)
    return report_path


CHECKPOINT_METRICS = ("rougeL", "bleu", "chrf", "type_accuracy")
TRACKED = ("rougeL", "bleu", "chrf", "type_accuracy", "empty_rate")
TRAIN_FIELDS = ("steps", "loss_curve", "validation_loss", "trainable_parameters", "adapted_modules",
                "examples_per_second", "tokens_per_second", "peak_memory", "trackers")


def checkpoint_points(cfg: Config, names: list[str], per_model: dict, train_summary: dict) -> list[dict]:
    """With score.checkpoints: the headline metrics per saved step, the last step being the tuned adapter itself
    (its checkpoint holds the same weights, so it is not generated twice)."""
    if not cfg.score.checkpoints:
        return []
    points = [(int(name.split("-")[1]), name) for name in names if CHECKPOINT_NAME.fullmatch(name)]
    if train_summary.get("steps"):
        points.append((train_summary["steps"], "tuned"))
    return [{"step": step, "model": name, **{k: per_model[name][k] for k in CHECKPOINT_METRICS}}
            for step, name in sorted(points)]


def read_predictions(path: Path) -> dict[str, list[dict]]:
    """Rows per model (base first, then the file's order), each model's rows aligned with base's by id."""
    if not path.is_file():
        raise ResourceError(f"no predictions in {path}: run the generate stage first")
    by_model: dict[str, list[dict]] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            row = json.loads(line)
            by_model.setdefault(row["model"], []).append(row)
        except (json.JSONDecodeError, KeyError, TypeError):
            raise DataError(f"{path} line {number} is not a prediction row") from None
    if "base" not in by_model:
        raise DataError(f"{path} has no base-model rows; rerun generate")
    ids = [r["id"] for r in by_model["base"]]
    for name, model_rows in by_model.items():
        if [r["id"] for r in model_rows] != ids:
            raise DataError(f"{path}: model {name!r} does not cover the same rows as base; rerun generate")
    return {"base": by_model.pop("base"), **by_model}


def test_set_fingerprint(rows: list[dict]) -> dict:
    """The rows scored: how many, and a hash over their ids, inputs and references (in order)."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps([row["id"], row["input"], row["reference"]], ensure_ascii=False).encode("utf-8"))
        digest.update(b"\n")
    return {"rows": len(rows), "sha256": digest.hexdigest()}


def metric_settings(cfg: Config) -> dict:
    """What makes two reports' numbers comparable: the tokenizer, sacrebleu's signatures, the ROUGE library."""
    settings = {"tokenize": cfg.score.tokenize, "signatures": metrics.signatures(cfg.score.tokenize),
                "rouge_score": metadata.version("rouge-score"), "schema_version": SCHEMA_VERSION}
    text = json.dumps(settings, sort_keys=True)
    return {**settings, "fingerprint": hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]}


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def git_state() -> dict:
    """The commit this code came from ($GIT_COMMIT in a container without .git) and whether it had edits."""
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                    capture_output=True, text=True, check=True).stdout.strip())
        return {"commit": commit, "dirty": dirty}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": os.environ.get("GIT_COMMIT") or None, "dirty": None}


def read_json(path: Path, stage: str) -> dict:
    if not path.is_file():
        raise ResourceError(f"{path} is missing: run the {stage} stage first")
    return json.loads(path.read_text(encoding="utf-8"))
