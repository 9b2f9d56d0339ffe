"""Safetensors files with clear errors: written whole and atomically, or streamed one tensor
at a time; read whole, or one tensor at a time; checked against a manifest (size + sha256).

The files that make up a checkpoint (checkpoint.py) and shipped weights. A bad file raises
``CheckpointError`` naming it (missing, truncated, corrupted); non-finite weights raise
``NonFiniteError``. Nothing is unpickled: tensors load with safetensors, the rest is JSON
(an optimizer's state is split into both, ``optimizer_split``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import struct
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ivref.files import atomic_write


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupted, or does not fit the model / config at hand."""


class NonFiniteError(ValueError):
    """Weights hold NaN or infinity: they are never saved, shipped or loaded."""


def check_finite(state: Mapping[str, torch.Tensor], where: str) -> None:
    """Raise NonFiniteError naming the first tensors of ``state`` with NaN or inf."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise NonFiniteError(f"{where}: non-finite values (NaN or inf) in {bad[:3]}{more}")


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented, key-sorted JSON to ``path``, atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "w") as fh:
            json.dump(obj, fh, indent=2, sort_keys=True)
            fh.write("\n")

    atomic_write(path, write)


@dataclasses.dataclass(frozen=True)
class Streamed:
    """Tensors written one at a time: state too large to hold whole in one process (a
    sharded model's, gathered one tensor at a time).

    ``specs`` gives each tensor's dtype and whole shape, in writing order; ``take(name)``
    makes the tensor when its turn comes, and it is dropped once written. When ``take`` is
    collective (it all-gathers), the processes that do not write call ``drain`` in step.
    ``json`` is the non-tensor state written beside (an optimizer's param groups). ``save``
    checks no NaN in them: ``take`` does (``sharded_state.streamed_state``).
    """

    specs: dict[str, tuple[torch.dtype, tuple[int, ...]]]
    take: Callable[[str], torch.Tensor]
    json: dict[str, Any] | None = None

    def drain(self) -> None:
        """Take every tensor, in order, and drop it."""
        for name in self.specs:
            self.take(name)


# safetensors' names of torch dtypes (its format: an 8-byte little-endian header length, the
# JSON header {name: {dtype, shape, data_offsets}, "__metadata__": {...}}, then the bytes)
_SAFETENSORS_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
    torch.uint8: "U8", torch.bool: "BOOL",
}  # fmt: skip


_TORCH_DTYPES = {name: dtype for dtype, name in _SAFETENSORS_DTYPES.items()}


def _write_streamed(tmp: str, streamed: Streamed, meta: dict | None) -> None:
    """A safetensors file from ``streamed``, one tensor in memory at a time."""
    header: dict[str, Any] = {"__metadata__": meta} if meta else {}
    offset = 0
    for name, (dtype, shape) in streamed.specs.items():
        size = math.prod(shape) * dtype.itemsize
        header[name] = {
            "dtype": _SAFETENSORS_DTYPES[dtype],
            "shape": list(shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
    with open(tmp, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)) + raw)
        for name, (dtype, shape) in streamed.specs.items():
            tensor = streamed.take(name).detach()
            if tensor.dtype != dtype or tuple(tensor.shape) != tuple(shape):
                raise ValueError(
                    f"tensor {name!r} came as {tensor.dtype} {tuple(tensor.shape)}; "
                    f"its spec says {dtype} {tuple(shape)}"
                )
            data = tensor.cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
            fh.write(data)  # type: ignore[arg-type]  # a Buffer; numpy's stubs: from 3.12 only
            del tensor, data  # freed before the next is made: one whole tensor at a time


def write_tensors(
    path: Path, tensors: Mapping[str, torch.Tensor] | Streamed, meta: dict | None = None
) -> None:
    """Write a safetensors file atomically: a state dict whole, or ``Streamed`` tensors one
    at a time; ``meta`` is its string metadata."""
    if isinstance(tensors, Streamed):
        atomic_write(path, lambda tmp: _write_streamed(tmp, tensors, meta))
        return
    flat, seen = {}, set()
    for k, v in tensors.items():
        tensor = v.detach().cpu().contiguous()
        where = tensor.untyped_storage().data_ptr()
        if tensor.numel() and where in seen:  # tied weights (one tensor under two names):
            tensor = tensor.clone()  # safetensors refuses shared memory; each name its copy
        seen.add(where)
        flat[k] = tensor
    atomic_write(path, lambda tmp: save_file(flat, tmp, metadata=meta))


class TensorFile:
    """A checkpoint's safetensors file, read one tensor at a time: ``shapes`` and ``dtypes``
    from its header, ``get(name)`` loads one tensor (a sharded resume hands them out so)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointError(f"checkpoint file {str(self.path)!r} is missing")
        try:
            self._file = safe_open(str(self.path), framework="pt")
            keys = list(self._file.keys())
            slices = {k: self._file.get_slice(k) for k in keys}
            self.shapes = {k: tuple(v.get_shape()) for k, v in slices.items()}
            self.dtypes = {k: _TORCH_DTYPES[v.get_dtype()] for k, v in slices.items()}
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(
                f"checkpoint file {str(self.path)!r} is corrupted: {err}"
            ) from None

    def get(self, name: str) -> torch.Tensor:
        return self._file.get_tensor(name)

    def meta_tensors(self) -> dict[str, torch.Tensor]:
        """{name: a tensor of its shape on the meta device}: shapes without the data."""
        return {k: torch.empty(s, device="meta") for k, s in self.shapes.items()}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_manifest(directory: Path, files: list[str]) -> dict[str, dict[str, Any]]:
    """{file: {"bytes", "sha256"}} of files in ``directory`` (what ``verify_files`` checks)."""
    return {
        f: {"bytes": (directory / f).stat().st_size, "sha256": _sha256(directory / f)}
        for f in files
    }


def verify_files(directory: Path, manifest: dict[str, Any], where: str) -> None:
    """Check each file against a manifest (size, then sha256); raise CheckpointError by name."""
    for name, want in manifest.items():
        path = directory / name
        if not path.is_file():
            raise CheckpointError(f"checkpoint file {str(path)!r} is missing")
        size = path.stat().st_size
        if size != want["bytes"]:
            raise CheckpointError(
                f"checkpoint file {str(path)!r} is corrupted: {size} bytes, "
                f"the manifest in {where} says {want['bytes']} (truncated or overwritten?)"
            )
        if _sha256(path) != want["sha256"]:
            raise CheckpointError(
                f"checkpoint file {str(path)!r} is corrupted: its sha256 differs from {where}"
            )


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file; a missing or corrupted file is a CheckpointError."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {str(path)!r} is missing")
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"checkpoint file {str(path)!r} is corrupted: {err}") from None


def optimizer_split(state: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """optimizer.state_dict() -> (tensors "state.{i}.{key}", JSON-able remainder)."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for i, entry in state["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{i}.{key}"] = value
            else:
                scalars.setdefault(str(i), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_join(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    """The inverse of ``optimizer_split``: an ``optimizer.state_dict()`` again."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, i, key = name.split(".", 2)
        state.setdefault(int(i), {})[key] = value
    for i, entry in meta["scalars"].items():
        state.setdefault(int(i), {}).update(entry)
    return {"state": state, "param_groups": meta["param_groups"]}
