"""make bench, make profile and make gpu-check write into outputs/bench/, which git ignores: a bench run on a clone
leaves `git status` clean, and with it every later report's "dirty" flag. The committed reference runs stay in
bench/. The figures themselves are benchmarks, never asserted; here the cases are canned, to test what main()
makes of them and where it writes."""

import json
import subprocess

import pytest

from bench import run
from conftest import ROOT


def git(*args) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)


def test_the_bench_outputs_are_ignored_by_git_and_the_references_tracked():
    if git("rev-parse", "--is-inside-work-tree").returncode != 0:
        pytest.skip("not a git checkout (a container image)")
    written = [run.OUT / name for name in ("results.json", "profile.txt", "gpu_results.json")]
    ignored = git("check-ignore", *map(str, written)).stdout.splitlines()
    assert sorted(ignored) == sorted(map(str, written))
    tracked = git("ls-files", "bench").stdout.splitlines()
    assert {"bench/results.json", "bench/profile.txt", "bench/gpu_results.json"} <= set(tracked)


def canned_cases():
    """Each case's result as `bench.run --case NAME` prints it: the tutorial 20x slower at generation and 4x at
    training; our two training runs take 10 s, then 8 s."""
    peak, ours_training = {"cpu_rss_gib": 1.5}, iter([10.0, 8.0])

    def run_case(name: str) -> dict:
        if name.startswith("generate"):
            outputs = {f"test:{i}": "같다" if i or name == "generate_ours" else "다르다" for i in range(4)}
            return {"seconds": 120.0 if name == "generate_tutorial" else 6.0, "rows": 48, "outputs": outputs,
                    "peak_memory": peak, **({"batch_size": 48, "tokens_per_second": 200.0} if "ours" in name else {})}
        seconds = 32.0 if name == "train_tutorial" else next(ours_training)
        return {"seconds": seconds, "steps": 8, "examples_per_second": 32 / seconds, "gradient_checkpointing": False,
                "first_loss": 3.0, "last_loss": 2.0, "peak_memory": peak}
    return run_case


@pytest.mark.parametrize("out", [None, "elsewhere"])
def test_bench_writes_its_results_into_out_and_nothing_into_bench(out, tmp_path, monkeypatch, capsys):
    reference = (ROOT / "bench" / "results.json").read_bytes()
    monkeypatch.setattr(run, "OUT", tmp_path / "default")
    monkeypatch.setattr(run, "run_case", canned_cases())
    run.main(["--out", str(tmp_path / out)] if out else [])
    path = (tmp_path / out if out else tmp_path / "default") / "results.json"
    results = json.loads(path.read_text(encoding="utf-8"))
    assert [p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()] == [
        path.relative_to(tmp_path).as_posix()]
    assert (ROOT / "bench" / "results.json").read_bytes() == reference
    assert results["generation"]["speedup"] == pytest.approx(20.0)
    assert results["generation"]["outputs_equal_share"] == 0.75
    assert results["training"]["ours"]["runs_seconds"] == [10.0, 8.0]  # the faster run counts: 4 examples/s
    assert results["training"]["speedup"] == pytest.approx(4.0)
    printed = capsys.readouterr().out
    assert "20.0x" in printed and printed.rstrip().endswith(f"results: {path}")
