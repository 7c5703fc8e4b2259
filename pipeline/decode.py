"""Decoding for the generate stage: a batch of prompts in, each row's new token ids out; and where a row stops.

    decode_batch(model, tokenizer, prompts, decoding) -> [[ids]]      decode_row(tokenizer, ids, decoding) -> record
    prediction_line(test_row, model_name, record) -> the row's line of predictions.jsonl

Which decoder runs is decided in one place, decoder(), per device and family, from generate.decoder (auto unless
set): on a CPU, greedy decoding of a model whose family spec has `fast_decode` (pipeline/families.py) runs our own
loop around the model's decoder; on CUDA, transformers' `generate` with a static KV cache (STATIC), whose forward
transformers compiles (torch.compile, mode "reduce-overhead": CUDA graphs) for a model it can compile; sampling,
and any model without such a spec or flag, runs transformers' stock `model.generate`. All of them with the same
stop rules and the same prediction rows. Why STATIC on CUDA: the one GPU measurement (an H200, issue 28) had stock
`generate` 20% faster than the loop, whose every step is ~2,000 kernel launches from the host; a static cache lets
those be replayed as one CUDA graph. Not yet measured against the loop on a GPU: bench/gpu_check.py runs both.
STATIC pads the batch to a power of two and the prompt width to a multiple of WIDTH_BUCKET, so that a compiled
graph is reused from batch to batch instead of recompiled for every new shape.

The loop, not `model.generate`, because in a batch generate keeps computing every row until the longest one stops,
materializes the full [rows, 262,144] logits (and a float32 copy) at every step, and checks stop strings against
the whole vocabulary. Here a finished row leaves the batch (its KV cache rows are dropped), the argmax is taken
over vocabulary chunks without ever holding the full logits, and a stop string ends a row as soon as its text
contains one. The model's own forward does everything else (masks, positions, sliding-window cache), so the
outputs are `generate`'s greedy outputs: tested token for token for every family with a fast spec, in float32 and
bfloat16, with prompts longer than the sliding window and rows crossing it while decoding. Measured on the bench's
48 prompts (2 cores): 25 s instead of 35 s, and 0.28 GiB less peak memory.

Sampling (generate.do_sample) always runs `model.generate`: `generate` draws from one random stream for the whole
batch, which our loop, where rows leave the batch, could not reproduce.

Stops: a row ends at a stop token (the prompt style's: EOS, and in chat the template's end-of-turn token), at
max_new_tokens, or at a stop string that follows some text. A leading newline is not a stop: a row that starts
with one still gets its question (otherwise 1.7% of the base model's rows became empty predictions and biased the
comparison).
"""

from __future__ import annotations

import functools
import inspect
import json
from dataclasses import dataclass

import torch
from transformers import DynamicCache, StoppingCriteria

from pipeline import attention, cpu_tuning, families
from pipeline.families import FastDecode

# decoder()'s names, recorded in generate_summary.json
GENERATE, FAST_LOOP, STATIC = "model.generate", "greedy loop", "model.generate, static cache"
WIDTH_BUCKET = 64  # STATIC's prompts are left-padded to a multiple of this: a few shapes to compile, little padding
VOCAB_CHUNK = 32768  # rows of the output layer scored at once: a [batch, 32768] tile instead of [batch, 262144]
PREFILL_ROWS = 16  # prompts prefilled together: bounds the activations of a long, wide first step


@dataclass(frozen=True)
class Decoding:
    """How rows are decoded and where they stop (from the generate config and the tokenizer)."""

    max_new_tokens: int
    stop_ids: tuple[int, ...]
    stop_strings: tuple[str, ...]
    pad_id: int
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    decoder: str = "auto"  # generate.decoder: auto, loop, generate or static


