"""Files that must survive crashes: atomic writes, the JSONL run log, and the run-folder lock.

These helpers sit below every module that writes to disk (checkpoints, cascades, videos,
training runs), so none of those needs to import another to save a file.

- ``atomic_write``: write to a temporary file in the same folder, flush it to disk
  (``sync_fd``: through the drive's cache on macOS too), then ``os.replace`` it onto the
  target. A crash or a full disk leaves the old file whole.
- ``read_log`` / ``append_log``: one JSON object per line. A torn *last* line (a crash in
  the middle of a write) is dropped with a warning; damage anywhere else names the file
  and the line.
- ``RunLock``: an exclusive, advisory ``flock`` on ``<run>/.lock``, so two trainers never
  write one run folder at once. The lock is released by the OS when the process dies.
  ``lock_holder`` says who holds it (``ivref export`` notes a run still training).
"""

from __future__ import annotations

import errno
import fcntl
import functools
import json
import math
import os
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

LOCK = ".lock"


@functools.cache
def _umask() -> int:
    """The process umask, read once on the first write (os.umask can only read by setting)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def sync_fd(fd: int, full: bool = True) -> None:
    """Flush an open file's data to the storage itself, not only to the drive's cache.

    On Linux ``os.fsync`` does both. On macOS it only hands the data to the drive, whose
    write cache may still lose it in a power cut; ``fcntl(fd, F_FULLFSYNC)`` asks the drive
    to flush that cache too (its whole cache: tens of milliseconds). Where F_FULLFSYNC exists
    but the file system refuses it (some network and FUSE mounts), this falls back to
    ``os.fsync``; ``full=False`` uses ``os.fsync`` alone (a cache checked on reading).
    """
    full_fsync = getattr(fcntl, "F_FULLFSYNC", None) if full else None  # macOS only
    if full_fsync is not None:
        try:
            fcntl.fcntl(fd, full_fsync)
            return
        except OSError:
            pass
    os.fsync(fd)


def fsync_dir(path: str | os.PathLike, full: bool = True) -> None:
    """Flush a folder's entries (renames into it) to disk; a no-op where folders can't sync.
    ``full``: as ``sync_fd``'s."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        sync_fd(fd, full)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(
    path: str | os.PathLike,
    write: Callable[[str], object],
    suffix: str = ".tmp",
    full_sync: bool = True,
    follow_links: bool = False,
) -> Path:
    """Call write(tmp) on a temporary path in path's folder, fsync it, then rename it onto path.

    ``suffix`` ends the temporary name (writers such as ffmpeg pick the format from it).
    ``full_sync=False`` skips macOS's flush of the drive's cache (``sync_fd``): for a cache
    whose entries are checked when read and can be made again. On
    any error (a full disk included) the temporary file is removed and the old ``path``, if
    any, is untouched. A writer's error that reports an OS error (safetensors' "os error 28",
    ffmpeg's "No space left on device") is raised as that OSError, naming ``path``.
    A symbolic link at ``path`` is replaced by the new file (the file it points to is left
    as it was: a run folder branched with links does not write into the run it came from);
    ``follow_links=True`` writes through it instead, as ``open(path, "w")`` would, for an
    output the user named (``ivref generate --out link.gif``): the file it points to is
    replaced, in its own folder so the rename stays atomic, and the link stays. Returns
    ``path`` as given.
    """
    given = Path(path)
    path = _through_link(given) if follow_links else given
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        try:
            write(tmp)
        except Exception as err:
            os_err = as_os_error(err, path)
            if os_err is None:
                raise
            raise os_err from err
        with open(tmp, "rb") as fh:
            sync_fd(fh.fileno(), full_sync)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp, path)
        fsync_dir(path.parent, full_sync)  # the rename on disk: a power loss keeps the new file
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return given


