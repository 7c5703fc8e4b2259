"""A report.json of schema 3.1 made here for the renderers' tests (report.html, report.png), with its prediction rows
and per-example scores, so that a test of a 3.1 page needs no score stage.

It starts from the committed demo (examples/baseline-report.json and the 60 rows it scored) and changes it
by hand so that every 3.1 block has something to show:
- tuned regresses on two rows: one output emptied (EMPTIED), one turned into a repetition loop (LOOPED);
- a third model, "untrained" (an adapter saved before its first step: LoRA's B starts at zero, so it generates
  what base does), differs from base on two rows only (cut in half): its identical_to_reference share (58/60) crosses the
  warning limit;
- the report's numbers are then computed from those rows with the project's own functions (eval.metrics, the
  paired bootstrap, eval.stats.regression_buckets, eval.semantic.plan), and the blocks eval/metrics.py has no
  function for (sanity, types) from the contract's definitions, written out below.
Every question type of 60 rows is under compare's default --min-type-rows (30); the demo renders with
MIN_TYPE_ROWS = 10 instead, so that two types (9 and 7 rows) are marked too few to judge and three are not.
"""

from __future__ import annotations

import copy
import functools
import json
from collections import Counter

from conftest import ROOT
from eval import metrics
from eval.report_view import NO_LABEL
from eval.predictions import read_predictions
from eval.semantic import plan
from eval.stats import paired_bootstrap, regression_buckets
from pipeline.text import split_label

MIN_TYPE_ROWS = 10
THRESHOLD = 0.05
EMPTIED, LOOPED = "test:28", "test:44"
UNTRAINED_CHANGED = ("test:3", "test:57")
LOOP = "(이유와 근거 묻기) 오디션 프로그램 순위는 어떻게 " * 4
IDENTICAL_LIMIT, CONSTANT_LIMIT = 0.95, 0.5
SHOWN_PER_EXAMPLE = ("rougeL", "rougeL_question")


def demo() -> tuple[dict, dict[str, list[dict]], dict[str, dict[str, list[float]]]]:
    """(report, prediction rows per model, per-example scores {metric: {model: values}}), a fresh copy each call."""
    return copy.deepcopy(_demo())


