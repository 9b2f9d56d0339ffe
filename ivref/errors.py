"""How the ``ivref`` commands turn exceptions into one clear line and an exit status.

    2    bad input: arguments, config values, prompts, paths, damaged or missing files
    1    the work failed: a full disk, a NaN loss, a device that ran out of memory
    128 + N  stopped by signal N after saving (130 for Ctrl-C, 143 for SIGTERM; outside a
         training loop SIGTERM stops a command as Ctrl-C does, its temporary files removed);
         141, without a word, where the reader of its output went away (``ivref info | head``)

Anything else is a bug in ivref: one line saying so, exit status 1.

Every message goes to stderr as ``ivref <command>: error: <what was wrong and what is
allowed>``; no traceback for any of these (set ``IVREF_DEBUG=1`` to see one). Warnings,
after which the work goes on, read ``ivref <command>: warning: <message>``.

Under torchrun every process says its own error, as ``ivref <command> (rank R of N): error:``
(the same bad input is then said by each); one that failed in a collective (a peer that had
stopped closed the connection) says that another process may have failed first. A stop on a
signal while training is agreed by all processes after the same step, and said once, by
rank 0; outside training each process a signal stops says so itself. torchrun's summary of
the failed processes (its "Root Cause" block, printed last) shows the same line for each
process that said one (``say``), in place of torchrun's link to its error-file docs.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ivref import files

PACKAGE = Path(__file__).resolve().parent  # ivref's own code: its warnings need no source


class CLIError(ValueError):
    """Bad command-line input; printed as 'ivref <command>: error: ...' with exit status 2."""


class Stopped(BaseException):
    """SIGTERM outside a training loop (which saves and stops on its own), raised in the main
    thread so that what a command leaves half-made goes first (a temporary video file, a run
    lock); the command then exits with 128 + N. A BaseException, like KeyboardInterrupt, so
    that ``except Exception`` does not swallow it."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


class Interrupted(Exception):
    """A command stopped early on a signal after saving its work; exit status 128 + signum."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum


def _os_message(err: OSError) -> str:
    where = f" {str(err.filename)!r}" if err.filename else ""
    if err.errno == errno.ENOSPC:
        said = f"no space left on the device writing{where}"
        extra = (err.strerror or "").removeprefix(os.strerror(errno.ENOSPC)).strip()
        return f"{said} {extra}" if extra else f"{said}; free some space and run it again"
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"permission denied for{where} ({err.strerror}); choose a writable place"
    return f"{err.strerror or err}{':' if where else ''}{where}"


def one_line(message: str) -> str:
    """The first non-empty line of a message (tools such as ffmpeg append pages of log)."""
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    if not lines:
        return ""
    return lines[0] + (" [...]" if len(lines) > 1 else "")


def describe(err: BaseException) -> tuple[str, int]:
    """(one-line message, exit status) for an exception a command raised (see the module doc)."""
    if isinstance(err, FileNotFoundError | NotADirectoryError | IsADirectoryError):
        return _os_message(err), 2
    if isinstance(err, OSError) and not isinstance(err, FileExistsError):
        permission = err.errno in (errno.EACCES, errno.EPERM, errno.EROFS)
        return _os_message(err), 2 if permission else 1
    if isinstance(err, ValueError | TypeError | FileExistsError | files.RunLockedError):
        return one_line(str(err)), 2
    if isinstance(err, ArithmeticError | RuntimeError | MemoryError):
        return one_line(f"{type(err).__name__}: {err}"), 1
    return (
        one_line(f"internal error, {type(err).__name__}: {err}")
        + " (a bug in ivref: rerun with IVREF_DEBUG=1 for the traceback and report it)",
        1,
    )


def _process() -> tuple[int, int]:
    """(rank, number of processes) as torchrun's environment gives them; (0, 1) without."""
    try:
        return int(os.environ.get("RANK") or 0), int(os.environ.get("WORLD_SIZE") or 1)
    except ValueError:
        return 0, 1


def torch_out_of_memory() -> tuple[type[BaseException], ...]:
    """torch's out-of-memory error (a RuntimeError), where torch is loaded."""
    torch = sys.modules.get("torch")
    kind = getattr(torch, "OutOfMemoryError", None)
    return (kind,) if isinstance(kind, type) else ()


_COLLECTIVE_CODE = (  # where torch talks to the other processes: torch.distributed, and DDP's
    f"{os.sep}torch{os.sep}distributed{os.sep}",  # forward (its buffers, its bucket rebuild)
    f"{os.sep}torch{os.sep}nn{os.sep}parallel{os.sep}",
)
_COLLECTIVE_WORDS = ("gloo", "nccl", "connection closed by peer", "connection reset by peer")


def in_collective(err: BaseException) -> bool:
    """Whether ``err`` is a RuntimeError of a collective: raised inside torch.distributed or
    DDP, or naming the transport (gloo, NCCL: DDP's gradient all-reduce fails inside the
    backward), most often because another process stopped ('Connection closed by peer'),
    which its own message explains."""
    if not isinstance(err, RuntimeError) or isinstance(err, torch_out_of_memory()):
        return False  # out of memory inside a collective is this process's own failure
    frames = traceback.extract_tb(err.__traceback__)  # where it was raised, not the wrappers
    innermost = frames[-1].filename if frames else ""  # (DDP and FSDP call the model itself:
    if any(code in innermost for code in _COLLECTIVE_CODE):  # its own errors pass them)
        return True
    return any(word in str(err).lower() for word in _COLLECTIVE_WORDS)


