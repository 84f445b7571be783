"""Can personae write where it was told to? Checked before any work starts (and any model call).

Every command checks its output locations with :func:`require_writable` first, so a
path below a regular file, a directory given for a file, a broken symlink or a place the
process cannot write fails as one :class:`ConfigError`, with nothing created.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from personae.errors import ConfigError

__all__ = ["require_writable"]


def require_writable(path: str | os.PathLike, *, kind: Literal["file", "dir"], field: str | None = None) -> Path:
    """Return ``path`` if personae can write it as a ``kind``; raise :class:`ConfigError` naming it otherwise.

    An existing path must be of that kind and writable; a missing one must be creatable:
    its nearest existing ancestor must be a directory the process can create files in.
    The check really tries (``os.access`` says yes to root everywhere, even on ``/proc``):
    it opens an existing file for appending without writing, or creates and at once
    removes a probe file in the directory. Nothing else is created or changed.
    """
    path = Path(path).expanduser()
    target = path.absolute()

    def fail(problem: str, expected: str) -> ConfigError:
        return ConfigError(problem, file=str(path), field=field, expected=expected)

    wanted = "a file path" if kind == "file" else "a directory"
    if os.path.lexists(target):
        if not target.exists():
            raise fail("is a broken symlink or a symlink loop", wanted)
        if kind == "file":
            if target.is_dir():
                raise fail("is a directory", "a file path, not a directory")
            _probe_file(target, fail)
        else:
            if not target.is_dir():
                raise fail("is a file, not a directory", "a directory (or a path that does not exist yet)")
            _probe_dir(target, fail)
        return path
    ancestor = target.parent
    while not os.path.lexists(ancestor):
        ancestor = ancestor.parent
    if not ancestor.exists():
        raise fail(f"cannot be created: {ancestor} is a broken symlink or a symlink loop", wanted)
    if not ancestor.is_dir():
        raise fail(f"cannot be created: {ancestor} is a file, not a directory", wanted)
    _probe_dir(ancestor, fail)
    return path


def _probe_file(path: Path, fail: Callable[[str, str], ConfigError]) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK)
    except OSError as exc:
        raise fail(f"cannot be written ({exc.strerror})", "a file personae may append to") from None
    os.close(fd)


def _probe_dir(directory: Path, fail: Callable[[str, str], ConfigError]) -> None:
    try:
        fd, probe = tempfile.mkstemp(prefix=".personae-probe-", dir=directory)
    except OSError as exc:
        raise fail(f"cannot be written: creating a file in {directory} fails ({exc.strerror})", "a place personae may write") from None
    os.close(fd)
    os.unlink(probe)
