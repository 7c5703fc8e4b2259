"""The decoding loop against transformers' own generate, on the tiny random Gemma 3."""

import pytest
import torch

from pipeline import cpu, decode


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()


@pytest.fixture(scope="module")
def prompts():
    generator = torch.Generator().manual_seed(3)
    lengths = [5, 12, 7, 20, 9, 3, 15, 11, 6, 18]
    return [[2] + torch.randint(10, 5000, (n,), generator=generator).tolist() for n in lengths]


def hf_generate(model, prompts, max_new_tokens, stop_ids, pad_id) -> list[list[int]]:
    """transformers' greedy generate, each row cut after its first stop token."""
    input_ids, mask = decode.left_pad(prompts, pad_id, "cpu")
    with torch.inference_mode(), cpu.linear_layers_on_onednn(model):  # same kernels as decode_batch
        output = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                do_sample=False, eos_token_id=stop_ids, pad_token_id=pad_id, top_k=None)
    rows = []
    for generated in output[:, input_ids.shape[1]:].tolist():
        ends = [i for i, token in enumerate(generated) if token in stop_ids]
        rows.append(generated[: ends[0] + 1] if ends else generated)
    return rows


def test_greedy_equals_transformers_generate_while_rows_stop_at_different_steps(model, prompts, gemma_tokenizer,
                                                                                monkeypatch):
    monkeypatch.setattr(decode, "PREFILL_ROWS", 4)  # 10 prompts: three prefill parts whose caches are stacked
    monkeypatch.setattr(decode, "VOCAB_CHUNK", 10000)  # an uneven last chunk of the output layer
    pad = gemma_tokenizer.pad_token_id
    free_running = hf_generate(model, prompts, 12, [gemma_tokenizer.eos_token_id], pad)
    # Stop tokens taken from the free-running outputs, so rows finish at different steps and leave the batch.
    stop_ids = sorted({free_running[0][2], free_running[3][6], free_running[7][9]})
    expected = hf_generate(model, prompts, 12, stop_ids, pad)
    assert len({len(row) for row in expected}) > 1  # the test really drops rows mid-batch
    got = decode.decode_batch(model, prompts, max_new_tokens=12, stop_ids=stop_ids, stop_strings=(),
                              tokenizer=gemma_tokenizer, pad_id=pad)
    assert got == expected


def test_a_row_ends_at_the_token_that_completes_a_stop_string(model, prompts, gemma_tokenizer):
    pad = gemma_tokenizer.pad_token_id
    free_running = decode.decode_batch(model, prompts[:3], max_new_tokens=10, stop_ids=[], stop_strings=(),
                                       tokenizer=gemma_tokenizer, pad_id=pad)
    stop = gemma_tokenizer.decode(free_running[1][4:5], skip_special_tokens=True)
    assert stop.strip()
    got = decode.decode_batch(model, prompts[:3], max_new_tokens=10, stop_ids=[], stop_strings=(stop,),
                              tokenizer=gemma_tokenizer, pad_id=pad)
    for row, full in zip(got, free_running):
        assert full[: len(row)] == row
        texts = [gemma_tokenizer.decode(row[:n], skip_special_tokens=True) for n in range(1, len(row) + 1)]
        first = next((n for n, text in enumerate(texts, start=1) if stop in text), len(full))
        assert len(row) == first
    assert len(got[1]) <= 5


def test_chunked_greedy_head_is_the_argmax_of_the_full_logits(model, monkeypatch):
    monkeypatch.setattr(decode, "VOCAB_CHUNK", 7000)
    hidden = torch.randn(6, model.config.hidden_size)
    with torch.inference_mode():
        full = cpu.fast_linear(model.lm_head.weight)(hidden, model.lm_head.weight)
        assert decode.greedy(model, hidden).tolist() == full.argmax(-1).tolist()
        hidden[0] = 0.0  # all logits equal: the first token wins, as in torch.argmax
        assert decode.greedy(model, hidden)[0].item() == 0


def test_sampling_is_seeded_and_top_p_near_zero_is_greedy(model, prompts, gemma_tokenizer):
    def sampled(seed, top_p):
        return decode.decode_batch(model, prompts[:4], max_new_tokens=6, stop_ids=[], stop_strings=(),
                                   tokenizer=gemma_tokenizer, pad_id=gemma_tokenizer.pad_token_id, do_sample=True,
                                   temperature=1.0, top_p=top_p, generator=torch.Generator().manual_seed(seed))

    assert sampled(0, 1.0) == sampled(0, 1.0)
    assert sampled(0, 1.0) != sampled(1, 1.0)
    greedy = decode.decode_batch(model, prompts[:4], max_new_tokens=6, stop_ids=[], stop_strings=(),
                                 tokenizer=gemma_tokenizer, pad_id=gemma_tokenizer.pad_token_id)
    assert sampled(5, 1e-9) == greedy