# atomic_write's temporary name: "." + the file's name + "." + mkstemp's 8 random characters
# + the suffix (".tmp" unless the writer needs another)
TEMPORARY = re.compile(r"^\.(.+)\.[a-z0-9_]{8}\.tmp$")


def remove_temporary(folder: str | os.PathLike) -> list[Path]:
    """Remove what killed ``atomic_write`` calls left in ``folder`` (``.NAME.xxxxxxxx.tmp``
    files; the files they were to replace are whole); returns them. Call it only where no
    other process writes into ``folder`` at the same time (a run folder under its lock)."""
    try:
        children = list(Path(folder).iterdir())
    except OSError:
        return []
    left = [p for p in children if TEMPORARY.match(p.name) and p.is_file()]
    for path in left:
        path.unlink(missing_ok=True)
    return left


def _through_link(path: Path) -> Path:
    """Where a write to ``path`` lands: the file a symbolic link there points to (followed
    to the end, even where that file does not exist yet), else ``path`` itself."""
    return Path(os.path.realpath(path)) if path.is_symlink() else path


_OS_ERRORS = (  # how writers that are not Python file objects report an OS error
    (re.compile(r"os error (\d+)"), None),  # Rust (safetensors): "... (os error 28)"
    (re.compile(r"No space left on device"), errno.ENOSPC),  # ffmpeg (mediapy)
    (re.compile(r"Read-only file system"), errno.EROFS),
    (re.compile(r"Permission denied"), errno.EACCES),
)


def replace_folder(
    directory: str | os.PathLike, write: Callable[[Path], Any], drop: Iterable[str] = ()
) -> Path:
    """Replace ``directory``'s contents as one step: ``write(new)`` fills a sibling folder
    that first gets hard links (copies where links fail) of everything the old folder holds
    but the top-level names in ``drop``; then two renames swap the folders and the old one
    is removed. Interrupted before the swap, the old folder is untouched; between the two
    renames, both stand beside it as ``.<name>.old-*`` and ``.<name>.new-*``, and the next
    ``replace_folder`` or ``finish_replace`` of ``directory`` completes the swap. A symbolic
    link is followed: the folder it points to is replaced, and the link kept."""
    given = Path(directory)
    directory = Path(os.path.realpath(given))  # also gives "." and ".." a name and a parent
    finish_replace(directory)
    tag = f"{os.getpid()}-{os.urandom(4).hex()}"
    new = directory.with_name(f".{directory.name}.new-{tag}")
    old = directory.with_name(f".{directory.name}.old-{tag}")
    dropped = set(drop)

    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    try:
        shutil.copytree(
            directory, new, copy_function=link,
            ignore=lambda d, names: [n for n in names if Path(d) == directory and n in dropped],
        )  # fmt: skip
        write(new)
        for folder, _, _ in os.walk(new):  # every entry of the new folder on disk before the
            fsync_dir(Path(folder))  # swap, after which the old one is removed
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise
    os.replace(directory, old)
    try:
        os.replace(new, directory)
    except FileNotFoundError:  # another machine's finish_replace moved it in for us
        if not directory.is_dir():
            raise
    fsync_dir(directory.parent)
    shutil.rmtree(old, ignore_errors=True)
    return given


