import json
import re
import resource
import shutil

import pytest
import torch

from conftest import korean_rows, write_jsonl
from pipeline import batches as batches_module
from pipeline import generate as generate_module
from pipeline.config import Config, DataConfig, GenerateConfig, ModelConfig, OutputConfig
from pipeline.errors import ConfigError

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


def random_adapter(model_dir, path, seed, target_modules=("q_proj", "v_proj"), rank=4):
    """A LoRA with random (non-zero) B, so its outputs differ from the base model's."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir),
                           LoraConfig(r=rank, target_modules=list(target_modules), task_type="CAUSAL_LM"))
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.5)
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def adapter_out(tiny_model_dir, tmp_path_factory):
    """An output dir holding train/adapter, as the train stage leaves it."""
    out = tmp_path_factory.mktemp("out")
    random_adapter(tiny_model_dir, out / "train" / "adapter", seed=1)
    return out


@pytest.fixture(scope="module")
def two_adapters(tiny_model_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("adapters")
    return {"a": random_adapter(tiny_model_dir, folder / "a", seed=2, target_modules=("k_proj", "o_proj", "q_proj")),
            "b": random_adapter(tiny_model_dir, folder / "b", seed=3)}


def run(tiny_model_dir, tiny_data, out, adapter_out, model=None, data=None, **gen):
    if out != adapter_out and adapter_out is not None:
        shutil.copytree(adapter_out / "train", out / "train", dirs_exist_ok=True)
    cfg = Config(model=model or ModelConfig(source=str(tiny_model_dir)), data=data or DataConfig(source=str(tiny_data)),
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
        # No stop strings, and the random model says no EOS within 8 tokens: every row runs to max_new_tokens.
        assert (row["new_tokens"], row["hit_max_new_tokens"]) == (8, True)
    base = [r["raw"] for r in rows[:ROWS]]
    tuned = [r["raw"] for r in rows[ROWS:]]
    assert base != tuned, "the adapter must change the outputs"
    summary = json.loads(summary_path.read_text())
    assert summary["rows"] == ROWS and set(summary["models"]) == {"base", "tuned"}
    assert (summary["decoder"], summary["attention"]) == ("greedy loop", "sdpa (cpu)")
    assert (summary["max_new_tokens"], summary["batch_size"], summary["dtype"], summary["processes"],
            summary["prompts_truncated"], summary["resumed_rows"]) == (8, 4, "float32", 1, 0, 0)
    for name, stats in summary["models"].items():
        model_rows = [r for r in rows if r["model"] == name]
        tokens, seconds = sum(r["new_tokens"] for r in model_rows), stats["seconds"]
        assert stats["rows"] == stats["generated_rows"] == ROWS and stats["batch_size"] == 4
        # The rates are this pass's counts over its time (rounded to 0.01 s in the summary).
        low, high = max(seconds - 0.005, 1e-3), seconds + 0.005
        assert ROWS / high - 0.001 <= stats["rows_per_second"] <= ROWS / low + 0.001
        assert tokens / high - 0.01 <= stats["tokens_per_second"] <= tokens / low + 0.01
        assert stats["hit_max_new_tokens_rate"] == sum(r["hit_max_new_tokens"] for r in model_rows) / ROWS == 1.0
        assert stats["mean_new_tokens"] == tokens / ROWS == 8
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB: this process's peak so far
    assert 0.05 < summary["peak_memory"]["cpu_rss_gib"] <= peak + 1e-3


def test_two_runs_are_byte_identical(reference, tiny_model_dir, tiny_data, adapter_out, tmp_path):
    again, _ = run(tiny_model_dir, tiny_data, tmp_path, adapter_out)
    assert again.read_bytes() == reference[0].read_bytes()


def test_the_static_cache_decoder_writes_the_loops_bytes(reference, tiny_model_dir, tiny_data, adapter_out, tmp_path):
    """generate.decoder=static (CUDA's default; not compiled on a CPU) through the stage, base and adapter."""
    predictions, summary = run(tiny_model_dir, tiny_data, tmp_path, adapter_out, decoder="static")
    assert json.loads(summary.read_text())["decoder"] == "model.generate, static cache"
    assert predictions.read_bytes() == reference[0].read_bytes()


@pytest.fixture
def decoded(monkeypatch):
    """The token ids the generate stage decoded, per pass: [{prompt ids: new ids}, ...] (base first, then each
    adapter), and the rows of each decode_batch call, recorded on the way through (nothing is changed)."""
    real, passes, calls = batches_module.decode_batch, [], []

    def recording(model, tokenizer, prompts, decoding):
        outputs = real(model, tokenizer, prompts, decoding)
        if not passes or len(passes[-1]) == passes[-1].rows:
            passes.append(Pass())
        passes[-1].update(zip(map(tuple, prompts), outputs))
        calls.append(outputs)
        return outputs

    class Pass(dict):
        rows = None

    def start(rows):
        passes.clear()
        calls.clear()
        Pass.rows = rows
        return passes, calls

    monkeypatch.setattr(batches_module, "decode_batch", recording)
    return start


def first_stop(tokenizer, ids: list[int], stops: tuple[str, ...]) -> int:
    """How many of `ids` a row keeps under the stop-string rule, worked out here from the README's wording: up to
    the token whose text completes a stop string that follows some text (not counting leading whitespace)."""
    for n in range(1, len(ids) + 1):
        text = tokenizer.decode(ids[:n], skip_special_tokens=True)
        body = text.lstrip()
        if any(stop in body[1:] for stop in stops if body):
            return n
    return len(ids)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_batched_greedy_equals_one_at_a_time(dtype, tiny_model_dir, tiny_data, adapter_out, tmp_path, decoded,
                                             gemma_tokenizer):
    """Rows that stop at different steps leave the batch while the others go on; every row's tokens equal the
    tokens of that row decoded alone (cut where the stop rule ends it), for the base model and the merged
    adapter, in fp32 and bf16 (on CPU)."""
    model, max_new = ModelConfig(source=str(tiny_model_dir), dtype=dtype), 10
    passes, _ = decoded(ROWS)
    run(tiny_model_dir, tiny_data, tmp_path / "alone", adapter_out, model=model, batch_size=1, max_new_tokens=max_new)
    alone = [dict(p) for p in passes]
    assert [len(p) for p in alone] == [ROWS, ROWS] and all(len(ids) == max_new for p in alone for ids in p.values())
    # Stop strings taken from the base rows decoded alone (a token's text at steps 3, 6 and 8 of a row in each of
    # the three batches), so that in the batches rows end at different steps.
    base = list(alone[0].values())
    stops = tuple(sorted({gemma_tokenizer.decode(base[row][step:step + 1]) for row, step in ((1, 2), (5, 5), (8, 7))}))
    passes, calls = decoded(ROWS)
    predictions, _ = run(tiny_model_dir, tiny_data, tmp_path / "batched", adapter_out, model=model, batch_size=4,
                         max_new_tokens=max_new, stop_strings=stops)
    batched, rows = [dict(p) for p in passes], read(predictions)
    # The rows really leave the batch at different steps: some stop on a stop string before others, and the
    # batches hold rows of different lengths.
    lengths = [row["new_tokens"] for row in rows]
    assert len(set(lengths)) >= 3 and min(lengths) < max_new and max_new in lengths, lengths
    stopped = [row for row in rows if not row["hit_max_new_tokens"]]
    assert [row["new_tokens"] < max_new for row in rows] == [not row["hit_max_new_tokens"] for row in rows]
    assert len(stopped) >= 3 and all(any(stop in row["raw"].lstrip()[1:] for stop in stops) for row in stopped)
    assert [len(call) for call in calls] == [4, 4, 2] * 2
    assert sum(len({len(ids) for ids in call}) > 1 for call in calls) >= 2
    for one, together in zip(alone, batched):  # token for token, row by row
        assert one.keys() == together.keys()
        for prompt, ids in one.items():
            assert together[prompt] == ids[:first_stop(gemma_tokenizer, ids, stops)]


SAMPLED_ROWS = 4


def sampled(tiny_model_dir, tiny_data, out, adapter_out, **gen):
    """predictions.jsonl's bytes from the generate stage on the first 4 test rows (8 new tokens, base and tuned)."""
    data = DataConfig(source=str(tiny_data), max_test_samples=SAMPLED_ROWS)
    predictions, _ = run(tiny_model_dir, tiny_data, out, adapter_out, data=data, **gen)
    return predictions.read_bytes()


@pytest.fixture(scope="module")
def greedy_few(tiny_model_dir, tiny_data, adapter_out, tmp_path_factory):
    return sampled(tiny_model_dir, tiny_data, tmp_path_factory.mktemp("greedy"), adapter_out)


def test_sampling_is_seeded_by_the_stage_and_the_seed_changes_it(tiny_model_dir, tiny_data, adapter_out, tmp_path,
                                                                 greedy_few):
    """Sampling (temperature 1, top-p 1: the tiny model's distribution is nearly flat) repeats for the same
    generate.seed whatever the global random state was before, and changes with the seed."""
    torch.manual_seed(1)
    first = sampled(tiny_model_dir, tiny_data, tmp_path / "a", adapter_out, do_sample=True, seed=7)
    torch.manual_seed(2)
    torch.rand(1000)
    again = sampled(tiny_model_dir, tiny_data, tmp_path / "b", adapter_out, do_sample=True, seed=7)
    other = sampled(tiny_model_dir, tiny_data, tmp_path / "c", adapter_out, do_sample=True, seed=8)
    assert again == first
    rows = {name: [json.loads(line) for line in text.splitlines()]
            for name, text in (("seed 7", first), ("seed 8", other), ("greedy", greedy_few))}
    assert len(rows["seed 7"]) == 2 * SAMPLED_ROWS
    for name in ("seed 8", "greedy"):  # every row differs: 8 tokens drawn from 262k nearly equal choices
        assert all(a["raw"] != b["raw"] for a, b in zip(rows["seed 7"], rows[name])), name


@pytest.mark.parametrize("setting", [{"top_p": 1e-9}, {"temperature": 1e-5}])
def test_top_p_and_temperature_reach_the_sampler(setting, tiny_model_dir, tiny_data, adapter_out, tmp_path,
                                                greedy_few):
    """A top-p so small that only the likeliest token is left, or a temperature so low that it takes all the
    probability, makes sampling greedy decoding: the same file as do_sample=false, byte for byte (while sampling
    with neither differs from it in every row: the test above)."""
    assert sampled(tiny_model_dir, tiny_data, tmp_path, adapter_out, do_sample=True, seed=7, **setting) == greedy_few


def test_sampled_rows_end_where_the_stop_rules_say(tiny_model_dir, tiny_data, adapter_out, tmp_path, decoded,
                                                   gemma_tokenizer):
    """Stop strings end sampled rows too, at the token that completes one after some text, and nothing of the
    row's tokens after it is kept; the rows that do not meet one run to max_new_tokens."""
    stops, max_new = ("e", "a"), 8
    passes, calls = decoded(SAMPLED_ROWS)
    rows = [json.loads(line) for line in sampled(tiny_model_dir, tiny_data, tmp_path, adapter_out, do_sample=True,
                                                 seed=7, stop_strings=stops).decode().splitlines()]
    generated = [ids for p in passes for ids in p.values()]
    assert len(generated) == len(rows) == 2 * SAMPLED_ROWS
    lengths = sorted(len(ids) for ids in generated)
    assert len(set(lengths)) >= 3 and lengths[0] < max_new, lengths  # rows stop at different steps
    for ids in generated:
        assert len(ids) == first_stop(gemma_tokenizer, ids, stops) and gemma_tokenizer.pad_token_id not in ids
    for row in rows:
        stopped = not row["hit_max_new_tokens"]
        assert stopped == (row["new_tokens"] < max_new)
        assert not any(stop in row["prediction"][1:] for stop in stops), row
        if stopped:
            body = row["raw"].lstrip()
            assert any(stop in body[1:] for stop in stops), row


def test_a_crashed_run_resumes_to_the_same_file(reference, tiny_model_dir, tiny_data, adapter_out, tmp_path,
                                                monkeypatch):
    real_append, calls = batches_module.append_flushed, []

    def crash_on_third_batch(out, lines):
        calls.append(len(lines))
        if len(calls) == 3:  # mid-write: half a line reaches the disk, then the process dies
            out.write(lines[0][:25])
            out.flush()
            raise KeyboardInterrupt
        real_append(out, lines)

    monkeypatch.setattr(batches_module, "append_flushed", crash_on_third_batch)
    with pytest.raises(KeyboardInterrupt):
        run(tiny_model_dir, tiny_data, tmp_path, adapter_out)
    partial = (tmp_path / "generate" / "predictions.jsonl").read_text(encoding="utf-8")
    assert partial.count("\n") == 8 and not partial.endswith("\n")  # two batches of 4, then a torn line
    monkeypatch.setattr(batches_module, "append_flushed", real_append)
    resumed, _ = run(tiny_model_dir, tiny_data, tmp_path, adapter_out)
    assert resumed.read_bytes() == reference[0].read_bytes()


def test_a_rerun_with_another_process_count_resumes_every_file(reference, tiny_model_dir, tiny_data, adapter_out,
                                                               tmp_path):
    """Rows written by an earlier run with one process (predictions.jsonl) and with two (a rank's shard) are all
    resumed by a rerun, whatever its process count, and merged into one file."""
    lines = reference[0].read_text(encoding="utf-8").splitlines(keepends=True)
    (tmp_path / "generate").mkdir()
    (tmp_path / "generate" / "predictions.jsonl").write_text("".join(lines[:3]), encoding="utf-8")
    (tmp_path / "generate" / "predictions.rank1-of-2.jsonl").write_text("".join(lines[3:14:2]), encoding="utf-8")
    predictions, summary = run(tiny_model_dir, tiny_data, tmp_path, adapter_out)
    assert predictions.read_bytes() == reference[0].read_bytes()
    assert sorted(p.name for p in (tmp_path / "generate").glob("predictions*")) == ["predictions.jsonl"]
    recorded = json.loads(summary.read_text())
    assert recorded["resumed_rows"] == 3 + len(lines[3:14:2])
    assert sum(m["generated_rows"] for m in recorded["models"].values()) == 2 * ROWS - recorded["resumed_rows"]


def test_a_new_adapter_at_the_same_path_is_generated_and_scored_again(two_adapters, tiny_model_dir, tiny_data,
                                                                      tmp_path, monkeypatch):
    from eval.score import score

    monkeypatch.setenv("HOME", str(tmp_path))  # and a path written with ~, as users type it
    shutil.copytree(two_adapters["a"], tmp_path / "candidate")
    cfg = Config(model=ModelConfig(source=str(tiny_model_dir), adapter="~/candidate"),
                 data=DataConfig(source=str(tiny_data)), output=OutputConfig(dir=str(tmp_path / "out")),
                 generate=GenerateConfig(batch_size=4, max_new_tokens=8, stop_strings=()))
    first = (generate_module.generate(cfg, tmp_path / "out") / "predictions.jsonl").read_text()
    report = json.loads(score(cfg, tmp_path / "out").read_text())
    shutil.rmtree(tmp_path / "candidate")
    shutil.copytree(two_adapters["b"], tmp_path / "candidate")  # last night's candidate, same path
    second = (generate_module.generate(cfg, tmp_path / "out") / "predictions.jsonl").read_text()
    assert only_text(second, "tuned") != only_text(first, "tuned") and only_text(second, "base") == only_text(
        first, "base")
    rescored = json.loads(score(cfg, tmp_path / "out").read_text())
    assert rescored["predictions"]["sha256"] != report["predictions"]["sha256"]


def only_text(text, model):
    return [line for line in text.splitlines() if json.loads(line)["model"] == model]


def test_long_prompts_are_truncated_and_counted(tiny_model_dir, tiny_data, adapter_out, tmp_path):
    predictions, summary = run(tiny_model_dir, tiny_data, tmp_path, adapter_out, max_prompt_tokens=30)
    assert json.loads(summary.read_text())["prompts_truncated"] == ROWS
    assert len(read(predictions)) == 2 * ROWS


def test_missing_adapter_is_a_clear_error(tiny_model_dir, tiny_data, tmp_path):
    cfg = Config(model=ModelConfig(source=str(tiny_model_dir)), data=DataConfig(source=str(tiny_data)))
    with pytest.raises(ConfigError, match="run the train stage first"):
        generate_module.generate(cfg, tmp_path)


def only(path, model):
    return "".join(line + "\n" for line in path.read_text(encoding="utf-8").splitlines()
                   if json.loads(line)["model"] == model)


def test_batch_size_auto_halves_on_out_of_memory_and_keeps_the_rows(reference, tiny_model_dir, tiny_data,
                                                                     adapter_out, tmp_path, monkeypatch):
    """An out-of-memory error at batches over 4 rows (injected: no GPU here) halves 16 -> 8 -> 4; the rows written
    before keep their place and the predictions are those of batch size 4."""
    real, sizes = batches_module.decode_batch, []

    def small_device(model, tokenizer, prompts, decoding):
        sizes.append(len(prompts))
        if len(prompts) > 4:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(model, tokenizer, prompts, decoding)

    monkeypatch.setattr(batches_module, "decode_batch", small_device)
    predictions, summary = run(tiny_model_dir, tiny_data, tmp_path, adapter_out, batch_size="auto", max_batch_size=16)
    assert predictions.read_bytes() == reference[0].read_bytes()
    recorded = json.loads(summary.read_text())
    assert recorded["batch_size"] == 4 and recorded["batch_size_setting"] == "auto"
    assert {stats["batch_size"] for stats in recorded["models"].values()} == {4}
    assert sizes[:3] == [10, 8, 4] and max(sizes[3:]) == 4  # the tuned model starts from the size that fit


def test_out_of_memory_at_a_fixed_batch_size_is_exit_3_naming_the_key(tiny_model_dir, tiny_data, adapter_out,
                                                                       tmp_path, monkeypatch, capsys):
    from entrypoint import main

    def no_memory(*args):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(batches_module, "decode_batch", no_memory)
    shutil.copytree(adapter_out / "train", tmp_path / "train")
    assert main(["generate", f"model.source={tiny_model_dir}", f"data.source={tiny_data}",
                 f"output.dir={tmp_path}", "generate.batch_size=4"]) == 3
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "out of memory" in err and "generate.batch_size=4" in err and "generate.batch_size=auto" in err


def test_base_and_two_adapters_in_one_pass(reference, two_adapters, tiny_model_dir, tiny_data, adapter_out,
                                           tmp_path):
    """The base model is loaded once; the base rows equal a run without these adapters, and each adapter's rows a
    run of that adapter alone: nothing of one adapter stays in the weights for the next. The report shows the
    three models and the paired deltas against the chosen reference."""
    from eval.score import score
    from pipeline.config import ScoreConfig

    out = tmp_path / "two"
    model = ModelConfig(source=str(tiny_model_dir), adapter=str(two_adapters["a"]))
    many, _ = run(tiny_model_dir, tiny_data, out, None, model=model, adapters={"b": str(two_adapters["b"])})
    models = [json.loads(line)["model"] for line in many.read_text().splitlines()]
    assert models == ["base"] * ROWS + ["tuned"] * ROWS + ["b"] * ROWS
    assert only(many, "base") == only(reference[0], "base")
    alone, _ = run(tiny_model_dir, tiny_data, tmp_path / "b-alone", None,
                   model=ModelConfig(source=str(tiny_model_dir), adapter=str(two_adapters["b"])))
    assert only(many, "b") == only(alone, "tuned").replace('"model": "tuned"', '"model": "b"')
    assert only(many, "tuned") != only(many, "b") != only(many, "base")
    cfg = Config(model=model, data=DataConfig(source=str(tiny_data)), output=OutputConfig(dir=str(out)),
                 generate=GenerateConfig(batch_size=4, max_new_tokens=8, stop_strings=(),
                                         adapters={"b": str(two_adapters["b"])}),
                 score=ScoreConfig(reference="b", bootstrap_samples=50))
    report = json.loads(score(cfg, out).read_text(encoding="utf-8"))
    assert report["models"] == ["base", "tuned", "b"] and report["reference"] == "b"
    assert set(report["deltas"]) == {"base", "tuned"} and report["train"] is None


def test_merged_adapters_leave_bf16_base_weights_bit_identical(two_adapters, tiny_model_dir):
    from pipeline import adapters, models, sources

    cfg = Config(model=ModelConfig(source=str(tiny_model_dir), dtype="bfloat16"))
    model = models.load_model(cfg.model, sources.model_source(cfg.model)).eval()
    before = {name: param.detach().clone() for name, param in model.named_parameters()}
    for name, path in two_adapters.items():
        adapter = adapters.Adapter(name, sources.adapter_source(str(path), f"generate.adapters.{name}", cfg.model))
        with adapters.merged(model, adapter) as tuned:
            assert any(not torch.equal(p, before[n]) for n, p in tuned.named_parameters())  # really merged
    assert all(torch.equal(param, before[name]) for name, param in model.named_parameters())


@pytest.mark.parametrize("mismatch, expected", [
    ("rank", r"lora_A.weight has shape \[4, 64\], but rank r=8"),
    ("module", r"target_modules: w_proj \(did you mean v_proj\?\) match no linear module"),
    ("base", r"was trained on base model 'google/gemma-3-1b-it', but model.source is"),
])
def test_an_adapter_that_does_not_fit_the_base_is_exit_2_naming_both(mismatch, expected, tiny_model_dir, tiny_data,
                                                                     two_adapters, tmp_path, capsys):
    from entrypoint import main

    adapter = shutil.copytree(two_adapters["b"], tmp_path / "adapter")
    config = json.loads((adapter / "adapter_config.json").read_text())
    config.update({"rank": {"r": 8}, "module": {"target_modules": ["w_proj", "v_proj"]},
                   "base": {"base_model_name_or_path": "google/gemma-3-1b-it"}}[mismatch])
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    assert main(["generate", f"model.source={tiny_model_dir}", f"data.source={tiny_data}",
                 f"output.dir={tmp_path / 'out'}", f"model.adapter={adapter}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert re.search(expected, err) and "model.adapter" in err, err
    assert not (tmp_path / "out" / "generate" / "predictions.jsonl").exists()


def test_a_prediction_cache_reuses_a_models_rows_and_a_run_ends_with_the_same_bytes(
        reference, two_adapters, tiny_model_dir, tiny_data, adapter_out, tmp_path, monkeypatch):
    """generate.prediction_cache: a run of another adapter generates only that adapter's rows (the base rows are
    the first run's), and its predictions.jsonl is byte for byte an uncached run's, references from the current
    data. Another decoding, or a file that lacks rows, is generated again."""
    ran = []

    def counted(model, tokenizer, name, todo, work, out, received):
        ran.append((name, len(todo)))
        return batches_module.run_model(model, tokenizer, name, todo, work, out, received)

    monkeypatch.setattr(generate_module, "run_model", counted)
    cache = tmp_path / "cache"
    first, _ = run(tiny_model_dir, tiny_data, tmp_path / "one", adapter_out, prediction_cache=str(cache))
    assert first.read_bytes() == reference[0].read_bytes() and ran == [("base", ROWS), ("tuned", ROWS)]
    assert len(list(cache.glob("*.jsonl"))) == 2  # one file per model

    data = tmp_path / "data"  # a corrected reference changes no prediction: the base rows are still reused
    shutil.copytree(tiny_data, data)
    rows = read(data / "test.jsonl")
    rows[3]["target"] = "(가정 살펴보기) 고친 참조 질문인가요?"
    write_jsonl(data / "test.jsonl", rows)
    candidate = ModelConfig(source=str(tiny_model_dir), adapter=str(two_adapters["b"]))
    ran.clear()
    second, summary = run(tiny_model_dir, data, tmp_path / "two", None, model=candidate,
                          data=DataConfig(source=str(data)), prediction_cache=str(cache))
    assert ran == [("tuned", ROWS)]
    models = json.loads(summary.read_text())["models"]
    assert (models["base"]["generated_rows"], models["base"]["cached_rows"], models["tuned"]["generated_rows"]) == (
        0, ROWS, ROWS)
    uncached, _ = run(tiny_model_dir, data, tmp_path / "three", None, model=candidate,
                      data=DataConfig(source=str(data)))
    assert second.read_bytes() == uncached.read_bytes()
    assert read(second)[3]["reference"] == rows[3]["target"]

    ran.clear()  # another decoding: new keys, both models generated
    run(tiny_model_dir, tiny_data, tmp_path / "four", adapter_out, max_new_tokens=6, prediction_cache=str(cache))
    assert ran == [("base", ROWS), ("tuned", ROWS)] and len(list(cache.glob("*.jsonl"))) == 5

    for path in cache.glob("*.jsonl"):  # every file loses a row: none is trusted, all rows generated again
        path.write_text("".join(path.read_text().splitlines(keepends=True)[1:]))
    ran.clear()
    again, _ = run(tiny_model_dir, tiny_data, tmp_path / "five", adapter_out, prediction_cache=str(cache))
    assert ran == [("base", ROWS), ("tuned", ROWS)] and again.read_bytes() == reference[0].read_bytes()
    ran.clear()  # and kept whole again
    six, summary = run(tiny_model_dir, tiny_data, tmp_path / "six", adapter_out, prediction_cache=str(cache))
    assert ran == [] and six.read_bytes() == reference[0].read_bytes()
    assert json.loads(summary.read_text())["decoder"] is None  # no row was decoded in this run
