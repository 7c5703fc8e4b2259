"""The decoding loop against transformers' own generate, and where rows stop.

The models are tiny random Gemma 3s: the shared 2-layer one, and a 3-layer one whose sliding window is 8 tokens,
so that prompts longer than the window, and rows crossing it while decoding, are exercised as they are at 512
tokens in the real model.
"""

import copy

import pytest
import torch

from pipeline import cpu_tuning, decode, families
from pipeline.decode import Decoding


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()


@pytest.fixture(scope="module")
def windowed(gemma_tokenizer):
    """Sliding window 8 on layers 1 and 3, full attention on layer 2 (Gemma 3 alternates them the same way)."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    config = Gemma3TextConfig(
        vocab_size=len(gemma_tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=1, head_dim=16, max_position_embeddings=2048, sliding_window=8,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"], pad_token_id=0, eos_token_id=1,
        bos_token_id=2, tie_word_embeddings=True)
    return Gemma3ForCausalLM(config).eval()


def random_prompts(lengths, seed=3):
    generator = torch.Generator().manual_seed(seed)
    return [[2] + torch.randint(10, 5000, (n,), generator=generator).tolist() for n in lengths]


PROMPTS = random_prompts([5, 12, 7, 20, 9, 3, 15, 11, 6, 18])


def hf_generate(model, prompts, max_new_tokens, stop_ids, pad_id, **sampling) -> list[list[int]]:
    """transformers' generate, each row cut after its first stop token."""
    input_ids, mask = decode.left_pad(prompts, pad_id, "cpu")
    options = sampling or {"do_sample": False, "top_k": None}
    with torch.inference_mode(), families.of(model.config).inference_tuning(model):  # the kernels decode_batch uses
        output = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                eos_token_id=stop_ids, pad_token_id=pad_id, **options)
    rows = []
    for generated in output[:, input_ids.shape[1]:].tolist():
        ends = [i for i, token in enumerate(generated) if token in stop_ids]
        rows.append(generated[: ends[0] + 1] if ends else generated)
    return rows


@pytest.mark.parametrize("case", ["fp32", "bf16", "window fp32", "window bf16", "window, crossing it while decoding"])
def test_greedy_equals_transformers_generate_while_rows_stop_at_different_steps(case, model, windowed,
                                                                                gemma_tokenizer, monkeypatch):
    monkeypatch.setattr(decode, "PREFILL_ROWS", 4)  # 10 prompts: three prefill parts whose caches are stacked
    monkeypatch.setattr(decode, "VOCAB_CHUNK", 10000)  # an uneven last chunk of the output layer
    chosen = copy.deepcopy(windowed if case.startswith("window") else model)
    chosen = chosen.to(torch.bfloat16 if "bf16" in case else torch.float32)
    # Window 8: prompts of 4-21 tokens start past it; with short prompts (4-8) the rows cross it while decoding.
    prompts = random_prompts([3, 5, 7, 4, 6, 3, 5, 7], seed=5) if "crossing" in case else PROMPTS
    pad = gemma_tokenizer.pad_token_id
    free_running = hf_generate(chosen, prompts, 16, [gemma_tokenizer.eos_token_id], pad)
    # Stop tokens taken from the free-running outputs, so rows finish at different steps and leave the batch.
    stop_ids = sorted({free_running[0][2], free_running[3][6], free_running[7][9]})
    expected = hf_generate(chosen, prompts, 16, stop_ids, pad)
    assert len({len(row) for row in expected}) > 2  # the test really drops rows mid-batch
    got = decode.decode_batch(chosen, gemma_tokenizer, prompts,
                              Decoding(max_new_tokens=16, stop_ids=tuple(stop_ids), stop_strings=(), pad_id=pad))
    assert got == expected
    if case.startswith("window"):  # past the window: in the prompt itself, or only while decoding
        window = windowed.config.sliding_window
        assert (max(map(len, prompts)) > window) != ("crossing" in case) and min(map(len, prompts)) + 16 > window


