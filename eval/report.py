"""The report: report.json (validated against report.schema.json), report.md, report.png and report.html.

This module is the only writer of the report. JSON is written with ensure_ascii=False, indent 2 and a stable
key order (the order the report is built in), through a temporary file and a rename.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import jsonschema

from eval import metrics
from eval.html import render_html
from eval.report_png import write_png
from eval.gate_spec import MIN_TYPE_ROWS
from eval.report_view import MISSING, cell, change, compared_models, distribution
from pipeline.atomic import write_json_atomic, write_text_atomic

SCHEMA_PATH = Path(__file__).with_name("report.schema.json")
SCHEMA_VERSION = "3.1"
# The version in the metric settings (and so in their fingerprint): it changes only when a metric's definition
# does, so that reports of schema 3.0 and 3.1 with the same settings compare (eval/compare.py).
METRIC_SETTINGS_VERSION = "3.0"


def schema(complete: bool = True) -> dict:
    """report.schema.json with its metric names filled in from the registry: each metric's range, and (complete)
    the metrics, deltas, per-type and checkpoint values every report of this version has. A reader of reports
    made by other versions asks for complete=False: a metric missing there is handled by name where it is used."""
    result = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    defs = result["$defs"]
    defs["model_metrics"]["properties"] = {m.name: {"type": "number", "description": m.title, **bounds(m.range)}
                                           for m in metrics.REGISTRY}
    if complete:
        always = [m for m in metrics.REGISTRY if m.enabled is None]
        defs["model_metrics"]["required"] = [m.name for m in always]
        for key, flag in (("model_deltas", "delta"), ("type_row", "per_type"), ("checkpoint", "checkpoint")):
            defs[key]["required"] += [m.name for m in always if getattr(m, flag)]
    return result


def bounds(values: tuple[float | None, float | None]) -> dict:
    """A metric's range as schema bounds, widened by float noise (the BLEU of identical texts can be
    100.00000000000004): they check its scale, not its last digit."""
    slack = 1e-9 * max(abs(v) for v in (*values, 1) if v is not None)
    return {bound: value + sign * slack
            for bound, value, sign in (("minimum", values[0], -1), ("maximum", values[1], 1)) if value is not None}


def validate(report: dict, complete: bool = True) -> None:
    check(report, schema(complete))


def check(report: dict, against: dict) -> None:
    """jsonschema.validate(report, against), raising the same best-matching ValidationError, with the schema
    checked and its validator built once per schema text: checking the schema against the metaschema is nine tenths
    of validating a report (measured), and a gate reads two reports, a score run validates one."""
    error = jsonschema.exceptions.best_match(validator(json.dumps(against, sort_keys=True)).iter_errors(report))
    if error is not None:
        raise error


@functools.lru_cache(maxsize=8)
def validator(schema_text: str):
    """The validator of a schema given as JSON text (a registry change makes another text: another validator)."""
    loaded = json.loads(schema_text)
    cls = jsonschema.validators.validator_for(loaded)
    cls.check_schema(loaded)
    return cls(loaded)


def write_report(report: dict, output_dir: Path, rows: dict[str, list[dict]] | None = None,
                 per_example: dict[str, dict] | None = None) -> dict[str, Path]:
    """report.png, report.md, with the prediction `rows` per model and their `per_example` scores
    ({metric: {model: values}}) report.html, and last report.json."""
    validate(report)
    paths = {"json": output_dir / "report.json", "md": output_dir / "report.md", "png": output_dir / "report.png"}
    write_png(report, paths["png"])
    write_text_atomic(paths["md"], markdown(report))
    if rows is not None:  # the rows that regressed: by the report's own regressions block
        paths["html"] = output_dir / "report.html"
        write_text_atomic(paths["html"], render_html(report, rows, per_example or {}))
    write_json_atomic(paths["json"], report)  # last: its presence marks the score stage finished
    return paths


def summary_table(report: dict) -> str:
    """Plain-text table of the headline metrics per model, and each model's paired delta against the reference;
    the report's warnings first."""
    models = compared_models(report)
    lines = [f"WARNING: {w['message']}" for w in report.get("warnings", ())]
    lines.append(f"{'metric':<26}" + "".join(f"{name[:12]:>13}" for name in models))
    for metric in metrics.flagged("headline"):
        lines.append(f"{metric.name:<26}" + "".join(f"{cell(report['metrics'][name], metric.name):>13}"
                                                    for name in models))
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
        *([f"**Warnings:** {'; '.join(w['message'] for w in report['warnings'])}.", ""] if report.get("warnings")
          else []),
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
    values = [report["metrics"][m] for m in models]
    for metric in (m.name for m in metrics.REGISTRY if any(m.name in v for v in values)):
        cells = [cell(values[0], metric)] + [f"{cell(v, metric)} ({change(values[0], v, metric)})" for v in values[1:]]
        out.append(f"| {metric} | " + " | ".join(cells) + " |")
    out += ["", f"## Paired bootstrap against {reference}", "",
            f"{cfg['score']['bootstrap_samples']} resamples of the same rows, seed {cfg['score']['seed']}; p is "
            f"one-sided (the model is not better than {reference}).", "",
            "| model | metric | delta | 95% interval | p |", "|---|---|---:|---|---:|"]
    for name, deltas in report["deltas"].items():
        for metric, d in deltas.items():
            out.append(f"| {name} | {metric} | {d['delta']:+.4f} | [{d['ci95_low']:+.4f}, {d['ci95_high']:+.4f}] | "
                       f"{d['p_value']:.3f} |")
    featured = [metrics.metric(name) for name in metrics.FEATURED]
    out += ["", f"## By question type (reference label): {' and '.join(m.title for m in featured)}", "",
            "| type | rows | " + " | ".join(f"{model} {m.name}" for model in models for m in featured) + " |",
            "|---|---:|" + "---:|" * len(featured) * len(models)]
    for label, base in report["per_type"]["base"].items():
        cells = " | ".join(cell(report["per_type"][model][label], m.name, m.format)
                           for model in models for m in featured)
        out.append(f"| {label} | {base['rows']} | {cells} |")
    if "sanity" in report:  # schema 3.1
        out += believability(report, models)
    if report["checkpoints"]:
        shown = metrics.flagged("checkpoint")
        out += ["", "## Training checkpoints", "", "| step | " + " | ".join(m.name for m in shown) + " |",
                "|---:|" + "---:|" * len(shown)]
        out += [f"| {c['step']} | " + " | ".join(cell(c, m.name, m.format) for m in shown) + " |"
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


SHOWN_IDS = 10  # the regressed row ids report.md lists per model


def believability(report: dict, models: list[str]) -> list[str]:
    """report.md's sections on whether to believe the numbers (schema 3.1): sanity counters, type accuracy next to
    what guessing scores, the rows that regressed, each question type's deltas."""
    reference, types = report["reference"], report["types"]
    out = ["", "## Sanity", "", f"Shares of rows. identical: the output is {reference}'s; constant: another row has "
           "the same output; loop: a unit of at most 4 tokens repeated to 12; length: output characters over "
           "reference characters.", "",
           "| model | identical | constant | empty | loop | no (type) | length | most common output |",
           "|---|---:|---:|---:|---:|---:|---:|---|"]
    for name, s in report["sanity"].items():
        identical = MISSING if s["identical_to_reference"] is None else f"{s['identical_to_reference']:.3f}"
        common = s["most_common_output"]
        out.append(f"| {name} | {identical} | {s['constant_output']:.3f} | {s['empty']:.3f} | "
                   f"{s['repetition_loop']:.3f} | {s['no_type_prefix']:.3f} | {s['length_ratio']:.2f} | "
                   f"{_one_line(common['text'])[:60]} (x{common['count']}) |")
    out += ["", "## Question types", "",
            f"Always answering the most frequent type ({types['majority_label']}) scores accuracy "
            f"{types['majority_baseline']:.3f}; guessing uniformly among the {len(types['labels'])} types "
            f"{types['chance_baseline']:.3f}. Macro-F1 weighs each type the same (a type never predicted: 0).", "",
            "| model | accuracy | macro-F1 | majority baseline | chance baseline |", "|---|---:|---:|---:|---:|"]
    out += [f"| {name} | {t['accuracy']:.3f} | {t['macro_f1']:.3f} | {types['majority_baseline']:.3f} | "
            f"{types['chance_baseline']:.3f} |" for name, t in types["models"].items()]
    out += ["", "Rows per type: the references' and each model's predictions.", "",
            "| type | reference | " + " | ".join(types["models"]) + " |", "|---|---:|" + "---:|" * len(types["models"])]
    out += [f"| {label} | {reference_rows} | " + " | ".join(str(n) for n in predicted.values()) + " |"
            for label, reference_rows, predicted in distribution(report)]
    if report["regressions"]:
        threshold = next(iter(report["regressions"].values()))["threshold"]
        out += ["", f"## Rows that changed against {reference}", "",
                f"By each row's ROUGE-L change beyond ±{threshold} (score.regression_threshold); regressed ids worst "
                "first.", "", "| model | regressed | improved | unchanged | first regressed ids |",
                "|---|---:|---:|---:|---|"]
        for name, r in report["regressions"].items():
            ids = ", ".join(r["regressed"]["ids"][:SHOWN_IDS]) or MISSING
            out.append(f"| {name} | {r['regressed']['count']} | {r['improved']['count']} | "
                       f"{r['unchanged']['count']} | {ids} |")
    if report["per_type_deltas"]:
        out += ["", f"## Deltas by question type against {reference}", "",
                "Each type's paired bootstrap over its own rows: delta [95% interval]. A type with fewer than "
                f"{MIN_TYPE_ROWS} rows is shown but too few rows to judge."]
        for name, by_type in report["per_type_deltas"].items():
            names = list(dict.fromkeys(k for row in by_type.values() for k in row if k != "rows"))
            out += ["", f"| {name}: type | rows | " + " | ".join(names) + " | |",
                    "|---|---:|" + "---|" * len(names) + "---|"]
            for label, row in by_type.items():
                cells = [f"{row[n]['delta']:+.4f} [{row[n]['ci95_low']:+.4f}, {row[n]['ci95_high']:+.4f}]"
                         if n in row else MISSING for n in names]
                judged = "too few rows to judge" if row["rows"] < MIN_TYPE_ROWS else ""
                out.append(f"| {label} | {row['rows']} | " + " | ".join(cells) + f" | {judged} |")
    out += ["", f"Semantic: {report['semantic']['reason']}" + (
        f"; {report['semantic']['identity']}, {report['semantic']['seconds']} s" if report["semantic"]["enabled"]
        else "") + "."]
    return out


def provenance_line(provenance: dict) -> str:
    """Which commit and machine each stage ran on, in one line; a warning when they differ or had edits."""
    stages = {name: p for name, p in provenance.items() if isinstance(p, dict)}
    where = ", ".join(f"{name} `{(p['git']['commit'] or 'unknown')[:12]}`{' (dirty)' if p['git']['dirty'] else ''} "
                      f"on {p['hardware']['accelerator'] or p['hardware']['cpu']}" for name, p in stages.items())
    warnings = ([] if provenance["same_commit"] else ["**the stages ran from different commits**"]) + (
        ["**uncommitted edits**"] if provenance["dirty"] else [])
    return "; ".join([f"commits: {where}", *warnings])


def _one_line(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")
