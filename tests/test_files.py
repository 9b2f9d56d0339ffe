"""Crash-safe files: atomic writes, a log that survives a torn line, one trainer per folder."""

import json
import os
import subprocess
import sys

import pytest

from ivref import files


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "f.txt"
    target.write_text("old")

    def boom(tmp):
        open(tmp, "w").write("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        files.atomic_write(target, boom)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_atomic_write_gives_the_usual_file_mode(tmp_path):
    umask = os.umask(0)
    os.umask(umask)
    path = files.atomic_write_text(tmp_path / "f.txt", "x")
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask and path.read_text() == "x"


def test_atomic_write_writes_through_a_symbolic_link_only_when_told(tmp_path):
    """A user-named output (generate --out link.gif) is written where its link points; a
    run folder's files are replaced, so a run branched with links (cp -rs) writes its own
    log and flags, not those of the run it came from."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    target, link = tmp_path / "b" / "video.gif", tmp_path / "a" / "link.gif"
    target.write_text("old")
    link.symlink_to(target)
    assert files.atomic_write_text(link, "new", follow_links=True) == link  # the name given
    assert link.is_symlink() and os.readlink(link) == str(target)  # the link stays
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "b", "link.gif", "video.gif"]
    files.atomic_write_text(link, "own")  # by default the link gives way to a file
    assert not link.is_symlink() and link.read_text() == "own" and target.read_text() == "new"
    dangling = tmp_path / "a" / "to-be.txt"  # a link to a file not written yet: made there
    dangling.symlink_to(tmp_path / "b" / "new" / "made.txt")
    files.atomic_write_text(dangling, "made", follow_links=True)
    assert dangling.is_symlink() and (tmp_path / "b" / "new" / "made.txt").read_text() == "made"
    (tmp_path / "file").write_text("")  # the write lands where the link points: checked there
    (tmp_path / "a" / "bad.gif").symlink_to(tmp_path / "file" / "x.gif")
    with pytest.raises(ValueError, match=r"'.*file' is a file, not a folder"):
        files.check_writable(tmp_path / "a" / "bad.gif")


def _record_syncs(monkeypatch, full_fsync, refuse=False):
    """Fake the platform: F_FULLFSYNC defined (macOS) or not (Linux), and record which sync
    reached each file descriptor; ``refuse``: the file system rejects F_FULLFSYNC."""
    import fcntl
    import stat

    calls = []
    if full_fsync is None:
        monkeypatch.delattr(fcntl, "F_FULLFSYNC", raising=False)
    else:
        monkeypatch.setattr(fcntl, "F_FULLFSYNC", full_fsync, raising=False)

    def kind(fd):
        return "dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"

    def fake_fcntl(fd, cmd, *args):
        assert cmd == full_fsync
        if refuse:
            raise OSError(45, "Operation not supported")
        calls.append(("F_FULLFSYNC", kind(fd)))

    real_fsync = os.fsync

    def fake_fsync(fd):
        calls.append(("fsync", kind(fd)))
        real_fsync(fd)

    monkeypatch.setattr(fcntl, "fcntl", fake_fcntl)
    monkeypatch.setattr(os, "fsync", fake_fsync)
    return calls


@pytest.mark.parametrize(
    "full_fsync, refuse, used",
    [(None, False, "fsync"), (51, False, "F_FULLFSYNC"), (51, True, "fsync")],
    ids=["linux", "macos", "macos-refused"],
)
def test_atomic_write_syncs_through_the_drive_cache_where_the_os_can(
    tmp_path, monkeypatch, full_fsync, refuse, used
):
    """macOS's fsync stops at the drive's write cache; F_FULLFSYNC (51 there) flushes it.
    Where a file system refuses it, plain fsync still runs: the file is never left unsynced."""
    calls = _record_syncs(monkeypatch, full_fsync, refuse)
    files.atomic_write_text(tmp_path / "f.txt", "x")
    assert calls == [(used, "file"), (used, "dir")]  # the data, then the rename into the folder
    assert (tmp_path / "f.txt").read_text() == "x"
    calls.clear()  # a cache's entries: fsync alone, no flush of the drive's cache
    files.atomic_write(tmp_path / "g", lambda tmp: open(tmp, "w").close(), full_sync=False)
    assert calls == [("fsync", "file"), ("fsync", "dir")]


def test_log_drops_a_torn_last_line_and_names_damage_elsewhere(tmp_path):
    log = tmp_path / "log.jsonl"
    files.append_log(log, {"step": 1})
    files.append_log(log, {"step": 2})
    with open(log, "a") as fh:
        fh.write('{"step": 3, "lo')  # the process died mid-line
    with pytest.warns(UserWarning, match="torn last line"):
        assert files.read_log(tmp_path) == [{"step": 1}, {"step": 2}]
    log.write_text('{"step": 1}\nnot json\n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"log\.jsonl: line 2"):
        files.read_log(log)
    files.write_log(log, [{"step": 7}])
    assert files.read_log(log) == [{"step": 7}]


HOLD = """
import sys, time
from ivref import files
lock = files.RunLock(sys.argv[1]); lock.acquire()
print("held", flush=True); time.sleep(60)
"""


def test_run_lock_refuses_a_second_process_and_is_reentrant_in_one(tmp_path):
    with files.RunLock(tmp_path), files.RunLock(tmp_path):  # re-entrant in one process
        pass
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(files.RunLockedError, match=f"in use by pid {holder.pid}"):
            files.RunLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    with files.RunLock(tmp_path):  # the OS released the dead holder's lock
        pass


def test_lock_holder_names_the_holding_process_and_makes_no_lock_file(tmp_path):
    assert files.lock_holder(tmp_path) is None
    assert not (tmp_path / files.LOCK).exists()  # only looked
    with files.RunLock(tmp_path):
        assert files.lock_holder(tmp_path) == f"this process (pid {os.getpid()})"
    assert files.lock_holder(tmp_path) is None  # released; the file stays, unlocked
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        assert files.lock_holder(tmp_path) == f"pid {holder.pid}"
        assert files.lock_holder(tmp_path) == f"pid {holder.pid}"  # looking took nothing
    finally:
        holder.kill()
        holder.wait()
    assert files.lock_holder(tmp_path) is None


def test_a_lock_holder_probe_does_not_refuse_a_trainer_that_starts_meanwhile(tmp_path, monkeypatch):
    """lock_holder holds a shared lock for a moment; a RunLock taken then waits it out
    (before, it was refused, naming whatever pid the lock file held)."""
    import fcntl
    import threading

    monkeypatch.setattr(files, "_PROBE_WAIT_S", 5.0)  # room for a slow, busy machine
    (tmp_path / files.LOCK).write_text("pid 4242")  # a trainer's, long gone
    probe = os.open(tmp_path / files.LOCK, os.O_RDONLY)
    fcntl.flock(probe, fcntl.LOCK_SH | fcntl.LOCK_NB)  # as lock_holder holds it
    done = threading.Timer(0.05, lambda: fcntl.flock(probe, fcntl.LOCK_UN))
    done.start()
    try:
        with files.RunLock(tmp_path):
            assert (tmp_path / files.LOCK).read_text() == f"pid {os.getpid()}"
    finally:
        done.cancel()
        done.join()
        os.close(probe)


def test_lock_holder_answers_none_where_the_file_system_cannot_tell(tmp_path, monkeypatch):
    """A note, never worth failing an export for: no flock on the mount (ENOLCK)."""
    import errno

    (tmp_path / files.LOCK).write_text("pid 4242")

    def no_locks(fd, how):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(files.fcntl, "flock", no_locks)
    assert files.lock_holder(tmp_path) is None


def test_check_writable_probes_the_folder_and_names_a_file_in_the_way(tmp_path):
    files.check_writable(tmp_path / "new" / "deeper" / "v.mp4")  # creates nothing
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match=r"--json '.*file/a/b.json': '.*file' is a file, not a"):
        files.check_writable(tmp_path / "file" / "a" / "b.json", "--json")
    if os.geteuid() != 0:  # root writes anywhere; the read-only mount case is in test_errors.py
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(ValueError, match="cannot write in .*Permission denied"):
            files.check_writable(locked / "v.mp4")


@pytest.mark.parametrize(
    "raised, code",
    [
        (RuntimeError("Error while serializing: I/O error: No space left (os error 28)"), 28),
        (RuntimeError("ffmpeg: [out#0/gif] No space left on device\nmore log"), 28),
        (RuntimeError("Error opening output: Read-only file system"), 30),
        (ValueError("nothing about the OS"), None),
    ],
)
def test_a_writers_os_error_is_raised_as_oserror(tmp_path, raised, code):
    def write(tmp):
        raise raised

    with pytest.raises(OSError if code else type(raised)) as info:
        files.atomic_write(tmp_path / "f.bin", write)
    if code:
        assert info.value.errno == code and info.value.filename == str(tmp_path / "f.bin")
    assert list(tmp_path.iterdir()) == []


def test_log_lines_are_strict_json_with_null_for_a_non_finite_number(tmp_path):
    """A skipped step's NaN loss was written as the token NaN, which strict readers refuse."""
    log = tmp_path / "log.jsonl"
    files.append_log(log, {"step": 1, "loss": float("nan"), "skipped": 1})
    files.write_log(tmp_path / "all.jsonl", [{"step": 2, "grad_norm": float("inf")}])

    def strict(constant):
        raise ValueError(f"not JSON: {constant}")

    for path in (log, tmp_path / "all.jsonl"):
        for line in path.read_text().splitlines():
            json.loads(line, parse_constant=strict)
    assert files.read_log(log) == [{"step": 1, "loss": None, "skipped": 1}]


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _fill(folder, text):
    folder.mkdir(parents=True)
    (folder / "f.txt").write_text(text)


def test_finish_replace_leaves_another_folders_leftovers_alone(tmp_path):
    """Beside `run`, the killed swap of a folder named `run.old-2024-01` left its only copies;
    read as `run`'s, they were deleted (pid "2024" taken from the other folder's name)."""
    dead = _dead_pid()
    _fill(tmp_path / "run", "run")
    for kind in ("old", "new"):
        _fill(tmp_path / f".run.old-2024-01.{kind}-{dead}-deadbeef", kind)
    before = sorted(p.name for p in tmp_path.iterdir())
    files.finish_replace(tmp_path / "run")
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    files.finish_replace(tmp_path / "run.old-2024-01")  # its own repair still works
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "run.old-2024-01"]
    assert (tmp_path / "run.old-2024-01" / "f.txt").read_text() == "new"


