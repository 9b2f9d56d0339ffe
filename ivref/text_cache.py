"""A disk cache of text embeddings: ``CachedEncoder`` wraps any text encoder (text.py's
``TextEncoder`` protocol) and stores each prompt's (emb, mask) once, as safetensors, keyed by
everything that changes it: the encoder's name (for a local T5, a fingerprint of its files),
``max_length``, ``dim`` and the text."""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ivref import files

CACHE_FORMAT = 2  # 1: keyed by encoder name and text only (ignored max_length)


def check_prompts(prompts: object) -> None:
    """A ValueError unless ``prompts`` is a non-empty list of text: strings without a lone
    surrogate (half of a character such as an emoji, cut by a tool), which no tokenizer reads
    and UTF-8 cannot hold."""
    if isinstance(prompts, str) or not prompts:
        raise ValueError(f"encode() takes a non-empty list of prompts; got {prompts!r}")
    if not isinstance(prompts, Sequence):  # a dict gave its keys, a generator ran out in here
        raise ValueError(
            f"encode() takes a non-empty list of prompts; got a {type(prompts).__name__} "
            "(an ordered sequence: row i of the embeddings is prompt i's)"
        )
    for prompt in prompts:
        if not isinstance(prompt, str):
            raise ValueError(f"prompt {prompt!r} is a {type(prompt).__name__}; give text (str)")
        try:
            prompt.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(
                f"prompt {prompt!r} holds a lone surrogate (half of a character such as an "
                "emoji): no text encoder can read it; mend the text"
            ) from None


class CachedEncoder:
    """Wraps an encoder; each prompt's (emb, mask) is stored once as safetensors on disk.

    Key: sha256 of (format, encoder name, max_length, dim, prompt); the file's metadata
    repeats them and is checked on load. An entry that cannot be read or does not match
    (truncated, garbage, wrong shape, another encoder's) is a miss: a warning names the file
    and the prompt is encoded again and the file rewritten atomically. If the cache cannot be
    written (a full disk), a warning says so and encoding goes on without it.
    ``hits`` and ``misses`` count prompts served.
    """

    def __init__(self, encoder: Any, cache_dir: str | os.PathLike) -> None:
        self.encoder = encoder
        self.name, self.dim, self.max_length = encoder.name, encoder.dim, encoder.max_length
        self.cache_dir = Path(cache_dir)
        if self.cache_dir.exists() and not self.cache_dir.is_dir():
            raise ValueError(f"text cache {str(self.cache_dir)!r} is a file; give a folder")
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.hits = self.misses = 0
        self._write_failed = False

    @property
    def uncached(self) -> Any:
        """The encoder this cache wraps (``text.probe`` computes through it, not the disk)."""
        return self.encoder

    def _meta(self, prompt: str) -> dict[str, str]:
        return {
            "format": str(CACHE_FORMAT),
            "encoder": self.name,
            "max_length": str(self.max_length),
            "dim": str(self.dim),
            "prompt": json.dumps(prompt),
        }

    def _path(self, prompt: str) -> Path:
        key = hashlib.sha256(json.dumps(self._meta(prompt), sort_keys=True).encode())
        return self.cache_dir / f"{key.hexdigest()[:32]}.safetensors"

    def _read(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The cached (emb, mask) of a prompt, or None (a miss; a damaged entry warns)."""
        path = self._path(prompt)
        if not path.is_file():
            return None
        try:
            with safe_open(path, framework="pt") as fh:
                meta = fh.metadata() or {}
                emb, mask = fh.get_tensor("emb"), fh.get_tensor("mask")
            problem = None
            if meta != self._meta(prompt):
                problem = "its metadata names another encoder, length or prompt"
            elif emb.shape != (self.max_length, self.dim) or emb.dtype != torch.float32:
                problem = f"emb is {emb.dtype} {tuple(emb.shape)}, not (max_length, dim)"
            elif mask.shape != (self.max_length,):
                problem = f"mask has shape {tuple(mask.shape)}, not ({self.max_length},)"
            elif not torch.isfinite(emb).all():
                problem = "emb holds NaN or inf"
        except (SafetensorError, OSError, ValueError, KeyError, RuntimeError) as err:
            problem = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
        if problem is None:
            return emb, mask.bool()
        warnings.warn(
            f"text cache entry {str(path)!r} is damaged ({problem}); encoding the prompt "
            "again and rewriting the entry",
            stacklevel=3,
        )
        return None

    def _write(self, prompt: str, emb: torch.Tensor, mask: torch.Tensor) -> None:
        tensors = {"emb": emb.contiguous(), "mask": mask.to(torch.uint8).contiguous()}
        try:
            files.atomic_write(
                self._path(prompt),
                lambda tmp: save_file(tensors, tmp, self._meta(prompt)),
                suffix=".safetensors.tmp",
                full_sync=False,  # a damaged entry is found on reading and made again
            )
        except (OSError, SafetensorError) as err:
            if not self._write_failed:
                warnings.warn(
                    f"text cache {str(self.cache_dir)!r} cannot be written ({err}); "
                    "going on without caching",
                    stacklevel=3,
                )
            self._write_failed = True

    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Like ``encoder.encode``; only prompts not on disk are encoded (in one batch)."""
        check_prompts(prompts)
        found: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for prompt in dict.fromkeys(prompts):
            row = self._read(prompt)
            if row is not None:
                found[prompt] = row
        missing = [p for p in dict.fromkeys(prompts) if p not in found]
        if missing:
            emb, mask = self.encoder.encode(missing)
            for i, prompt in enumerate(missing):
                found[prompt] = (emb[i], mask[i])
                self._write(prompt, emb[i], mask[i])
        self.misses += sum(p in missing for p in prompts)
        self.hits += sum(p not in missing for p in prompts)
        emb = torch.stack([found[p][0] for p in prompts])
        mask = torch.stack([found[p][1] for p in prompts])
        return emb, mask
