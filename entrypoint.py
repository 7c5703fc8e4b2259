"""Command line of the job: each command maps to one stage function.

    python entrypoint.py config show --config configs/demo.yaml train.learning_rate=2e-4
    python entrypoint.py data check --config configs/demo.yaml
    python entrypoint.py model fetch --config configs/demo.yaml
    python entrypoint.py run --config configs/demo.yaml          # train -> generate -> score
    python entrypoint.py export --config configs/demo.yaml --out merged/   # the adapter merged, proven equal
    python entrypoint.py compare --baseline A.json --candidate B.json --max-drop rougeL=0.01,bleu=0.5

Errors a user can cause print one line and exit 2 (config/data) or 3 (model/resource, out of memory); anything
unexpected prints one line and exits 4, with the traceback in <output.dir>/job.log; exit 1 means only "compare
found a regression" or "export's merged model differs from base + adapter". See README "Exit codes". Heavy
imports (torch, transformers) happen inside commands so that --help and config errors are instant.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

import click
import yaml

from pipeline.config import Config, load_config, to_dict
from pipeline.errors import Stopped, UserError, first_line

log = logging.getLogger("entrypoint")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
job_log: Path | None = None  # this process's log file, once a command knows its output dir


def load_job_config(config_path: str | None, overrides: tuple[str, ...]) -> Config:
    """The config of a stage command; from here on the log also goes to <output.dir>/job.log (one file per
    process under torchrun: job.rank<N>.log), where an internal error's traceback is written too."""
    global job_log
    cfg = load_config(config_path, overrides)
    rank = os.environ.get("RANK", "0")
    path = Path(cfg.output.dir) / ("job.log" if rank == "0" else f"job.rank{rank}.log")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path, encoding="utf-8")
    except OSError as exc:
        log.warning("cannot write the job log %s (%s); logging to stderr only", path, exc.strerror)
        return cfg
    handler.setFormatter(logging.Formatter(LOG_FORMAT, datefmt="%Y-%m-%d %H:%M:%S"))
    handler.set_name("job-log")
    logging.getLogger().addHandler(handler)
    job_log = path
    return cfg


def config_args(command):
    """--config PATH plus any number of dotted overrides (section.key=value) as arguments."""
    command = click.argument("overrides", nargs=-1, metavar="[SECTION.KEY=VALUE]...")(command)
    return click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
                        help="YAML config; without it the built-in defaults (the embedded demo) apply.")(command)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def cli(verbose: bool) -> None:
    """LoRA fine-tuning of Gemma 3 on Korean Socratic questions, with an offline evaluation harness."""
    logging.basicConfig(format=LOG_FORMAT, datefmt="%H:%M:%S")
    logging.getLogger().setLevel(logging.DEBUG if verbose else logging.INFO)


@cli.group("config")
def config_group() -> None:
    """Inspect the resolved configuration."""


@config_group.command("show")
@config_args
def config_show(config_path: str | None, overrides: tuple[str, ...]) -> None:
    """Print the resolved config (file + overrides) as YAML, once it passes every check a stage makes before it
    reads data or loads a model: types and ranges, the training settings transformers/TRL would reject, the model
    folder and the adapter folders it names."""
    cfg = load_config(config_path, overrides)
    preflight(cfg)
    click.echo(yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True), nl=False)


def preflight(cfg: Config) -> None:
    from pipeline import adapters, sources
    from pipeline.train import training_arguments

    training_arguments(cfg, Path(cfg.output.dir) / "train" / "checkpoints")
    if sources.source_kind(cfg.model.source) == "local":
        sources.model_source(cfg.model)  # checks the folder (not the Hub, nor converting the embedded model)
    for adapter in adapters.configured(cfg):
        adapters.check_files(adapter)


@cli.group("data")
def data_group() -> None:
    """Validate datasets."""


