"""The report's blocks that say whether the numbers can be believed (schema 3.1; README "Reading a report"):

    sanity(predictions, references, reference_model, tokenize)   -> per model: identical to the reference model,
                                                                     constant, empty, looping, unlabeled outputs
    warnings(sanity_block, reference_model, identical_limit)      -> what every report format shouts about
    types(predictions, references)                                -> type accuracy next to what guessing scores
    type_warnings(types_block, rows, reference_model)             -> type scores that cannot pass for skill
    regressions(per_example, ids, reference_model, threshold)     -> rows that got worse / better / neither
    per_type_deltas(scores, reference_model, samples, seed)       -> each type's paired-bootstrap deltas

Pure functions of texts (and, for the last two, of per-example scores): `predictions` is {model: outputs}, each
aligned with `references`. The rates reuse eval/metrics.py's definitions, so a sanity number equals its registry
metric (constant_output == constant_output_rate).
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from eval import metrics, stats
from pipeline.text import normalize

# A warning when at least this share of a model's outputs is one text repeated over different inputs: the model
# collapsed (a "," for every row). Below it, repeats can be honest (a common question).
CONSTANT_WARNING = 0.5
# The registry metrics behind the sanity rates (constant_output, empty, repetition_loop, no_type_prefix).
RATES = ("constant_output_rate", "empty_rate", "repetition_rate", "no_type_prefix_rate")


def sanity(predictions: dict[str, list[str]], references: list[str], reference_model: str,
           tokenize: str = "ko-mecab") -> dict[str, dict]:
    """Per model: the share of rows whose output is exactly the reference model's (None for that model itself),
    the RATES, its most common output, and its total output length over the references' total length."""
    registry = tuple(metrics.metric(name) for name in RATES)
    texts = {name: [normalize(t) for t in outputs] for name, outputs in predictions.items()}
    reference_chars = max(sum(len(normalize(t)) for t in references), 1)
    result = {}
    for name, outputs in texts.items():
        rates = metrics.ExampleScores(outputs, references, tokenize, registry=registry).metrics()
        same = [a == b for a, b in zip(outputs, texts[reference_model], strict=True)]
        text, count = Counter(t.strip() for t in outputs).most_common(1)[0] if outputs else ("", 0)
        result[name] = {
            "identical_to_reference": None if name == reference_model else float(np.mean(same)),
            "constant_output": rates["constant_output_rate"],
            "most_common_output": {"text": text, "count": count},
            "empty": rates["empty_rate"], "repetition_loop": rates["repetition_rate"],
            "no_type_prefix": rates["no_type_prefix_rate"],
            "length_ratio": sum(map(len, outputs)) / reference_chars,
        }
    return result


def warnings(sanity_block: dict[str, dict], reference_model: str, identical_limit: float,
             constant_limit: float = CONSTANT_WARNING) -> list[dict]:
    """A warning per model whose outputs equal the reference model's on >= identical_limit of the rows (an adapter
    that changed nothing: its deltas are noise around 0), or are one repeated text on >= constant_limit of them."""
    found = []
    for model, values in sanity_block.items():
        identical, constant = values["identical_to_reference"], values["constant_output"]
        if model != reference_model and identical is not None and identical >= identical_limit:
            found.append({"model": model, "kind": "identical_to_reference", "value": identical,
                          "limit": identical_limit,
                          "message": f"{model}: {identical:.0%} of its outputs are identical to {reference_model}'s "
                                     f"(>= {identical_limit:.0%}): the adapter changed (almost) nothing"})
        if constant >= constant_limit:
            common = values["most_common_output"]
            found.append({"model": model, "kind": "constant_output", "value": constant, "limit": constant_limit,
                          "message": f"{model}: {constant:.0%} of its outputs repeat another row's (>= "
                                     f"{constant_limit:.0%}; most common: {common['text'][:40]!r} x"
                                     f"{common['count']}): the model collapsed to a few texts"})
    return found


# Type collapse: one predicted type on at least half the way from the references' largest share to every row,
# (1 + largest) / 2. Then at least half of the rows whose reference is another type got that one type: no honest
# spread of guesses does that, and sampling noise cannot (at 30 rows and a largest type of 30%, the threshold 65%
# is four standard errors of a share above it).
def collapse_limit(largest_share: float) -> float:
    return (1 + largest_share) / 2


