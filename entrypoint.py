"""Command line of the job: each command maps to one stage function.

    python entrypoint.py config show --config configs/demo.yaml train.learning_rate=2e-4
    python entrypoint.py data check --config configs/demo.yaml
    python entrypoint.py model fetch --config configs/demo.yaml
    python entrypoint.py run --config configs/demo.yaml          # train -> generate -> score
    python entrypoint.py export --config configs/demo.yaml --out outputs/merged   # the adapter merged, proven equal
    python entrypoint.py compare --baseline A.json --candidate B.json --max-drop rougeL=0.01,bleu=0.5
    python entrypoint.py gate plan --baseline A.json --max-drop rougeL=0.01    # the rows that limit needs

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

from eval.gate_spec import RULES, GateSpec, parse_kinds, parse_limits
from pipeline.config import Config, load_config, output_dir_of, to_yaml
from pipeline.errors import ConfigError, DataError, Stopped, UserError, first_line

log = logging.getLogger("entrypoint")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
job_log: Path | None = None  # this process's log file, once a command knows its output dir


def load_job_config(config_path: str | None, overrides: tuple[str, ...]) -> Config:
    """The config of a stage command; from here on the log also goes to <output.dir>/job.log (one file per
    process under torchrun: job.rank<N>.log), where an internal error's traceback is written too. A config that
    fails its checks still opens the log in the output.dir it names (or the default's), so that its error is
    there too; one whose output.dir cannot be read (unreadable YAML, output.dir not text) only reaches stderr."""
    try:
        cfg = load_config(config_path, overrides)
    except ConfigError:
        output_dir = output_dir_of(config_path, overrides)
        if output_dir is not None:
            open_job_log(Path(output_dir))
        raise
    open_job_log(Path(cfg.output.dir))
    return cfg


def open_job_log(output_dir: Path) -> None:
    global job_log
    rank = os.environ.get("RANK", "0")
    path = output_dir / ("job.log" if rank == "0" else f"job.rank{rank}.log")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path, encoding="utf-8")
    except OSError as exc:
        log.warning("cannot write the job log %s (%s); logging to stderr only", path, exc.strerror)
        return
    handler.setFormatter(logging.Formatter(LOG_FORMAT, datefmt="%Y-%m-%d %H:%M:%S"))
    handler.set_name("job-log")
    logging.getLogger().addHandler(handler)
    job_log = path


def log_to_job_log(message: str) -> None:
    """An error line in the job log only (stderr has it already): in a batch job the log file is what is kept."""
    for handler in logging.getLogger().handlers:
        if handler.get_name() == "job-log":
            handler.handle(log.makeRecord(log.name, logging.ERROR, __file__, 0, message, None, None))


def config_args(command):
    """--config PATH plus any number of dotted overrides (section.key=value) as arguments."""
    command = click.argument("overrides", nargs=-1, metavar="[SECTION.KEY=VALUE]...")(command)
    return click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
                        help="YAML config; without it the built-in defaults apply: configs/demo.yaml's values "
                             "(the embedded demo).")(command)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def cli(verbose: bool) -> None:
    """LoRA fine-tuning of Gemma 3 on Korean Socratic questions, with an offline evaluation harness."""
    logging.basicConfig(format=LOG_FORMAT, datefmt="%H:%M:%S")
    logging.getLogger().setLevel(logging.DEBUG if verbose else logging.INFO)


@cli.group("config")
def config_group() -> None:
    """Inspect the resolved configuration."""


@config_group.command("show", short_help="Print the resolved config as YAML, once it passes a stage's checks.")
@config_args
def config_show(config_path: str | None, overrides: tuple[str, ...]) -> None:
    """Print the resolved config (file + overrides) as YAML, once it passes the checks a stage makes before it
    reads data or loads a model: types and ranges, the optimizer and scheduler names of the installed
    transformers, the model folder and the adapter folders it names. Combinations of training settings only TRL
    judges are checked by the train stage, in seconds, before its model loads: building TRL's arguments imports
    torch and transformers (~4.5 s), which this command does not."""
    cfg = load_config(config_path, overrides)
    preflight(cfg)
    click.echo(to_yaml(cfg), nl=False)


def preflight(cfg: Config) -> None:
    from pipeline import adapters, sources

    if sources.source_kind(cfg.model.source) == "local":
        sources.model_source(cfg.model)  # checks the folder (not the Hub, nor converting the embedded model)
    for adapter in adapters.configured(cfg):
        adapters.check_files(adapter)


@cli.group("data")
def data_group() -> None:
    """Validate datasets."""


@data_group.command("check", short_help="Validate every split; its size and question types, and the run's subset.")
@config_args
def data_check(config_path: str | None, overrides: tuple[str, ...]) -> None:
    """Validate every row of every split and print each split's size and question-type counts, and next to them
    the subset a run uses (data.max_<split>_samples rows chosen by data.sample). Every bad row is listed (the
    first 20 of a split, then how many more); any makes the exit code 2."""
    from pipeline import data, sources

    cfg = load_config(config_path, overrides)
    token, splits, bad = sources.hf_token(cfg.model), {}, 0
    for split in data.SPLITS:
        rows, problems = data.check_split(cfg.data, split, token)
        if rows:
            counts = data.label_counts(rows)
            click.echo(f"{split:<10} {len(rows):>7} rows   {type_counts(counts, counts)}")
        if problems:
            bad += len(problems)
            click.echo(f"{split}: {len(problems)} bad row{'s' * (len(problems) != 1)}")
            for problem in problems[:LISTED_PROBLEMS]:
                click.echo(f"  {problem}")
            if len(problems) > LISTED_PROBLEMS:
                click.echo(f"  and {len(problems) - LISTED_PROBLEMS} more")
            continue
        used = data.subset(cfg.data, split, rows)
        if len(used) < len(rows):
            click.echo(f"{'  used':<10} {len(used):>7} rows   {type_counts(data.label_counts(used), counts)}   "
                       f"(data.max_{split}_samples, data.sample={cfg.data.sample}"
                       + (f", data.sample_seed={cfg.data.sample_seed})" if cfg.data.sample != "first" else ")"))
        splits[split] = used
    if bad:
        raise DataError(f"{bad} bad row{'s' * (bad != 1)} (listed above)")
    data.warn_on_overlap(splits)


LISTED_PROBLEMS = 20  # bad rows listed per split; the rest are counted


def type_counts(counts, order) -> str:
    """'type n, type n, ...' in the order of `order`'s most common types (a type `counts` lacks shows 0)."""
    return ", ".join(f"{label} {counts[label]}" for label, _ in order.most_common())


@cli.group("model")
def model_group() -> None:
    """Prepare model sources."""


@model_group.command("fetch", short_help="Make model.source loadable: convert, check or download it.")
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


@cli.command("train", short_help="LoRA fine-tuning -> <output.dir>/train. Resumes if interrupted.")
@config_args
def train_command(config_path: str | None, overrides: tuple[str, ...]) -> None:
    """LoRA fine-tuning -> <output.dir>/train (adapter, checkpoints, train_summary.json). Resumes if interrupted."""
    from pipeline.train import train

    cfg = load_job_config(config_path, overrides)
    if cfg.model.adapter:
        raise UserError("model.adapter is set: there is nothing to train (generate and score evaluate that adapter)")
    stage_dir = train(cfg, Path(cfg.output.dir))
    click.echo(f"train: {stage_dir / 'train_summary.json'}")


@cli.command("generate", short_help="Base and tuned predictions for the test split. Resumable.")
@config_args
def generate_command(config_path: str | None, overrides: tuple[str, ...]) -> None:
    """Base and tuned predictions for the test split -> <output.dir>/generate/predictions.jsonl. Resumable."""
    from pipeline.generate import generate

    cfg = load_job_config(config_path, overrides)
    stage_dir = generate(cfg, Path(cfg.output.dir))
    if is_main_process():
        click.echo(f"generate: {stage_dir / 'predictions.jsonl'}")


@cli.command("score", short_help="predictions.jsonl -> report.json, report.md, report.png.")
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


@cli.command("run", short_help="train -> generate -> score in one output directory.")
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
    # Last, where the summary above came from and where to read the rest: report.html in a browser.
    report_path = report_path.resolve()
    click.echo(f"report: {report_path}")
    for name, use in (("report.html", "  (open in a browser)"), ("report.md", ""), ("report.png", "")):
        if (report_path.parent / name).is_file():
            click.echo(f"{'':8}{report_path.parent / name}{use}")


@cli.command("export", short_help="The adapter merged into the base model, kept if proven equal.")
@click.option("--adapter", "adapter_path", default=None,
              help="The adapter to merge (as model.adapter); default: model.adapter, else <output.dir>/train/adapter.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True,
              help="A new or empty folder for the merged model (e.g. outputs/merged: git ignores outputs/); never "
              "overwritten.")
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


@cli.command("compare", short_help="Regression gate for CI: exit 1 when the candidate got worse.")
@click.option("--baseline", type=click.Path(exists=True, dir_okay=False), required=True, help="report.json to hold.")
@click.option("--candidate", type=click.Path(exists=True, dir_okay=False), required=True, help="report.json to check.")
@click.option("--max-drop", default=None, help="Allowed drop (rise, for failure rates) per metric, e.g. "
              "rougeL=0.01,bleu=0.5,empty_rate=0.02.")
@click.option("--max-drop-per-type", default=None, help="Allowed drop per metric within each question type of at "
              "least --min-type-rows rows, e.g. rougeL=0.05 (same form as --max-drop; either or both).")
@click.option("--min-type-rows", type=int, default=GateSpec.min_type_rows, show_default=True,
              help="Question types with fewer rows are shown as too few to judge and not gated.")
@click.option("--model", default=GateSpec.model, show_default=True, help="The model of both reports to gate.")
@click.option("--baseline-predictions", type=click.Path(exists=True, dir_okay=False), default=None,
              help="The baseline's predictions.jsonl, when it is not where its report says.")
@click.option("--candidate-predictions", type=click.Path(exists=True, dir_okay=False), default=None,
              help="The candidate's predictions.jsonl, when it is not where its report says.")
@click.option("--rule", type=click.Choice(RULES), default=GateSpec.rule, show_default=True,
              help="point: fail when the drop exceeds the limit; significant: also only when the 95% interval "
              "excludes zero; non-inferior: pass only when the interval shows the drop within the limit.")
@click.option("--unpaired", is_flag=True, help="Do not pair the rows (no intervals; --rule point only).")
@click.option("--allow-different-data", is_flag=True,
              help="Compare reports made on different test rows or metric settings (said in the table).")
@click.option("--require-improvement", is_flag=True,
              help=f"Also fail unless the candidate model beats its base with p < {GateSpec.alpha} on these metrics.")
@click.option("--regression-threshold", type=float, default=GateSpec.regression_threshold, show_default=True,
              help="A paired row regressed (improved) when its ROUGE-L fell (rose) by more than this.")
@click.option("--fail-on-warnings", is_flag=True, help="Also fail (exit 1) when the candidate report warns about "
              "the model: outputs identical to the reference model's (score.identical_warning), one repeated text, "
              "type accuracy no better than always answering the majority type, one type for most rows.")
@click.option("--allow-warning", "allowed_warnings", default=None,
              callback=lambda _context, _option, value: parse_kinds(value), help="Warning kinds shown but not failing --fail-on-warnings, e.g. type_collapse,type_accuracy_at_majority.")
@click.option("--require-power", is_flag=True, help="Exit 2 when a limit is below the smallest drop the paired rows "
              "can detect (80% power, one-sided alpha 0.05): the gate would decide on noise.")
@click.option("--format", "output_format", type=click.Choice(["text", "markdown"]), default="text",
              show_default=True, help="markdown: a table for $GITHUB_STEP_SUMMARY or a pull request.")
@click.option("--html", "html_path", type=click.Path(dir_okay=False), default=None,
              help="Also write compare.html here: the checks, the per-type checks and the worst regressed rows.")
def compare_command(baseline: str, candidate: str, output_format: str, html_path: str | None, max_drop: str | None,
                    max_drop_per_type: str | None, baseline_predictions: str | None,
                    candidate_predictions: str | None, **gate) -> None:
    """Regression gate for CI: exit 0 when nothing got worse beyond its limit (overall, and per question type with
    --max-drop-per-type) and, with --fail-on-warnings, the candidate report has no warning about the model; 1 with a
    table and a FAILED line otherwise, 2 when the reports cannot be compared (other test rows or metric settings, an
    unreadable schema version), an option is wrong, or with --require-power a limit is below what the rows detect.
    Every limit is shown with the smallest drop its rows can detect."""
    from eval.compare import compare
    from eval.verdict import compare_html, format_verdict
    from pipeline.atomic import write_text_atomic

    spec = GateSpec(max_drop=parse_limits(max_drop), max_drop_per_type=parse_limits(max_drop_per_type,
                                                                                   "--max-drop-per-type"),
                    baseline_predictions=Path(baseline_predictions) if baseline_predictions else None,
                    candidate_predictions=Path(candidate_predictions) if candidate_predictions else None, **gate)
    verdict = compare(Path(baseline), Path(candidate), spec)
    click.echo(format_verdict(verdict, markdown=output_format == "markdown"))
    if html_path:
        Path(html_path).parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(Path(html_path), compare_html(verdict))
        click.echo(f"compare.html: {html_path}", err=True)
    if not verdict.passed:
        raise RegressionFound()


@cli.group("gate")
def gate_group() -> None:
    """Plan a regression gate before running it."""


@gate_group.command("plan")
@click.option("--baseline", type=click.Path(exists=True, dir_okay=False), required=True,
              help="report.json whose per-row scores give the spread of the changes.")
@click.option("--candidate", type=click.Path(exists=True, dir_okay=False), default=None,
              help="A report of a candidate on the same rows: the spread of candidate minus baseline. Without it: "
              "the baseline's tuned model minus its reference model, likely an upper bound.")
@click.option("--baseline-predictions", type=click.Path(exists=True, dir_okay=False), default=None,
              help="The baseline's predictions.jsonl, when it is not where its report says.")
@click.option("--max-drop", default=None, help="The limits to plan, e.g. rougeL=0.01,bleu=0.5.")
@click.option("--max-drop-per-type", default=None, help="The per-question-type limits to plan, e.g. rougeL=0.05.")
@click.option("--min-type-rows", type=int, default=GateSpec.min_type_rows, show_default=True,
              help="A type with fewer rows is not judged: its split rows needed give it at least this many.")
@click.option("--model", default=GateSpec.model, show_default=True, help="The model gated.")
def gate_plan_command(baseline: str, candidate: str | None, baseline_predictions: str | None, max_drop: str | None,
                      max_drop_per_type: str | None, min_type_rows: int, model: str) -> None:
    """Rows a gate needs: per metric (and per question type), from the spread of per-row changes, the rows at which
    each limit is the smallest drop caught at 80% power (one-sided alpha 0.05). Exit 2 when a report or its
    predictions cannot be read."""
    from eval.plan import format_plan, plan

    spec = GateSpec(max_drop=parse_limits(max_drop), max_drop_per_type=parse_limits(max_drop_per_type,
                                                                                   "--max-drop-per-type"),
                    min_type_rows=min_type_rows, model=model,
                    baseline_predictions=Path(baseline_predictions) if baseline_predictions else None)
    click.echo(format_plan(plan(Path(baseline), Path(candidate) if candidate else None, spec)))


def is_main_process() -> bool:
    from pipeline.runtime import process_state

    return process_state().is_main_process


class RegressionFound(UserError):
    """compare's verdict FAILED: exit 1. Not an error: the verdict line already said what failed."""

    exit_code = 1

    def __init__(self):
        super().__init__("the candidate regressed (the verdict above)")


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
    except RegressionFound as exc:  # the verdict is on stdout; a failed gate is no error line
        return exc.exit_code
    except UserError as exc:
        click.echo(f"error: {exc}", err=True)
        log_to_job_log(f"error: {exc}")
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
