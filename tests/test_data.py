import json
import re
import unicodedata

import pytest

from conftest import ROOT, korean_rows, write_jsonl
from entrypoint import main
from pipeline import data
from pipeline.config import DataConfig, load_config
from pipeline.errors import ConfigError, DataError
from pipeline.text import split_label

LABELS = {"의미 명확히 하기", "가정 살펴보기", "이유와 근거 묻기", "함의와 결과 따져보기", "다른 관점 생각하기"}


def read_sample(split):
    lines = (ROOT / "data/sample" / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def test_sample_dataset_has_the_promised_shape():
    splits = {s: read_sample(s) for s in data.SPLITS}
    assert len(splits["train"]) >= 240 and len(splits["validation"]) >= 30 and len(splits["test"]) >= 60
    seen_inputs, seen_targets = set(), set()
    for split, rows in splits.items():
        labels = set()
        for row in rows:
            assert set(row) == {"input", "target"}
            assert row["input"].strip() == row["input"] and row["input"]
            label, question = split_label(row["target"])
            assert label in LABELS and question.endswith("?") and "\n" not in row["target"]
            labels.add(label)
            sentences = [s for s in row["input"].replace("?", ".").replace("!", ".").split(".") if s.strip()]
            assert 2 <= len(sentences) <= 5, row["input"]
            assert row["input"] not in seen_inputs and row["target"] not in seen_targets, "row repeats"
            seen_inputs.add(row["input"])
            seen_targets.add(row["target"])
        assert labels == LABELS, f"{split} lacks a question type"


def test_load_split_gives_stable_ids_and_renamed_columns(tmp_path):
    rows = [{"argument": r["input"], "question": r["target"], "extra": 1} for r in korean_rows(5)]
    path = write_jsonl(tmp_path / "test.jsonl", rows)
    cfg = DataConfig(source=str(tmp_path), test_path=str(path), input_column="argument", target_column="question")
    split = data.load_split(cfg, "test", limit=3)
    assert [sorted(row) for row in split] == [["id", "input", "target"]] * 3
    assert [row["id"] for row in split] == ["test:0", "test:1", "test:2"]
    assert [row["input"] for row in split] == [r["argument"] for r in rows[:3]]


def test_a_label_column_builds_the_labelled_target(tmp_path):
    rows = [{"thought": "Cars should be banned downtown.", "question": "Why downtown only?", "label": "clarity"},
            {"thought": "Tax sugar.", "question": "What would people buy instead?", "label": " implication "}]
    write_jsonl(tmp_path / "test.jsonl", rows)
    cfg = DataConfig(source=str(tmp_path), input_column="thought", target_column="question", label_column="label")
    split = data.load_split(cfg, "test")
    assert [row["target"] for row in split] == ["(clarity) Why downtown only?",
                                                "(implication) What would people buy instead?"]
    assert split_label(split[1]["target"]) == ("implication", "What would people buy instead?")
    rows[1]["label"] = ""
    write_jsonl(tmp_path / "test.jsonl", rows)
    with pytest.raises(DataError, match=r"row 2: column 'label' is empty"):
        data.load_split(cfg, "test")


def test_nfd_text_is_loaded_as_nfc(tmp_path):
    rows = korean_rows(3)
    nfd = [{k: unicodedata.normalize("NFD", v) for k, v in row.items()} for row in rows]
    assert nfd[0]["input"] != rows[0]["input"]  # the file really holds jamo
    write_jsonl(tmp_path / "test.jsonl", nfd)
    loaded = data.load_split(DataConfig(source=str(tmp_path)), "test")
    assert [{"input": r["input"], "target": r["target"]} for r in loaded] == rows


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_csv_and_parquet_directories_load(tmp_path, suffix):
    import pandas as pd

    frame = pd.DataFrame(korean_rows(4))
    for split in data.SPLITS:
        getattr(frame, f"to_{suffix}")(tmp_path / f"{split}.{suffix}", index=False)
    split = data.load_split(DataConfig(source=str(tmp_path)), "validation")
    assert len(split) == 4 and split[0]["target"] == frame.target[0]
    assert split[3] == {"id": "validation:3", "input": frame.input[3], "target": frame.target[3]}


def bad_jsonl(tmp_path, mutate):
    rows = korean_rows(9)
    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    mutate(rows, lines)
    path = tmp_path / "test.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _set(index, key, value):
    def mutate(rows, lines):
        rows[index][key] = value
        lines[index] = json.dumps(rows[index], ensure_ascii=False)
    return mutate


def _drop(index, key):
    def mutate(rows, lines):
        del rows[index][key]
        lines[index] = json.dumps(rows[index], ensure_ascii=False)
    return mutate


@pytest.mark.parametrize("mutate, expected", [
    (_drop(6, "target"), r"row 7: column 'target' is missing"),
    (_set(2, "input", ""), r"row 3: column 'input' is empty"),
    (_set(4, "target", "   \t"), r"row 5: column 'target' is empty or whitespace only"),
    (_set(0, "target", 42), r"row 1: column 'target' must be a string, got int"),
    (_set(8, "input", None), r"row 9: column 'input' is missing or null"),
    (lambda rows, lines: lines.__setitem__(3, '{"input": "잘린 줄'), r"row 4: malformed JSON"),
])
def test_bad_rows_are_reported_with_file_split_row_and_column(tmp_path, mutate, expected):
    path = bad_jsonl(tmp_path, mutate)
    with pytest.raises(DataError, match=expected) as info:
        data.load_split(DataConfig(source=str(tmp_path)), "test")
    assert str(path) in str(info.value) and "split test" in str(info.value)


def test_missing_column_everywhere_lists_the_columns(tmp_path):
    import pandas as pd

    pd.DataFrame([{"input": r["input"], "question": r["target"]} for r in korean_rows(3)]).to_csv(
        tmp_path / "train.csv", index=False)
    with pytest.raises(DataError, match=r"row 1: column 'target' is missing \(columns: input, question"):
        data.load_split(DataConfig(source=str(tmp_path)), "train")


def test_empty_split_and_missing_files(tmp_path):
    write_jsonl(tmp_path / "empty" / "test.jsonl", [])
    with pytest.raises(DataError, match="the split has no rows"):
        data.load_split(DataConfig(source=str(tmp_path / "empty")), "test")
    with pytest.raises(DataError, match=r"data.test_path: file not found: .*nope.jsonl"):
        data.load_split(DataConfig(test_path=str(tmp_path / "nope.jsonl")), "test")
    with pytest.raises(DataError, match="has no train file"):
        data.load_split(DataConfig(source=str(tmp_path)), "train")
    with pytest.raises(DataError, match="not a directory"):
        data.load_split(DataConfig(source=str(tmp_path / "missing-dir")), "train")


def test_overlap_between_splits_is_counted(tmp_path, caplog):
    rows = korean_rows(6)
    for split, part in (("train", rows[:4]), ("validation", rows[4:]), ("test", rows[2:5])):
        write_jsonl(tmp_path / f"{split}.jsonl", part)
    splits = {s: data.load_split(DataConfig(source=str(tmp_path)), s) for s in data.SPLITS}
    assert data.warn_on_overlap(splits) == {"train/test": 2, "validation/test": 1}
    assert "2 inputs appear in both train and test" in caplog.text


def test_data_check_cli(tmp_path, capsys):
    assert main(["data", "check", "--config", str(ROOT / "configs/demo.yaml")]) == 0
    out = capsys.readouterr().out
    for split in data.SPLITS:
        assert f"{len(read_sample(split))} rows" in out
    assert "다른 관점 생각하기" in out

    for split in data.SPLITS:
        write_jsonl(tmp_path / f"{split}.jsonl", korean_rows(8))
    bad_jsonl(tmp_path, _drop(6, "target"))
    assert main(["data", "check", f"data.source={tmp_path}"]) == 2
    out, err = capsys.readouterr()
    assert str(tmp_path / "test.jsonl") in out and "row 7" in out and "'target'" in out
    assert err == "error: 1 bad row (listed above)\n"


def test_split_label():
    assert split_label("(다른 관점 생각하기) 왜요?") == ("다른 관점 생각하기", "왜요?")
    assert split_label("라벨 없는 질문?") == (None, "라벨 없는 질문?")


# --- files real people produce: each case is the bytes of a test split, and what loading it must say ----------

GOOD = [json.dumps(r, ensure_ascii=False) for r in korean_rows(3)]
CSV_HEADER = "input,target\n"
CSV_ROWS = "".join(f'"{r["input"]}","{r["target"]}"\n' for r in korean_rows(3))


@pytest.mark.parametrize("name, filename, content, expected", [
    ("BOM jsonl", "test.jsonl", b"\xef\xbb\xbf" + "\n".join(GOOD).encode() + b"\n", 3),
    ("blank lines", "test.jsonl", ("\n" + GOOD[0] + "\n\n  \n" + "\n".join(GOOD[1:]) + "\n\n").encode(), 3),
    ("CRLF jsonl", "test.jsonl", "\r\n".join(GOOD).encode() + b"\r\n", 3),
    ("BOM csv", "test.csv", b"\xef\xbb\xbf" + (CSV_HEADER + CSV_ROWS).encode(), 3),
    ("invalid UTF-8", "test.jsonl", ("\n".join(GOOD[:2]) + "\n").encode() + b'{"input": "\xff\xfe", "target": "x"}\n',
     r"test.jsonl \(split test\) line 3: not valid UTF-8"),
    ("empty file", "test.jsonl", b"", r"test.jsonl \(split test\): the split has no rows"),
    ("blank-only file", "test.jsonl", b"\n\n  \n", r"the split has no rows"),
    ("header-only csv", "test.csv", CSV_HEADER.encode(), r"test.csv \(split test\): the split has no rows"),
    ("empty csv cell", "test.csv", (CSV_HEADER + CSV_ROWS + '"주장이다.",\n').encode(),
     r"test.csv \(split test\) row 4: column 'target' is empty"),
    ("ragged csv", "test.csv", (CSV_HEADER + CSV_ROWS[:-1] + ',"덧붙인 칸"\n').encode(),
     r"test.csv \(split test\) row 3 \(line 4\): 3 fields where the header has 2"),
    ("missing column", "test.jsonl", (GOOD[0] + '\n{"input": "주장"}\n').encode(),
     r"test.jsonl \(split test\) row 2: column 'target' is missing"),
    ("non-string value", "test.jsonl", (GOOD[0] + '\n{"input": "주장", "target": ["a"]}\n').encode(),
     r"test.jsonl \(split test\) row 2: column 'target' must be a string, got list"),
    ("not an object", "test.jsonl", (GOOD[0] + '\n["주장", "질문"]\n').encode(),
     r"test.jsonl \(split test\) row 2: expected an object"),
])
def test_input_files_people_produce(tmp_path, capsys, name, filename, content, expected):
    """Through the CLI as a user meets it: the test split is the case, train and validation are good files."""
    for split in ("train", "validation"):
        write_jsonl(tmp_path / f"{split}.jsonl", korean_rows(3))
    (tmp_path / filename).write_bytes(content)
    code = main(["data", "check", f"data.source={tmp_path}"])
    out, err = capsys.readouterr()
    if isinstance(expected, int):
        assert code == 0 and f"test       {expected:>7} rows" in out, (name, err)
        rows = data.load_split(DataConfig(source=str(tmp_path)), "test")
        assert [row["target"] for row in rows] == [r["target"] for r in korean_rows(expected)], name
    else:  # data check lists the bad row; a run stops on it with the same message
        assert code == 2, name
        assert err.count("\n") == 1 and err.startswith("error: "), err
        assert re.search(expected, out), out
        with pytest.raises(DataError, match=expected):
            data.load_split(DataConfig(source=str(tmp_path)), "test")


def test_bad_test_split_fails_train_before_any_model_loads(tmp_path, capsys, monkeypatch):
    """train validates the test split too: a bad test row must not cost a training run."""
    from pipeline import models, sources

    for split in data.SPLITS:
        write_jsonl(tmp_path / f"{split}.jsonl", korean_rows(4))
    (tmp_path / "test.jsonl").write_bytes(b'{"input": "\xc3\x28", "target": "x"}\n')
    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    monkeypatch.setattr(sources, "model_source", lambda *a, **k: pytest.fail("the model was resolved"))
    assert main(["train", f"data.source={tmp_path}", f"output.dir={tmp_path / 'out'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "test.jsonl (split test) line 1: not valid UTF-8" in err[-1]
    assert not (tmp_path / "out" / "train").exists()


def test_data_check_names_every_bad_row_with_its_full_message(tmp_path, capsys):
    """A missing column at row 5 no longer hides the broken JSON at row 10, nor an empty target after it."""
    for split in ("train", "validation"):
        write_jsonl(tmp_path / f"{split}.jsonl", korean_rows(3))
    path = bad_jsonl(tmp_path, lambda rows, lines: (
        lines.__setitem__(4, json.dumps({"input": rows[4]["input"]}, ensure_ascii=False)),
        lines.__setitem__(6, json.dumps({**rows[6], "target": " "}, ensure_ascii=False)),
        lines.append('{"input": "잘린 줄'), lines.extend(json.dumps(r, ensure_ascii=False) for r in korean_rows(2))))
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[9] == '{"input": "잘린 줄'  # row 10
    assert main(["data", "check", f"data.source={tmp_path}"]) == 2
    out, err = capsys.readouterr()
    listed = [line.strip() for line in out.splitlines() if str(path) in line]
    assert listed == [f"{path} (split test) row 5: column 'target' is missing (columns: input; set "
                      "data.input_column / target_column / label_column)",
                      f"{path} (split test) row 7: column 'target' is empty or whitespace only",
                      f"{path} (split test) row 10: malformed JSON: Unterminated string starting at: line 1 column "
                      f"11 (char 10)"]
    assert "test: 3 bad rows" in out and f"test       {len(lines) - 3:>7} rows" in out
    assert err == "error: 3 bad rows (listed above)\n"
    # a run stops at the first, naming file and row
    with pytest.raises(DataError, match=r"test.jsonl \(split test\) row 5: column 'target' is missing"):
        data.load_split(DataConfig(source=str(tmp_path)), "test")


def test_data_check_lists_twenty_bad_rows_and_counts_the_rest(tmp_path, capsys):
    for split in ("train", "validation"):
        write_jsonl(tmp_path / f"{split}.jsonl", korean_rows(3))
    (tmp_path / "test.jsonl").write_text("".join('{"input": "x"}\n' for _ in range(25)), encoding="utf-8")
    assert main(["data", "check", f"data.source={tmp_path}"]) == 2
    out, err = capsys.readouterr()
    assert [n for n in range(1, 26) if f"row {n}: column 'target' is missing" in out] == list(range(1, 21))
    assert "  and 5 more" in out and err == "error: 25 bad rows (listed above)\n"


# --- the rows a run uses: data.max_<split>_samples chosen by data.sample --------------------------------------

TYPE_COUNTS = {"가정 살펴보기": 45, "이유와 근거 묻기": 30, "함의와 결과 따져보기": 17, "다른 관점 생각하기": 8}


def typed_split(tmp_path, counts=TYPE_COUNTS):
    """A test split with `counts` rows per question type, ordered by type (the case `first` misrepresents)."""
    rows = [{"input": f"{label} 주장 {i}.", "target": f"({label}) 질문 {i}?"}
            for label, n in counts.items() for i in range(n)]
    write_jsonl(tmp_path / "test.jsonl", rows)
    return rows


def sampled(tmp_path, **keys):
    return data.sample_split(DataConfig(source=str(tmp_path), max_test_samples=10, **keys), "test")


def test_stratified_keeps_the_type_proportions_by_largest_remainder(tmp_path):
    typed_split(tmp_path)
    rows = sampled(tmp_path, sample="stratified")
    # quotas 4.5, 3.0, 1.7, 0.8: floors 4, 3, 1, 0; the two rows left go to the largest remainders (0.8, 0.7)
    assert data.label_counts(rows) == {"가정 살펴보기": 4, "이유와 근거 묻기": 3, "함의와 결과 따져보기": 2,
                                       "다른 관점 생각하기": 1}
    ids = [row["id"] for row in rows]
    assert ids == sorted(ids, key=lambda i: int(i.split(":")[1])) and len(set(ids)) == 10  # the split's order
    assert [row["id"] for row in sampled(tmp_path, sample="stratified")] == ids
    assert [row["id"] for row in sampled(tmp_path, sample="stratified", sample_seed=1)] != ids
    assert data.label_counts(sampled(tmp_path, sample="stratified", sample_seed=1)) == data.label_counts(rows)
    assert [row["id"] for row in sampled(tmp_path)] == [f"test:{i}" for i in range(10)]  # first: all one type


def test_stratified_gives_every_type_a_row_taken_from_the_type_most_over_its_quota(tmp_path):
    typed_split(tmp_path, {"A": 60, "B": 37, "C": 3})
    # quotas 6.0, 3.7, 0.3: 6, 4, 0 by largest remainder; C's row comes from B (4 - 3.7 over its quota, A 0)
    assert data.label_counts(sampled(tmp_path, sample="stratified")) == {"A": 6, "B": 3, "C": 1}
    typed_split(tmp_path, {f"T{i}": 5 for i in range(11)})
    with pytest.raises(ConfigError, match=r"data.max_test_samples: 10 rows cannot hold one of each of the 11 "):
        sampled(tmp_path, sample="stratified")


def test_random_is_a_seeded_uniform_sample_in_the_splits_order(tmp_path):
    typed_split(tmp_path)
    rows = sampled(tmp_path, sample="random")
    ids = [row["id"] for row in rows]
    assert len(set(ids)) == 10 and ids == sorted(ids, key=lambda i: int(i.split(":")[1]))
    assert [row["id"] for row in sampled(tmp_path, sample="random")] == ids
    assert [row["id"] for row in sampled(tmp_path, sample="random", sample_seed=7)] != ids
    # a larger sample keeps every row of a smaller one (rows are ranked once by seed and id)
    larger = data.sample_split(DataConfig(source=str(tmp_path), max_test_samples=30, sample="random"), "test")
    assert set(ids) <= {row["id"] for row in larger}
    # no limit, or one the split does not reach: the whole split, whatever data.sample says
    whole = data.load_split(DataConfig(source=str(tmp_path)), "test")
    assert data.sample_split(DataConfig(source=str(tmp_path), sample="stratified"), "test") == whole
    assert data.sample_split(DataConfig(source=str(tmp_path), max_test_samples=500, sample="random"), "test") == whole


def test_another_sample_is_another_stage_input_and_first_keeps_todays_hashes(tmp_path):
    """The rows enter the train and generate stages' hashes by content (data.fingerprint): a stratified subset
    is never taken for the first-N one. `first` reproduces the committed baseline's test set hash."""
    import dataclasses

    from pipeline import identity
    from pipeline.stage import StageRecord

    write_jsonl(tmp_path / "train.jsonl", typed_split(tmp_path))
    write_jsonl(tmp_path / "validation.jsonl", korean_rows(3))
    cfg = load_config(None, [f"data.source={tmp_path}", "data.max_train_samples=10"])
    hashes = {}
    for how in ("first", "stratified", "random"):
        changed = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, sample=how))
        splits = data.load_splits(changed.data, None, ("train", "validation"))
        inputs = identity.train_inputs(changed, data.fingerprint(splits["train"]),
                                       data.fingerprint(splits["validation"]), {"sha256": "the same model"})
        hashes[how] = StageRecord("train", tmp_path / "out", inputs).digest
    assert len(set(hashes.values())) == 3
    assert data.fingerprint(sampled(tmp_path)) != data.fingerprint(sampled(tmp_path, sample="stratified"))
    baseline = json.loads((ROOT / "examples/baseline-report.json").read_text(encoding="utf-8"))
    demo = load_config(ROOT / "configs/demo.yaml").data
    assert demo.sample == "first"
    assert data.fingerprint(data.load_splits(demo, None, ("test",))["test"]) == baseline["test_set"]


def test_data_check_prints_the_subset_next_to_the_split(capsys):
    assert main(["data", "check", "--config", str(ROOT / "configs/demo.yaml"), "data.max_test_samples=10",
                 "data.sample=stratified"]) == 0
    lines = capsys.readouterr().out.splitlines()
    split_line = next(line for line in lines if line.startswith("test "))
    used = lines[lines.index(split_line) + 1]
    # the demo test split: 16, 15, 13, 9, 7 -> quotas 2.67, 2.5, 2.17, 1.5, 1.17 -> 3, 3, 2, 1, 1
    assert split_line.split("rows")[1].strip() == ("이유와 근거 묻기 16, 의미 명확히 하기 15, 함의와 결과 따져보기 13, "
                                                  "다른 관점 생각하기 9, 가정 살펴보기 7")
    assert used.split("rows")[1].strip() == ("이유와 근거 묻기 3, 의미 명확히 하기 3, 함의와 결과 따져보기 2, 다른 관점 생각하기 1, "
                                            "가정 살펴보기 1   (data.max_test_samples, data.sample=stratified, "
                                            "data.sample_seed=0)")
    assert used.startswith("  used") and " 10 rows" in used
    assert sum(line.startswith("  used") for line in lines) == 1  # the other splits are used whole