@data_group.command("check")
@config_args
def data_check(config_path: str | None, overrides: tuple[str, ...]) -> None:
    """Validate every split and print its size and question-type counts."""
    from pipeline import data, sources

    cfg = load_config(config_path, overrides)
    splits = data.load_splits(cfg.data, sources.hf_token(cfg.model))
    for split, rows in splits.items():
        counts = ", ".join(f"{label} {n}" for label, n in data.label_counts(rows).most_common())
        click.echo(f"{split:<10} {len(rows):>7} rows   {counts}")
    data.warn_on_overlap(splits)


@cli.group("model")
def model_group() -> None:
    """Prepare model sources."""


@model_group.command("fetch")
@config_args
def model_fetch(config_path: str | None, overrides: tuple[str, ...]) -> None:
    """Make model.source loadable: convert the embedded model once (then reuse it); check a local folder and load
    its tokenizer; resolve a Hub id's revision to its commit and download its config and tokenizer (the weights
    download when a stage first loads the model)."""
    from pipeline import identity, models, sources

    cfg = load_config(config_path, overrides)
    started = time.perf_counter()
    source, where = sources.model_source(cfg.model), ""
    if source.kind != "embedded":
        if source.kind == "hub":
            source = identity.pinned(source, identity.model_identity(source, sources.cache_root(cfg.model)))
            where = f" at commit {source.revision}"
        models.load_tokenizer(cfg.model, source)
    click.echo(f"model ready: {source}{where} ({time.perf_counter() - started:.1f} s)")


@cli.command("train")
@config_args
def train_command(config_path: str | None, overrides: tuple[str, ...]) -> None:
    """LoRA fine-tuning -> <output.dir>/train (adapter, checkpoints, train_summary.json). Resumes if interrupted."""
    from pipeline.train import train

    cfg = load_job_config(config_path, overrides)
    if cfg.model.adapter:
        raise UserError("model.adapter is set: there is nothing to train (generate and score evaluate that adapter)")
    stage_dir = train(cfg, Path(cfg.output.dir))
    click.echo(f"train: {stage_dir / 'train_summary.json'}")


@cli.command("generate")
@config_args
def generate_command(config_path: str | None, overrides: tuple[str, ...]) -> None:
    """Base and tuned predictions for the test split -> <output.dir>/generate/predictions.jsonl. Resumable."""
    from pipeline.generate import generate

    cfg = load_job_config(config_path, overrides)
    stage_dir = generate(cfg, Path(cfg.output.dir))
    if is_main_process():
        click.echo(f"generate: {stage_dir / 'predictions.jsonl'}")


@cli.command("score")
@config_args
def score_command(config_path: str | None, overrides: tuple[str, ...]) -> None:
    """predictions.jsonl -> <output.dir>/report.json, report.md, report.png; the trained adapter's model card."""
    from eval.card import write_adapter_card
    from eval.score import score

    cfg = load_job_config(config_path, overrides)
    report_path = score(cfg, Path(cfg.output.dir))
    write_adapter_card(cfg, Path(cfg.output.dir))
    for warning in json.loads(report_path.read_text(encoding="utf-8")).get("warnings", ()):
        click.echo(f"WARNING: {warning['message']}")
    click.echo(f"report: {report_path}")


@cli.command("run")
@config_args
def run_command(config_path: str | None, overrides: tuple[str, ...]) -> None:
    """train -> generate -> score in one output directory (with model.adapter: generate -> score, no training).
    Finished stages with the same config are skipped, so rerunning after a crash continues where it stopped."""
    from eval.report import summary_table
    from eval.card import write_adapter_card
    from eval.score import score
    from pipeline.generate import generate
    from pipeline.train import train

    cfg = load_job_config(config_path, overrides)
    output_dir = Path(cfg.output.dir)
    if cfg.model.adapter:
        log.info("run: evaluating model.adapter=%s as the tuned model; no training", cfg.model.adapter)
    else:
        train(cfg, output_dir)
    generate(cfg, output_dir)
    if not is_main_process():  # under accelerate launch / torchrun, one process scores
        return
    report_path = score(cfg, output_dir)
    write_adapter_card(cfg, output_dir)
    click.echo(summary_table(json.loads(report_path.read_text(encoding="utf-8"))))
    click.echo(f"report: {report_path.resolve()}")