def decode_batch(model, tokenizer, prompts: list[list[int]], decoding: Decoding) -> list[list[int]]:
    """New token ids per prompt, each ending with its stop token, the token that completed a stop string, or at
    max_new_tokens. Prompts are left-padded to a common width (the batch should be length-sorted)."""
    used = decoder(model, decoding)
    with attention.kernels(model):  # on CUDA the SDPA kernels without cuDNN's host cost; the CPU's as they are
        if used == FAST_LOOP:
            return _greedy(model, fast_decode(model, decoding), tokenizer, prompts, decoding)
        return _with_generate(model, tokenizer, prompts, decoding, static=used == STATIC)


def decoder(model, decoding: Decoding) -> str:
    """Which decoder decode_batch runs for this model, device and decoding: FAST_LOOP, STATIC or GENERATE.
    generate.decoder=auto: STATIC on CUDA, FAST_LOOP on a CPU; either only where the model has what it needs (a
    family spec with `fast_decode`; transformers' flag that the model compiles with a static cache), GENERATE
    otherwise. loop/static/generate force one, with the same fallback; sampling always runs GENERATE."""
    choice = decoding.decoder
    if decoding.do_sample or choice == "generate":
        return GENERATE
    fast = FAST_LOOP if fast_decode(model, decoding) is not None else GENERATE
    if choice == "static" or choice == "auto" and model.device.type == "cuda":
        # _can_compile_fullgraph: transformers' own test for a model that runs a StaticCache and compiles.
        return STATIC if getattr(model, "_can_compile_fullgraph", False) else fast
    return fast


def fast_decode(model, decoding: Decoding) -> FastDecode | None:
    """The greedy loop's spec for this model: its family's, for greedy decoding of a model whose output layer is a
    plain matrix product (the loop adds no bias); None otherwise."""
    fast = families.of(model.config).fast_decode
    if decoding.do_sample or fast is None or getattr(model.get_output_embeddings(), "bias", None) is not None:
        return None
    return fast


def decode_row(tokenizer, generated: list[int], decoding: Decoding) -> dict:
    """One row's record: the prediction (the text before the first stop, without leading or trailing space),
    the raw decoded tokens, how many were generated, and whether the row ran out of tokens."""
    length = stop_length(tokenizer, generated, decoding)
    raw = tokenizer.decode(generated[:length], skip_special_tokens=False)
    text = tokenizer.decode(generated[:length], skip_special_tokens=True)
    cut = stop_index(text, decoding.stop_strings)
    stopped = cut is not None or (length > 0 and generated[length - 1] in decoding.stop_ids)
    return {"prediction": (text if cut is None else text[:cut]).strip(), "raw": raw, "new_tokens": length,
            "hit_max_new_tokens": not stopped and length >= decoding.max_new_tokens}


def prediction_line(row: dict, name: str, record: dict) -> str:
    """The line of predictions.jsonl for test `row` and model `name` whose decoding gave `record` (decode_row)."""
    return json.dumps({"id": row["id"], "model": name, "input": row["input"], "reference": row["target"], **record},
                      ensure_ascii=False) + "\n"


def stop_index(text: str, stop_strings: tuple[str, ...]) -> int | None:
    """Where the first stop string that follows non-whitespace text begins in `text`; None if there is none."""
    start = len(text) - len(text.lstrip())
    found = [i for i in (text.find(stop, start + 1) for stop in stop_strings if text[start:]) if i >= 0]
    return min(found) if found else None


def stop_length(tokenizer, generated: list[int], decoding: Decoding) -> int:
    """How many of `generated` belong to the row: up to and including its first stop token, or the token that
    completed a stop string."""
    for length in range(1, len(generated) + 1):
        if _ends_row(tokenizer, generated[:length], decoding):
            return length
    return len(generated)


def _ends_row(tokenizer, generated: list[int], decoding: Decoding) -> bool:
    return generated[-1] in decoding.stop_ids or bool(decoding.stop_strings) and stop_index(
        tokenizer.decode(generated, skip_special_tokens=True), decoding.stop_strings) is not None


