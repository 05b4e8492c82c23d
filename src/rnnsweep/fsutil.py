"""Crash-safe file writes: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import json
import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator


@contextmanager
def atomic_open(path: Path, mode: str = "w") -> Iterator[IO]:
    """Write to a temp file beside `path`, fsync it, then rename it over `path`.

    `mode` is "w" or "wb". The temp file lives in the same directory so the
    rename is atomic on POSIX; on any exception it is removed and `path` is
    untouched. Its name is unique per process and it is created with the usual
    umask permissions (mkstemp would make every result 0600, unreadable to
    colleagues sharing a cluster folder).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, mode.replace("w", "x")) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_open(path) as handle:
        handle.write(text)


def atomic_write_json(path: Path, obj: object) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


class UnsafePath(ValueError):
    """A path inside the results folder that is a symbolic link where a real folder or file must be."""


def real_dirs(root: Path, path: Path) -> Path:
    """Make `path` (inside `root`) and its parents below `root`, refusing any that is a symbolic link.

    Writes under a results folder follow no link, so a link planted inside it
    (by hand, or by another user on a shared filesystem) cannot redirect a
    worker's files outside it. `root` itself may be a link (results on scratch).
    """
    root, path = Path(root), Path(path)
    current = root
    for part in path.relative_to(root).parts:
        current = current / part
        if current.is_symlink():
            raise UnsafePath(f"{current} is a symbolic link; refusing to write through it")
        current.mkdir(exist_ok=True)
    return path


def append_line(path: Path, line: str) -> None:
    """Append one line to a log file, never through a symbolic link."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o666)
    except OSError:
        if Path(path).is_symlink():
            raise UnsafePath(f"{path} is a symbolic link; refusing to write through it") from None
        raise
    with os.fdopen(fd, "a") as handle:
        handle.write(line + "\n")
