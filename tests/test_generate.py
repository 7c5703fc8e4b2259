import json

import pytest
import torch

from conftest import korean_rows, write_jsonl
from pipeline import generate as generate_module
from pipeline.config import Config, DataConfig, GenerateConfig, ModelConfig, OutputConfig
from pipeline.errors import ResourceError

ROWS = 10


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    for split, start in (("train", 0), ("validation", 100)):
        write_jsonl(folder / f"{split}.jsonl", korean_rows(4, start))
    rows = korean_rows(ROWS, 200)
    for i, row in enumerate(rows):  # different prompt lengths, so sorting by length reorders them
        row["input"] = "아주 " * (i * 3 % 7) + row["input"]
    write_jsonl(folder / "test.jsonl", rows)
    return folder


@pytest.fixture(scope="module")
def adapter_out(tiny_model_dir, tmp_path_factory):
    """An output dir holding train/adapter: a LoRA with random (non-zero) B, so tuned differs from base."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.5)
    out = tmp_path_factory.mktemp("out")
    model.save_pretrained(out / "train" / "adapter")
    return out


def run(tiny_model_dir, tiny_data, out, adapter_out, **gen):
    if out != adapter_out:
        import shutil
        shutil.copytree(adapter_out / "train", out / "train", dirs_exist_ok=True)
    cfg = Config(model=ModelConfig(source=str(tiny_model_dir)), data=DataConfig(source=str(tiny_data)),
                 generate=GenerateConfig(**{"batch_size": 4, "max_new_tokens": 8, "stop_strings": (), **gen}),
                 output=OutputConfig(dir=str(out)))
    stage_dir = generate_module.generate(cfg, out)
    return stage_dir / "predictions.jsonl", stage_dir / "generate_summary.json"


@pytest.fixture(scope="module")
def reference(tiny_model_dir, tiny_data, adapter_out):
    return run(tiny_model_dir, tiny_data, adapter_out, adapter_out)


def read(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_predictions_cover_every_row_with_both_models_in_original_order(reference, tiny_data):
    predictions, summary_path = reference
    rows = read(predictions)
    assert len(rows) == 2 * ROWS
    assert len({(r["id"], r["model"]) for r in rows}) == 2 * ROWS
    assert [r["id"] for r in rows] == [f"test:{i}" for i in range(ROWS)] * 2
    assert [r["model"] for r in rows] == ["base"] * ROWS + ["tuned"] * ROWS
    test_rows = read(tiny_data / "test.jsonl")
    for row in rows:
        source = test_rows[int(row["id"].split(":")[1])]
        assert row["input"] == source["input"] and row["reference"] == source["target"]
        assert set(row) == {"id", "model", "input", "reference", "prediction", "raw", "new_tokens",
                            "hit_max_new_tokens"}
        assert 0 < row["new_tokens"] <= 8
    base = [r["raw"] for r in rows[:ROWS]]
    tuned = [r["raw"] for r in rows[ROWS:]]
    assert base != tuned, "the adapter must change the outputs"
    summary = json.loads(summary_path.read_text())
    assert summary["rows"] == ROWS and set(summary["models"]) == {"base", "tuned"}
    for stats in summary["models"].values():
        assert stats["rows"] == ROWS and stats["tokens_per_second"] > 0
        assert 0 <= stats["hit_max_new_tokens_rate"] <= 1
    assert summary["peak_memory"]["cpu_rss_gib"] > 0


def test_two_runs_are_byte_identical(reference, tiny_model_dir, tiny_data, adapter_out, tmp_path):
    again, _ = run(tiny_model_dir, tiny_data, tmp_path, adapter_out)
    assert again.read_bytes() == reference[0].read_bytes()


def test_batched_greedy_equals_one_at_a_time(reference, tiny_model_dir, tiny_data, adapter_out, tmp_path):
    single, _ = run(tiny_model_dir, tiny_data, tmp_path, adapter_out, batch_size=1)
    assert single.read_bytes() == reference[0].read_bytes()


def test_a_crashed_run_resumes_to_the_same_file(reference, tiny_model_dir, tiny_data, adapter_out, tmp_path,
                                                monkeypatch):
    real_append, calls = generate_module.append_flushed, []

    def crash_on_third_batch(out, lines):
        calls.append(len(lines))
        if len(calls) == 3:  # mid-write: half a line reaches the disk, then the process dies
            out.write(lines[0][:25])
            out.flush()
            raise KeyboardInterrupt
        real_append(out, lines)

    monkeypatch.setattr(generate_module, "append_flushed", crash_on_third_batch)
    with pytest.raises(KeyboardInterrupt):
        run(tiny_model_dir, tiny_data, tmp_path, adapter_out)
    partial = (tmp_path / "generate" / "predictions.jsonl").read_text(encoding="utf-8")
    assert partial.count("\n") == 8 and not partial.endswith("\n")  # two batches of 4, then a torn line
    monkeypatch.setattr(generate_module, "append_flushed", real_append)
    resumed, _ = run(tiny_model_dir, tiny_data, tmp_path, adapter_out)
    assert resumed.read_bytes() == reference[0].read_bytes()


def test_long_prompts_are_truncated_and_counted(tiny_model_dir, tiny_data, adapter_out, tmp_path):
    predictions, summary = run(tiny_model_dir, tiny_data, tmp_path, adapter_out, max_prompt_tokens=30)
    assert json.loads(summary.read_text())["prompts_truncated"] == ROWS
    assert len(read(predictions)) == 2 * ROWS


def test_missing_adapter_is_a_clear_error(tiny_model_dir, tiny_data, tmp_path):
    cfg = Config(model=ModelConfig(source=str(tiny_model_dir)), data=DataConfig(source=str(tiny_data)))
    with pytest.raises(ResourceError, match="run the train stage first"):
        generate_module.generate(cfg, tmp_path)


class FakeTokenizer:
    pad_token_id, eos_token_id = 0, 1

    def decode(self, ids, skip_special_tokens=False):
        words = {0: "<pad>", 1: "<eos>", 5: "질문", 6: "?", 7: "\n", 8: "다음"}
        return "".join(words[i] for i in ids if not (skip_special_tokens and i in (0, 1)))


@pytest.mark.parametrize("generated, prediction, new_tokens, hit_max", [
    ([5, 6, 1, 0, 0], "질문?", 3, False),           # EOS: stops, nothing after it is counted
    ([5, 6, 7], "질문?", 3, False),                 # stop string "\n"
    ([5, 6, 7, 8, 5], "질문?", 5, False),           # the newline ends the question even mid-output
    ([5, 5, 5, 5, 5], "질문질문질문질문질문", 5, True),  # ran out of tokens
])
def test_decode_row_stops_and_counts(generated, prediction, new_tokens, hit_max):
    row = generate_module.decode_row(FakeTokenizer(), generated, [1], ("\n",), max_new_tokens=5)
    assert (row["prediction"], row["new_tokens"], row["hit_max_new_tokens"]) == (prediction, new_tokens, hit_max)