@torch.inference_mode()
def _greedy(model, fast: FastDecode, tokenizer, prompts: list[list[int]], decoding: Decoding) -> list[list[int]]:
    device = model.device
    input_ids, attention_mask = left_pad(prompts, decoding.pad_id, device)
    positions = (attention_mask.cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)  # as model.generate does
    generated = [[] for _ in prompts]
    active = list(range(len(prompts)))  # the original index of each row still in the batch
    with families.of(model.config).inference_tuning(model):
        cache, hidden = prefill(model, fast, input_ids, attention_mask, positions)
        positions = positions[:, -1:]
        for step in range(decoding.max_new_tokens):
            tokens = greedy_tokens(model, hidden, fast.softcap).tolist()
            keep = []
            for row, (index, token) in enumerate(zip(active, tokens)):
                generated[index].append(token)
                if not _ends_row(tokenizer, generated[index], decoding):
                    keep.append(row)
            if not keep or step == decoding.max_new_tokens - 1:
                break
            next_ids = torch.tensor(tokens, device=device)[:, None]
            if len(keep) < len(active):  # finished rows leave the batch, their cache rows with them
                kept = torch.tensor(keep, device=device)
                for layer in cache.layers:
                    layer.batch_select_indices(kept)
                attention_mask, positions, next_ids = attention_mask[kept], positions[kept], next_ids[kept]
                active = [active[row] for row in keep]
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones((len(active), 1))], dim=-1)
            positions = positions + 1
            hidden = backbone(model, fast, cache, input_ids=next_ids, attention_mask=attention_mask,
                              position_ids=positions)[:, -1]
    return generated


def prefill(model, fast: FastDecode, input_ids, attention_mask, positions) -> tuple[DynamicCache, torch.Tensor]:
    """Runs the prompts through the backbone PREFILL_ROWS at a time (same padded width, so their caches stack
    along the batch) and returns the cache and each row's last hidden state."""
    caches, hidden = [], []
    for start in range(0, input_ids.shape[0], PREFILL_ROWS):
        rows = slice(start, start + PREFILL_ROWS)
        cache = DynamicCache(config=model.config)
        out = backbone(model, fast, cache, input_ids=input_ids[rows], attention_mask=attention_mask[rows],
                       position_ids=positions[rows])
        caches.append(cache)
        hidden.append(out[:, -1])
    merged, rest = caches[0], caches[1:]
    for index, layer in enumerate(merged.layers if rest else []):
        layer.keys = torch.cat([layer.keys] + [c.layers[index].keys for c in rest])
        layer.values = torch.cat([layer.values] + [c.layers[index].values for c in rest])
        for other in rest:  # free each part as soon as it is copied
            other.layers[index].keys = other.layers[index].values = None
    return merged, torch.cat(hidden)


def backbone(model, fast: FastDecode, cache: DynamicCache, **inputs) -> torch.Tensor:
    """The model's decoder stack (no LM head) on `inputs`, extending `cache`; its last hidden states."""
    stack = model.get_decoder()
    argument = cache_argument(type(stack), fast.cache_arguments)
    return stack(**inputs, **{argument: cache}, use_cache=True).last_hidden_state


@functools.cache
def cache_argument(decoder_class, names: tuple[str, ...]) -> str:
    """The first of `names` the decoder's forward takes; looked up once per class, not at every step."""
    parameters = inspect.signature(decoder_class.forward).parameters
    return next((name for name in names if name in parameters), names[-1])


