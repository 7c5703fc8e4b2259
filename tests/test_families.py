"""Model families (pipeline/families.py): the fast greedy loop runs only for a family whose spec has it, and every
such spec is tested token for token against `model.generate` on a tiny model of its family; any other causal LM
(a tiny Llama and Qwen2 here) runs train -> generate -> score on the stock paths, padded the same way in both.
"""

import dataclasses
import json
import logging
import shutil

import pytest
import torch

from conftest import write_splits
from entrypoint import main
from pipeline import decode, families, models, sources
from pipeline.config import ModelConfig
from pipeline.decode import Decoding
from pipeline.errors import ConfigError
from test_decode import hf_generate, random_prompts

PROMPTS = random_prompts([5, 12, 7, 20, 9, 3, 15, 11], seed=11)


def tiny_gemma3(vocab_size):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    return Gemma3ForCausalLM(Gemma3TextConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=1, head_dim=16, sliding_window=8, final_logit_softcapping=30.0,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"], pad_token_id=0, eos_token_id=1,
        bos_token_id=2, tie_word_embeddings=True))


def tiny_llama(vocab_size):
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=1, bos_token_id=2, eos_token_id=1, pad_token_id=None, tie_word_embeddings=True))


def tiny_qwen2(vocab_size):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    return Qwen2ForCausalLM(Qwen2Config(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=1, bos_token_id=2, eos_token_id=1, pad_token_id=None, tie_word_embeddings=True))


# A tiny random model per model_type: every family spec with fast_decode must have one (the equality test).
TINY_MODELS = {"gemma3_text": tiny_gemma3, "llama": tiny_llama, "qwen2": tiny_qwen2}
FAST = sorted(t for t, family in families.FAMILIES.items() if family.fast_decode)


def build(model_type, vocab_size, dtype=torch.float32):
    torch.manual_seed(0)
    model = TINY_MODELS[model_type](vocab_size).eval().to(dtype)
    assert model.config.model_type == model_type
    return model


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("model_type", FAST)
def test_every_family_with_the_fast_loop_decodes_as_generate_does(model_type, dtype, gemma_tokenizer):
    assert model_type in TINY_MODELS, f"the fast spec of {model_type} has no tiny model to test it against generate"
    model, pad = build(model_type, len(gemma_tokenizer), dtype), gemma_tokenizer.pad_token_id
    free_running = hf_generate(model, PROMPTS, 12, [gemma_tokenizer.eos_token_id], pad)
    stop_ids = sorted({free_running[0][2], free_running[3][5], free_running[6][8]})  # rows end at different steps
    decoding = Decoding(max_new_tokens=12, stop_ids=tuple(stop_ids), stop_strings=(), pad_id=pad)
    assert decode.decoder(model, decoding) == decode.FAST_LOOP
    expected = hf_generate(model, PROMPTS, 12, stop_ids, pad)
    assert len({len(row) for row in expected}) > 2
    assert decode.decode_batch(model, gemma_tokenizer, PROMPTS, decoding) == expected


@pytest.mark.parametrize("model_type", ["llama", "qwen2"])
def test_a_model_without_a_spec_decodes_with_generate_and_the_same_stop_rules(model_type, gemma_tokenizer):
    model, pad = build(model_type, len(gemma_tokenizer)), gemma_tokenizer.pad_token_id
    assert families.of(model.config) is families.STOCK
    free = Decoding(max_new_tokens=10, stop_ids=(gemma_tokenizer.eos_token_id,), stop_strings=(), pad_id=pad)
    assert decode.decoder(model, free) == decode.GENERATE
    free_running = decode.decode_batch(model, gemma_tokenizer, PROMPTS, free)
    assert free_running == hf_generate(model, PROMPTS, 10, [gemma_tokenizer.eos_token_id], pad)
    # A stop string taken from one row's output: every row ends at the token that completes it after some text.
    stop = next(text for row in free_running for n in range(3, len(row))
                if (text := gemma_tokenizer.decode(row[n:n + 1], skip_special_tokens=True).strip()))
    decoding = Decoding(max_new_tokens=10, stop_ids=free.stop_ids, stop_strings=(stop,), pad_id=pad)
    rows = decode.decode_batch(model, gemma_tokenizer, PROMPTS, decoding)
    assert any(len(row) < len(full) for row, full in zip(rows, free_running))
    for row, full in zip(rows, free_running):
        assert row == full[: decode.stop_length(gemma_tokenizer, full, decoding)]


def test_the_fast_loop_and_generate_give_the_same_rows_with_stop_strings(gemma_tokenizer):
    """Both decoders end rows by the same rules: the loop, and generate with its stopping criterion."""
    model, pad = build("gemma3_text", len(gemma_tokenizer)), gemma_tokenizer.pad_token_id
    free = Decoding(max_new_tokens=10, stop_ids=(), stop_strings=(), pad_id=pad)
    free_running = decode.decode_batch(model, gemma_tokenizer, PROMPTS, free)
    stop = next(text for row in free_running for n in range(3, len(row))
                if (text := gemma_tokenizer.decode(row[n:n + 1], skip_special_tokens=True).strip()))
    decoding = Decoding(max_new_tokens=10, stop_ids=(gemma_tokenizer.eos_token_id,), stop_strings=(stop,), pad_id=pad)
    with families.of(model.config).inference_tuning(model):  # the kernels the loop uses
        through_generate = decode._with_generate(model, gemma_tokenizer, PROMPTS, decoding)
    assert decode.decode_batch(model, gemma_tokenizer, PROMPTS, decoding) == through_generate


