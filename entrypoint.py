"""Command line of the job: each command maps to one stage function.

    python entrypoint.py config show --config configs/demo.yaml train.learning_rate=2e-4
    python entrypoint.py data check --config configs/demo.yaml
    python entrypoint.py model fetch --config configs/demo.yaml
    python entrypoint.py run --config configs/demo.yaml          # train -> generate -> score
    python entrypoint.py compare --baseline A.json --candidate B.json --max-drop rougeL=0.01,bleu=0.5

Errors a user can cause print one line and exit 2 (config/data) or 3 (model/resource); see README "Exit codes".
Heavy imports (torch, transformers) happen inside commands so that --help and config errors are instant.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import click
import yaml

from pipeline.config import load_config, to_dict
from pipeline.errors import DataError, UserError

log = logging.getLogger("entrypoint")


def config_args(command):
    """--config PATH plus any number of dotted overrides (section.key=value) as arguments."""
    command = click.argument("overrides", nargs=-1, metavar="[SECTION.KEY=VALUE]...")(command)
    return click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
                        help="YAML config; without it the built-in defaults (the embedded demo) apply.")(command)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def cli(verbose: bool) -> None:
    """LoRA fine-tuning of Gemma 3 on Korean Socratic questions, with an offline evaluation harness."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


@cli.group("config")
def config_group() -> None:
    """Inspect the resolved configuration."""


@config_group.command("show")
@config_args
def config_show(config_path: str | None, overrides: tuple[str, ...]) -> None:
    """Print the resolved config (file + overrides) as YAML."""
    cfg = load_config(config_path, overrides)
    click.echo(yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True), nl=False)


@cli.group("data")
def data_group() -> None:
    """Validate datasets."""


@data_group.command("check")
@config_args
def data_check(config_path: str | None, overrides: tuple[str, ...]) -> None:
    """Validate every split and print its size and question-type counts."""
    from pipeline import data, models

    cfg = load_config(config_path, overrides)
    token = models.hf_token(cfg.model)
    splits = {split: data.load_split(cfg.data, split, token) for split in data.SPLITS}
    for split, dataset in splits.items():
        counts = ", ".join(f"{label} {n}" for label, n in data.label_counts(dataset).most_common())
        click.echo(f"{split:<10} {len(dataset):>7} rows   {counts}")
    data.warn_on_overlap(splits)


@cli.group("model")
def model_group() -> None:
    """Prepare model sources."""


@model_group.command("fetch")
@config_args
def model_fetch(config_path: str | None, overrides: tuple[str, ...]) -> None:
    """Make model.source loadable: convert the embedded model once (then reuse it), or fetch/check a local or Hub
    model's config and tokenizer."""
    from pipeline import models

    cfg = load_config(config_path, overrides)
    started = time.perf_counter()
    source = models.resolve_source(cfg.model)
    if not cfg.model.source.startswith("embedded:"):
        models.load_tokenizer(cfg.model, source)
    click.echo(f"model ready: {source} ({time.perf_counter() - started:.1f} s)")


@cli.command("train")
@config_args
def train_command(config_path: str | None, overrides: tuple[str, ...]) -> None:
    """LoRA fine-tuning -> <output.dir>/train (adapter, checkpoints, train_summary.json). Resumes if interrupted."""
    from pipeline.train import train

    cfg = load_config(config_path, overrides)
    stage_dir = train(cfg, Path(cfg.output.dir))
    click.echo(f"train: {stage_dir / 'train_summary.json'}")


@cli.command("generate")
@config_args
def generate_command(config_path: str | None, overrides: tuple[str, ...]) -> None:
    """Base and tuned predictions for the test split -> <output.dir>/generate/predictions.jsonl. Resumable."""
    from pipeline.generate import generate

    cfg = load_config(config_path, overrides)
    stage_dir = generate(cfg, Path(cfg.output.dir))
    if is_main_process():
        click.echo(f"generate: {stage_dir / 'predictions.jsonl'}")


@cli.command("score")
@config_args
def score_command(config_path: str | None, overrides: tuple[str, ...]) -> None:
    """predictions.jsonl -> <output.dir>/report.json, report.md, report.png."""
    from eval.score import score

    cfg = load_config(config_path, overrides)
    report_path = score(cfg, Path(cfg.output.dir))
    click.echo(f"report: {report_path}")


@cli.command("run")
@config_args
def run_command(config_path: str | None, overrides: tuple[str, ...]) -> None:
    """train -> generate -> score in one output directory. Finished stages with the same config are skipped,
    so rerunning after a crash continues where it stopped."""
    from eval.report import summary_table
    from eval.score import score
    from pipeline.generate import generate
    from pipeline.train import train

    cfg = load_config(config_path, overrides)
    output_dir = Path(cfg.output.dir)
    train(cfg, output_dir)
    generate(cfg, output_dir)
    if not is_main_process():  # under accelerate launch / torchrun, one process scores
        return
    report_path = score(cfg, output_dir)
    click.echo(summary_table(json.loads(report_path.read_text(encoding="utf-8"))))
    click.echo(f"report: {report_path.resolve()}")


@cli.command("compare")
@click.option("--baseline", type=click.Path(exists=True, dir_okay=False), required=True, help="report.json to hold.")
@click.option("--candidate", type=click.Path(exists=True, dir_okay=False), required=True, help="report.json to check.")
@click.option("--max-drop", required=True, help="Allowed drop per metric, e.g. rougeL=0.01,bleu=0.5.")
@click.option("--require-improvement", is_flag=True,
              help="Also fail unless the candidate's tuned model beats its base with p < 0.05 on these metrics.")
def compare_command(baseline: str, candidate: str, max_drop: str, require_improvement: bool) -> None:
    """Regression gate for CI: exit 0 when nothing dropped more than allowed, 1 with a table otherwise."""
    from eval.compare import compare, format_rows, parse_max_drop

    reports = []
    for path in (baseline, candidate):
        try:
            reports.append(json.loads(Path(path).read_text(encoding="utf-8")))
        except json.JSONDecodeError as exc:
            raise DataError(f"{path} is not a report.json: {exc}") from None
    passed, rows = compare(*reports, parse_max_drop(max_drop), require_improvement)
    click.echo(format_rows(rows))
    if not passed:
        raise RegressionFound()


def is_main_process() -> bool:
    from pipeline.stage import process_state

    return process_state().is_main_process


class RegressionFound(UserError):
    exit_code = 1

    def __init__(self):
        super().__init__("the candidate regressed (table above)")


def main(argv: list[str] | None = None) -> int:
    try:
        cli.main(args=argv, prog_name="entrypoint.py", standalone_mode=False)
    except UserError as exc:
        click.echo(f"error: {exc}", err=True)
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo("interrupted; finished outputs are kept: rerun the same command to resume", err=True)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