def greedy_tokens(model, hidden: torch.Tensor, softcap: str | None = None) -> torch.Tensor:
    """argmax over the vocabulary of the model's logits, one chunk of the output layer at a time; `softcap` names
    the config attribute of the model's final logit soft-capping, if it has one."""
    weight = model.get_output_embeddings().weight
    linear = cpu_tuning.fast_linear(weight)
    best_value = best_index = None
    for start in range(0, weight.shape[0], VOCAB_CHUNK):
        value, index = softcapped(model, softcap, linear(hidden, weight[start:start + VOCAB_CHUNK])).max(dim=-1)
        if best_value is None:
            best_value, best_index = value, index
        else:
            better = value > best_value  # strictly: on a tie the earlier token wins, as in torch.argmax
            best_value, best_index = torch.where(better, value, best_value), torch.where(better, index + start,
                                                                                          best_index)
    return best_index


def softcapped(model, softcap: str | None, logits: torch.Tensor) -> torch.Tensor:
    """The model's final logit soft-capping (Gemma 2 style), as its own forward applies it; a value of None or 0
    in the config means none."""
    cap = getattr(model.config, softcap, None) if softcap else None
    return torch.tanh(logits / cap) * cap if cap else logits


@torch.inference_mode()
def _with_generate(model, tokenizer, prompts: list[list[int]], decoding: Decoding,
                   static: bool = False) -> list[list[int]]:
    """Decoding through `model.generate`: greedy, or sampling (temperature and top-p only; the model's own top-k
    default is switched off) from the global torch random stream that the generate stage seeds. The model's own
    generation_config sampling defaults never apply: every setting is passed. `static`: a static KV cache, which
    transformers compiles the forward for on CUDA, over the batch padded to its bucket (static_batch)."""
    rows = len(prompts)
    padded, width = static_batch(prompts) if static else (prompts, None)
    input_ids, attention_mask = left_pad(padded, decoding.pad_id, model.device, width)
    cache = dict(cache_implementation="static") if static else {}
    sampling = (dict(do_sample=True, temperature=decoding.temperature, top_p=decoding.top_p, top_k=0)
                if decoding.do_sample else dict(do_sample=False, temperature=None, top_p=None, top_k=None))
    output = model.generate(
        input_ids=input_ids, attention_mask=attention_mask, **sampling, max_new_tokens=decoding.max_new_tokens,
        eos_token_id=list(decoding.stop_ids), pad_token_id=decoding.pad_id,
        stopping_criteria=[StopStrings(tokenizer, decoding, input_ids.shape[1])] if decoding.stop_strings else None,
        **cache)
    new_tokens = output[:rows, input_ids.shape[1]:].tolist()  # the rows padding the batch to its bucket dropped
    return [row[:stop_length(tokenizer, row, decoding)] for row in new_tokens]


class StopStrings(StoppingCriteria):
    """generate's stopping criterion with our stop-string rule (a stop string counts once some text precedes it)."""

    def __init__(self, tokenizer, decoding: Decoding, prompt_width: int):
        self.tokenizer, self.decoding, self.prompt_width = tokenizer, decoding, prompt_width

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        rows = input_ids[:, self.prompt_width:].tolist()
        return torch.tensor([stop_index(self.tokenizer.decode(row, skip_special_tokens=True),
                                        self.decoding.stop_strings) is not None for row in rows],
                            dtype=torch.bool, device=input_ids.device)


def static_batch(prompts: list[list[int]]) -> tuple[list[list[int]], int]:
    """STATIC's bucket: the rows padded to a power of two with copies of the first prompt (whose outputs are
    dropped), and the width they are left-padded to, the next multiple of WIDTH_BUCKET."""
    rows = 1 << (len(prompts) - 1).bit_length()
    width = -(-max(map(len, prompts)) // WIDTH_BUCKET) * WIDTH_BUCKET
    return prompts + [prompts[0]] * (rows - len(prompts)), width


def left_pad(sequences: list[list[int]], pad_id: int, device, width: int | None = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids and attention mask, each row right-aligned in `width` columns (the longest row's if None)."""
    width = width or max(map(len, sequences))
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, width - len(seq):] = torch.tensor(seq)
        mask[row, width - len(seq):] = 1
    return ids.to(device), mask.to(device)
