"""The report: report.json (validated against report.schema.json), report.md and report.png.

This module is the only writer of the report. JSON is written with ensure_ascii=False, indent 2 and a stable
key order (the order the report is built in), through a temporary file and a rename.
"""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema

from pipeline.stage import atomic_path, write_json_atomic, write_text_atomic

SCHEMA_PATH = Path(__file__).with_name("report.schema.json")
SCHEMA_VERSION = "3.0"
# The headline rows of report.md and of `run`'s summary table.
MAIN_METRICS = ("rougeL", "rouge1", "rouge2", "rougeL_char", "bleu", "chrf", "chrfpp", "rougeL_question",
                "bleu_question", "type_accuracy", "known_label_rate", "hit_max_new_tokens_rate", "empty_rate",
                "mean_chars")
# English names for the plot (matplotlib's default font has no Hangul); unknown labels become "type N".
TYPE_NAMES = {"의미 명확히 하기": "clarity", "가정 살펴보기": "assumptions", "이유와 근거 묻기": "reasons/evidence",
              "함의와 결과 따져보기": "implications", "다른 관점 생각하기": "alt. viewpoints"}


def validate(report: dict) -> None:
    jsonschema.validate(report, json.loads(SCHEMA_PATH.read_text(encoding="utf-8")))


def write_report(report: dict, output_dir: Path) -> dict[str, Path]:
    validate(report)
    paths = {"json": output_dir / "report.json", "md": output_dir / "report.md", "png": output_dir / "report.png"}
    write_png(report, paths["png"])
    write_text_atomic(paths["md"], markdown(report))
    write_json_atomic(paths["json"], report)  # last: its presence marks the score stage finished
    return paths


def compared_models(report: dict) -> list[str]:
    """The models shown side by side: every model but the training checkpoints (they have their own table)."""
    checkpoints = {c["model"] for c in report["checkpoints"]} - {"tuned"}
    return [name for name in report["models"] if name not in checkpoints]


def summary_table(report: dict) -> str:
    """Plain-text table of the headline metrics per model, and each model's paired delta against the reference."""
    models = compared_models(report)
    lines = [f"{'metric':<26}" + "".join(f"{name[:12]:>13}" for name in models)]
    for metric in MAIN_METRICS:
        lines.append(f"{metric:<26}" + "".join(f"{report['metrics'][name][metric]:>13.4f}" for name in models))
    lines += ["", f"paired bootstrap against {report['reference']}: delta [95% interval] p"]
    for name, deltas in report["deltas"].items():
        if name in models:
            for metric, d in deltas.items():
                lines.append(f"  {name:<14}{metric:<18}{d['delta']:>+10.4f}   [{d['ci95_low']:+.4f}, "
                             f"{d['ci95_high']:+.4f}]  {d['p_value']:.3f}")
    return "\n".join(lines)