@cli.command("export")
@click.option("--adapter", "adapter_path", default=None,
              help="The adapter to merge (as model.adapter); default: model.adapter, else <output.dir>/train/adapter.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True,
              help="A new or empty folder for the merged model; never overwritten.")
@config_args
def export_command(config_path: str | None, overrides: tuple[str, ...], adapter_path: str | None,
                   out_dir: str) -> None:
    """The adapter merged into the base model -> --out DIR (safetensors, tokenizer, generation config, card), kept
    only if it generates the first export.check_rows test rows as base + adapter does (exit 1 otherwise, and
    nothing at DIR)."""
    import dataclasses

    from eval.card import evidence
    from pipeline.export import export

    cfg = load_job_config(config_path, overrides)
    if adapter_path:
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, adapter=adapter_path))
    results, train = evidence(cfg, Path(cfg.output.dir))  # the card carries what score measured, if about it
    click.echo(f"export: {export(cfg, Path(out_dir), Path(cfg.output.dir), results, train)}")


@cli.command("compare")
@click.option("--baseline", type=click.Path(exists=True, dir_okay=False), required=True, help="report.json to hold.")
@click.option("--candidate", type=click.Path(exists=True, dir_okay=False), required=True, help="report.json to check.")
@click.option("--max-drop", default=None, help="Allowed drop (rise, for failure rates) per metric, e.g. "
              "rougeL=0.01,bleu=0.5,empty_rate=0.02.")
@click.option("--max-drop-per-type", default=None, help="Allowed drop per metric within each question type of at "
              "least --min-type-rows rows, e.g. rougeL=0.05 (same form as --max-drop; either or both).")
@click.option("--min-type-rows", type=int, default=30, show_default=True,
              help="Question types with fewer rows are shown as too few to judge and not gated.")
@click.option("--model", default="tuned", show_default=True, help="The model of both reports to gate.")
@click.option("--baseline-predictions", type=click.Path(exists=True, dir_okay=False), default=None,
              help="The baseline's predictions.jsonl, when it is not where its report says.")
@click.option("--rule", type=click.Choice(["point", "significant", "non-inferior"]), default="point",
              show_default=True, help="point: fail when the drop exceeds the limit; significant: also only when the "
              "95% interval excludes zero; non-inferior: pass only when the interval shows the drop within the limit.")
@click.option("--unpaired", is_flag=True, help="Do not pair the rows (no intervals; --rule point only).")
@click.option("--allow-different-data", is_flag=True,
              help="Compare reports made on different test rows or metric settings (said in the table).")
@click.option("--require-improvement", is_flag=True,
              help="Also fail unless the candidate model beats its base with p < 0.05 on these metrics.")
@click.option("--regression-threshold", type=float, default=0.05, show_default=True,
              help="A paired row regressed (improved) when its ROUGE-L fell (rose) by more than this.")
@click.option("--fail-on-warnings", is_flag=True, help="Also fail (exit 1) when the candidate report warns about "
              "the model: outputs identical to the reference model's (score.identical_warning), or one repeated text.")
@click.option("--format", "output_format", type=click.Choice(["text", "markdown"]), default="text",
              show_default=True, help="markdown: a table for $GITHUB_STEP_SUMMARY or a pull request.")
@click.option("--html", "html_path", type=click.Path(dir_okay=False), default=None,
              help="Also write compare.html here: the checks, the per-type checks and the worst regressed rows.")
