"""generate.batch_size=auto on CUDA starts from the rows that fit in free GPU memory (pipeline/batch_size.py);
checked against figures worked out by hand from Gemma 3 1B's published dimensions."""

import logging
from types import SimpleNamespace

import pytest
import torch
from transformers import Gemma3TextConfig, LlamaConfig

from bench.gpu_check import GEMMA3_1B
from pipeline import batch_size
from pipeline.decode import Decoding

GIB = 2**30
# Gemma 3 1B: 26 layers, one KV head of 256, every 6th layer full attention (4), the others a 512-token window (22);
# hidden 1152, MLP 6912, vocabulary 262,144. bf16: 2 bytes. One position of one layer: 256 x 2 (K, V) x 2 bytes.
PER_POSITION = 256 * 2 * 2
GEMMA_1B = Gemma3TextConfig(vocab_size=262144, **GEMMA3_1B)


def test_the_dimensions_come_from_the_config():
    assert batch_size.Dims.of(GEMMA_1B) == batch_size.Dims(
        layers=26, kv_heads=1, head_dim=256, hidden=1152, intermediate=6912, vocab=262144, sliding_window=512,
        sliding_layers=22)
    llama = batch_size.Dims.of(LlamaConfig(num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=2,
                                           hidden_size=256, intermediate_size=512, vocab_size=1000))
    assert (llama.head_dim, llama.kv_heads, llama.sliding_window, llama.sliding_layers) == (32, 2, None, 0)


@pytest.mark.parametrize("width, new, loop, free_gib, expected", [
    # 600 + 64 = 664 positions: the 22 sliding layers hold 512 of them. KV 4*664*1024 + 22*512*1024 = 14,254,080;
    # prefill 600 * (3*6912 + 4*1152) * 2 = 30,412,800; the loop's tile 32768 * 2 = 65,536: 44,732,416 a row.
    # 80% of 100 GiB = 85,899,345,920 bytes: 1,920.3 rows.
    (600, 64, True, 100, 1920),
    # 200 + 64 = 264 positions, under the window: KV 26*264*1024 = 7,028,736; prefill 200 * 25,344 * 2 = 10,137,600;
    # generate's logits 262144 * (2 + 4) = 1,572,864: 18,739,200 a row. 80% of 40 GiB = 34,359,738,368: 1,833.6.
    (200, 64, False, 40, 1833),
])
def test_rows_that_fit_in_free_memory(width, new, loop, free_gib, expected):
    dims = batch_size.Dims.of(GEMMA_1B)
    output = batch_size.output_row_bytes(dims, 2, 32768 if loop else 262144, float32_copy=not loop)
    assert output == (65_536 if loop else 1_572_864)
    assert batch_size.kv_cache_bytes(dims, 2, width + new) == (
        (4 * 664 + 22 * 512) * PER_POSITION if width == 600 else 26 * 264 * PER_POSITION)
    assert batch_size.rows_that_fit(free_gib * GIB, dims, 2, width, new, output) == expected
    assert batch_size.rows_that_fit(1000, dims, 2, width, new, output) == 1  # one row is always tried


def fake_model(device: str, config=GEMMA_1B):
    weight = SimpleNamespace(bias=None)
    return SimpleNamespace(config=config, dtype=torch.bfloat16, device=torch.device(device), _can_compile_fullgraph=True,
                           parameters=lambda: iter([SimpleNamespace(device=torch.device(device))]),
                           get_output_embeddings=lambda: weight)


@pytest.mark.parametrize("max_batch_size, expected", [(4096, 1024), (256, 256), (48, 48)])
def test_auto_on_cuda_starts_at_the_rows_that_fit_and_says_why(max_batch_size, expected, monkeypatch, caplog):
    caplog.set_level(logging.INFO)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (100 * GIB, 141 * GIB))
    loop = Decoding(max_new_tokens=64, stop_ids=(1,), stop_strings=(), pad_id=0, decoder="loop")
    # 1,920 rows fit (above); a power of two below that, at most generate.max_batch_size.
    assert batch_size.first_try(fake_model("cuda"), 600, loop, max_batch_size) == expected
    (message,) = [r.getMessage() for r in caplog.records if "batch size" in r.getMessage()]
    assert f"batch size {expected}: 100.0 GiB free" in message and "1920 rows fit" in message
    assert "42.66 MiB a row" in message  # 44,732,416 bytes
    assert ("capped at generate.max_batch_size" in message) == (max_batch_size < 1024)


def test_auto_on_a_cpu_starts_at_max_batch_size(monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: pytest.fail("no GPU to ask"))
    loop = Decoding(max_new_tokens=64, stop_ids=(1,), stop_strings=(), pad_id=0)
    assert batch_size.first_try(fake_model("cpu"), 600, loop, 64) == 64


@pytest.mark.parametrize("rows, expected", [(1, 1), (2, 2), (3, 2), (1023, 512), (1024, 1024), (1920, 1024)])
def test_power_of_two_below(rows, expected):
    assert batch_size.power_of_two_below(rows) == expected
