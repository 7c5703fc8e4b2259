"""The docs (README.md and docs/*.md) say what the code does: every relative link and #anchor resolves, every
`make` target and `entrypoint.py` command and --option named exists, the cheap documented commands run as written
(`--help`, `config show`, `data check`, `compare` on the committed reports) and the others parse (click accepts their
options, their dotted overrides name real config keys), a command that needs an earlier one says so in a comment,
and the lists that mirror code (config keys, the metrics of a registry flag, exit codes) equal it.

No model is loaded and nothing is written: fast, part of `make test-fast`."""

from __future__ import annotations

import dataclasses
import re
import shlex
import signal
import typing
from dataclasses import dataclass
from pathlib import Path

import click
import pytest

from entrypoint import cli, main
from eval.metrics import REGISTRY
from pipeline import errors
from pipeline.config import Config, load_config

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
DEMO_CONFIG = "configs/demo.yaml"
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`([^`\n]+)`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


def prose(text: str) -> str:
    """The text outside fenced blocks and inline code (where links and headings are)."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def anchors(page: Path) -> set[str]:
    """GitHub's heading ids: lowercased, punctuation dropped, spaces to hyphens, repeats numbered."""
    seen: dict[str, int] = {}
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*$", FENCE.sub("", page.read_text(encoding="utf-8")),
                              re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        yield slug if count == 0 else f"{slug}-{count}"


def relative_links() -> list[tuple[Path, str]]:
    return [(page, target) for page in PAGES for target in LINK.findall(prose(page.read_text(encoding="utf-8")))
            if not re.match(r"[a-z][a-z0-9+.-]*:", target)]  # http:, https:, mailto:


@pytest.mark.parametrize("page, target", relative_links(), ids=lambda v: v if isinstance(v, str) else page_id(v))
def test_every_relative_link_resolves(page, target):
    path, _, anchor = target.partition("#")
    linked = (page.parent / path).resolve() if path else page
    assert linked.exists(), f"{page_id(page)} links to {target}: no such file"
    if anchor:
        assert linked.suffix == ".md", f"{page_id(page)} links to #{anchor} in {path}, not a Markdown page"
        assert anchor in set(anchors(linked)), f"{page_id(page)} links to {target}: no such heading in {linked.name}"


def test_the_link_checker_sees_the_links():
    """Not vacuous: the README links into docs/ and the pages link to each other's headings."""
    links = relative_links()
    assert any(target.startswith("docs/") for page, target in links if page.name == "README.md")
    assert any("#" in target for _, target in links)


# --- commands --------------------------------------------------------------------------------------------------

def code(text: str) -> list[str]:
    """What the docs present as code: fenced blocks (continuation lines joined) and inline spans."""
    blocks = [block.replace("\\\n", " ") for block in FENCE.findall(text)]
    return blocks + INLINE_CODE.findall(FENCE.sub("", text))


def makefile_targets() -> set[str]:
    return set(re.findall(r"^([\w.-]+)\s*:(?!=)", (ROOT / "Makefile").read_text(encoding="utf-8"), re.MULTILINE))


def test_every_make_target_named_in_the_docs_exists():
    targets = makefile_targets()
    named = {(page_id(page), target) for page in PAGES for span in code(page.read_text(encoding="utf-8"))
             for target in re.findall(r"(?<![\w-])make\s+([a-z][\w-]*)", span)}
    assert {"demo", "test-fast", "gpu-bundle"} <= {target for _, target in named}
    assert not [f"{page}: make {target}" for page, target in sorted(named) if target not in targets]


@dataclass(frozen=True)
class Documented:
    """One `entrypoint.py ...` command of the docs."""

    page: str
    args: tuple[str, ...]  # after entrypoint.py
    comment: str  # its own comment and the comment line above it in its block ("" for inline code)
    fenced: bool

    def __str__(self):
        return f"{self.page}: entrypoint.py {' '.join(self.args)}"


def documented_commands() -> list[Documented]:
    found = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        blocks = [(block.replace("\\\n", " "), True) for block in FENCE.findall(text)]
        for block, fenced in blocks + [(span, False) for span in INLINE_CODE.findall(FENCE.sub("", text))]:
            above = ""  # a comment line applies to the commands below it, up to the next comment line
            for line in block.splitlines():
                if line.lstrip().startswith("#"):
                    above = line
                    continue
                tokens = shlex.split(line, comments=True) if "entrypoint.py" in line else []
                at = next((i for i, token in enumerate(tokens) if token.endswith("entrypoint.py")), None)
                if not at or not any(re.search(r"(^|/)python3?$", token) for token in tokens[:at]):
                    continue  # not a command line (a layout listing, a Dockerfile line)
                args = tuple(token for token in map(unbracket, tokens[at + 1:]) if token)
                comment = line.partition(" #")[2] if " #" in line else ""
                if args:
                    found.append(Documented(page_id(page), args, f"{above} {comment}", fenced))
    return found


def unbracket(token: str) -> str:
    """A syntax line's optional part, `[--rule point]`, as its tokens; a value's brackets (`key=[a,b]`) stay."""
    token = token[1:] if token.startswith("[-") else token
    return token[:-1] if token.endswith("]") and "[" not in token else token


def resolve(args: tuple[str, ...]) -> tuple[click.Command, list[str], list[str]]:
    """The click command the arguments name (walking the groups as far as they name subcommands), its path, and
    the arguments after it."""
    command, path, rest = cli, [], list(args)
    while isinstance(command, click.Group) and rest and rest[0] in command.commands:
        command = command.commands[rest[0]]
        path.append(rest.pop(0))
    return command, path, rest


def option_names(command: click.Command) -> set[str]:
    return {"-h", "--help"} | {name for param in command.params for name in (*param.opts, *param.secondary_opts)
                              if name.startswith("-")}


COMMANDS = documented_commands()


def test_the_docs_name_the_commands_a_user_needs():
    """Not vacuous: the extraction finds the commands of the quick start and of each section."""
    fenced = {tuple(resolve(c.args)[1]) for c in COMMANDS if c.fenced}
    assert {("run",), ("export",), ("compare",), ("config", "show"), ("data", "check"), ("model", "fetch")} <= fenced


@pytest.mark.parametrize("documented", COMMANDS, ids=str)
def test_every_documented_command_and_option_exists(documented):
    command, path, rest = resolve(documented.args)
    if isinstance(command, click.Group):  # the group itself: only --help, else an unknown subcommand
        assert set(rest) <= {"--help", "-h"}, f"{documented}: `entrypoint.py {' '.join(path)}` has no command {rest[0]}"
    known = option_names(command)
    unknown = [arg.split("=")[0] for arg in rest if arg.startswith("--") and arg.split("=")[0] not in known]
    assert not unknown, f"{documented}: `entrypoint.py {' '.join(path)}` has no option {', '.join(unknown)}"


def config_of(args: list[str]) -> str | None:
    for i, arg in enumerate(args):
        if arg == "--config":
            return args[i + 1]
        if arg.startswith("--config="):
            return arg.partition("=")[2]
    return None


def demo_commands() -> list[Documented]:
    """The fenced commands that run on a fresh clone's demo config (or no config at all)."""
    return [c for c in COMMANDS if c.fenced and config_of(list(c.args)) in (None, DEMO_CONFIG)]


def is_cheap(documented: Documented) -> bool:
    """Runs in seconds with no model and writes nothing: --help, config show, data check, compare on examples/."""
    _, path, rest = resolve(documented.args)
    if {"--help", "-h"} & set(rest) or path in (["config", "show"], ["data", "check"]):
        return True
    if path == ["compare"]:
        inputs = [rest[i + 1] for i, arg in enumerate(rest[:-1])
                  if arg in ("--baseline", "--candidate", "--baseline-predictions")]
        return "--html" not in rest and all(path.startswith("examples/") for path in inputs)
    return False


CHEAP = [c for c in demo_commands() if is_cheap(c)]
PARSED = [c for c in demo_commands() if not is_cheap(c)]


def expected_exit(documented: Documented) -> int:
    """0, or what the command's comment says (`# exit 1`)."""
    said = re.search(r"\bexit (\d+)", documented.comment)
    return int(said[1]) if said else 0