def compare_command(baseline: str, candidate: str, max_drop: str | None, max_drop_per_type: str | None,
                    min_type_rows: int, model: str, baseline_predictions: str | None, rule: str, unpaired: bool,
                    allow_different_data: bool, require_improvement: bool, regression_threshold: float,
                    fail_on_warnings: bool, output_format: str, html_path: str | None) -> None:
    """Regression gate for CI: exit 0 when nothing got worse beyond its limit (overall, and per question type with
    --max-drop-per-type) and, with --fail-on-warnings, the candidate report has no warning about the model; 1 with a
    table otherwise, 2 when the reports cannot be compared (other test rows or
    metric settings, an unreadable schema version) or an option is wrong."""
    from eval.compare import compare, parse_max_drop
    from eval.verdict import compare_html, format_verdict
    from pipeline.atomic import write_text_atomic

    verdict = compare(Path(baseline), Path(candidate), parse_max_drop(max_drop) if max_drop is not None else {},
                      model=model, rule=rule, require_improvement=require_improvement, unpaired=unpaired,
                      baseline_predictions=Path(baseline_predictions) if baseline_predictions else None,
                      allow_different_data=allow_different_data,
                      max_drop_per_type=(parse_max_drop(max_drop_per_type, "--max-drop-per-type")
                                         if max_drop_per_type is not None else {}),
                      min_type_rows=min_type_rows, regression_threshold=regression_threshold,
                      fail_on_warnings=fail_on_warnings)
    click.echo(format_verdict(verdict, markdown=output_format == "markdown"))
    if html_path:
        Path(html_path).parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(Path(html_path), compare_html(verdict))
        click.echo(f"compare.html: {html_path}", err=True)
    if not verdict.passed:
        raise RegressionFound()


def is_main_process() -> bool:
    from pipeline.runtime import process_state

    return process_state().is_main_process


class RegressionFound(UserError):
    exit_code = 1

    def __init__(self):
        super().__init__("the candidate regressed (table above)")


def main(argv: list[str] | None = None) -> int:
    from pipeline.signals import install_stop_handlers

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    install_stop_handlers()  # first: a stop during loading, converting or scoring must not wait for SIGKILL
    try:
        return run_cli(argv)
    finally:  # one job log per command, and the caller's handlers back (tests call main() many times)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        global job_log
        job_log = None
        for handler in [h for h in logging.getLogger().handlers if h.get_name() == "job-log"]:
            logging.getLogger().removeHandler(handler)
            handler.close()


def run_cli(argv: list[str] | None) -> int:
    try:
        cli.main(args=argv, prog_name="entrypoint.py", standalone_mode=False)
    except UserError as exc:
        click.echo(f"error: {exc}", err=True)
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except Stopped as exc:  # a signal outside a stage's safe points, or a second one inside them
        click.echo(f"interrupted: {exc}", err=True)
        return exc.exit_code
    except (click.exceptions.Abort, KeyboardInterrupt):  # Ctrl-C where our handler is not installed
        click.echo("interrupted; finished outputs are kept: rerun the same command to resume", err=True)
        return 130
    except Exception as exc:  # never exit 1 ("regression") for a crash: 3 for out of memory, 4 for anything else
        from pipeline.errors import is_out_of_memory

        where = record_traceback()
        if is_out_of_memory(exc):
            click.echo(f"error: out of memory ({first_line(exc)}); lower the batch size of the stage that ran "
                       f"(train.per_device_train_batch_size or generate.batch_size, or auto); details in {where}",
                       err=True)
            return 3
        click.echo(f"error: internal error: {type(exc).__name__}: {first_line(exc)} (the traceback is in {where}; "
                   "finished outputs are kept)", err=True)
        return 4
    return 0


def record_traceback() -> Path:
    """Appends the current exception's traceback to the job log (or a new file in the temp dir); its path."""
    text = traceback.format_exc()
    if job_log is not None:
        try:
            with job_log.open("a", encoding="utf-8") as handle:
                handle.write(text)
            return job_log
        except OSError:
            pass
    with tempfile.NamedTemporaryFile("w", prefix="socratic-lora-error-", suffix=".log", delete=False,
                                     encoding="utf-8") as handle:
        handle.write(text)
    return Path(handle.name)


if __name__ == "__main__":
    sys.exit(main())
