import json

import pytest

from conftest import ROOT, korean_rows, write_jsonl
from entrypoint import main
from pipeline import data
from pipeline.config import DataConfig
from pipeline.errors import DataError

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
            label, question = data.split_label(row["target"])
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
    assert split.column_names == ["id", "input", "target"]
    assert split["id"] == ["test:0", "test:1", "test:2"]
    assert split["input"] == [r["argument"] for r in rows[:3]]


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_csv_and_parquet_directories_load(tmp_path, suffix):
    import pandas as pd

    frame = pd.DataFrame(korean_rows(4))
    for split in data.SPLITS:
        getattr(frame, f"to_{suffix}")(tmp_path / f"{split}.{suffix}", index=False)
    split = data.load_split(DataConfig(source=str(tmp_path)), "validation")
    assert len(split) == 4 and split[0]["target"] == frame.target[0]


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
    with pytest.raises(DataError, match=r"required column 'target' is missing \(columns: input, question"):
        data.load_split(DataConfig(source=str(tmp_path)), "train")


def test_empty_split_and_missing_files(tmp_path):
    write_jsonl(tmp_path / "empty" / "test.jsonl", [])
    with pytest.raises(DataError, match="empty"):
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
    err = capsys.readouterr().err
    assert str(tmp_path / "test.jsonl") in err and "row 7" in err and "'target'" in err


def test_split_label():
    assert data.split_label("(다른 관점 생각하기) 왜요?") == ("다른 관점 생각하기", "왜요?")
    assert data.split_label("라벨 없는 질문?") == (None, "라벨 없는 질문?")
