"""Pins that install anywhere: no local version labels, one torch version across the files that install it.

`torch==2.13.0` matches the CUDA wheel (2.13.0) and the CPU one (2.13.0+cpu); `torch==2.13.0+cpu` matches only the
CPU build, so a constraints file with it fails on every machine whose index serves the CUDA build (the image's).
"""

import re

import pytest

from conftest import ROOT

PIN = re.compile(r"^\s*([A-Za-z0-9_.-]+)\s*==\s*([^\s;#]+)", re.MULTILINE)
TORCH = re.compile(r"\btorch==([^\s\"'$)]+)")


def check_pins(constraints: str, makefile: str, dockerfile: str) -> str:
    """The torch version all three agree on; ValueError naming the line otherwise."""
    for name, version in PIN.findall(constraints):
        if "+" in version:
            raise ValueError(f"constraints.txt pins {name}=={version}: a local version label matches one build only")
    found = {("constraints.txt", v) for n, v in PIN.findall(constraints) if n.lower() == "torch"}
    found |= {("Makefile", v) for v in TORCH.findall(makefile)} | {("Dockerfile", v) for v in TORCH.findall(dockerfile)}
    for where, version in found:
        if "+" in version:
            raise ValueError(f"{where} pins torch=={version}: a local version label matches one build only")
    versions = {version for _, version in found}
    if len(versions) != 1 or not any(where == "constraints.txt" for where, _ in found):
        raise ValueError(f"torch must be pinned once, the same everywhere; found {sorted(found)}")
    return versions.pop()


def read(name):
    return (ROOT / name).read_text(encoding="utf-8")


def test_the_shipped_pins_install_anywhere():
    assert check_pins(read("constraints.txt"), read("Makefile"), read("Dockerfile")) == "2.13.0"
    assert "TORCH_SPEC ?= torch==2.13.0" in read("Makefile")


@pytest.mark.parametrize("constraints, makefile, problem", [
    ("numpy==2.4.6\ntorch==2.13.0+cpu\n", "TORCH_SPEC ?= torch==2.13.0", "torch==2.13.0+cpu"),
    ("torch==2.13.0\nsomething==1.0+local\n", "TORCH_SPEC ?= torch==2.13.0", "something==1.0+local"),
    ("torch==2.13.0\n", "TORCH_SPEC ?= torch==2.14.1", "the same everywhere"),
    ("torch==2.13.0\n", "TORCH_SPEC ?= torch==2.13.0+cu128", "torch==2.13.0+cu128"),
    ("numpy==2.4.6\n", "TORCH_SPEC ?= torch==2.13.0", "pinned once"),
])
def test_the_check_catches_a_local_label_or_two_pins(constraints, makefile, problem):
    with pytest.raises(ValueError, match=re.escape(problem)):
        check_pins(constraints, makefile, read("Dockerfile"))
