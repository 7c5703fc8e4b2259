"""The report: report.json (validated against report.schema.json), report.md and report.png.

This module is the only writer of the report. JSON is written with ensure_ascii=False, indent 2 and a stable
key order (the order the report is built in), through a temporary file and a rename.
"""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema

from pipeline.stage import write_json_atomic, write_text_atomic

SCHEMA_PATH = Path(__file__).with_name("report.schema.json")
SCHEMA_VERSION = "1.0"
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


def summary_table(report: dict) -> str:
    """Plain-text table of the headline metrics: base, tuned, delta (+ interval and p where bootstrapped)."""
    lines = [f"{'metric':<26}{'base':>10}{'tuned':>10}{'delta':>10}   95% interval        p"]
    for name in MAIN_METRICS:
        base, tuned = report["metrics"]["base"][name], report["metrics"]["tuned"][name]
        line = f"{name:<26}{base:>10.4f}{tuned:>10.4f}{tuned - base:>+10.4f}"
        if name in report["deltas"]:
            d = report["deltas"][name]
            line += f"   [{d['ci95_low']:+.4f}, {d['ci95_high']:+.4f}]  {d['p_value']:.3f}"
        lines.append(line)
    return "\n".join(lines)


def markdown(report: dict) -> str:
    cfg, train, gen = report["config"], report["train"], report["generate"]
    out = [
        "# Evaluation report", "",
        f"Model `{cfg['model']['source']}` + LoRA r={cfg['lora']['r']} on {', '.join(train['adapted_modules'])}; "
        f"data `{cfg['data']['source']}`, {report['rows']} test rows; config hash `{report['config_hash']}`; "
        f"commit `{report['git']['commit']}`{' (dirty)' if report['git']['dirty'] else ''}; "
        f"{report['hardware']['accelerator']}; {report['created_at']}.", "",
        "## Tuned vs base", "",
        "ROUGE in [0, 1] over mecab-ko morphemes (rougeL_char: characters); BLEU (ko-mecab) and chrF in [0, 100]. "
        "`_question`: the question with its `(type)` label removed. Intervals: paired bootstrap, "
        f"{cfg['score']['bootstrap_samples']} resamples, seed {cfg['score']['seed']}; p is one-sided "
        "(tuned not better).", "",
        "| metric | base | tuned | delta | 95% interval | p |", "|---|---:|---:|---:|---|---:|",
    ]
    for name in report["metrics"]["base"]:
        base, tuned = report["metrics"]["base"][name], report["metrics"]["tuned"][name]
        d = report["deltas"].get(name)
        interval = f"[{d['ci95_low']:+.4f}, {d['ci95_high']:+.4f}]" if d else ""
        out.append(f"| {name} | {base:.4f} | {tuned:.4f} | {tuned - base:+.4f} | {interval} | "
                   f"{d['p_value']:.3f} |" if d else f"| {name} | {base:.4f} | {tuned:.4f} | {tuned - base:+.4f} | | |")
    out += ["", "## By question type (reference label)", "",
            "| type | rows | ROUGE-L base | ROUGE-L tuned | BLEU base | BLEU tuned | type acc. base | type acc. tuned |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for label, base in report["per_type"]["base"].items():
        tuned = report["per_type"]["tuned"][label]
        out.append(f"| {label} | {base['rows']} | {base['rougeL']:.4f} | {tuned['rougeL']:.4f} | {base['bleu']:.2f} | "
                   f"{tuned['bleu']:.2f} | {base['type_accuracy']:.3f} | {tuned['type_accuracy']:.3f} |")
    first, last = (train["loss_curve"][0][1], train["loss_curve"][-1][1]) if train["loss_curve"] else (None, None)
    out += ["", "## Training", "",
            f"{train['steps']} steps, loss {first} → {last}, validation loss {train.get('validation_loss')}; "
            f"{train['trainable_parameters']:,} trainable parameters; "
            f"{train.get('examples_per_second')} examples/s, {train.get('tokens_per_second')} tokens/s.", "",
            "## Generation", "", "| model | rows/s | tokens/s | hit max_new_tokens | mean new tokens |",
            "|---|---:|---:|---:|---:|"]
    for name, stats in gen["models"].items():
        out.append(f"| {name} | {stats.get('rows_per_second')} | {stats.get('tokens_per_second')} | "
                   f"{stats['hit_max_new_tokens_rate']:.3f} | {stats['mean_new_tokens']} |")
    out += ["", f"Prompts truncated: {gen['prompts_truncated']}. Stage wall times (s): " +
            ", ".join(f"{k} {v}" for k, v in report["stage_seconds"].items()) + ".", "", "## Examples", ""]
    for example in report["examples"]:
        out += [f"**{example['id']}** — {_one_line(example['input'])}", "",
                f"- reference: {_one_line(example['reference'])}", f"- base: {_one_line(example['base'])}",
                f"- tuned: {_one_line(example['tuned'])}", ""]
    out += ["## Signatures", ""] + [f"- {k}: `{v}`" for k, v in report["signatures"].items()]
    return "\n".join(out) + "\n"


def write_png(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (loss_ax, type_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    curve = report["train"]["loss_curve"]
    loss_ax.plot([s for s, _ in curve], [v for _, v in curve], marker=".")
    loss_ax.set(title="Training loss", xlabel="step", ylabel="loss")
    loss_ax.grid(alpha=0.3)
    labels = list(report["per_type"]["base"])
    names = [TYPE_NAMES.get(label, f"type {i + 1}") for i, label in enumerate(labels)]
    positions = range(len(labels))
    for offset, model in ((-0.2, "base"), (0.2, "tuned")):
        values = [report["per_type"][model][label]["rougeL"] for label in labels]
        type_ax.bar([p + offset for p in positions], values, width=0.4, label=model)
    type_ax.set_xticks(list(positions), names, rotation=20, ha="right")
    type_ax.set(title="ROUGE-L (morphemes) by question type", ylabel="ROUGE-L F1")
    type_ax.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    tmp.replace(path)


def _one_line(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")