def finish_replace(directory: str | os.PathLike) -> Path:
    """Complete a ``replace_folder`` of ``directory`` that was killed part-way; returns it.

    Killed between its two renames, ``directory`` is missing and its finished new copy and
    the old folder stand beside it under one tag: the new one is renamed into place, then
    the old one removed. An old folder whose swap finished (killed while removing it) is
    removed, and so is a lone ``.new-*`` whose writer was killed while writing (the folder
    it was to replace is whole). A tag starts with its writer's pid: while that process runs
    on this machine its swap is in progress, not killed, and is left alone, as is anything
    that fits none of these pictures (a writer on another machine sharing the folder is not
    seen: do not overwrite one cascade folder from two machines at once). Best
    effort: a repair that cannot be made (a read-only place, another process repairing at
    the same moment) leaves everything as it was.
    """
    given = Path(directory)
    directory = Path(os.path.realpath(given))
    prefix = f".{directory.name}."
    try:
        names = [p.name for p in directory.parent.iterdir()]
    except OSError:
        return given
    olds = {tag for tag in _tags(names, prefix + "old-") if not _writer_running(tag)}
    news = _tags(names, prefix + "new-")
    swapped = olds & news
    if not directory.exists() and len(swapped) == 1:
        tag = swapped.pop()
        try:
            os.replace(directory.with_name(f"{prefix}new-{tag}"), directory)
            fsync_dir(directory.parent)
        except OSError:
            return given
        news.discard(tag)
    if directory.is_dir():
        for tag in olds - news:
            shutil.rmtree(directory.with_name(f"{prefix}old-{tag}"), ignore_errors=True)
        for tag in news - olds:
            if not _writer_running(tag):
                shutil.rmtree(directory.with_name(f"{prefix}new-{tag}"), ignore_errors=True)
    return given


_TAG = re.compile(r"([0-9]+)-[0-9a-f]{8}")  # replace_folder's: <pid>-<4 random bytes in hex>


def _tags(names: Iterable[str], start: str) -> set[str]:
    """The tags of the names ``<start><tag>``; a name whose rest is not exactly a tag (the
    leftovers of a folder ``c.old-2024`` beside ``c``, say) belongs to another folder."""
    return {
        n[len(start) :] for n in names if n.startswith(start) and _TAG.fullmatch(n[len(start) :])
    }


def _writer_running(tag: str) -> bool:
    """Whether the process that made a ``replace_folder`` tag (``<pid>-<hex>``) still runs
    on this machine."""
    pid = int(tag.split("-", 1)[0])
    if pid == os.getpid():  # this process is not in a swap while it repairs
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True
    return True


def as_os_error(err: BaseException, path: str | os.PathLike) -> OSError | None:
    """``err`` as an OSError about ``path`` if it reports one, else None.

    Writers that are not Python file objects (safetensors, ffmpeg) report a full disk as
    another exception type with the OS message in its text. OSErrors are returned as is.
    """
    if isinstance(err, OSError):
        return err
    text = str(err)
    for pattern, code in _OS_ERRORS:
        match = pattern.search(text)
        if match:
            code = code if code is not None else int(match.group(1))
            return OSError(code, os.strerror(code), str(path))
    return None


def atomic_write_text(path: str | os.PathLike, text: str, follow_links: bool = False) -> Path:
    """``atomic_write`` of a UTF-8 text file (``follow_links``: as there)."""
    write = lambda tmp: Path(tmp).write_text(text, encoding="utf-8")  # noqa: E731
    return atomic_write(path, write, follow_links=follow_links)


def check_writable(path: str | os.PathLike, what: str = "--out") -> None:
    """Raise ValueError unless a file can be created at ``path`` (or in it, for a folder).

    Meant to run before any long work. Probes the nearest folder that exists by creating
    (and removing) a temporary file in it, so a read-only file system or missing permission
    shows even to root, for whom ``os.access`` always says yes. ``what`` names the argument
    in the message.
    """
    path = Path(path)
    target = _through_link(path)  # a user-named output is written where a link points
    parent = target if target.is_dir() else target.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"{what} {str(path)!r}: {str(parent)!r} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".ivref-probe-", dir=parent)
    except OSError as err:
        raise ValueError(
            f"{what} {str(path)!r}: cannot write in {str(parent)!r} ({err.strerror}); "
            "choose a writable place"
        ) from None
    os.close(fd)
    os.remove(probe)


