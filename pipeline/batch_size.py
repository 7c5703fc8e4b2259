"""generate.batch_size=auto on CUDA: the first batch size tried, from the free GPU memory.

    first_try(model, prompt_width, decoding, max_batch_size, used) -> rows     (logs the size and why)
    rows_that_fit(free_bytes, dims, dtype_bytes, prompt_width, max_new_tokens, output_row_bytes) -> rows

What a row costs while decoding, beyond the weights already loaded:
- its KV cache: every layer keeps keys and values, kv_heads x head_dim each, for prompt_width + max_new_tokens
  positions, or at most sliding_window positions on a sliding-window layer;
- its share of the output layer: the greedy loop scores VOCAB_CHUNK columns at a time; transformers' generate
  holds the whole vocabulary's logits of the last position and a float32 copy of them;
- its prefill activations: one layer's at a time (inference keeps none for a backward), dominated by the MLP's
  three intermediate-width tensors and a few hidden-width ones over the prompt. Attention scores are not counted:
  the flash and memory-efficient kernels (pipeline/attention.py) never materialize them.
MARGIN of the free memory is left for the allocator's fragmentation and what the estimate leaves out; an
out-of-memory error still halves the batch and goes on (pipeline/generate.py). On a CPU, auto starts at
generate.max_batch_size as before.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from pipeline.decode import FAST_LOOP, VOCAB_CHUNK, Decoding, decoder

log = logging.getLogger(__name__)
MARGIN = 0.2  # share of the free memory never planned for


@dataclass(frozen=True)
class Dims:
    """The model dimensions a row's decoding memory depends on (from a transformers config)."""

    layers: int
    kv_heads: int
    head_dim: int
    hidden: int
    intermediate: int
    vocab: int
    sliding_window: int | None  # None: every layer attends to every position
    sliding_layers: int  # how many of `layers` use the window

    @classmethod
    def of(cls, config) -> Dims:
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        window = getattr(config, "sliding_window", None)
        types = getattr(config, "layer_types", None) or []
        sliding = sum(t == "sliding_attention" for t in types) if window else 0
        return cls(layers=config.num_hidden_layers, kv_heads=getattr(config, "num_key_value_heads", None) or heads,
                   head_dim=head_dim, hidden=config.hidden_size, intermediate=config.intermediate_size,
                   vocab=config.vocab_size, sliding_window=window if sliding else None, sliding_layers=sliding)


def kv_cache_bytes(dims: Dims, dtype_bytes: int, positions: int) -> int:
    """One row's keys and values over all layers for `positions` tokens (sliding layers capped at the window)."""
    per_position = dims.kv_heads * dims.head_dim * 2 * dtype_bytes  # keys and values
    windowed = min(positions, dims.sliding_window) if dims.sliding_window else positions
    return per_position * ((dims.layers - dims.sliding_layers) * positions + dims.sliding_layers * windowed)


def prefill_bytes(dims: Dims, dtype_bytes: int, prompt_width: int) -> int:
    """One row's activations of one layer over its prompt: the MLP's gate, up and product tensors and four
    hidden-width ones (residual, normed input, attention output, projection)."""
    return prompt_width * (3 * dims.intermediate + 4 * dims.hidden) * dtype_bytes


def output_row_bytes(dims: Dims, dtype_bytes: int, columns: int, float32_copy: bool) -> int:
    """One row's logits tile: `columns` of the output layer in the model's dtype, and a float32 copy if taken."""
    return columns * (dtype_bytes + (4 if float32_copy else 0))


def row_bytes(dims: Dims, dtype_bytes: int, prompt_width: int, max_new_tokens: int, output_bytes: int) -> int:
    """What one more row costs while decoding: its KV cache, prefill activations and logits tile."""
    return (kv_cache_bytes(dims, dtype_bytes, prompt_width + max_new_tokens)
            + prefill_bytes(dims, dtype_bytes, prompt_width) + output_bytes)


def rows_that_fit(free_bytes: int, dims: Dims, dtype_bytes: int, prompt_width: int, max_new_tokens: int,
                  output_bytes: int) -> int:
    """How many rows decode together in (1 - MARGIN) of `free_bytes`: at least 1 (an out-of-memory error then
    says what does not fit)."""
    per_row = row_bytes(dims, dtype_bytes, prompt_width, max_new_tokens, output_bytes)
    return max(1, int(free_bytes * (1 - MARGIN)) // per_row)


def power_of_two_below(rows: int) -> int:
    """The largest power of two <= rows: full batches then fill a compiled decoder's row bucket exactly."""
    return 1 << (max(rows, 1).bit_length() - 1)


def first_try(model, prompt_width: int, decoding: Decoding, max_batch_size: int) -> int:
    """The first batch size generate.batch_size=auto tries: on CUDA the rows that fit in free memory (a power of
    two, at most generate.max_batch_size), logged with the figures it came from; elsewhere max_batch_size.
    transformers' generate holds the whole vocabulary's logits per row, the greedy loop a VOCAB_CHUNK tile."""
    device = next(model.parameters()).device
    if device.type != "cuda":
        return max_batch_size
    free, _total = torch.cuda.mem_get_info(device)
    dims, dtype_bytes, max_new_tokens = Dims.of(model.config), model.dtype.itemsize, decoding.max_new_tokens
    whole_logits = decoder(model, decoding) != FAST_LOOP
    output = output_row_bytes(dims, dtype_bytes, dims.vocab if whole_logits else VOCAB_CHUNK, whole_logits)
    fit = rows_that_fit(free, dims, dtype_bytes, prompt_width, max_new_tokens, output)
    rows = min(power_of_two_below(fit), max_batch_size)
    log.info("generate: batch size %d: %.1f GiB free on %s, %.2f MiB a row (KV cache of %d positions, prefill, "
             "logits), %d rows fit in %.0f%% of it%s", rows, free / 2**30, device,
             row_bytes(dims, dtype_bytes, prompt_width, max_new_tokens, output) / 2**20,
             prompt_width + max_new_tokens, fit, 100 * (1 - MARGIN),
             f", capped at generate.max_batch_size={max_batch_size}" if rows == max_batch_size < fit else "")
    return rows
