"""How the ``ivref`` commands turn exceptions into one clear line and an exit status.

    2    bad input: arguments, config values, prompts, paths, damaged or missing files
    1    the work failed: a full disk, a NaN loss, a device that ran out of memory
    128 + N  stopped by signal N after saving (130 for Ctrl-C, 143 for SIGTERM)

Every message goes to stderr as ``ivref <command>: error: <what was wrong and what is
allowed>``; no traceback for any of these (set ``IVREF_DEBUG=1`` to see one).
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable
from typing import Any

from ivref import files


class CLIError(ValueError):
    """Bad command-line input; printed as 'ivref <command>: error: ...' with exit status 2."""


class Interrupted(Exception):
    """A command stopped early on a signal after saving its work; exit status 128 + signum."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum


def _os_message(err: OSError) -> str:
    where = f" {str(err.filename)!r}" if err.filename else ""
    if err.errno == errno.ENOSPC:
        return f"no space left on the device writing{where}; free some space and run it again"
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"permission denied for{where} ({err.strerror}); choose a writable place"
    return f"{err.strerror or err}{':' if where else ''}{where}"


def run_command(name: str, command: Callable[[Any], int], args: Any) -> int:
    """Run ``command(args)``; map its failure to a message on stderr and an exit status."""
    try:
        return command(args)
    except Interrupted as err:
        print(f"ivref {name}: {err}", file=sys.stderr)
        return 128 + err.signum
    except KeyboardInterrupt:
        print(f"ivref {name}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if os.environ.get("IVREF_DEBUG"):
            raise
        status = 2
        if isinstance(err, FileNotFoundError | NotADirectoryError | IsADirectoryError):
            message = _os_message(err)
        elif isinstance(err, OSError) and not isinstance(err, FileExistsError):
            message = _os_message(err)
            status = 2 if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS) else 1
        elif isinstance(err, ValueError | TypeError | FileExistsError | files.RunLockedError):
            message = str(err)
        elif isinstance(err, ArithmeticError | RuntimeError | MemoryError):
            message, status = f"{type(err).__name__}: {err}", 1
        else:
            raise
        print(f"ivref {name}: error: {message}", file=sys.stderr)
        return status