def type_warnings(types_block: dict, rows: int, reference_model: str) -> list[dict]:
    """A warning per model that writes type labels (a model that writes none has no type score to mistake) when
    its type accuracy is not above the majority baseline by more than its own 95% interval (the Wilson interval's
    lower end is at or below the baseline: always answering the most frequent type would do as well), and when one
    predicted type covers at least collapse_limit() of the rows (type collapse). Against a reference model that
    writes no labels, the accuracy warning says what the model's delta then measures."""
    found = []
    majority, labels = types_block["majority_baseline"], set(types_block["labels"])
    reference_labels = types_block["models"].get(reference_model, {}).get("predicted_distribution", {})
    reference_writes_none = not any(label in labels for label in reference_labels)
    limit = collapse_limit(majority)
    for model, values in types_block["models"].items():
        predicted = {label: n for label, n in values["predicted_distribution"].items() if label != metrics.NO_LABEL}
        if not predicted or not rows:
            continue
        accuracy = values["accuracy"]
        low, high = stats.wilson_interval(round(accuracy * rows), rows)
        if low <= majority:
            caveat = (f"; its type_accuracy delta against {reference_model}, which writes no type labels, measures "
                      "that it writes labels, not that it picks the right ones" if model != reference_model and
                      reference_writes_none else "")
            found.append({"model": model, "kind": "type_accuracy_at_majority", "value": accuracy,
                          "limit": min(1.0, majority + accuracy - low),
                          "message": f"{model}: type accuracy {accuracy:.3f} (95% interval {low:.3f} to {high:.3f}) "
                                     f"is not above the majority baseline {majority:.3f} (always answering "
                                     f"{types_block['majority_label']!r}) by more than its interval: not evidence "
                                     f"of type skill{caveat}"})
        top, count = max(predicted.items(), key=lambda item: (item[1], item[0]))
        if count / rows >= limit:
            found.append({"model": model, "kind": "type_collapse", "value": count / rows, "limit": limit,
                          "message": f"{model}: {count / rows:.0%} of its outputs are labelled {top!r} where the "
                                     f"references' largest type is {majority:.0%} of rows (>= {limit:.0%}, half the "
                                     "way to every row): its types collapsed to one"})
    return found


def types(predictions: dict[str, list[str]], references: list[str]) -> dict:
    """Type accuracy with what it must beat: always answering the references' most frequent type (majority
    baseline), uniform guessing among their types (chance), and macro-F1 (each type's F1 weighs the same, so
    always answering the majority type scores low); each model's predicted types next to the references'."""
    reference_labels = metrics.labels([normalize(t) for t in references])
    distribution = Counter(label or metrics.NO_LABEL for label in reference_labels)
    labels = [label for label, _ in sorted(Counter(filter(None, reference_labels)).items(),
                                           key=lambda item: (-item[1], item[0]))]
    majority = labels[0] if labels else metrics.NO_LABEL
    registry = (metrics.metric("type_accuracy"), metrics.metric("type_macro_f1"))
    models = {}
    for name, outputs in predictions.items():
        values = metrics.ExampleScores(outputs, references, registry=registry).metrics()
        predicted = Counter(label or metrics.NO_LABEL for label in metrics.labels([normalize(t) for t in outputs]))
        models[name] = {"accuracy": values["type_accuracy"], "macro_f1": values["type_macro_f1"],
                        "predicted_distribution": dict(predicted.most_common())}
    return {"labels": labels, "reference_distribution": dict(distribution.most_common()),
            "majority_label": majority, "majority_baseline": distribution[majority] / max(len(references), 1),
            "chance_baseline": 1 / len(labels) if labels else 0.0, "models": models}


def regressions(per_example: dict[str, np.ndarray], ids: list[str], reference_model: str, threshold: float,
                metric: str = "rougeL") -> dict[str, dict]:
    """Per model but the reference: its rows by the change of `metric` (per example) against the reference model's
    beyond +-threshold (eval.stats.regression_buckets: regressed worst first, improved best first)."""
    return {model: {"metric": metric, **stats.regression_buckets(per_example[reference_model], values, threshold, ids)}
            for model, values in per_example.items() if model != reference_model}


def per_type_deltas(scores: dict[str, metrics.ExampleScores], reference_model: str, samples: int,
                    seed: int) -> dict[str, dict]:
    """Per model but the reference, per question type (the reference's label): the paired-bootstrap deltas of the
    metrics flagged both delta and per_type, resampling only that type's rows (a small type gets the wide
    interval it deserves)."""
    reference = scores[reference_model]
    names = [name for name, m in reference.computed.items() if m.delta and m.per_type]
    groups = metrics.type_groups(reference.references)
    return {model: {label: {"rows": len(rows), **stats.paired_bootstrap(reference, model_scores, names, samples,
                                                                          seed, rows=rows)}
                    for label, rows in groups.items()}
            for model, model_scores in scores.items() if model != reference_model}
