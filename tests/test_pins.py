"""Pins that install anywhere, read from the product's own files: constraints.txt, the Makefile and the Dockerfile.

`torch==2.13.0` matches the CUDA wheel (2.13.0) and the CPU one (2.13.0+cpu); `torch==2.13.0+cpu` matches only the
CPU build, so a constraints file with it fails on every machine whose index serves the CUDA build (the image's).
"""

import re

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from conftest import ROOT

# One exact pin a line: a project name, "==", a version; nothing else (no ranges, extras, markers or URLs).
PIN = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#\[\]]+)")


def read(name: str) -> str:
    return (ROOT / name).read_text(encoding="utf-8")


def constraint_lines() -> list[str]:
    return [line.strip() for line in read("constraints.txt").splitlines()
            if line.strip() and not line.strip().startswith("#")]


def pins() -> dict[str, str]:
    return {canonicalize_name(match[1]): match[2] for match in map(PIN.fullmatch, constraint_lines())}


def test_every_constraint_is_one_exact_public_version():
    lines = constraint_lines()
    assert len(lines) > 50  # the file the Makefile and the Dockerfile install from, not an empty one
    bad = [line for line in lines if not PIN.fullmatch(line)]
    assert not bad, f"constraints.txt lines that are not name==version: {bad}"
    local = [line for line in lines if Version(PIN.fullmatch(line)[2]).local is not None]
    assert not local, f"constraints.txt pins a local version label (+...), which matches one build only: {local}"
    names = [canonicalize_name(PIN.fullmatch(line)[1]) for line in lines]
    assert len(names) == len(set(names)), f"pinned twice: {sorted({n for n in names if names.count(n) > 1})}"


def test_torch_is_pinned_once_and_the_same_in_the_makefile_and_the_dockerfile():
    torch = pins()["torch"]
    assert torch == "2.13.0"  # README, the Dockerfile's comments and the findings name this version
    makefile = read("Makefile")
    spec = re.search(r"^TORCH_SPEC \?= (\S+)$", makefile, re.MULTILINE)
    assert spec, "the Makefile no longer sets TORCH_SPEC"
    requirement = Requirement(spec[1])
    assert (canonicalize_name(requirement.name), str(requirement.specifier)) == ("torch", f"=={torch}")
    # Every other mention of a torch version in the files that install it agrees, and none has a local label.
    for name in ("Makefile", "Dockerfile"):
        for version in re.findall(r"\btorch==([^\s\"'$)]+)", read(name)):
            assert version == torch, f"{name} pins torch=={version}, constraints.txt torch=={torch}"


def test_the_packages_the_makefile_and_dockerfile_install_are_pinned():
    """`make install` (which the Dockerfile runs) installs the package with its dev extra through
    constraints.txt; the GPU bundle downloads wheels by their pins. Each of those names has a pin."""
    import tomllib

    project = tomllib.loads(read("pyproject.toml"))["project"]
    wanted = [Requirement(spec).name for spec in project["dependencies"] + project["optional-dependencies"]["dev"]]
    gpu = re.search(r"^GPU_WHEELS := (.+)$", read("Makefile"), re.MULTILINE)[1].split()
    missing = sorted({canonicalize_name(name) for name in wanted + gpu} - set(pins()))
    assert not missing, f"installed but not pinned in constraints.txt: {missing}"
    assert "make install" in read("Dockerfile") and "-c constraints.txt" in read("Makefile")