def rank_suffix() -> str:
    """`` (rank R of N)`` under torchrun, else nothing: which process a message is from."""
    rank, world = _process()
    return f" (rank {rank} of {world})" if world > 1 else ""


def process_label(name: str) -> str:
    """``ivref <name>`` and ``rank_suffix()``: how a command names itself."""
    return f"ivref {name}{rank_suffix()}"


def say(line: str, *, printed: bool = True) -> None:
    """Print a command's last line (its error, or why it stopped) on stderr; under torchrun
    also write it to the process's error file (``TORCHELASTIC_ERROR_FILE``, in the format of
    torch.distributed.elastic's ``ErrorHandler``), where torchrun's summary of the failure
    reads it. A file that cannot be written leaves the line on stderr alone. ``printed=False``:
    the file alone (a line another process prints)."""
    if printed:  # one write: print's two (text, then end) let another process's line
        sys.stderr.write(f"{line}\n")  # in between, on unbuffered stderr
        sys.stderr.flush()
    where = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not where:
        return
    stamp = str(int(time.time()))
    record = {"message": {"message": line, "extraInfo": {"py_callstack": line, "timestamp": stamp}}}
    with contextlib.suppress(OSError):
        Path(where).write_text(json.dumps(record))


_TORCHRUN_TERM = (
    " (torchrun sends SIGTERM to every process when one of them fails: unless the run was "
    "stopped on purpose, another process's message, with its rank, says why)"
)


def warning_format(name: str) -> Callable[..., str]:
    """``warnings.formatwarning`` for command ``name``: ``ivref <name>: warning: <message>``
    (the category's name in place of "warning" for other than ``UserWarning``), without
    Python's file, line number and source line, which name ivref's code, not the input; a
    warning from another library (torch, transformers) keeps its file and line."""

    who = process_label(name)  # under torchrun: which process saw it

    def format_warning(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        line: str | None = None,
    ) -> str:
        kind = "warning" if category is UserWarning else category.__name__
        here = Path(filename).resolve().is_relative_to(PACKAGE)
        source = "" if here else f" from {filename}:{lineno}"  # another library's: say whose
        return f"{who}: {kind}{source}: {message}\n"

    return format_warning


@contextlib.contextmanager
def _signals_raise(received: list[int]) -> Iterator[None]:
    """While a command runs: Ctrl-C raises KeyboardInterrupt as ever, SIGTERM raises
    ``Stopped`` (it killed the process, leaving temporary files behind), and both are noted
    in ``received``. Outside the main thread (a command run from a thread) signals are left
    alone. A training loop puts its own handlers in place while it trains."""

    def handler(signum: int, frame: Any) -> None:
        received.append(signum)
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise Stopped(signum)

    with handling_signals(handler):
        yield


@contextlib.contextmanager
def handling_signals(handler: Callable[[int, Any], None]) -> Iterator[None]:
    """``handler`` for SIGINT and SIGTERM while the block runs, the handlers before it after.
    Outside the main thread, where Python takes no handler, signals are left alone, and so is
    a signal the process ignores (a job started in the background without job control
    ignores SIGINT: a Ctrl-C meant for its parent must not stop it)."""
    try:
        previous = {
            s: signal.signal(s, handler)
            for s in (signal.SIGINT, signal.SIGTERM)
            if signal.getsignal(s) is not signal.SIG_IGN
        }
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def run_command(name: str, command: Callable[[Any], int], args: Any) -> int:
    """Run ``command(args)``; map its failure to one line on stderr and an exit status.
    Warnings it gives are printed as ``warning_format`` words them (Python's own format
    with ``IVREF_DEBUG=1``)."""
    before = warnings.formatwarning
    if not os.environ.get("IVREF_DEBUG"):
        warnings.formatwarning = warning_format(name)
    rank, world = _process()
    who = process_label(name)
    received: list[int] = []  # the signals that reached this process while the command ran
    try:
        with _signals_raise(received):
            return command(args)
    except Interrupted as err:  # every process stopped after the same step: rank 0 says so
        say(f"ivref {name}: {err}", printed=rank == 0)  # (torchrun's summary: every rank)
        return 128 + err.signum
    except KeyboardInterrupt:  # not agreed between processes (a kill -INT of one worker):
        say(f"{who}: interrupted")  # each that stopped says so
        return 130
    except Stopped as err:
        hint = _TORCHRUN_TERM if world > 1 and err.signum == signal.SIGTERM else ""
        say(f"{who}: {err}{hint}")
        return 128 + err.signum
    except BrokenPipeError:  # the reader of stdout has gone (``ivref info | head -1``): as a
        # program killed by SIGPIPE, quietly; stdout now points nowhere, so the interpreter's
        # last flush at exit does not fail (and print) again
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE if hasattr(signal, "SIGPIPE") else 1
    except Exception as err:
        if os.environ.get("IVREF_DEBUG"):
            raise
        if received:  # the signal broke the work first: ffmpeg, in the same process group,
            # died of the Ctrl-C and its writer failed before KeyboardInterrupt was raised
            signum = received[0]
            said = "interrupted" if signum == signal.SIGINT else Stopped(signum)
            hint = _TORCHRUN_TERM if world > 1 and signum == signal.SIGTERM else ""
            say(f"{who}: {said}{hint}")
            return 128 + signum
        message, status = describe(err)
        if world > 1 and in_collective(err):
            message += (
                " (this process failed talking to the others: one of them may have stopped "
                "first, and its own message, with its rank, says why)"
            )
        say(f"{who}: error: {message}")
        return status
    finally:
        warnings.formatwarning = before
