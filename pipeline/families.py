"""Model families: what the job does differently for one architecture, in one spec per `config.model_type`.

    family = families.of(model.config)   # FAMILIES[model_type], or STOCK for a type without a spec

A spec holds what is specific to its family: a dtype it refuses (and why), whether pipeline/decode.py's greedy loop
may decode it and how that loop calls its backbone, and the CPU tuning hooks (pipeline/cpu_tuning.py, each
reaching private torch/TRL symbols) measured on it. A model without a spec runs correct first, on the library's own
paths: decoding through transformers' `model.generate` (the same stop rules and prediction rows), training through
TRL's stock SFTTrainer, no CPU tuning, every dtype allowed. It gets fast only where a spec proves equality.

Adding a family: an entry below keyed by its `model_type` (config.json). A spec with `fast_decode` needs a tiny
random model of the family in tests/test_families.py (TINY_MODELS): its parametrized test checks the loop token
for token against `model.generate`, and fails for a fast spec that has no tiny model.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

from pipeline import cpu_tuning


@dataclass(frozen=True)
class FastDecode:
    """How the greedy loop (pipeline/decode.py) calls a family's model. It assumes the model's decoder stack
    (`model.get_decoder()`) takes input_ids, attention_mask, position_ids and a DynamicCache and returns
    `last_hidden_state`, and that the output layer is a plain matrix product: a model whose output layer has a bias
    is decoded by `model.generate` instead (decode.fast_decode)."""

    # The cache's keyword in the decoder's forward, first one it takes: transformers 5.2x calls it `cache`, earlier
    # 5.x releases (the GPU image's 5.17) `past_key_values`.
    cache_arguments: tuple[str, ...] = ("cache", "past_key_values")
    # The config attribute of the final logit soft-capping the model's own forward applies (Gemma 2 style); None: none.
    softcap: str | None = None


def _untuned(_target) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext()


@dataclass(frozen=True)
class Family:
    model_type: str
    # Why model.dtype=float16 is refused for this family (checked when its config is read); None: allowed.
    fp16_refusal: str | None = None
    # The greedy loop's way into the model; None: greedy decoding runs model.generate.
    fast_decode: FastDecode | None = None
    # While decoding with the greedy loop: (model) -> context manager. While training: (device) -> context manager.
    inference_tuning: Callable[..., contextlib.AbstractContextManager] = _untuned
    training_tuning: Callable[..., contextlib.AbstractContextManager] = _untuned


GEMMA3_FP16 = "Gemma 3's activations overflow fp16 and the loss turns NaN"

FAMILIES = {family.model_type: family for family in (
    # Gemma 3 text models (270M, 1B): the loop is tested equal to generate in fp32 and bf16, past the sliding window
    # (tests/test_decode.py, tests/test_families.py); the CPU tuning was measured on the 270M (make bench).
    Family("gemma3_text", fp16_refusal=GEMMA3_FP16, fast_decode=FastDecode(softcap="final_logit_softcapping"),
           inference_tuning=cpu_tuning.for_inference, training_tuning=cpu_tuning.for_training),
    # Gemma 3 with vision (4B and up): the same dtype rule; decoding and training take the stock paths.
    Family("gemma3", fp16_refusal=GEMMA3_FP16),
)}

STOCK = Family("")  # a model type without a spec: transformers' and TRL's own paths


def of(config) -> Family:
    """The spec of a model's family, from its config (a transformers PretrainedConfig)."""
    return FAMILIES.get(config.model_type, STOCK)
