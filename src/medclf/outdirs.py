"""Output folders: medclf writes only into folders it made, never into the current folder, one writer at a time.

- **Recognising medclf's folders.** Caches, ensembles and studies carry a marker file, `.medclf` (JSON: `kind`,
  `version`), written when medclf creates them. A folder without one is medclf's only when its *contents*
  prove it, never by a file name alone (another program's `cache.json` or `best.pt` proves nothing): a cache
  by a `cache.json` holding medclf's keys beside the images and manifest it names, a single-model run by a
  checkpoint that carries medclf's format and data contract (or, killed before its first checkpoint, a
  `config.yaml` that is a valid medclf config beside medclf's `data_summary.json`), an ensemble member by its
  place in a marked ensemble. A run folder's listing is part of the run contract (tests/distributed pins it),
  so a run gets no marker. The proofs belong to the layers that write those files: `medclf.runs.layout`
  (runs, ensembles, studies) and `medclf.data.cache` (caches) register them here when imported
  (`register_recogniser`), so this bottom-layer module names none of them and imports neither. `import
  medclf` loads the (light) run layout first, and every writer of a cache, run, ensemble or study imports
  `medclf.data.cache`, so both are registered before any folder is claimed. Were a kind not registered, its
  folders would still be refused, as "not made by medclf".
- **Claiming.** `claim_output_dir` refuses a non-empty folder medclf did not make (whatever the flags: there
  is no `--force` for someone else's files), a folder of another kind (a run is never replaced by a cache),
  the current folder or any folder above it, and a symbolic link (it would be replaced or written through
  without the user seeing where). An empty folder is fine. Inside a medclf folder medclf replaces only the
  files it writes (a cache with other files in it is not replaced: `refuse_foreign_files`).
- **Single output files.** `check_output_file` is the one rule for every `--out FILE`: an existing file is
  replaced only with `--force`, a symbolic link is refused (never silently replaced), a folder is refused.
- **Locking.** `folder_lock` holds a lock file (`O_EXCL`, with the holder's pid, host and start time) while a
  process writes a folder; a second writer is refused with the holder's pid. A lock is stale (a killed run)
  and taken over when, on this host, its pid is dead or now belongs to another process: the lock records the
  holder's start time (`/proc/PID/stat` field 22, clock ticks since boot) and command line, and a live pid
  whose start time or command line differs is a reused pid, not the writer (the takeover is noted on stderr,
  naming what was found). Without /proc a lock's pid is judged by liveness alone. Caches are replaced by a
  rename, so their lock sits beside them (`OUT.lock`, like `OUT.partial`); runs, ensembles and studies are
  written in place and hold it inside.

The marker and lock file names are written in this module only.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator

from medclf.errors import MedclfError
from medclf.io import os_reason, read_json, write_json

MARKER = ".medclf"
LOCK = ".medclf.lock"
MARKER_VERSION = 1
KINDS = ("cache", "run", "ensemble", "study")
MARKED_KINDS = ("cache", "ensemble", "study")  # runs are recognised by their own files (module docstring)
REPLACED_KINDS = ("cache",)  # built aside and renamed into place: the lock sits beside the folder
# a folder made before markers (or a run, which has none) is of the first kind, in this order, one of whose
# file sets it holds: an ensemble also holds a run's config.yaml and data_summary.json
RECOGNITION_ORDER = ("ensemble", "run", "cache", "study")
RECOGNISERS: dict[str, Callable[[Path], bool]] = {}  # kind -> proof from contents; filled by register_recogniser
_STALE_UNREADABLE_S = 60.0  # an empty lock file (its writer killed between create and write) is stale after this


def register_recogniser(kind: str, proves: Callable[[Path], bool]) -> None:
    """Recognise an unmarked folder as `kind` when `proves(folder)` is True: its contents are what medclf
    writes, not merely named like it (called by the module that owns the kind's layout, at import). `proves`
    must not raise for a foreign or damaged file: that is simply no proof."""
    if kind not in KINDS:
        raise ValueError(f"unknown output kind {kind!r}; valid: {', '.join(KINDS)}")
    RECOGNISERS[kind] = proves


def folder_kind(path: str | Path) -> str | None:
    """The kind of medclf folder at `path` ('cache', 'run', 'ensemble', 'study'), or None when it is absent,
    empty or not medclf's. A study made before markers is a folder of medclf runs and ensembles."""
    path = Path(path)
    if not path.exists():
        return None
    if not path.is_dir():
        raise MedclfError(f"{path}: exists and is not a folder")
    marker = path / MARKER
    if marker.is_file():
        return _marker_kind(marker)
    for kind in RECOGNITION_ORDER:
        proves = RECOGNISERS.get(kind)
        if proves is not None and _proven(proves, path):
            return kind
    entries = _entries(path)
    if entries and all(p.is_dir() and folder_kind(p) in ("run", "ensemble") for p in entries):
        return "study"
    return None


def claim_output_dir(path: str | Path, kind: str, replace: bool = False) -> bool:
    """Check that medclf may write a `kind` folder at `path`; True when `path` already holds one (to resume,
    keep or replace: the caller decides), False when it is absent or empty.

    `replace=False` (written in place: runs, ensembles, studies) creates the folder and, for marked kinds, its
    marker. `replace=True` (a cache, built aside and renamed over `path`) only checks and creates nothing.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown output kind {kind!r}; valid: {', '.join(KINDS)}")
    path = Path(path)
    _refuse_cwd(path, kind)
    _refuse_link(path, "--out")
    found = folder_kind(path)
    if found is None and _entries(path):
        raise MedclfError(f"{path}: not empty and not made by medclf (no {MARKER} marker, no {kind} files); medclf "
                          "only writes into or replaces folders it made, so choose another --out, or empty or "
                          "remove that folder yourself")
    if found not in (None, kind):
        raise MedclfError(f"{path}: holds a medclf {found}, not {_a(kind)}; choose another --out")
    if not replace:
        make_dirs(path)
        if kind in MARKED_KINDS and not (path / MARKER).exists():
            write_marker(path, kind)
    return found is not None


def refuse_foreign_files(path: str | Path, own: set[str]) -> None:
    """Refuse to replace the medclf folder at `path` as a whole while it holds anything not in `own` (the
    names medclf writes there): replacing it would destroy the user's files."""
    path = Path(path)
    foreign = sorted(p.name + ("/" if p.is_dir() else "") for p in _entries(path) if p.name not in own)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise MedclfError(f"{path}: also holds files medclf did not write ({shown}); medclf replaces only its "
                          "own files, so move those out of the folder or choose another --out")


def check_output_file(path: str | Path, force: bool = False, option: str = "--out") -> Path:
    """The one rule for every single output file the user names (`--out FILE`): a new file is fine, an
    existing one is replaced only with `force` (`--force`), a symbolic link is refused whatever `force` says
    (replacing it would silently drop the link, writing through it would write where the user did not look),
    and a folder is refused. Returns `path`."""
    path = Path(path)
    _refuse_link(path, option)
    if path.is_dir():
        raise MedclfError(f"{path}: is a folder; {option} names the file to write")
    if path.exists() and not force:
        raise MedclfError(f"{path}: already exists; pass --force to replace it, or choose another {option}")
    return path


def write_marker(path: str | Path, kind: str) -> None:
    """Mark `path` as a medclf folder of `kind` (atomically, so a reader never sees half a marker)."""
    write_json(Path(path) / MARKER, {"made_by": "medclf", "kind": kind, "version": MARKER_VERSION})


def make_dirs(path: str | Path) -> None:
    """`mkdir -p` whose failure is one line naming the folder (and, under a file, that file)."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise MedclfError(f"{path}: cannot create the folder ({os_reason(err, path)})") from None


def remove_if_unused(path: str | Path) -> None:
    """Remove a folder this process created (and no longer locks) when it still holds nothing but medclf's
    marker, so a refused or failed start leaves nothing behind. A lock file there means another writer came
    in meanwhile: the folder is then theirs and stays."""
    path = Path(path)
    with contextlib.suppress(OSError):
        if all(p.name == MARKER for p in path.iterdir()):
            with contextlib.suppress(FileNotFoundError):
                (path / MARKER).unlink()
            path.rmdir()


@contextlib.contextmanager
def output_dir(path: str | Path, kind: str) -> Iterator[bool]:
    """Claim `path` for a `kind` written in place and hold its lock for the block; yields whether it already
    held one. If this call created the folder and the block fails before writing into it, it is removed."""
    path = Path(path)
    created = not path.exists()
    claim_output_dir(path, kind, replace=True)  # only checks: a refused second writer marks nothing
    try:
        with folder_lock(path, kind):
            yield claim_output_dir(path, kind)
    except BaseException:
        if created:
            remove_if_unused(path)
        raise


def lock_path(path: str | Path, kind: str) -> Path:
    """Where the lock of the `kind` folder at `path` lives (module docstring)."""
    path = Path(path)
    return path.parent / f"{path.name}.lock" if kind in REPLACED_KINDS else path / LOCK


class FolderLock:
    """The lock of one output folder; `acquire()`/`release()` or `with folder_lock(path, kind):`.

    Not re-entrant: a second acquire of the same folder, even from this process, is refused.
    """

    def __init__(self, path: str | Path, kind: str) -> None:
        self.folder = Path(path)
        self.file = lock_path(path, kind)
        self._token: str | None = None

    @property
    def held(self) -> bool:
        return self._token is not None

    def acquire(self) -> FolderLock:
        try:
            self.file.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:  # named after the folder the user asked for, not its parent
            raise MedclfError(f"{self.folder}: cannot create the folder ({os_reason(err, self.file.parent)})") from None
        token = uuid.uuid4().hex
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                "token": token, **process_identity(os.getpid())}
        for _ in range(5):  # a stale lock is removed, then the create is tried again
            try:
                fd = os.open(self.file, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = _read_lock(self.file)
                state, found = _lock_state(holder, self.file)
                if state == "stale":
                    with contextlib.suppress(FileNotFoundError):
                        self.file.unlink()
                    if found:  # a killed writer's lock: say what was found, so a wrong takeover can be traced
                        print(f"note: {self.folder}: took over its stale lock {self.file} ({found})", file=sys.stderr)
                    continue
                raise MedclfError(self._busy_message(holder, state)) from None
            except OSError as err:
                raise MedclfError(f"{self.folder}: cannot create its lock file {self.file} "
                                  f"({os_reason(err, self.file)})") from None
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(info, fh)
            self._token = token
            return self
        raise MedclfError(f"{self.folder}: could not take its lock {self.file} (other processes keep taking it)")

    def release(self) -> None:
        """Remove the lock file if this object holds it (a no-op otherwise, so it is safe in `finally`)."""
        if self._token is None:
            return
        holder = _read_lock(self.file)
        if holder is not None and holder.get("token") == self._token:
            with contextlib.suppress(FileNotFoundError):
                self.file.unlink()
        self._token = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _busy_message(self, holder: dict | None, state: str) -> str:
        if state == "foreign":
            return (f"{self.folder}: {self.file} exists and is not a medclf lock; medclf needs that name for its "
                    "lock, so move that file or choose another --out")
        if holder is None:
            return (f"{self.folder}: in use by another medclf process (its lock {self.file} is being written); "
                    "try again in a moment")
        here = holder.get("host") == socket.gethostname()
        where = "" if here else f" on {holder.get('host')}"
        cmdline = process_identity(holder["pid"]).get("cmdline") if here else None
        running = f", running `{cmdline}`" if cmdline else ""  # what was found, should it not be medclf at all
        return (f"{self.folder}: in use by another medclf process (pid {holder.get('pid')}{where}, since "
                f"{holder.get('started')}{running}); wait for it to finish, or if that process is gone, delete "
                f"{self.file}")


@contextlib.contextmanager
def folder_lock(path: str | Path, kind: str) -> Iterator[FolderLock]:
    """Hold the lock of the `kind` folder at `path` for the block; refused (MedclfError) while another holds it."""
    with FolderLock(path, kind) as lock:
        yield lock


# ------------------------------------------------------------------------------------------------- internals


def _entries(path: Path) -> list[Path]:
    """What a folder holds, not counting a lock file (a killed writer's stale lock leaves a folder 'empty')."""
    if not path.is_dir():
        return []
    try:
        return [p for p in path.iterdir() if p.name != LOCK]
    except OSError as err:
        raise MedclfError(f"{path}: cannot list the folder ({os_reason(err, path)})") from None


def _proven(proves: Callable[[Path], bool], path: Path) -> bool:
    try:
        return bool(proves(path))
    except (OSError, ValueError):  # unreadable or malformed contents prove nothing
        return False


def _refuse_link(path: Path, option: str) -> None:
    if path.is_symlink():
        raise MedclfError(f"{path}: is a symbolic link (to {os.readlink(path)}); medclf neither replaces nor "
                          f"writes through links, so give the real path as {option}")


def _a(kind: str) -> str:
    return f"{'an' if kind[0] in 'aeiou' else 'a'} {kind}"


def _refuse_cwd(path: Path, kind: str) -> None:
    target, cwd = path.resolve(), Path.cwd().resolve()
    if target == cwd or target in cwd.parents:
        raise MedclfError(f"{path}: is the current folder or one above it; medclf writes a {kind} into a folder "
                          f"of its own (e.g. --out {path / kind})")


def _marker_kind(marker: Path) -> str:
    try:
        kind = read_json(marker).get("kind")
    except (OSError, ValueError, AttributeError):
        kind = None
    if kind not in KINDS:
        raise MedclfError(f"{marker}: not a readable medclf marker (kind {kind!r}); delete the folder yourself "
                          "if it is not needed, or choose another --out")
    return kind


def _read_lock(file: Path) -> dict | None:
    """The holder a lock file records; {} when the file vanished meanwhile, None when it holds no JSON object."""
    try:
        holder = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def _lock_state(holder: dict | None, file: Path) -> tuple[str, str]:
    """('stale', what was found) when the lock vanished, its writer died while writing it, or its pid is dead
    or now another process on this host; 'held', 'writing' (created an instant ago, content not yet written)
    or 'foreign' (not a medclf lock: never removed) with ''."""
    if holder == {}:
        return "stale", ""
    if holder is None:
        try:
            st = file.stat()
        except FileNotFoundError:
            return "stale", ""
        if st.st_size:
            return "foreign", ""
        return ("stale", "an empty lock file") if time.time() - st.st_mtime > _STALE_UNREADABLE_S else ("writing", "")
    if not {"pid", "host"} <= set(holder) or not isinstance(holder["pid"], int) or holder["pid"] <= 0:
        return "foreign", ""
    if holder["host"] != socket.gethostname():
        return "held", ""  # another machine's process cannot be checked from here
    pid = holder["pid"]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return "stale", f"pid {pid} is not running"
    except PermissionError:  # alive, another user's: its identity is still readable in /proc
        pass
    other = _not_the_writer(holder, process_identity(pid))
    return ("stale", f"pid {pid} is now {other}, not the medclf process that wrote the lock") if other else ("held", "")


def process_identity(pid: int) -> dict:
    """What tells one process from a later one given the same pid: its start time (`pid_start`, clock ticks
    since boot: field 22 of /proc/PID/stat) and command line (`cmdline`). Empty where there is no /proc
    (then a lock's pid is judged by liveness alone). Read by hand: psutil would be a dependency for two files."""
    identity: dict = {}
    with contextlib.suppress(OSError, ValueError, IndexError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        identity["pid_start"] = int(stat[stat.rindex(")") + 2:].split()[19])  # after "(comm)": the name may hold spaces
    with contextlib.suppress(OSError):
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        identity["cmdline"] = " ".join(part.decode(errors="replace") for part in raw.split(b"\0") if part)[:300]
    return identity


def _not_the_writer(holder: dict, now: dict) -> str:
    """'' when the live process with the lock's pid may be its writer, else a description of that process
    (its command line) for the message: another start time or another command line is another process."""
    described = f"`{now.get('cmdline') or '?'}`"
    if "pid_start" in holder and "pid_start" in now and holder["pid_start"] != now["pid_start"]:
        return f"{described}, started at another time"
    if "cmdline" in holder and "cmdline" in now and holder["cmdline"] != now["cmdline"]:
        return f"{described}, another command"  # e.g. a pid reused within the start time's 10 ms tick
    if "pid_start" in holder or "cmdline" in holder:
        return ""
    started, written = _start_epoch(now), _lock_epoch(holder)  # a lock written by an older medclf: times only
    if started is not None and written is not None and started > written + 2:  # 2 s: the lock's clock is in s
        return f"{described}, started after the lock was written"
    return ""


def _start_epoch(identity: dict) -> float | None:
    """When a process started (seconds since the epoch), from its start ticks and the boot time in /proc/stat."""
    if "pid_start" not in identity:
        return None
    with contextlib.suppress(OSError, ValueError, StopIteration):
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        return boot + identity["pid_start"] / os.sysconf("SC_CLK_TCK")
    return None


def _lock_epoch(holder: dict) -> float | None:
    with contextlib.suppress(TypeError, ValueError, OverflowError):
        return time.mktime(time.strptime(str(holder.get("started")), "%Y-%m-%d %H:%M:%S"))
    return None