def test_a_row_ends_at_the_token_that_completes_a_stop_string(model, gemma_tokenizer):
    pad = gemma_tokenizer.pad_token_id
    free = Decoding(max_new_tokens=10, stop_ids=(), stop_strings=(), pad_id=pad)
    free_running = decode.decode_batch(model, gemma_tokenizer, PROMPTS[:3], free)
    stop = gemma_tokenizer.decode(free_running[1][4:5], skip_special_tokens=True)
    assert stop.strip()
    got = decode.decode_batch(model, gemma_tokenizer, PROMPTS[:3],
                              Decoding(max_new_tokens=10, stop_ids=(), stop_strings=(stop,), pad_id=pad))
    for row, full in zip(got, free_running):
        assert full[: len(row)] == row
        texts = [gemma_tokenizer.decode(row[:n], skip_special_tokens=True) for n in range(1, len(row) + 1)]
        first = next((n for n, text in enumerate(texts, start=1)
                      if decode.stop_index(text, (stop,)) is not None), len(full))
        assert len(row) == first
    assert len(got[1]) <= 5


def test_chunked_greedy_head_is_the_argmax_of_the_full_logits(model, monkeypatch):
    monkeypatch.setattr(decode, "VOCAB_CHUNK", 7000)
    hidden = torch.randn(6, model.config.hidden_size)
    with torch.inference_mode():
        full = cpu_tuning.fast_linear(model.lm_head.weight)(hidden, model.lm_head.weight)
        assert decode.greedy_tokens(model, hidden).tolist() == full.argmax(-1).tolist()
        hidden[0] = 0.0  # all logits equal: the first token wins, as in torch.argmax
        assert decode.greedy_tokens(model, hidden)[0].item() == 0


class FakeTokenizer:
    pad_token_id, eos_token_id = 0, 1

    def decode(self, ids, skip_special_tokens=False):
        words = {0: "<pad>", 1: "<eos>", 5: "질문", 6: "?", 7: "\n", 8: "다음", 9: " "}
        return "".join(words[i] for i in ids if not (skip_special_tokens and i in (0, 1)))


@pytest.mark.parametrize("generated, prediction, new_tokens, hit_max", [
    ([5, 6, 1, 0, 0], "질문?", 3, False),           # EOS: stops, nothing after it is counted
    ([5, 6, 7], "질문?", 3, False),                 # stop string "\n"
    ([5, 6, 7, 8, 5], "질문?", 3, False),           # the newline ends the question even mid-output
    ([5, 5, 5, 5, 5], "질문질문질문질문질문", 5, True),  # ran out of tokens
    ([7, 5, 6, 7, 8], "질문?", 4, False),           # a leading newline is not a stop: the row gets its question
    ([9, 7, 7, 5, 6], "질문?", 5, True),            # leading spaces and newlines are dropped from the prediction
    ([7, 7, 1], "", 3, False),                      # nothing but newlines, then EOS: an empty prediction
])
def test_decode_row_stops_and_counts(generated, prediction, new_tokens, hit_max):
    decoding = Decoding(max_new_tokens=5, stop_ids=(1,), stop_strings=("\n",), pad_id=0)
    row = decode.decode_row(FakeTokenizer(), generated, decoding)
    assert (row["prediction"], row["new_tokens"], row["hit_max_new_tokens"]) == (prediction, new_tokens, hit_max)
    assert row["raw"] == FakeTokenizer().decode(generated[:new_tokens])  # leading newlines kept in raw


def test_a_row_that_starts_with_a_newline_gets_its_question(model, gemma_tokenizer):
    """The loop itself: a newline as the first token does not end the row."""
    newline = gemma_tokenizer.encode("\n", add_special_tokens=False)
    pad = gemma_tokenizer.pad_token_id
    prompt = PROMPTS[0]
    # Make the tiny model's first token a newline: move the output layer's row for it along the last hidden state.
    biased = type(model)(model.config).eval()
    biased.load_state_dict(model.state_dict())
    with torch.no_grad():
        last_hidden = biased.model(input_ids=torch.tensor([prompt])).last_hidden_state[0, -1]
        biased.lm_head.weight[newline[0]] += 50 * last_hidden
    decoding = Decoding(max_new_tokens=6, stop_ids=(), stop_strings=("\n",), pad_id=pad)
    (row,) = decode.decode_batch(biased, gemma_tokenizer, [prompt], decoding)
    assert row[0] == newline[0] and len(row) > 1
    record = decode.decode_row(gemma_tokenizer, row, decoding)
    assert record["raw"].startswith("\n") and record["prediction"] == record["prediction"].strip()