def test_an_output_layer_with_a_bias_is_decoded_by_generate(gemma_tokenizer):
    model = build("gemma3_text", len(gemma_tokenizer))
    greedy = Decoding(max_new_tokens=4, stop_ids=(1,), stop_strings=(), pad_id=0)
    assert decode.decoder(model, greedy) == decode.FAST_LOOP
    assert decode.decoder(model, dataclasses.replace(greedy, do_sample=True)) == decode.GENERATE
    head = model.lm_head
    model.lm_head = torch.nn.Linear(head.in_features, head.out_features, bias=True)
    assert decode.decoder(model, greedy) == decode.GENERATE


@pytest.fixture(scope="module")
def stock_model_dirs(tiny_model_dir, gemma_tokenizer, tmp_path_factory):
    """A tiny Llama and a tiny Qwen2 saved with the Gemma tokenizer's files, minus its pad token."""
    dirs = {}
    for model_type in ("llama", "qwen2"):
        path = tmp_path_factory.mktemp(f"tiny-{model_type}")
        build(model_type, len(gemma_tokenizer)).save_pretrained(path, safe_serialization=True)
        shutil.copy(tiny_model_dir / "tokenizer.json", path)
        config = json.loads((tiny_model_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
        del config["pad_token"]
        (path / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
        dirs[model_type] = path
    return dirs


@pytest.mark.model
@pytest.mark.parametrize("model_type", ["llama", "qwen2"])
def test_any_causal_lm_runs_train_generate_score_on_the_stock_paths(model_type, stock_model_dirs, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    write_splits(tmp_path / "data", train=8, validation=2, test=3)
    out = tmp_path / "out"
    assert main(["run", f"model.source={stock_model_dirs[model_type]}", f"data.source={tmp_path / 'data'}",
                 f"output.dir={out}", "train.max_steps=2", "generate.max_new_tokens=4",
                 "score.bootstrap_samples=20"]) == 0
    summary = json.loads((out / "generate" / "generate_summary.json").read_text(encoding="utf-8"))
    assert (summary["model_type"], summary["decoder"]) == (model_type, decode.GENERATE)
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert (report["rows"], report["models"], report["train"]["steps"]) == (3, ["base", "tuned"], 2)
    rows = [json.loads(line) for line in (out / "generate" / "predictions.jsonl").read_text().splitlines()]
    assert sorted((row["model"], row["id"]) for row in rows) == sorted((m, i) for m in ("base", "tuned")
                                                                       for i in {row["id"] for row in rows})
    assert len(rows) == 6 and all(1 <= row["new_tokens"] <= 4 for row in rows)
    # The tokenizer has no pad token: train and generate both pad with the same unused special token, not EOS.
    padded = [r.getMessage() for r in caplog.records if "has no pad token" in r.getMessage()]
    assert len(padded) == 2 and len(set(padded)) == 1 and "padding with <pad> (id 0)" in padded[0]


def test_a_tokenizer_without_a_pad_token_pads_with_an_unused_special_token():
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    def tokenizer(words, **special):
        core = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token=words[0]))
        made = PreTrainedTokenizerFast(tokenizer_object=core, unk_token=words[0], **special)
        made.add_special_tokens({"additional_special_tokens": [w for w in words if w.startswith("<|")]})
        return made

    words = ["[UNK]", "<|eot|>", "<|reserved_0|>", "<|finetune_pad|>", "a"]
    llama_like = tokenizer(words, eos_token="<|eot|>")
    models.set_pad_token(llama_like, "a test tokenizer")
    assert (llama_like.pad_token, llama_like.pad_token_id) == ("<|finetune_pad|>", 3)  # a pad one first
    pad_is_eos = tokenizer(words[:3] + ["a"], eos_token="<|eot|>", pad_token="<|eot|>")
    models.set_pad_token(pad_is_eos, "a test tokenizer")
    assert pad_is_eos.pad_token == "<|reserved_0|>"
    own = tokenizer(words, eos_token="<|eot|>", pad_token="a")
    models.set_pad_token(own, "a test tokenizer")
    assert own.pad_token == "a"  # a tokenizer's own pad token is kept
    with pytest.raises(ConfigError, match="no pad token distinct from EOS and no unused special token"):
        models.set_pad_token(tokenizer(["[UNK]", "<|eot|>", "a"], eos_token="<|eot|>"), "a test tokenizer")


def test_only_gemma3_refuses_float16(tiny_model_dir, stock_model_dirs):
    with pytest.raises(ConfigError, match="fp16 and the loss turns NaN"):
        models.load_model(ModelConfig(source=str(tiny_model_dir), dtype="float16"),
                          sources.model_source(ModelConfig(source=str(tiny_model_dir))))
    llama = ModelConfig(source=str(stock_model_dirs["llama"]), dtype="float16")
    assert models.load_model(llama, sources.model_source(llama)).dtype == torch.float16