def read_log(path: str | os.PathLike, *, name: str = "log.jsonl") -> list[dict[str, Any]]:
    """The rows of a JSONL log (``path`` or ``path/name``); a torn last line is dropped.

    Raises ValueError naming the file and line for a damaged line that is not the last.
    """
    path = Path(path)
    if path.is_dir():
        path = path / name
    lines = path.read_text(encoding="utf-8").splitlines()
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError("not a JSON object")
        except ValueError as err:
            if number == len(lines):
                warnings.warn(
                    f"{path}: dropped a torn last line ({number}); the run was interrupted "
                    "while writing it",
                    stacklevel=2,
                )
                break
            raise ValueError(f"{path}: line {number} is not a JSON object: {err}") from None
        rows.append(row)
    return rows


def finite_row(row: dict[str, Any]) -> dict[str, Any]:
    """A log row as strict JSON holds it: a non-finite number (a skipped step's loss) is None."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()}


def _json_row(row: dict[str, Any]) -> str:
    """One log line, strict JSON (``finite_row``)."""
    return json.dumps(finite_row(row), allow_nan=False) + "\n"


def append_log(path: str | os.PathLike, row: dict[str, Any]) -> None:
    """Append one row to a JSONL log, flushed to the OS before returning."""
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(_json_row(row))
        fh.flush()


def write_log(path: str | os.PathLike, rows: list[dict[str, Any]]) -> Path:
    """Replace a JSONL log with ``rows``, atomically."""
    return atomic_write_text(path, "".join(_json_row(r) for r in rows))


_BUSY = (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK)  # flock's "someone holds it"
_PROBE_WAIT_S = 0.25  # how long RunLock waits out a lock_holder probe (microseconds long)


def lock_holder(folder: str | os.PathLike) -> str | None:
    """Who holds ``folder``'s run lock (``RunLock``), as its lock file names them ("pid N"),
    or None where nobody does (or the file system cannot tell: no flock there). Makes no
    lock file; to look, it holds a shared lock for a moment, which ``RunLock`` waits out."""
    path = Path(folder) / LOCK
    if str(path.resolve()) in _HELD:
        return f"this process (pid {os.getpid()})"
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # no lock file: never locked
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno not in _BUSY:
            return None  # a note, not worth failing for (e.g. ENOLCK: no flock on this mount)
        return os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _flock_exclusive(fd: int) -> None:
    """``flock(LOCK_EX | LOCK_NB)``, retried for ``_PROBE_WAIT_S`` while held: a
    ``lock_holder`` probe holds a shared lock for microseconds and must not refuse a
    trainer. A holder that stays raises the OSError (EWOULDBLOCK)."""
    deadline = time.monotonic() + _PROBE_WAIT_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError as err:
            if err.errno not in _BUSY or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


class RunLockedError(RuntimeError):
    """Another process holds the run folder's lock."""


_HELD: dict[str, tuple[int, int]] = {}  # resolved lock path -> (fd, depth) in this process


class RunLock:
    """Exclusive lock on a run folder (``<folder>/.lock``), re-entrant within one process.

    ``with RunLock(folder): ...``. A second process gets ``RunLockedError`` at once, naming
    the folder and the pid recorded in the lock file.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK

    def acquire(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        key = str(self.path.resolve())
        if key in _HELD:
            fd, depth = _HELD[key]
            _HELD[key] = (fd, depth + 1)
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
        try:
            _flock_exclusive(fd)
        except OSError as err:
            os.close(fd)
            if err.errno not in _BUSY:
                raise
            holder = self.path.read_text().strip() or "another process"
            raise RunLockedError(
                f"run folder {str(self.folder)!r} is in use by {holder}: one trainer per run "
                "folder; wait for it to finish or choose another --out"
            ) from None
        try:  # who holds it, for the message above (a full disk must not leave it locked)
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()}".encode())
        except BaseException:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            raise
        _HELD[key] = (fd, 1)

    def release(self) -> None:
        key = str(self.path.resolve())
        if key not in _HELD:
            return
        fd, depth = _HELD[key]
        if depth > 1:
            _HELD[key] = (fd, depth - 1)
            return
        del _HELD[key]
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