def test_replace_folder_replaces_what_a_link_points_to_and_keeps_the_link(tmp_path):
    """Before, the link itself was swapped: the target kept the old files and the link was
    left as a `.c.old-*` that rmtree refused to remove."""
    _fill(tmp_path / "disk" / "real", "old")
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / "c").symlink_to(tmp_path / "disk" / "real")
    files.replace_folder(tmp_path / "proj" / "c", lambda new: (new / "f.txt").write_text("new"))
    assert (tmp_path / "proj" / "c").is_symlink()
    assert (tmp_path / "disk" / "real" / "f.txt").read_text() == "new"
    assert sorted(p.name for p in (tmp_path / "proj").iterdir()) == ["c"]
    assert sorted(p.name for p in (tmp_path / "disk").iterdir()) == ["real"]


def test_replace_folder_of_dot_replaces_the_current_folder(tmp_path, monkeypatch):
    """`ivref export --out . --force` failed: Path('.') has an empty name."""
    _fill(tmp_path / "c", "old")
    monkeypatch.chdir(tmp_path / "c")
    files.replace_folder(".", lambda new: (new / "f.txt").write_text("new"))
    assert (tmp_path / "c" / "f.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


def test_a_lock_whose_pid_cannot_be_written_is_released_not_held_forever(tmp_path, monkeypatch):
    """A full disk as the lock wrote "pid N" raised, but left the folder locked by this
    process: every later attempt of the same process was refused as "in use"."""
    import errno
    import os

    real = os.write

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(OSError, match="No space left"):
        files.RunLock(tmp_path).acquire()
    monkeypatch.setattr(os, "write", real)
    with files.RunLock(tmp_path):  # the same process, space freed: it locks
        assert (tmp_path / ".lock").read_text() == f"pid {os.getpid()}"
