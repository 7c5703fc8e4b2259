import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import GEMMA_CHAT_TEMPLATE, ROOT
from entrypoint import main
from pipeline import models, sources
from pipeline.config import ModelConfig
from pipeline.errors import ConfigError

KOREAN = "(다른 관점 생각하기) 아무것도 없는 나라들은 어떻습니까? ### context: 무역은 제로섬이 아니다."


@pytest.mark.slow
def test_embedded_conversion_round_trips(embedded_dir, tmp_path):
    """The cached safetensors equal the GGUF's dequantized weights, and the tokenizers agree."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = sources.assemble_embedded_gguf(tmp_path)
    from_gguf = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=gguf.name, dtype=torch.float32)
    reloaded = models.load_model(ModelConfig(), sources.model_source(ModelConfig()))
    assert sorted(os.listdir(embedded_dir)) == sorted(
        ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"])
    expected, actual = from_gguf.state_dict(), reloaded.state_dict()
    assert expected.keys() == actual.keys()
    for name, tensor in expected.items():
        assert torch.equal(tensor, actual[name]), name
    assert sum(p.numel() for p in reloaded.parameters()) == 268_098_176
    gguf_tokenizer = AutoTokenizer.from_pretrained(tmp_path, gguf_file=gguf.name)
    saved_tokenizer = models.load_tokenizer(ModelConfig(), sources.model_source(ModelConfig()))
    assert gguf_tokenizer(KOREAN)["input_ids"] == saved_tokenizer(KOREAN)["input_ids"]
    assert (saved_tokenizer.pad_token, saved_tokenizer.eos_token) == ("<pad>", "<eos>")


@pytest.mark.subprocess
def test_converted_model_is_reused_without_loading_anything(embedded_dir):
    result = subprocess.run([sys.executable, "-X", "importtime", str(ROOT / "entrypoint.py"), "model", "fetch"],
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert str(embedded_dir) in result.stdout
    assert "transformers" not in result.stderr and "torch" not in result.stderr  # no heavy import at all


def test_local_model_directory_loads_with_safetensors_only(tiny_model_dir, tmp_path):
    cfg = ModelConfig(source=str(tiny_model_dir))
    model = models.load_model(cfg, sources.model_source(cfg))
    assert model.config.num_hidden_layers == 2 and model.dtype == torch.float32
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")
    with pytest.raises(ConfigError, match="pytorch_model.bin is a pickle checkpoint"):
        models.load_model(ModelConfig(source=str(pickled)), sources.model_source(ModelConfig(source=str(pickled))))
    (pickled / "model.safetensors").write_bytes(b"not safetensors")  # one of each: only safetensors is read
    with pytest.raises(ConfigError, match="cannot load the model from"):
        models.load_model(ModelConfig(source=str(pickled)), sources.model_source(ModelConfig(source=str(pickled))))


def test_local_tokenizer_gives_the_same_ids_and_text_as_autotokenizer(embedded_dir, gemma_tokenizer, tmp_path):
    """load_tokenizer reads tokenizer.json straight into Rust (without transformers' Python parse of its added
    tokens); AutoTokenizer (the reference) rebuilds a GemmaTokenizer from it. Every sample row, plain and chat,
    must tokenize and decode the same, with the same special and added tokens, and save the same files."""
    import copy

    from transformers import TokenizersBackend

    from pipeline.prompt import STYLES

    cfg = ModelConfig(source=str(embedded_dir))
    ours = models.load_tokenizer(cfg, sources.model_source(cfg))
    reference = copy.deepcopy(gemma_tokenizer)
    assert type(ours) is not type(reference)  # otherwise this test compares a loader with itself
    assert "added_tokens_decoder" not in json.loads((embedded_dir / "tokenizer_config.json").read_text())
    assert ours.added_tokens_decoder == reference.added_tokens_decoder and len(ours.added_tokens_decoder) > 6000
    assert ours.all_special_ids == reference.all_special_ids
    stock = TokenizersBackend.from_pretrained(embedded_dir, padding_side="left")  # with the parse
    ours.save_pretrained(tmp_path / "ours")
    stock.save_pretrained(tmp_path / "stock")
    assert {p.name: p.read_bytes() for p in (tmp_path / "ours").iterdir()} == {
        p.name: p.read_bytes() for p in (tmp_path / "stock").iterdir()}
    ours.chat_template = reference.chat_template = GEMMA_CHAT_TEMPLATE
    rows = [json.loads(line) for split in ("train", "validation", "test")
            for line in (ROOT / "data/sample" / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]
    rows.append({"input": "  tabs\tand\n\nnewlines, émoji 😀 中文 <start_of_turn>", "target": "(다른 관점 생각하기) 왜?"})
    for row in rows:
        for style in STYLES.values():
            expected = style.training_ids(reference, row["input"], row["target"])
            assert style.training_ids(ours, row["input"], row["target"]) == expected
            assert style.prompt_ids(ours, row["input"]) == style.prompt_ids(reference, row["input"])
            for skip in (False, True):
                assert (ours.decode(expected["input_ids"], skip_special_tokens=skip)
                        == reference.decode(expected["input_ids"], skip_special_tokens=skip))
    for name in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"):
        assert getattr(ours, name) == getattr(reference, name)
    assert ours.convert_tokens_to_ids("<end_of_turn>") == reference.convert_tokens_to_ids("<end_of_turn>")
    assert len(ours) == len(reference) and ours.padding_side == "left"


def test_a_model_folder_that_does_not_exist_or_holds_only_pickles_is_a_config_error(tmp_path, capsys):
    missing = tmp_path / "no-such-model"
    assert main(["model", "fetch", f"model.source={missing}"]) == 2
    assert f"model path {missing} does not exist" in capsys.readouterr().err
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text('{"model_type": "gemma3_text"}')
    (pickled / "pytorch_model.bin").write_bytes(b"a pickle")
    (pickled / "tokenizer.json").write_text("{}")
    for command in (["model", "fetch"], ["config", "show"]):
        assert main([*command, f"model.source={pickled}"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "pytorch_model.bin is a pickle checkpoint" in err and "tokenizer" not in err


def test_an_unreachable_hub_is_retryable_exit_5(monkeypatch, capsys):
    """A network failure may pass: exit 5, which the Kubernetes manifests retry; a Hub that answers "no such
    model" is a config error, exit 2."""
    import huggingface_hub
    import requests

    from pipeline.errors import TransientError

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def unreachable(*args, **kwargs):
        raise requests.ConnectionError("Max retries exceeded with url: /google/gemma-3-1b-it (Connection refused)")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", unreachable)
    assert main(["model", "fetch", "model.source=google/gemma-3-1b-it"]) == TransientError.exit_code == 5
    assert "unreachable (a retry may succeed)" in capsys.readouterr().err

    def missing(*args, **kwargs):
        raise OSError("404 Client Error: Repository Not Found for url: https://huggingface.co/api/...")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", missing)
    assert main(["model", "fetch", "model.source=google/gemma-9-nonexistent"]) == 2
    assert "Repository Not Found" in capsys.readouterr().err


@pytest.mark.subprocess
def test_hub_id_offline_says_so_and_never_shows_the_token(tmp_path):
    token = "hf_FAKEtokenDoNotLeak1234567890"
    env = {**os.environ, "HF_TOKEN": token, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "empty-hf")}
    result = subprocess.run([sys.executable, "entrypoint.py", "-v", "model", "fetch",
                             "model.source=google/gemma-3-1b-it"], capture_output=True, text=True, cwd=ROOT, env=env,
                            timeout=300)
    assert result.returncode == 2  # offline by choice: a retry would fail the same way
    assert "HF_HUB_OFFLINE is set" in result.stderr and "local directory" in result.stderr
    for fragment in (token, token[3:], token[-8:]):
        assert fragment not in result.stdout + result.stderr
