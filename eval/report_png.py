"""report.png: the report at a glance, one panel per thing the report has data for.

    figure(report)          -> the matplotlib Figure (tests read its panels' titles)
    write_png(report, path) -> report.png

The panels, each drawn only when the report has its data (a panel with nothing in it would say nothing):
- training and validation loss (report["train"]: the loss logged every train.logging_steps steps, and the
  validation loss pipeline/train.py measures once, after the last step);
- the first featured metric (ROUGE-L) per saved checkpoint (score.checkpoints; off by default);
- ROUGE-L per question type and model, each type with its row count; with a per_type_deltas block (3.1), whiskers
  on each compared model's bar: the 95% paired-bootstrap interval of its change against the reference, drawn
  around the reference's value; types with fewer than MIN_TYPE_ROWS rows hatched, "too few" rows to judge;
- the question types the models predicted beside the reference's distribution (the types block, 3.1).
Labels are the English names of eval.report_view.TYPE_NAMES: matplotlib's default font has no Hangul. A panel whose
type labels would run into each other level (many types: a model that invents its own) has them turned.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from matplotlib.figure import Figure

from eval import metrics
from eval.gate_spec import MIN_TYPE_ROWS
from eval.report_view import compared_models, distribution, plot_names, type_labels, type_rows
from pipeline.atomic import atomic_path

PANEL_SIZE = (6.2, 4.6)  # inches per panel
REFERENCE_COLOR = "#98a2b3"  # the reference model's bars: grey, so the compared models' colours stand out
REFERENCE_TEXT_COLOR = "#344054"  # the reference texts' own type distribution
LABEL_GAP = 4  # pixels between two neighbouring tick labels, at least


def figure(report: dict, min_type_rows: int = MIN_TYPE_ROWS) -> Figure:
    """One panel per block with data, laid out in rows of up to three (two by two for four)."""
    featured = metrics.metric(metrics.FEATURED[0])
    train = report.get("train") or {}
    points = [c for c in report["checkpoints"] if featured.name in c]
    panels = [draw for draw, wanted in (
        (lambda ax: loss_panel(ax, train), bool(train.get("loss_curve")) or train.get("validation_loss") is not None),
        (lambda ax: checkpoint_panel(ax, report, points, featured), bool(points)),
        (lambda ax: type_panel(ax, report, featured, min_type_rows), bool(report["per_type"])),
        (lambda ax: distribution_panel(ax, report), bool(distribution(report))),
    ) if wanted]
    columns = 2 if len(panels) == 4 else max(1, min(len(panels), 3))
    rows = max(1, math.ceil(len(panels) / columns))
    fig = Figure(figsize=(PANEL_SIZE[0] * columns, PANEL_SIZE[1] * rows), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False).flatten()
    for draw, ax in zip(panels, axes):
        draw(ax)
    for ax in axes[len(panels):]:
        ax.remove()
    if not turn_crowded_labels(fig):
        # The layout just computed stands (nothing moved): savefig need not compute it again (half its time).
        fig.set_layout_engine("none")
    return fig


def turn_crowded_labels(fig: Figure) -> bool:
    """Each panel's x tick labels, where two level neighbours would touch: turned 45 degrees, or upright where even
    turned lines would touch (parallel labels a tick spacing s apart are s * sin(angle) apart across their lines).
    Whether any label was turned."""
    fig.get_layout_engine().execute(fig)  # the constrained layout alone: the labels' extents are the saved ones
    turned = False
    for ax in fig.axes:
        labels = [label for label in ax.get_xticklabels() if label.get_text()]
        boxes = [label.get_window_extent() for label in labels]
        if all(a.x1 + LABEL_GAP <= b.x0 for a, b in zip(boxes, boxes[1:])):
            continue
        spacing = min(np.diff([(box.x0 + box.x1) / 2 for box in boxes]))
        lines = max(box.height for box in boxes) + LABEL_GAP
        turned = True
        for label in labels:  # turned about its end at the tick, or hanging upright below it
            label.set(**(dict(rotation=45, ha="right", rotation_mode="anchor") if spacing * math.sin(math.pi / 4)
                         >= lines else dict(rotation=90, ha="center", rotation_mode="default")))
    return turned


def write_png(report: dict, path: Path) -> None:
    with atomic_path(path) as tmp:
        figure(report).savefig(tmp, dpi=110, format="png")


def loss_panel(ax, train: dict) -> None:
    curve = train.get("loss_curve") or []
    ax.plot([s for s, _ in curve], [v for _, v in curve], marker=".", label="training (per logging step)")
    if train.get("validation_loss") is not None:
        # One number, measured after the last step: a point at the end of the curve, not a curve.
        ax.plot([train["steps"]], [train["validation_loss"]], marker="D", linestyle="", color="#d92d20",
                label=f"validation, after training: {train['validation_loss']:.3f}")
    ax.set(title="Training and validation loss", xlabel="step", ylabel="loss")
    ax.grid(alpha=0.3)
    ax.legend()


def checkpoint_panel(ax, report: dict, points: list[dict], featured) -> None:
    ax.plot([c["step"] for c in points], [c[featured.name] for c in points], marker="o", label="checkpoints")
    reference = report["reference"]
    if featured.name in report["metrics"][reference]:
        ax.axhline(report["metrics"][reference][featured.name], color="gray", linestyle="--", label=reference)
    ax.set(title=f"{featured.title} by training step", xlabel="step", ylabel=featured.title)
    ax.grid(alpha=0.3)
    ax.legend()


def type_panel(ax, report: dict, featured, min_type_rows: int) -> None:
    """Bars per type and model; whiskers from per_type_deltas around the reference's value."""
    reference, models = report["reference"], compared_models(report)
    labels, rows = type_labels(report), type_rows(report)
    names, colors = plot_names(labels), model_colors(report)
    deltas = report.get("per_type_deltas") or {}
    width = 0.8 / len(models)
    for offset, model in enumerate(models):
        xs = [p + (offset - (len(models) - 1) / 2) * width for p in range(len(labels))]
        values = [report["per_type"][model].get(label, {}).get(featured.name, math.nan) for label in labels]
        bars = ax.bar(xs, values, width=width, label=model, color=colors[model])
        for bar, label in zip(bars, labels):
            if rows.get(label, 0) < min_type_rows:
                bar.set_hatch("//")
                bar.set_alpha(0.6)
        interval = [deltas.get(model, {}).get(label, {}).get(featured.name) for label in labels]
        if any(interval):
            base = [report["per_type"][reference][label][featured.name] for label in labels]
            # max(0, ...): a zero-width interval (every resample alike) can come out -1e-16 here, which errorbar refuses
            low = [max(0.0, v - (b + d["ci95_low"])) if d else 0 for v, b, d in zip(values, base, interval)]
            high = [max(0.0, b + d["ci95_high"] - v) if d else 0 for v, b, d in zip(values, base, interval)]
            ax.errorbar(xs, values, yerr=[low, high], fmt="none", ecolor="#101828", capsize=3, linewidth=1,
                        label=f"95% interval vs {reference}" if offset == 1 else None)
    ax.set_xticks(list(range(len(labels))), [
        f"{names[label]}\n{rows.get(label, 0)} rows" + ("\n(too few)" if rows.get(label, 0) < min_type_rows else "")
        for label in labels], fontsize=8)
    ax.set(title=f"{featured.title} by question type", ylabel=featured.title)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)


def distribution_panel(ax, report: dict) -> None:
    """Rows per question type: the reference texts' and each model's predictions (where type accuracy comes from)."""
    table = distribution(report)
    names, colors = plot_names([label for label, _, _ in table]), model_colors(report)
    series = [("reference texts", [count for _, count, _ in table], REFERENCE_TEXT_COLOR)]
    series += [(f"{model} predicted", [predicted[model] for _, _, predicted in table], colors.get(model))
               for model in table[0][2]]
    width = 0.8 / len(series)
    for offset, (name, counts, color) in enumerate(series):
        ax.bar([p + (offset - (len(series) - 1) / 2) * width for p in range(len(table))], counts, width=width,
               label=name, color=color)
    ax.set_xticks(list(range(len(table))), [names[label] for label, _, _ in table], fontsize=8)
    ax.set(title="Question types: predicted vs the reference texts'", ylabel="rows")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)


def model_colors(report: dict) -> dict[str, str]:
    """One colour per model in every panel: the reference grey, the others matplotlib's cycle in order."""
    others = [m for m in compared_models(report) if m != report["reference"]]
    return {report["reference"]: REFERENCE_COLOR, **{m: f"C{i}" for i, m in enumerate(others)}}
