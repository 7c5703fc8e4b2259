"""The evaluation half of the model card: what report.json measured about the adapter, rendered into the card
that pipeline/card.py builds from the config (its metadata, training and usage sections).

    write_adapter_card(cfg, output_dir)   after score: <output>/train/adapter/README.md from report.json
    evidence(cfg, output_dir)             -> (Results, train_summary) of this config's adapter, or (None, None)
    model_card(cfg, report, train)        the card with the report's results

The YAML header's model-index holds the tuned model's test metrics (huggingface_hub's EvalResult); the body, how it
was evaluated and its results against the base model with paired-bootstrap intervals and the per-type table.
"""

from __future__ import annotations

import json
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard

from eval import metrics
from eval.report_view import cell, change
from pipeline.card import Results, dataset_name, write_card
from pipeline.card import model_card as card_of
from pipeline.config import Config
from pipeline.prompt import STYLES

TASK = ("text-generation", "Socratic question generation")


def write_adapter_card(cfg: Config, output_dir: Path) -> Path | None:
    """After scoring: the trained adapter's README.md from report.json and train_summary.json. Only the adapter
    this run trained (<output>/train/adapter): a model.adapter folder is the user's and is never written to."""
    adapter_dir = Path(output_dir) / "train" / "adapter"
    if cfg.model.adapter or not adapter_dir.is_dir():
        return None
    found, train = evidence(cfg, output_dir)
    return write_card(adapter_dir / "README.md", card_of(cfg, train, found))


def evidence(cfg: Config, output_dir: Path) -> tuple[Results | None, dict | None]:
    """The results of report.json, and train_summary.json, of `output_dir` when they are about cfg's adapter (the
    one trained there, or the same model.adapter); (None, None) otherwise. `export` is handed them for its card."""
    report_path, train_path = Path(output_dir) / "report.json", Path(output_dir) / "train" / "train_summary.json"
    report = json.loads(report_path.read_text(encoding="utf-8")) if report_path.is_file() else None
    if report is None or report.get("adapter") != cfg.model.adapter:
        return None, None
    train = json.loads(train_path.read_text(encoding="utf-8")) if train_path.is_file() and not cfg.model.adapter \
        else None
    return results(cfg, report), train


def model_card(cfg: Config, report: dict | None = None, train: dict | None = None,
               merged: dict | None = None) -> ModelCard:
    """The card of the adapter (or, with `merged`, of the merged model) with the results of `report`."""
    return card_of(cfg, train, results(cfg, report) if report else None, merged)


def results(cfg: Config, report: dict) -> Results:
    """The report's results as the card shows them."""
    test_data = dataset_name(cfg.data.test_path or cfg.data.source)
    signatures = report["metric_settings"]["signatures"].values()
    versions = [f"- {k}: {v}" for k, v in made_by(report)["packages"].items()]
    return Results(eval_results=eval_results(cfg, report, test_data),
                   sections=evaluation_section(cfg, report, test_data) + results_section(report),
                   versions=versions + ["- metric signatures: " + "; ".join(f"`{v}`" for v in signatures)],
                   hardware=made_by(report)["hardware"])


def made_by(report: dict) -> dict:
    """The provenance (commit, packages, hardware) of the stage that made the adapter's numbers: training where
    the job trained it, else generation."""
    return report["provenance"]["train"] or report["provenance"]["generate"] or report["provenance"]["score"]


def eval_results(cfg: Config, report: dict, test_data: str) -> list[EvalResult]:
    """The tuned model's test metrics that have a Hub metric type (the registry's hub_type), exactly as report.json
    has them. The dataset's revision is data.revision for a Hub dataset, else the sha256 of the test rows scored
    (report.json's test_set)."""
    tuned = report["metrics"]["tuned"]
    return [EvalResult(task_type=TASK[0], task_name=TASK[1], dataset_type=test_data,
                       dataset_name=f"{test_data} (test split, {report['rows']} rows)", dataset_split="test",
                       dataset_revision=cfg.data.revision or report["test_set"]["sha256"], metric_type=m.hub_type,
                       metric_name=m.title, metric_config=m.name, metric_value=tuned[m.name],
                       metric_args={"tokenize": cfg.score.tokenize} if m.tokenized else None)
            for m in metrics.REGISTRY if m.hub_type and m.name in tuned]


