"""The container and the Kubernetes manifests, without a Docker engine or a cluster: the Dockerfile and manifests are
parsed and linted (hadolint, kubernetes-validate), and the image's /app is rebuilt from the Dockerfile and
.dockerignore the way `docker build` assembles it, then the job runs from it read-only, with the image's ENV."""

import ctypes
import fnmatch
import json
import os
import posixpath
import re
import shlex
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml
from dockerfile_parse import DockerfileParser

from conftest import ROOT, korean_rows, write_jsonl
from entrypoint import RegressionFound
from eval.report import validate
from pipeline.config import load_config
from pipeline.errors import ConfigError, DataError, ResourceError, TransientError

SECRET_WORDS = re.compile(r"(^|_)(token|secret|password|api_?key)($|_)", re.IGNORECASE)
HUB_TOKEN = re.compile(r"hf_[A-Za-z0-9]{10,}")
VENV_BIN = Path(sys.executable).parent
MANIFESTS = sorted((ROOT / "k8s").glob("*.yaml"))
QUICK_TIMEOUT = 120
JOB_TIMEOUT = 600
# What the base image (python:3.11-slim-bookworm) sets before the Dockerfile's own ENV.
BASE_IMAGE_ENV = {"PATH": "/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
FAKE_COMMIT = "0123456789abcdef0123456789abcdef01234567"


# --- the Dockerfile, parsed ---------------------------------------------------------------------------------------

def parse_dockerfile(**build_args) -> DockerfileParser:
    return DockerfileParser(str(ROOT / "Dockerfile"), parent_env=dict(BASE_IMAGE_ENV), build_args=build_args)


def final_stage(parser: DockerfileParser) -> list[dict]:
    """The instructions after the last FROM: what the image is made of."""
    stage = []
    for ins in parser.structure:
        stage = [] if ins["instruction"] == "FROM" else stage + [ins]
    return [ins for ins in stage if ins["instruction"] != "COMMENT"]


def exec_form(ins: dict) -> list[str]:
    value = ins["value"].strip()
    assert value.startswith("["), f"{ins['instruction']} in shell form: {ins['content']}"
    return json.loads(value)


def copy_args(ins: dict) -> tuple[dict[str, str], list[str], str]:
    """COPY's flags, sources and destination (shell or JSON form)."""
    flags, rest = re.fullmatch(r"((?:--\S+\s+)*)(.*)", ins["value"].strip(), re.DOTALL).groups()
    words = json.loads(rest) if rest.startswith("[") else shlex.split(rest)
    *sources, dest = words
    return dict(flag[2:].partition("=")[::2] for flag in flags.split()), sources, dest


def instructions(name: str, stage: list[dict]) -> list[dict]:
    return [ins for ins in stage if ins["instruction"] == name]


def test_dockerfile_runs_as_non_root_with_the_entrypoint_and_default_1b_command():
    stage = final_stage(parse_dockerfile())
    user = instructions("USER", stage)[-1]["value"].strip()
    # Numeric, not root, and the uid the manifests run as.
    assert re.fullmatch(r"\d+(:\d+)?", user) and int(user.split(":")[0]) != 0
    for manifest in MANIFESTS:
        for job in documents(manifest, "Job"):
            assert job["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == int(user.split(":")[0])
    assert instructions("WORKDIR", stage)[-1]["value"].strip() == "/app"
    (entrypoint,) = instructions("ENTRYPOINT", stage)
    assert exec_form(entrypoint) == ["python", "/app/entrypoint.py"]
    (command,) = instructions("CMD", stage)
    command = exec_form(command)
    assert command[0] == "run"
    assert load_config(ROOT / command[command.index("--config") + 1]).model.source == "google/gemma-3-1b-it"
    (volume,) = instructions("VOLUME", stage)
    assert set(exec_form(volume)) == {"/cache", "/out"}


def test_dockerfile_keeps_app_read_only_and_every_cache_on_the_cache_volume():
    parser = parse_dockerfile(GIT_COMMIT="abc123")
    # /app is root's (no --chown), so the job cannot change it.
    assert all("chown" not in copy_args(ins)[0] for ins in instructions("COPY", final_stage(parser)))
    env = parser.envs
    for name in ("HF_HOME", "MPLCONFIGDIR", "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):
        assert env[name].startswith("/cache/"), name
    assert env["PYTHONDONTWRITEBYTECODE"] == "1" and env["PYTHONUNBUFFERED"] == "1"
    assert env["TOKENIZERS_PARALLELISM"] == "false"
    assert env["GIT_COMMIT"] == "abc123"  # docker build --build-arg GIT_COMMIT=$(git rev-parse HEAD)
    assert env["PATH"].split(":")[0] == "/app/.venv/bin"


def test_dockerfile_bakes_no_secret_and_installs_like_ci():
    parser = parse_dockerfile()
    for ins, context in zip(parser.structure, parser.context_structure):
        if ins["instruction"] in ("ENV", "ARG"):
            names = [*context.line_envs, *context.line_args]
            assert not any(SECRET_WORDS.search(name) for name in names), ins["content"]
            assert not HUB_TOKEN.search(ins["content"]), ins["content"]
    runs = " ".join(ins["value"] for ins in parser.structure if ins["instruction"] == "RUN")
    copies = " ".join(ins["value"] for ins in parser.structure if ins["instruction"] == "COPY")
    assert "make install" in runs and "constraints.txt" in copies
    assert "make install" in (ROOT / ".ci/run").read_text()
    assert "-c constraints.txt" in (ROOT / "Makefile").read_text()


def test_hadolint_passes():
    done = subprocess.run([str(VENV_BIN / "hadolint"), "--no-color", "Dockerfile"], cwd=ROOT, capture_output=True,
                          text=True, timeout=QUICK_TIMEOUT)
    assert done.returncode == 0, done.stdout + done.stderr


def test_kubernetes_manifests_validate_against_the_api_schema():
    done = subprocess.run([str(VENV_BIN / "kubernetes-validate"), "--strict", *map(str, MANIFESTS)], cwd=ROOT,
                          capture_output=True, text=True, timeout=QUICK_TIMEOUT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(MANIFESTS) >= 3


# --- the build context, as .dockerignore filters it (Docker's own matching, moby/patternmatcher) -----------------

def go_clean(path: str) -> str:
    """Go's filepath.Clean: posixpath.normpath, except that a leading "//" becomes "/"."""
    cleaned = posixpath.normpath(path)
    return "/" + cleaned.lstrip("/") if cleaned.startswith("//") else cleaned


class IgnorePattern:
    def __init__(self, pattern: str, exclusion: bool):
        self.pattern, self.exclusion = pattern, exclusion
        self.kind, self.regex = self.compile(pattern)

    @staticmethod
    def compile(pattern: str):
        """Pattern.compile: "**" any number of directories (even none), "*" and "?" within one path element."""
        regex, kind, i, pos = "^", "exact", 0, 0
        while pos < len(pattern):
            ch = pattern[pos]
            pos += 1
            if ch == "*" and pattern[pos:pos + 1] == "*":
                pos += 1
                if pattern[pos:pos + 1] == "/":
                    pos += 1
                if pos == len(pattern):
                    if kind == "exact":
                        kind = "prefix"
                    else:
                        regex, kind = regex + ".*", "regex"
                else:
                    regex, kind = regex + "(.*/)?", "regex"
                if i == 0:
                    kind = "suffix"
            elif ch == "*":
                regex, kind = regex + "[^/]*", "regex"
            elif ch == "?":
                regex, kind = regex + "[^/]", "regex"
            elif ch in ".+()|{}$":
                regex += "\\" + ch
            elif ch == "\\":  # escapes the next character (a trailing one makes a bad pattern, as in Docker)
                if pos < len(pattern):
                    regex, kind, pos = regex + "\\" + pattern[pos], "regex", pos + 1
                else:
                    regex += "\\"
            elif ch in "[]":
                regex, kind = regex + ch, "regex"
            else:
                regex += ch
            i += 1
        return kind, re.compile(regex + "$") if kind == "regex" else None

    def match(self, path: str) -> bool:
        if self.kind == "exact":
            return path == self.pattern
        if self.kind == "prefix":
            return path.startswith(self.pattern[:-2])
        if self.kind == "suffix":
            suffix = self.pattern[2:]
            return path.endswith(suffix) or (suffix[:1] == "/" and path == suffix[1:])
        return self.regex.match(path) is not None


class DockerIgnore:
    """A .dockerignore: patterns relative to the context root, later lines win, "!" lines are exceptions, and a
    path is excluded when it or one of its parent directories matches (MatchesOrParentMatches)."""

    def __init__(self, text: str):
        self.patterns = []
        for line in text.lstrip("\ufeff").splitlines():
            if line.startswith("#") or not line.strip():
                continue
            pattern = line.strip()
            exclusion = pattern.startswith("!")
            if exclusion:
                pattern = pattern[1:].strip()
            pattern = go_clean(pattern)
            if len(pattern) > 1 and pattern.startswith("/"):
                pattern = pattern[1:]
            self.patterns.append(IgnorePattern(pattern, exclusion))

    def excludes(self, path: str) -> bool:
        matched = False
        parents = posixpath.dirname(path).split("/") if "/" in path else []
        for pattern in self.patterns:
            if pattern.exclusion != matched:
                continue
            match = pattern.match(path) or any(pattern.match("/".join(parents[:i + 1])) for i in range(len(parents)))
            if match:
                matched = not pattern.exclusion
        return matched

    def may_reinclude_below(self, directory: str) -> bool:
        """An excluded directory is still walked when an exception pattern starts with it (Docker's own check)."""
        return any(p.exclusion and (p.pattern + "/").startswith(directory + "/") for p in self.patterns)


def build_context(root: Path) -> set[str]:
    """The relative paths (files, links and directories) that `docker build` sends as the context."""
    ignore = DockerIgnore((root / ".dockerignore").read_text(encoding="utf-8"))
    paths = set()
    for dirpath, dirnames, filenames in os.walk(root):
        base = Path(dirpath).relative_to(root).as_posix()
        for name in list(dirnames):
            rel = name if base == "." else f"{base}/{name}"
            if ignore.excludes(rel):
                if not ignore.may_reinclude_below(rel):
                    dirnames.remove(name)
                continue
            paths.add(rel)
        for name in filenames:
            rel = name if base == "." else f"{base}/{name}"
            if not ignore.excludes(rel):
                paths.add(rel)
    for path in list(paths):  # a re-included file brings its directories
        while "/" in path:
            path = posixpath.dirname(path)
            paths.add(path)
    return paths


def real_dockerignore() -> DockerIgnore:
    return DockerIgnore((ROOT / ".dockerignore").read_text(encoding="utf-8"))


@pytest.mark.parametrize("path", [
    ".git", ".git/HEAD", ".git/objects/ab/cdef",                  # history (GIT_COMMIT stands in for it)
    ".venv", ".venv/bin/python", ".venv/lib/python3.11/site-packages/torch/__init__.py",  # the host's venv
    "outputs", "outputs/demo/report.json", "outputs/demo/train/adapter/adapter_model.safetensors",  # runs
    "pipeline/__pycache__/config.cpython-311.pyc", "tests/__pycache__/conftest.cpython-311.pyc",  # caches
    "__pycache__/entrypoint.cpython-311.pyc", ".pytest_cache/v/cache/nodeids",
    "socratic_lora.egg-info/PKG-INFO", "build/lib/pipeline/config.py", "dist/socratic_lora-0.1.0.whl",  # builds
    ".gpu/whl/trl-1.16.0-py3-none-any.whl", ".gpu/tokenizer/tokenizer.json", "bench/results.json",  # local files
])
def test_the_real_dockerignore_leaves_out(path):
    assert real_dockerignore().excludes(path), f".dockerignore lets {path} into the image"


def test_what_git_ignores_stays_out_of_the_image_too():
    """Every .gitignore entry (local venvs, caches, outputs, builds) is left out of the build context as well."""
    for line in (ROOT / ".gitignore").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith(("#", "!")):
            sample = line.strip().rstrip("/").replace("*", "sample")
            assert real_dockerignore().excludes(f"{sample}/file"), f".gitignore has {line}, .dockerignore lets it in"


def test_the_build_context_holds_the_project_and_none_of_the_local_state():
    context = build_context(ROOT)
    copied = {source for ins in parse_dockerfile().structure if ins["instruction"] == "COPY"
              for source in copy_args(ins)[1] if not copy_args(ins)[0].get("from") and source != "."}
    assert copied == {"pyproject.toml", "constraints.txt", "Makefile", "pipeline/", "eval/"}
    assert {source.rstrip("/") for source in copied} | {"entrypoint.py", "pipeline/config.py", "eval/score.py",
                                                       "configs/gemma3-1b-korean-socratic.yaml"} <= context
    left_out = {".venv", ".git", "outputs", "__pycache__", ".gpu", ".pytest_cache"}
    assert not [path for path in context if left_out & set(path.split("/"))]


@pytest.mark.parametrize("patterns, path, excluded", [
    (".venv/", ".venv", True),
    (".venv/", ".venv/bin/python", True),
    (".venv/", "sub/.venv", False),
    ("**/__pycache__/", "__pycache__/x.pyc", True),
    ("**/__pycache__/", "pipeline/__pycache__/x.pyc", True),
    ("**/__pycache__/", "pipeline/my__pycache__", False),
    ("*.egg-info/", "socratic_lora.egg-info/PKG-INFO", True),
    ("*.egg-info/", "sub/a.egg-info", False),
    ("*/temp*", "somedir/temporary.txt", True),
    ("*/temp*", "temp", False),
    ("*/*/temp*", "a/b/temp.txt", True),
    ("temp?", "temp1", True),
    ("temp?", "temp12", False),
    ("/outputs", "outputs/x", True),
    ("./bench/results.json", "bench/results.json", True),
    ("bench/**", "bench/a/b", True),
    ("# outputs", "# outputs", False),
    ("*.md\n!README.md", "README.md", False),
    ("*.md\n!README.md", "NOTES.md", True),
    ("!README.md\n*.md", "README.md", True),
    ("data\n!data/keep.txt", "data/keep.txt", False),
    ("data\n!data/keep.txt", "data/other.txt", True),
])
def test_dockerignore_matching_follows_docker(patterns, path, excluded):
    assert DockerIgnore(patterns).excludes(path) is excluded


# --- the image's file tree and its environment, without Docker ---------------------------------------------------

def image_tree(rootfs: Path) -> Path:
    """Follows the final stage's COPY instructions from the build context into rootfs (standing for the image's /);
    COPY --from=<stage> is left out: the build stage's venv is this interpreter's. Returns the WORKDIR."""
    context = build_context(ROOT)
    workdir = "/"
    for ins in final_stage(parse_dockerfile()):
        assert ins["instruction"] != "ADD", "ADD is not followed here: use COPY"
        if ins["instruction"] == "WORKDIR":
            workdir = posixpath.join(workdir, ins["value"].strip())
        if ins["instruction"] != "COPY":
            continue
        flags, sources, dest = copy_args(ins)
        assert set(flags) <= {"from", "chown", "chmod", "link"}, ins["content"]
        if "from" in flags:
            continue
        into_dir = dest.endswith("/") or len(sources) > 1
        dest_path = rootfs / posixpath.join(workdir, dest).lstrip("/")
        for source in sources:
            assert not re.search(r"[*?\[]", source), f"COPY {source}: wildcards are not followed here"
            source = go_clean(source).lstrip("/") or "."
            assert source == "." or source in context, f"COPY {source}: not in the build context (.dockerignore?)"
            if source == "." or (ROOT / source).is_dir():  # a directory: its contents, recursively
                dest_path.mkdir(parents=True, exist_ok=True)
                members = {p: p if source == "." else p[len(source) + 1:]
                           for p in context if source == "." or p.startswith(source + "/")}
            else:
                members = {source: posixpath.basename(source) if into_dir else ""}
            for member, rel in sorted(members.items()):
                origin = ROOT / member
                target = dest_path / rel if rel else dest_path
                target.parent.mkdir(parents=True, exist_ok=True)
                if origin.is_symlink():
                    target.symlink_to(os.readlink(origin))
                elif origin.is_dir():
                    target.mkdir(exist_ok=True)
                else:
                    shutil.copy2(origin, target)
    return rootfs / workdir.lstrip("/")


def image_env(rootfs: Path, volumes: dict[str, Path], **run_env: str) -> dict[str, str]:
    """The final stage's ENV (build arg GIT_COMMIT given), its paths moved into rootfs, the volumes and this venv,
    plus what `docker run -e` would add."""
    moves = {"/app/.venv": Path(sys.prefix), **volumes}

    def move(value: str) -> str:
        parts = []
        for part in value.split(":"):
            for image_path, here in moves.items():
                if part == image_path or part.startswith(image_path + "/"):
                    part = str(here) + part[len(image_path):]
                    break
            else:
                if part.startswith("/app/") or part == "/app":
                    part = str(rootfs) + part
            parts.append(part)
        return ":".join(parts)

    env = {name: move(value) for name, value in parse_dockerfile(GIT_COMMIT=FAKE_COMMIT).envs.items()}
    return {**env, **run_env}


NOBODY = 65534
PR_SET_KEEPCAPS, PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_DAC_READ_SEARCH = 8, 47, 2, 2
LINUX_CAPABILITY_VERSION_3 = 0x20080522


def as_unprivileged_user():
    """preexec_fn that makes the child an unprivileged user, as the image's uid 1000 is, when the tests run as root
    (root ignores permission bits): uid/gid 65534, which can write only where permission bits let it. Where root
    has it, the child keeps one capability, reading and searching any directory, since the interpreter may live
    under a 0700 /root (pyenv); it bypasses no write check. Not root: the user is unprivileged already."""
    if os.geteuid() != 0:
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    effective = int(re.search(r"^CapEff:\s*(\w+)", Path("/proc/self/status").read_text(), re.MULTILINE).group(1), 16)
    keep = effective & (1 << CAP_DAC_READ_SEARCH)

    def check(result: int, call: str) -> None:
        if result != 0:
            raise OSError(ctypes.get_errno(), call)

    def demote():
        check(libc.prctl(PR_SET_KEEPCAPS, int(bool(keep)), 0, 0, 0), "prctl(PR_SET_KEEPCAPS)")
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
        if keep:  # effective, permitted and inheritable, then ambient: kept across exec
            check(libc.capset((ctypes.c_uint32 * 2)(LINUX_CAPABILITY_VERSION_3, 0),
                              (ctypes.c_uint32 * 6)(keep, keep, keep, 0, 0, 0)), "capset")
            check(libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_DAC_READ_SEARCH, 0, 0), "prctl(PR_CAP_AMBIENT)")
    return demote


def writable_to_the_job(folder: Path) -> None:
    folder.mkdir()
    if os.geteuid() == 0:
        os.chown(folder, NOBODY, NOBODY)


def make_read_only(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        if not path.is_symlink():
            path.chmod(path.stat().st_mode & ~0o222)


def make_writable(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        if path.is_dir() and not path.is_symlink():
            path.chmod(path.stat().st_mode | 0o700)


def snapshot(*roots: Path) -> dict[str, tuple]:
    """Every entry under roots (the roots too): type, size and mtime. A file written, added or removed changes it,
    and so does one created and deleted again (its directory's mtime)."""
    state = {}
    for root in roots:
        for path in [root, *root.rglob("*")]:
            info = path.lstat()
            state[str(path)] = (stat.S_IFMT(info.st_mode), info.st_size if path.is_file() else None, info.st_mtime_ns)
    return state


IN_NONBLOCK, IN_MOVED_TO, IN_CREATE, IN_Q_OVERFLOW = 0o4000, 0x80, 0x100, 0x4000
TEMPFILE_PROBE = re.compile(r"[a-z0-9_]{8}")  # the name tempfile.gettempdir() tries a directory with


class CreatedIn:
    """The names created in a directory while inside (inotify), even those deleted again before the end."""

    def __init__(self, directory: Path):
        self.directory, self.names = directory, []

    def __enter__(self):
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self.libc.inotify_init1(IN_NONBLOCK)
        assert self.fd >= 0
        assert self.libc.inotify_add_watch(self.fd, bytes(self.directory), IN_CREATE | IN_MOVED_TO) >= 0
        return self

    def __exit__(self, *exc):
        buffer = b""
        while True:
            try:
                buffer += os.read(self.fd, 1 << 16)
            except BlockingIOError:
                break
        os.close(self.fd)
        while buffer:
            _, mask, _, size = struct.unpack_from("iIII", buffer)
            assert not mask & IN_Q_OVERFLOW, "inotify dropped events"
            self.names.append(buffer[16:16 + size].rstrip(b"\0").decode())
            buffer = buffer[16 + size:]


def loaded_project_modules(verbose_stderr: str) -> set[Path]:
    """The files of this project's modules (pipeline/, eval/) that `python -v` reports loading code from."""
    loaded = set()
    for line in verbose_stderr.splitlines():
        found = re.match(r"# code object from '?(.+?)'?$", line)
        if found:
            path = Path(found.group(1))
            if path.parent.name == "__pycache__":
                path = path.parent.parent / (path.name.split(".")[0] + ".py")
            if path.parent.name in ("pipeline", "eval") and (path.parent.parent / "entrypoint.py").is_file():
                loaded.add(path)
    return loaded


@pytest.mark.subprocess
def test_the_image_runs_the_job_read_only_writing_only_to_its_volumes(tiny_model_dir):
    """The image's contract: the job runs from /app with the image's ENV, as an unprivileged user, with /app
    read-only, a $HOME it cannot write to, an empty $TMPDIR and no .git, and writes only to /out and /cache."""
    # Not pytest's tmp_path: its 0700 parents would keep the unprivileged job out (os.access, which matplotlib uses
    # to test its config dir, ignores the job's one capability).
    base = Path(tempfile.mkdtemp(prefix="image-contract-"))
    base.chmod(0o755)
    try:
        check_image_contract(base, tiny_model_dir)
    finally:
        make_writable(base)
        shutil.rmtree(base)


def check_image_contract(base: Path, tiny_model_dir: Path) -> None:
    rootfs, home, tmpdir, inputs = (base / name for name in ("rootfs", "home", "tmp", "inputs"))
    volumes = {"/out": base / "out", "/cache": base / "cache"}
    home.mkdir()
    for folder in (tmpdir, *volumes.values()):
        writable_to_the_job(folder)
    workdir = image_tree(rootfs)
    assert (workdir / "entrypoint.py").is_file() and not (workdir / ".git").exists()
    model = shutil.copytree(tiny_model_dir, inputs / "model")
    for split, start, n in (("train", 0, 8), ("validation", 100, 2), ("test", 200, 3)):
        write_jsonl(inputs / "data" / f"{split}.jsonl", korean_rows(n, start))
    for folder in (rootfs, home, inputs):
        make_read_only(folder)
    # HF_HUB_OFFLINE as `docker run -e` would pass it: these tests never reach the network.
    env = image_env(rootfs, volumes, HOME=str(home), TMPDIR=str(tmpdir), HF_HUB_OFFLINE="1")
    (entrypoint,) = instructions("ENTRYPOINT", final_stage(parse_dockerfile()))
    python, script = exec_form(entrypoint)
    python = shutil.which(python, path=env["PATH"])
    assert python and Path(python).parent == VENV_BIN
    script = rootfs / script.lstrip("/")
    run = dict(env=env, cwd=workdir, preexec_fn=as_unprivileged_user(), capture_output=True, text=True)

    try:
        probe = subprocess.run(
            [python, "-c", "import os; print(os.getuid()); open(os.path.expanduser('~/probe'), 'w')"],
            timeout=QUICK_TIMEOUT, **run)
    except PermissionError as exc:
        pytest.fail(f"uid {NOBODY} cannot run this interpreter ({exc}); install Python where others can read it")
    assert probe.stdout.strip() != "0" and "PermissionError" in probe.stderr, f"the check would be void: {probe}"
    before = snapshot(rootfs, home, inputs)
    with CreatedIn(tmpdir) as temporary:
        # python -v: where each module's code came from (/app, not this checkout).
        done = subprocess.run([python, "-v", str(script), "run", f"model.source={model}",
                               f"data.source={inputs / 'data'}", f"output.dir={volumes['/out'] / 'run'}",
                               "train.max_steps=2", "generate.max_new_tokens=4", "score.bootstrap_samples=20"],
                              timeout=JOB_TIMEOUT, **run)
    after = snapshot(rootfs, home, inputs)

    log = "\n".join(line for line in done.stderr.splitlines() if not line.startswith(("#", "import ")))
    assert done.returncode == 0, log[-4000:]
    changed = sorted(set(before) ^ set(after) | {p for p in before.keys() & after.keys() if before[p] != after[p]})
    assert not changed, f"written outside /out and /cache: {changed}"
    # $TMPDIR is writable, like /tmp in a container, and must stay empty. The one thing allowed there: Python's
    # tempfile.gettempdir() creating and deleting a probe file (portalocker calls it when sacrebleu imports it),
    # not temporary files or directories of the job's own (matplotlib makes one when it cannot write its config).
    assert not list(tmpdir.iterdir())
    assert all(TEMPFILE_PROBE.fullmatch(name) for name in temporary.names), f"created in $TMPDIR: {temporary.names}"
    report = json.loads((volumes["/out"] / "run" / "report.json").read_text(encoding="utf-8"))
    validate(report)
    commits = [report["provenance"][stage]["git"]["commit"] for stage in ("train", "generate", "score")]
    assert commits == [FAKE_COMMIT] * 3
    loaded = loaded_project_modules(done.stderr)
    outside = sorted(str(path) for path in loaded if workdir not in path.parents)
    assert not outside, f"imported from outside /app: {outside}"
    assert {workdir / "pipeline" / "train.py", workdir / "eval" / "score.py"} <= loaded


# --- Kubernetes ----------------------------------------------------------------------------------------------------

def documents(manifest: Path, kind: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(manifest.read_text(encoding="utf-8")) if d and d["kind"] == kind]


def load_job(name: str):
    (job,) = documents(ROOT / "k8s" / name, "Job")
    assert job["apiVersion"] == "batch/v1"
    return job, job["spec"]["template"]["spec"]


def expand(words: list[str], env: dict[str, str]) -> list[str]:
    """$(NAME) from the container's env, as the kubelet expands command and args."""
    return [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], word) for word in words]


def launcher(container: dict):
    """The container's command parsed by torchrun's own parser (pipeline.launch takes torchrun's arguments)."""
    from torch.distributed.run import parse_args

    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    command = expand(container["command"] + container.get("args", []), env)
    assert command[:3] == ["python", "-m", "pipeline.launch"]
    return parse_args(command[3:])


def check_job(name: str) -> tuple[dict, dict, dict]:
    job, pod = load_job(name)
    manifest = ROOT / "k8s" / name
    assert manifest.read_text(encoding="utf-8").startswith(f"# kubectl apply -f k8s/{name}")
    (container,) = pod["containers"]
    resources = container["resources"]
    # The GPU count is stated once: limits (an extended resource's request is set equal to its limit).
    assert resources["limits"]["nvidia.com/gpu"] >= 1 and "nvidia.com/gpu" not in resources["requests"]
    assert {"cpu", "memory"} <= set(resources["requests"])
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    for path in ("/out", "/cache"):
        assert "persistentVolumeClaim" in volumes[mounts[path]["name"]], path
    token_file = {e["name"]: e.get("value") for e in container["env"]}["HF_TOKEN_FILE"]
    secret_mount = [m for m in container["volumeMounts"] if token_file.startswith(m["mountPath"] + "/")]
    assert len(secret_mount) == 1 and "secret" in volumes[secret_mount[0]["name"]] and secret_mount[0]["readOnly"] is True
    assert not any(SECRET_WORDS.search(e["name"]) and "value" in e and e["name"] != "HF_TOKEN_FILE"
                   for e in container["env"])
    assert not HUB_TOKEN.search(manifest.read_text(encoding="utf-8"))
    # A failed pod is replaced by a new one that resumes from the PVC.
    assert pod["restartPolicy"] == "Never" and job["spec"]["backoffLimit"] >= 1
    assert pod["terminationGracePeriodSeconds"] >= 60
    assert pod["securityContext"]["runAsNonRoot"] is True
    return job, pod, container


def claim(manifest: str, pod: dict, mount_path: str) -> dict:
    (container,) = pod["containers"]
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == mount_path]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    name = volume["persistentVolumeClaim"]["claimName"]
    claims = [c for m in MANIFESTS for c in documents(m, "PersistentVolumeClaim") if c["metadata"]["name"] == name]
    assert len(claims) == 1, f"{manifest}: PVC {name}"
    return claims[0]


def test_single_gpu_job():
    _, pod, container = check_job("job.yaml")
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "command" not in container  # the image's ENTRYPOINT
    assert container["args"][0] == "run"
    load_config(ROOT / container["args"][container["args"].index("--config") + 1])
    assert claim("job.yaml", pod, "/out")["spec"]["accessModes"] == ["ReadWriteOnce"]


def test_multi_gpu_job_starts_one_process_per_gpu():
    _, pod, container = check_job("job-multigpu.yaml")
    assert container["resources"]["limits"]["nvidia.com/gpu"] > 1
    args = launcher(container)
    # torchrun's "gpu": one process per GPU the pod sees, so the count follows from limits alone.
    assert args.nproc_per_node == "gpu" and args.nnodes == "1:1" and args.training_script == "/app/entrypoint.py"
    # SIGTERM: the launcher waits this long for the workers to save, then exits 143 before the kubelet's SIGKILL.
    assert 0 < args.shutdown_timeout < pod["terminationGracePeriodSeconds"]
    script_args = args.training_script_args
    load_config(ROOT / script_args[script_args.index("--config") + 1])
    shm = [v for v in pod["volumes"] if v["name"] in {m["name"] for m in container["volumeMounts"]
                                                       if m["mountPath"] == "/dev/shm"}]
    assert len(shm) == 1 and shm[0]["emptyDir"]["medium"] == "Memory"


def test_multi_node_job_is_an_indexed_job_meeting_at_pod_0_through_a_headless_service():
    manifest = ROOT / "k8s" / "job-multinode.yaml"
    job, pod, container = check_job("job-multinode.yaml")
    (service,) = documents(manifest, "Service")
    name = job["metadata"]["name"]
    spec = job["spec"]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    args = launcher(container)
    nodes = int(env["NNODES"])
    # N once: the launcher's --nnodes is $(NNODES), and the Job runs that many pods at once, one per index.
    assert "$(NNODES)" in container["command"] and args.nnodes == str(nodes) and nodes >= 2
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"] == nodes
    assert args.nproc_per_node == "gpu" and args.training_script == "/app/entrypoint.py"
    assert 0 < args.shutdown_timeout < pod["terminationGracePeriodSeconds"]
    # Pod 0 is <job>-0, reachable as <job>-0.<service> through a headless Service that selects the Job's pods.
    assert service["spec"]["clusterIP"] == "None" and pod["subdomain"] == service["metadata"]["name"]
    assert service["spec"]["selector"] == {"batch.kubernetes.io/job-name": name}
    assert service["spec"]["publishNotReadyAddresses"] is True
    host, port = args.rdzv_endpoint.rsplit(":", 1)
    assert host == f"{name}-0.{service['metadata']['name']}" and int(port) > 0
    assert args.rdzv_backend == "c10d" and args.rdzv_id == name
    script_args = args.training_script_args
    load_config(ROOT / script_args[script_args.index("--config") + 1])
    # One output dir for every node: checkpoints, each rank's generation shard and the merged predictions.
    assert "ReadWriteMany" in claim("job-multinode.yaml", pod, "/out")["spec"]["accessModes"]


def outcome(policy: dict, container: str, exit_code: int | None = None, condition: str | None = None) -> str:
    """What a podFailurePolicy does with a failed pod: the first rule that matches, else counting it."""
    for rule in policy["rules"]:
        on_exit = rule.get("onExitCodes")
        if on_exit and exit_code is not None and on_exit.get("containerName", container) == container:
            if (exit_code in on_exit["values"]) == (on_exit["operator"] == "In"):
                return rule["action"]
        if condition and any(c["type"] == condition for c in rule.get("onPodConditions", [])):
            return rule["action"]
    return "Count"


def test_every_job_has_the_same_failure_policy_and_it_follows_the_exit_codes():
    jobs = {m.name: job for m in MANIFESTS for job in documents(m, "Job")}
    assert set(jobs) == {"job.yaml", "job-multigpu.yaml", "job-multinode.yaml"}
    policies = [job["spec"]["podFailurePolicy"] for job in jobs.values()]
    assert all(policy == policies[0] for policy in policies)
    for job in jobs.values():
        policy, (container,) = job["spec"]["podFailurePolicy"], job["spec"]["template"]["spec"]["containers"]
        # A retry would fail the same way: regression, bad config or data, model/resources (out of memory).
        for code in {RegressionFound.exit_code, ConfigError.exit_code, DataError.exit_code, ResourceError.exit_code}:
            assert outcome(policy, container["name"], code) == "FailJob", code
        # Stopped by a signal after saving, or preempted/evicted: the replacement resumes, no retry used up.
        for code in (128 + 2, 128 + 15):
            assert outcome(policy, container["name"], code) == "Ignore", code
        assert outcome(policy, container["name"], 137, condition="DisruptionTarget") == "Ignore"
        # A Hub or network failure that may pass (5), internal errors (4: a crash, an NCCL error) and kills are
        # retried within backoffLimit, with the Job controller's backoff between pods.
        for code in (TransientError.exit_code, 4, 137, 139):
            assert outcome(policy, container["name"], code) == "Count", code


def test_ci_example_runs_the_job_and_gates_on_the_committed_baseline():
    workflow = yaml.safe_load((ROOT / "examples/ci-regression.yml").read_text())
    steps = [s.get("run", "") for job in workflow["jobs"].values() for s in job["steps"]]
    assert any("make install" in s for s in steps)
    (job,) = workflow["jobs"].values()
    (scored,) = [s for s in steps if "entrypoint.py run --config configs/demo.yaml" in s]
    # It scores an existing adapter (no training), and keeps every model's predictions between runs in the folder
    # an actions/cache step restores and saves.
    assert 'model.adapter="$ADAPTER"' in scored and job["env"]["ADAPTER"]
    (kept,) = re.findall(r'generate\.prediction_cache="\$HOME/([^"]+)"', scored)
    cached = [s["with"]["path"] for s in job["steps"] if s.get("uses", "").startswith("actions/cache")]
    assert f"~/{kept}" in cached
    (gate,) = [s for s in steps if "entrypoint.py compare" in s]
    assert "--baseline examples/baseline-report.json" in gate
    (upload,) = [s for job in workflow["jobs"].values() for s in job["steps"] if "upload-artifact" in s.get("uses", "")]
    uploaded = upload["with"]["path"].split()
    for page in ("outputs/ci/report.html", "outputs/ci/compare.html"):  # both pages reach the artifact
        assert any(fnmatch.fnmatch(page, pattern) for pattern in uploaded), page
    baseline = json.loads((ROOT / "examples/baseline-report.json").read_text(encoding="utf-8"))
    validate(baseline, complete=False)  # as the gate reads it: a metric added since it was made is "—" there
    assert baseline["config"]["model"]["source"] == "embedded:gemma-3-270m"
