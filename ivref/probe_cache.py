"""What probing a folder of videos found, kept in a file so the next start need not probe again.

``VideoTextFolder`` decodes every file of its index once, when it is made, to count its
frames: one ffmpeg process per file, so a folder of thousands of clips costs minutes at
every start and every ``--resume``. ``ivref train`` and ``ivref distill`` keep the folder's
``probes`` in ``<run>/video_probes.json`` and hand them to the next folder they make, which
probes again only the files whose size, modification or status-change time, or inode
changed (and files it has no entry for). It is a cache: an entry that does not check out is
probed again, a damaged file is remade, and deleting it costs only the time to probe.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from ivref import files

FILE = "video_probes.json"


def read(path: Path) -> dict[str, Any]:
    """The entries kept in ``path`` ({} where there is none, or where it is damaged: then
    with a warning, since the folder is probed afresh and the file remade)."""
    if not path.is_file():
        return {}
    try:
        kept = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(kept, dict):
            raise ValueError(f"a JSON object was expected, got {type(kept).__name__}")
    except (OSError, ValueError, UnicodeDecodeError) as err:
        warnings.warn(f"{str(path)!r} is damaged ({err}): probing the videos afresh", stacklevel=2)
        return {}
    return kept


def write(path: Path, probes: dict[str, Any]) -> None:
    """Keep ``probes`` (a ``VideoTextFolder.probes``, or several merged) in ``path``,
    atomically, unless it holds them already."""
    text = json.dumps(probes, indent=0, sort_keys=True) + "\n"
    if path.is_file() and read(path) == probes:
        return
    files.atomic_write(
        path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), full_sync=False
    )
