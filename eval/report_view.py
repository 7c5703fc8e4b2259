"""What the report's readers share: report.md and the card (eval/report.py, eval/card.py), compare's tables
(eval/verdict.py), report.html (eval/html.py, eval/templates/) and report.png (eval/report_png.py).

Plain data only, no HTML and no plotting, and nothing here imports eval.report: eval.report writes report.html and
report.png through the modules above, which read these helpers from here.

A block a report lacks (a 3.0 report has no "sanity", "warnings", "types", "regressions", "per_type_deltas" or
"semantic") gives None or an empty list, so every reader omits what it would have shown from it.
"""

from __future__ import annotations

from eval.metrics import NO_LABEL

MISSING = "—"  # in a table: a metric the report lacks (made by another version, or not enabled there)
# English names for the plot (matplotlib's default font has no Hangul); unknown labels become "type N".
TYPE_NAMES = {"의미 명확히 하기": "clarity", "가정 살펴보기": "assumptions", "이유와 근거 묻기": "reasons/evidence",
              "함의와 결과 따져보기": "implications", "다른 관점 생각하기": "alt. viewpoints"}
# The sanity block's shares, in the order and with the words report.html's table shows them.
SANITY_SHARES = (("identical_to_reference", "identical to reference"), ("constant_output", "repeated output"),
                 ("empty", "empty"), ("repetition_loop", "repetition loop"), ("no_type_prefix", "no (type) prefix"))


def compared_models(report: dict) -> list[str]:
    """The models shown side by side: every model but the training checkpoints (they have their own table)."""
    checkpoints = {c["model"] for c in report["checkpoints"]} - {"tuned"}
    return [name for name in report["models"] if name not in checkpoints]


def cell(values: dict, name: str, spec: str = ".4f") -> str:
    """A metric's value as the tables show it: MISSING where `values` (one model's metrics) has none."""
    return format(values[name], spec) if name in values else MISSING


def change(before: dict, after: dict, name: str) -> str:
    """after minus before, as the tables show it; MISSING unless both have the metric."""
    return signed(after[name] - before[name]) if name in before and name in after else MISSING


def signed(value: float) -> str:
    """A change as the tables show it, with its sign; a change that rounds to zero is +0.0000, never -0.0000 (the
    sign of float noise: semantic's -0.00000001)."""
    text = f"{value:+.4f}"
    return "+0.0000" if text == "-0.0000" else text


def plot_names(labels: list[str]) -> dict[str, str]:
    """Each label's name in a plot: TYPE_NAMES' English, "(no label)" as it is, any other "type N" by position."""
    return {label: TYPE_NAMES.get(label, label if label == NO_LABEL else f"type {i + 1}")
            for i, label in enumerate(labels)}


def type_labels(report: dict) -> list[str]:
    """The question types in the report's order: the types block's (most frequent first), else the per-type
    table's."""
    if report.get("types"):
        return list(report["types"]["labels"])
    return list(report["per_type"][report["reference"]])


def type_rows(report: dict) -> dict[str, int]:
    """Rows per question type of the test split."""
    return {label: values["rows"] for label, values in report["per_type"][report["reference"]].items()}


def distribution(report: dict) -> list[tuple[str, int, dict[str, int]]]:
    """The types block's predicted-type distribution beside the reference's, one (label, reference rows,
    {model: rows predicted}) per label: the reference's types first, then any other label a model predicted (most
    predicted first), then "(no label)". Empty without a types block."""
    types = report.get("types")
    if not types:
        return []
    predicted = {m: values["predicted_distribution"] for m, values in types["models"].items()}
    others = {}
    for counts in predicted.values():
        for label, count in counts.items():
            if label not in types["reference_distribution"] and label != NO_LABEL:
                others[label] = others.get(label, 0) + count
    labels = [*types["labels"], *sorted(others, key=lambda label: (-others[label], label))]
    if any(NO_LABEL in counts for counts in predicted.values()) or NO_LABEL in types["reference_distribution"]:
        labels.append(NO_LABEL)
    return [(label, types["reference_distribution"].get(label, 0), {m: counts.get(label, 0)
                                                                    for m, counts in predicted.items()})
            for label in dict.fromkeys(labels)]


def per_type_deltas(report: dict) -> list[tuple[str, str, int, dict[str, dict]]]:
    """(model, label, rows, {metric: {delta, ci95_low, ci95_high, p_value}}) per compared model and question type,
    in the report's type order; empty without a per_type_deltas block."""
    block = report.get("per_type_deltas") or {}
    order = {label: i for i, label in enumerate(type_labels(report))}
    out = []
    for model, by_type in block.items():
        for label in sorted(by_type, key=lambda label: order.get(label, len(order))):
            values = by_type[label]
            out.append((model, label, values["rows"], {k: v for k, v in values.items() if k != "rows"}))
    return out


def excludes_zero(delta: dict) -> bool:
    """Whether a paired delta's 95% interval lies on one side of 0: a change the resampling does not explain."""
    return delta["ci95_low"] > 0 or delta["ci95_high"] < 0


def warned(report: dict) -> set[tuple[str, str]]:
    """(model, kind) of every warning the report carries: the sanity cells that crossed their limit."""
    return {(w["model"], w["kind"]) for w in report.get("warnings") or ()}
