"""Files written whole or not at all, with the modes every output gets.

    with atomic_path(path) as tmp: ...      a file or a folder written into a sibling, renamed onto `path`
    write_text_atomic(path, text)            write_json_atomic(path, payload)      normalize_modes(path)
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from pathlib import Path

from pipeline.errors import ResourceError


@contextlib.contextmanager
def atomic_path(path: Path, replace: bool = True):
    """Yields a temporary sibling of `path` to write a file or a whole folder into; on success it is renamed onto
    `path` (a folder replaces the old one; with replace=False an existing `path` is kept and ours dropped), on any
    failure removed. A reader sees the old version or the new one, never half. Disk full: ResourceError.
    What is renamed into place gets the modes of normalize_modes, whoever wrote it."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    _remove(tmp)
    try:
        yield tmp
        if path.exists() and not replace:
            _remove(tmp)
            return
        normalize_modes(tmp)
        if tmp.is_dir():
            _remove(path)
        os.replace(tmp, path)
    except OSError as exc:
        _remove(tmp)
        if exc.errno == errno.ENOSPC:
            raise ResourceError(f"disk full while writing {path}; earlier outputs are intact") from None
        raise
    except BaseException:
        _remove(tmp)
        raise


def normalize_modes(path: Path) -> None:
    """Files 0o666 and folders 0o777 less the umask (0644 / 0755 by default), as open() and mkdir() make them, for
    `path` and everything under it. safetensors writes its files 0600: a sidecar or another account that uploads
    the outputs could not read the adapter. Symbolic links are left alone (chmod would follow them)."""
    umask = os.umask(0)  # the only way to read it; set back at once
    os.umask(umask)
    if path.is_symlink():
        return
    if not path.is_dir():
        os.chmod(path, 0o666 & ~umask)
        return
    for root, _, files in os.walk(path):
        os.chmod(root, 0o777 & ~umask)
        for name in files:
            if not os.path.islink(os.path.join(root, name)):
                os.chmod(os.path.join(root, name), 0o666 & ~umask)


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: Path, payload: dict) -> None:
    write_text_atomic(path, json.dumps(payload, ensure_ascii=False, indent=2) + "\n")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
