"""Atomic file writes: readers never see a half-written file, an interrupted writer leaves none."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from medclf.errors import MedclfError


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success rename it over `path`, on error delete it.

    A place that cannot be written (no permission, a file where a folder should be, a folder where the file
    should be) is a MedclfError naming `path`, so every command reports it on one line."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise MedclfError(f"{path}: cannot write ({os_reason(err, path.parent)})") from None
    os.close(fd)
    os.chmod(tmp, usual_mode(0o666))  # mkstemp makes 0600; a result gets the mode any new file of the user gets
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        try:
            os.replace(tmp_path, path)
        except OSError as err:
            raise MedclfError(f"{path}: cannot write ({os_reason(err, path)})") from None
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def usual_mode(requested: int) -> int:
    """The mode a plain open()/mkdir() with `requested` (0o666 for files, 0o777 for folders) would give: the
    user's umask applied. mkstemp/mkdtemp make 0600/0700 instead, which would hide results from a group."""
    return requested & ~current_umask()


def current_umask() -> int:
    """The process's umask, read without changing it where Linux shows it (os.umask can only set it, and
    setting it back leaves a moment where another thread would create files with the wrong mode)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def make_temp_dir(prefix: str, parent: str | Path) -> Path:
    """A new, uniquely named folder in `parent` (tempfile.mkdtemp) with the user's usual folder mode."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    os.chmod(path, usual_mode(0o777))
    return path


def os_reason(err: OSError, path: str | Path) -> str:
    """Why an OSError on `path` happened, in words a user can act on ('permission denied', 'x is a file, not
    a folder')."""
    if err.errno in (errno.EEXIST, errno.ENOTDIR):
        for parent in [Path(path), *Path(path).parents]:
            if os.path.lexists(parent):
                if not parent.is_dir():
                    return f"{parent} is a file, not a folder"
                break
    if err.errno == errno.EISDIR:
        return f"{path} is a folder"
    text = err.strerror or str(err)
    return text[:1].lower() + text[1:]


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _json_default(obj: Any) -> Any:
    # numpy scalars and arrays appear in metrics; convert without importing numpy at module load.
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