def test_the_cheap_commands_cover_every_kind():
    kinds = {tuple(resolve(c.args)[1]) for c in CHEAP}
    assert {("config", "show"), ("data", "check"), ("compare",)} <= kinds and PARSED


@pytest.mark.parametrize("documented", CHEAP, ids=str)
def test_the_cheap_documented_commands_run_as_written(documented, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    code = main(list(documented.args))
    captured = capsys.readouterr()
    assert code == expected_exit(documented), f"{documented} exited {code}:\n{captured.err[-2000:]}"
    assert captured.out.strip(), f"{documented} printed nothing"


@pytest.mark.parametrize("documented", PARSED, ids=str)
def test_the_other_documented_commands_parse(documented, monkeypatch):
    """click accepts the options (a choice given as `a|b|c` is each of them) and the dotted overrides load
    against the config, with every check made before any data or model is read."""
    monkeypatch.chdir(ROOT)
    command, _, rest = resolve(documented.args)
    try:
        parsed, extra, _ = command.make_parser(click.Context(command)).parse_args(rest)
    except click.UsageError as exc:
        pytest.fail(f"{documented}: {exc}")
    values = {name: value for name, value in parsed.items() if isinstance(value, (str, tuple, bool))}  # given
    assert not extra, f"{documented}: unexpected arguments {extra}"
    for param in command.params:
        if isinstance(param.type, click.Choice) and values.get(param.name) is not None:
            for choice in values[param.name].split("|"):
                assert choice in param.type.choices, f"{documented}: {param.opts[0]} {choice} is not a choice"
    if "overrides" in values or "config_path" in values:
        load_config(values.get("config_path"), values.get("overrides", ()))


def reads_earlier_outputs(documented: Documented) -> bool:
    """It reads what another command writes under outputs/ (a trained adapter, a report)."""
    _, path, rest = resolve(documented.args)
    written = {rest[i + 1] for i, arg in enumerate(rest[:-1]) if arg in ("--out", "--html")}
    reads = [arg for arg in rest if "outputs/" in arg and arg not in written and not arg.startswith("output.dir=")]
    return bool(reads) or (path == ["export"] and "--adapter" not in rest and not any(
        arg.startswith("model.adapter=") for arg in rest))


def test_a_command_that_needs_another_first_says_so():
    assert sum(map(reads_earlier_outputs, demo_commands())) >= 3  # evaluating the demo's adapter, export, compare
    silent = [str(c) for c in demo_commands() if reads_earlier_outputs(c)
              and not re.search(r"\b(after|needs?)\b", c.comment)]
    assert not silent, "say in a comment what must run first (# after make demo):\n" + "\n".join(silent)


# --- lists that mirror code -------------------------------------------------------------------------------------

def section(page: str, heading: str) -> str:
    text = (ROOT / page).read_text(encoding="utf-8")
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def test_the_config_key_table_lists_every_key():
    table = {}
    for row in re.findall(r"^\| `(\w+)` \| (.+) \|$", section("docs/using.md", "Config keys"), re.MULTILINE):
        table[row[0]] = re.findall(r"`(\w+)`", row[1])
    sections = typing.get_type_hints(Config)
    assert table == {name: [key.name for key in dataclasses.fields(cls)] for name, cls in sections.items()}


FLAG_LIST = re.compile(r"flagged `(\w+)`[^:`]*:\s*((?:`\w+`,?\s*)+)")


def test_the_lists_of_metrics_per_flag_come_from_the_registry():
    """"the metrics flagged `delta`: `rougeL`, ..." anywhere in the docs equals REGISTRY's entries with that flag."""
    found = {}
    for page in PAGES:
        text = re.sub(r"\s+", " ", page.read_text(encoding="utf-8"))
        for flag, names in FLAG_LIST.findall(text):
            found.setdefault(flag, []).append(page_id(page))
            expected = [metric.name for metric in REGISTRY if getattr(metric, flag)]
            assert re.findall(r"`(\w+)`", names) == expected, f"{page_id(page)}: the metrics flagged `{flag}`"
    assert {"delta", "per_type", "tracked", "hub_type"} <= set(found)


def test_the_metrics_table_names_every_metric():
    names = set(re.findall(r"`(\w+)`", section("docs/reading-a-report.md", "Metrics")))
    missing = [m.name for m in REGISTRY if m.name not in names
               and not (m.name.endswith("_question") and "*_question" in section("docs/reading-a-report.md", "Metrics"))]
    assert not missing


def test_the_exit_code_table_is_the_codes_the_job_exits_with():
    """0 success and 4 internal error (entrypoint.run_cli), each error class's code (1: compare's regression and
    export's mismatch; 2, 3, 5) and the signals' 128 + number."""
    import pipeline.export  # noqa: F401  (its error class, exit 1)

    table = {int(code) for code in re.findall(r"^\| (\d+) \|", section("docs/operations.md", "Exit codes"),
                                              re.MULTILINE)}

    def subclasses(cls):
        return {cls, *(sub for child in cls.__subclasses__() for sub in subclasses(child))}

    user_errors = {cls.exit_code for cls in subclasses(errors.UserError)}
    stopped = {errors.Stopped(signum, "").exit_code for signum in (signal.SIGINT, signal.SIGTERM)}
    assert 1 in user_errors and table == {0, 4} | user_errors | stopped
    readme = re.sub(r"\s+", " ", (ROOT / "README.md").read_text(encoding="utf-8"))
    summary = readme[readme.index("Exit codes:"):readme.index("(docs/operations.md#exit-codes)")]
    assert {int(code) for code in re.findall(r"\b(\d+)\b", summary)} == table  # the README's one-line summary
