"""Every decoder decode.decoder() can pick (the greedy loop, stock `model.generate`, `generate` with a static KV
cache and bucketed shapes) gives the eager greedy path's tokens, token for token, on tiny Gemma 3, Llama and Qwen2
models in float32; and which one runs per device, family and generate.decoder.

The eager greedy path is transformers' `generate` with its dynamic cache (test_decode.hf_generate). The static path
runs here on a CPU without compiling (transformers compiles it on CUDA only): the cache, the padded batch and the
padded width are the same ones the GPU runs.
"""

import dataclasses

import pytest
import torch

from pipeline import decode
from pipeline.decode import Decoding
from test_decode import hf_generate, random_prompts
from test_families import TINY_MODELS, build

# 7 prompts: STATIC pads them to 8 rows; the longest (70 tokens) pads to a width of 128, past the Gemma window (8).
PROMPTS = random_prompts([5, 12, 7, 70, 9, 3, 15], seed=13)
CHOICES = {"loop": decode.FAST_LOOP, "generate": decode.GENERATE, "static": decode.STATIC}


def lively(model):
    """The tiny model with its matrices drawn wider than the 0.02 initializer: at 0.02 the residual stream is the
    input embedding and a tiny Llama or Qwen2 repeats its last prompt token forever, which any decoder would get
    right. Here every row's tokens differ from step to step."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.dim() == 2 and "embed" not in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    return model


@pytest.mark.parametrize("choice", sorted(CHOICES))
@pytest.mark.parametrize("model_type", sorted(TINY_MODELS))
def test_every_decoder_equals_the_eager_greedy_path(model_type, choice, gemma_tokenizer):
    model, pad = lively(build(model_type, len(gemma_tokenizer))), gemma_tokenizer.pad_token_id
    free_running = hf_generate(model, PROMPTS, 10, [gemma_tokenizer.eos_token_id], pad)
    assert all(len(set(row)) > 2 for row in free_running)  # not one token repeated
    stop_ids = sorted({free_running[0][2], free_running[3][5], free_running[6][7]})  # rows end at different steps
    expected = hf_generate(model, PROMPTS, 10, stop_ids, pad)
    assert len({len(row) for row in expected}) > 2
    decoding = Decoding(max_new_tokens=10, stop_ids=tuple(stop_ids), stop_strings=(), pad_id=pad, decoder=choice)
    used = decode.decoder(model, decoding)
    # The loop runs only for a family whose spec has it; forced on another it falls back to stock generate.
    assert used == (decode.GENERATE if choice == "loop" and model_type != "gemma3_text" else CHOICES[choice])
    assert decode.decode_batch(model, gemma_tokenizer, PROMPTS, decoding) == expected


def test_the_static_decoder_keeps_the_stop_string_rule(gemma_tokenizer):
    model, pad = build("gemma3_text", len(gemma_tokenizer)), gemma_tokenizer.pad_token_id
    free = Decoding(max_new_tokens=10, stop_ids=(), stop_strings=(), pad_id=pad, decoder="loop")
    free_running = decode.decode_batch(model, gemma_tokenizer, PROMPTS, free)
    stop = next(text for row in free_running for n in range(3, len(row))
                if (text := gemma_tokenizer.decode(row[n:n + 1], skip_special_tokens=True).strip()))
    loop = dataclasses.replace(free, stop_strings=(stop,))
    rows = decode.decode_batch(model, gemma_tokenizer, PROMPTS, dataclasses.replace(loop, decoder="static"))
    assert any(len(row) < len(full) for row, full in zip(rows, free_running))
    assert rows == decode.decode_batch(model, gemma_tokenizer, PROMPTS, loop)


def test_static_batches_are_padded_to_a_few_shapes():
    prompts = [[1] * 70, [2] * 3, [3] * 9]
    padded, width = decode.static_batch(prompts)
    assert (len(padded), width) == (4, 128) and padded[:3] == prompts and padded[3] == prompts[0]
    assert decode.static_batch([[1] * 64] * 8) == ([[1] * 64] * 8, 64)  # a full bucket is not padded
    shapes = {(len(p), w) for n in range(1, 65) for p, w in [decode.static_batch([[1] * (n % 60 + 1)] * n)]}
    assert {rows for rows, _ in shapes} == {1, 2, 4, 8, 16, 32, 64} and {w for _, w in shapes} == {64}


class OnCuda:
    """A model that says it is on CUDA (decoder() reads only the device, the family and transformers' flag)."""

    def __init__(self, model):
        self.model, self.device = model, torch.device("cuda")
        self._can_compile_fullgraph = type(model)._can_compile_fullgraph
        self.config = model.config

    def get_output_embeddings(self):
        return self.model.get_output_embeddings()


@pytest.mark.parametrize("model_type", sorted(TINY_MODELS))
def test_auto_picks_the_loop_on_a_cpu_and_the_static_cache_on_cuda(model_type, gemma_tokenizer):
    model = build(model_type, len(gemma_tokenizer))
    greedy = Decoding(max_new_tokens=4, stop_ids=(1,), stop_strings=(), pad_id=0)
    on_cpu = decode.FAST_LOOP if model_type == "gemma3_text" else decode.GENERATE
    assert decode.decoder(model, greedy) == on_cpu
    assert decode.decoder(OnCuda(model), greedy) == decode.STATIC
    assert decode.decoder(OnCuda(model), dataclasses.replace(greedy, decoder="loop")) == on_cpu
    assert decode.decoder(OnCuda(model), dataclasses.replace(greedy, do_sample=True)) == decode.GENERATE
    cannot_compile = OnCuda(model)
    cannot_compile._can_compile_fullgraph = False  # a model transformers cannot run with a static cache
    assert decode.decoder(cannot_compile, greedy) == on_cpu
    assert decode.decoder(cannot_compile, dataclasses.replace(greedy, decoder="static")) == on_cpu