def evaluation_section(cfg: Config, report: dict, test_data: str) -> list[str]:
    gen, settings = cfg.generate, report["metric_settings"]
    decoding = ("greedy" if not gen.do_sample else f"sampling (temperature {gen.temperature}, top-p {gen.top_p}, "
                                                   f"seed {gen.seed})")
    style = STYLES[cfg.prompt.format]
    stops = "EOS" + (" and the chat template's end-of-turn token" if style.chat else "")
    if gen.stop_strings:
        stops += ", and " + ", ".join(json.dumps(s) for s in gen.stop_strings) + " once some text precedes it"
    prompt = json.dumps(style.prompt_text("{argument}"), ensure_ascii=False)
    rows = f"the first {report['rows']} rows"
    if cfg.data.sample != "first" and cfg.data.max_test_samples is not None:
        rows = f"{report['rows']} rows drawn by `data.sample: {cfg.data.sample}` (seed {cfg.data.sample_seed})"
    return ["", "## Evaluation", "",
            f"- Test split: {rows} of `{test_data}` (sha256 of the rows "
            f"`{report['test_set']['sha256'][:16]}`).",
            f"- Prompt (`prompt.format: {cfg.prompt.format}`): {prompt}"
            + (" as the user turn of the tokenizer's chat template." if cfg.prompt.format == "chat" else "; the "
               "model continues with ` (question type) question`."),
            f"- Decoding: {decoding}, at most {gen.max_new_tokens} new tokens, stopping at {stops}; prompts over "
            f"{gen.max_prompt_tokens} tokens lose the start of their context.",
            f"- Metrics: ROUGE over `{settings['tokenize']}` tokens (rouge-score {settings['rouge_score']}), BLEU "
            f"and chrF by sacrebleu (signatures under Versions); metric fingerprint `{settings['fingerprint']}`, "
            f"inputs hash `{report['inputs_hash']}`, commit `{made_by(report)['git']['commit']}`.",
            f"- Deltas: paired bootstrap over the same rows, {cfg.score.bootstrap_samples} resamples, seed "
            f"{cfg.score.seed}; p is one-sided (the model is not better than {report['reference']})."]


def results_section(report: dict) -> list[str]:
    base, tuned = report["metrics"]["base"], report["metrics"]["tuned"]
    deltas = report["deltas"].get("tuned", {})
    out = ["", "## Results", "",
           "ROUGE and accuracies in [0, 1], BLEU and chrF in [0, 100]. `_question`: without the `(type)` label.", "",
           f"| metric | base | tuned | difference | paired delta vs {report['reference']} [95% interval] | p |",
           "|---|---:|---:|---:|---|---:|"]
    for key in (m.name for m in metrics.flagged("headline")):
        d = deltas.get(key)
        paired = f"{d['delta']:+.4f} [{d['ci95_low']:+.4f}, {d['ci95_high']:+.4f}] | {d['p_value']:.3f}" if d \
            else " | "
        out.append(f"| {key} | {cell(base, key)} | {cell(tuned, key)} | {change(base, tuned, key)} | {paired} |")
    featured = [metrics.metric(name) for name in metrics.FEATURED]
    out += ["", "### By question type (reference label)", "",
            "| type | rows | " + " | ".join(f"{model} {m.name}" for m in featured for model in ("base", "tuned"))
            + " |",
            "|---|---:|" + "---:|---:|" * len(featured)]
    for label, row in report["per_type"]["base"].items():
        other = report["per_type"]["tuned"][label]
        out.append(f"| {label} | {row['rows']} | " + " | ".join(f"{cell(row, m.name, m.format)} | "
                                                                f"{cell(other, m.name, m.format)}" for m in featured)
                   + " |")
    return out