def markdown(report: dict) -> str:
    cfg, train, gen = report["config"], report["train"], report["generate"]
    models, reference = compared_models(report), report["reference"]
    adapted = (f"LoRA r={cfg['lora']['r']} on {', '.join(train['adapted_modules'])}" if train
               else f"the adapter {report['adapter']}")
    out = [
        "# Evaluation report", "",
        f"Model `{cfg['model']['source']}` + {adapted}; data `{cfg['data']['source']}`, {report['rows']} test rows "
        f"(fingerprint `{report['test_set']['sha256'][:16]}`); metrics `{report['metric_settings']['tokenize']}` "
        f"(fingerprint `{report['metric_settings']['fingerprint']}`); inputs hash `{report['inputs_hash']}`; "
        f"{provenance_line(report['provenance'])}; {report['created_at']}.", "",
        "## Models", "",
        f"ROUGE in [0, 1] over `{report['metric_settings']['tokenize']}` tokens (rougeL_char: characters); BLEU and "
        "chrF in [0, 100]. `_question`: the question with its `(type)` label removed. Columns after base: the "
        "model's value and its difference from base.", "",
        "| metric | " + " | ".join(models) + " |", "|---|" + "---:|" * len(models),
    ]
    for metric in report["metrics"]["base"]:
        base = report["metrics"]["base"][metric]
        cells = [f"{base:.4f}"] + [f"{report['metrics'][m][metric]:.4f} ({report['metrics'][m][metric] - base:+.4f})"
                                   for m in models[1:]]
        out.append(f"| {metric} | " + " | ".join(cells) + " |")
    out += ["", f"## Paired bootstrap against {reference}", "",
            f"{cfg['score']['bootstrap_samples']} resamples of the same rows, seed {cfg['score']['seed']}; p is "
            f"one-sided (the model is not better than {reference}).", "",
            "| model | metric | delta | 95% interval | p |", "|---|---|---:|---|---:|"]
    for name, deltas in report["deltas"].items():
        for metric, d in deltas.items():
            out.append(f"| {name} | {metric} | {d['delta']:+.4f} | [{d['ci95_low']:+.4f}, {d['ci95_high']:+.4f}] | "
                       f"{d['p_value']:.3f} |")
    out += ["", "## By question type (reference label): ROUGE-L and type accuracy", "",
            "| type | rows | " + " | ".join(f"{m} ROUGE-L | {m} type acc." for m in models) + " |",
            "|---|---:|" + "---:|---:|" * len(models)]
    for label, base in report["per_type"]["base"].items():
        cells = " | ".join(f"{report['per_type'][m][label]['rougeL']:.4f} | "
                           f"{report['per_type'][m][label]['type_accuracy']:.3f}" for m in models)
        out.append(f"| {label} | {base['rows']} | {cells} |")
    if report["checkpoints"]:
        out += ["", "## Training checkpoints", "", "| step | ROUGE-L | BLEU | chrF | type acc. |",
                "|---:|---:|---:|---:|---:|"]
        out += [f"| {c['step']} | {c['rougeL']:.4f} | {c['bleu']:.2f} | {c['chrf']:.2f} | {c['type_accuracy']:.3f} |"
                for c in report["checkpoints"]]
    if train:
        first, last = (train["loss_curve"][0][1], train["loss_curve"][-1][1]) if train["loss_curve"] else (None, None)
        out += ["", "## Training", "",
                f"{train['steps']} steps, loss {first} → {last}, validation loss {train.get('validation_loss')}; "
                f"{train['trainable_parameters']:,} trainable parameters; "
                f"{train.get('examples_per_second')} examples/s, {train.get('tokens_per_second')} tokens/s."]
    out += ["", "## Generation", "", "| model | rows/s | tokens/s | batch | hit max_new_tokens | mean new tokens |",
            "|---|---:|---:|---:|---:|---:|"]
    for name, stats in gen["models"].items():
        out.append(f"| {name} | {stats.get('rows_per_second')} | {stats.get('tokens_per_second')} | "
                   f"{stats.get('batch_size')} | {stats['hit_max_new_tokens_rate']:.3f} | {stats['mean_new_tokens']} |")
    out += ["", f"Prompts truncated: {gen['prompts_truncated']}. Stage wall times (s): " +
            ", ".join(f"{k} {v}" for k, v in report["stage_seconds"].items()) + ".", "", "## Examples", ""]
    for example in report["examples"]:
        out += [f"**{example['id']}** — {_one_line(example['input'])}", "",
                f"- reference: {_one_line(example['reference'])}"]
        out += [f"- {name}: {_one_line(text)}" for name, text in example["predictions"].items()] + [""]
    out += ["## Signatures", ""] + [f"- {k}: `{v}`" for k, v in report["metric_settings"]["signatures"].items()]
    return "\n".join(out) + "\n"


def provenance_line(provenance: dict) -> str:
    """Which commit and machine each stage ran on, in one line; a warning when they differ or had edits."""
    stages = {name: p for name, p in provenance.items() if isinstance(p, dict)}
    where = ", ".join(f"{name} `{(p['git']['commit'] or 'unknown')[:12]}`{' (dirty)' if p['git']['dirty'] else ''} "
                      f"on {p['hardware']['accelerator'] or p['hardware']['cpu']}" for name, p in stages.items())
    warnings = ([] if provenance["same_commit"] else ["**the stages ran from different commits**"]) + (
        ["**uncommitted edits**"] if provenance["dirty"] else [])
    return "; ".join([f"commits: {where}", *warnings])


def write_png(report: dict, path: Path) -> None:
    """Training loss, ROUGE-L per saved checkpoint (where quality peaked), ROUGE-L per question type and model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (loss_ax, step_ax, type_ax) = plt.subplots(1, 3, figsize=(17, 4.5))
    curve = report["train"]["loss_curve"] if report["train"] else []
    loss_ax.plot([s for s, _ in curve], [v for _, v in curve], marker=".")
    loss_ax.set(title="Training loss", xlabel="step", ylabel="loss")
    loss_ax.grid(alpha=0.3)
    points = report["checkpoints"]
    step_ax.plot([c["step"] for c in points], [c["rougeL"] for c in points], marker="o", label="checkpoints")
    step_ax.axhline(report["metrics"]["base"]["rougeL"], color="gray", linestyle="--", label="base")
    step_ax.set(title="ROUGE-L by training step" if points else "ROUGE-L by step (score.checkpoints: off)",
                xlabel="step", ylabel="ROUGE-L F1")
    step_ax.grid(alpha=0.3)
    step_ax.legend()
    models = compared_models(report)
    labels = list(report["per_type"]["base"])
    width = 0.8 / len(models)
    for offset, model in enumerate(models):
        values = [report["per_type"][model][label]["rougeL"] for label in labels]
        type_ax.bar([p + (offset - (len(models) - 1) / 2) * width for p in range(len(labels))], values, width=width,
                    label=model)
    type_ax.set_xticks(list(range(len(labels))), [TYPE_NAMES.get(label, f"type {i + 1}")
                                                  for i, label in enumerate(labels)], rotation=20, ha="right")
    type_ax.set(title="ROUGE-L by question type", ylabel="ROUGE-L F1")
    type_ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def _one_line(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")