@functools.cache
def _demo():
    report = json.loads((ROOT / "examples/baseline-report.json").read_text(encoding="utf-8"))
    rows = read_predictions(ROOT / "examples/baseline-predictions.jsonl")
    rows["tuned"] = [{**r, "prediction": "" if r["id"] == EMPTIED else LOOP.strip() if r["id"] == LOOPED
                      else r["prediction"]} for r in rows["tuned"]]
    rows["untrained"] = [{**r, "model": "untrained", "prediction": r["prediction"][:len(r["prediction"]) // 2]
                          if r["id"] in UNTRAINED_CHANGED else r["prediction"]} for r in rows["base"]]
    models, reference = ["base", "tuned", "untrained"], "base"
    references = [r["reference"] for r in rows[reference]]
    ids = [r["id"] for r in rows[reference]]
    outputs = {m: [r["prediction"] for r in rows[m]] for m in models}
    scores = {m: metrics.ExampleScores(outputs[m], references, report["metric_settings"]["tokenize"], rows[m])
              for m in models}
    samples, seed = report["config"]["score"]["bootstrap_samples"], report["config"]["score"]["seed"]
    others = [m for m in models if m != reference]
    by_type: dict[str, list[int]] = {}
    for index, label in enumerate(metrics.labels(references)):
        by_type.setdefault(label or NO_LABEL, []).append(index)
    paired_per_type = [m.name for m in metrics.REGISTRY
                       if m.delta and m.per_type and m.name in scores[reference].computed]  # semantic is off

    report["schema_version"] = "3.1"
    report["models"] = models
    report["config"]["generate"]["adapters"] = {"untrained": "outputs/step-0/adapter"}
    report["generate"]["models"]["untrained"] = report["generate"]["models"]["base"]
    for example in report["examples"]:
        example["predictions"]["untrained"] = outputs["untrained"][ids.index(example["id"])]
    types = types_block(references, outputs)
    report["metrics"] = {m: {**scores[m].metrics(), "type_macro_f1": types["models"][m]["macro_f1"]} for m in models}
    report["deltas"] = {m: paired_bootstrap(scores[reference], scores[m], samples=samples, seed=seed)
                        for m in others}
    report["per_type"] = {m: metrics.per_type(scores[m]) for m in models}
    semantic = plan({m: outputs[m] for m in models}, references, enabled=False)
    report["semantic"] = {"enabled": False, "backend": None, "model": "intfloat/multilingual-e5-small", "texts": 0,
                          "seconds": None, "reason": semantic.message}
    report["sanity"] = {m: sanity(outputs[m], None if m == reference else outputs[reference], references)
                        for m in models}
    report["warnings"] = [
        {"model": m, "kind": kind, "value": values[kind], "limit": limit, "message": message.format(m=m)}
        for m, values in report["sanity"].items()
        for kind, limit, message in (
            ("identical_to_reference", IDENTICAL_LIMIT, "{m} generates what base does on almost every row: was the "
             "adapter trained, and is it loaded?"),
            ("constant_output", CONSTANT_LIMIT, "{m} gives the same output for most rows"))
        if values[kind] is not None and values[kind] >= limit]
    report["types"] = types
    report["regressions"] = {m: {"metric": "rougeL", **regression_buckets(
        scores[reference].values["rougeL"], scores[m].values["rougeL"], THRESHOLD, ids)} for m in others}
    report["per_type_deltas"] = {m: {label: {"rows": len(indices), **paired_bootstrap(
        scores[reference], scores[m], paired_per_type, samples, seed, rows=indices)}
        for label, indices in by_type.items()} for m in others}
    per_example = {name: {m: scores[m].values[name].tolist() for m in models} for name in SHOWN_PER_EXAMPLE}
    return report, rows, per_example


def sanity(texts: list[str], reference_texts: list[str] | None, references: list[str]) -> dict:
    """The contract's sanity counters of one model's outputs."""
    n, counts = len(texts), Counter(texts)
    text, count = counts.most_common(1)[0]
    return {
        "identical_to_reference": None if reference_texts is None else
        sum(a == b for a, b in zip(texts, reference_texts)) / n,
        "constant_output": sum(bool(t) and counts[t] > 1 for t in texts) / n,
        "most_common_output": {"text": text, "count": count},
        "empty": sum(not t.strip() for t in texts) / n,
        "repetition_loop": sum(looped(t.split()) for t in texts) / n,
        "no_type_prefix": sum(split_label(t)[0] is None for t in texts) / n,
        "length_ratio": sum(map(len, texts)) / sum(map(len, references)),
    }


def looped(tokens: list[str], run: int = 4, times: int = 3) -> bool:
    """A run of `run` tokens repeated `times` times in a row."""
    return any(all(tokens[i:i + run] == tokens[i + k * run:i + (k + 1) * run] for k in range(1, times))
               for i in range(len(tokens) - run * times + 1))


def types_block(references: list[str], outputs: dict[str, list[str]]) -> dict:
    """The contract's types block: the reference's type distribution, the baselines, each model's accuracy,
    macro-F1 over the reference's types and predicted distribution."""
    truth = [label or NO_LABEL for label in metrics.labels(references)]
    distribution = Counter(truth)
    labels = sorted(distribution, key=lambda label: (-distribution[label], label))
    models = {}
    for model, texts in outputs.items():
        predicted = [label or NO_LABEL for label in metrics.labels(texts)]
        f1 = []
        for label in labels:
            hits = sum(p == t == label for p, t in zip(predicted, truth))
            tried = predicted.count(label) + truth.count(label)
            f1.append(2 * hits / tried if tried else 0.0)
        models[model] = {"accuracy": sum(p == t != NO_LABEL for p, t in zip(predicted, truth)) / len(truth),
                         "macro_f1": sum(f1) / len(f1), "predicted_distribution": dict(Counter(predicted))}
    return {"labels": labels, "reference_distribution": {label: distribution[label] for label in labels},
            "majority_label": labels[0], "majority_baseline": distribution[labels[0]] / len(truth),
            "chance_baseline": 1 / len(labels), "models": models}
