"""Measure a cascade on the toy world: caption alignment per guidance weight and per split.

The toy stand-in for the CLIP-score-vs-guidance curves of [IMG §4] and [IV Table 1]: sample
every prompt of a split with the same seeds, read the videos back with
``metrics.caption_alignment``, and report per-attribute and all-three accuracy. Used to pick a
stage's default guidance weight by measurement (NOTES.md: large w distorts shapes here).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ivref import data, metrics
from ivref.cascade import Cascade

ATTRIBUTES = ("color", "shape", "motion", "all")


def split_prompts(split: str, repeats: int = 1) -> list[str]:
    """Every caption of ``split`` ("train", "heldout" or "all") ``repeats`` times, in order."""
    if split not in data.SPLITS:
        raise ValueError(f"unknown split {split!r}; allowed: {list(data.SPLITS)}")
    if repeats < 1:
        raise ValueError(f"repeats={repeats} must be >= 1")
    return [data.caption(*combo) for combo in data.SPLITS[split]] * repeats


@torch.no_grad()
def alignment(
    cascade: Cascade,
    prompts: Sequence[str],
    *,
    guidance: float | None = None,
    steps: int | None = None,
    seed: int = 0,
    batch_size: int = 64,
) -> dict[str, float]:
    """Caption alignment of ``cascade.generate(prompts)``: accuracies in [0, 1] and ``n``.

    Batches of ``batch_size`` prompts are sampled with seeds ``seed``, ``seed + 1``, ... so a
    sweep over ``guidance`` sees the same starting noise at every w.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    prompts = list(prompts)
    videos = [
        cascade.generate(
            prompts[i : i + batch_size], seed=seed + i // batch_size, steps=steps, guidance=guidance
        )
        for i in range(0, len(prompts), batch_size)
    ]
    result = metrics.caption_alignment(torch.cat(videos), prompts)
    return {key: float(result[key]) for key in ATTRIBUTES} | {"n": len(prompts)}


def guidance_sweep(
    cascade: Cascade,
    prompts: Sequence[str],
    guidances: Sequence[float],
    *,
    steps: int | None = None,
    seed: int = 0,
    batch_size: int = 64,
) -> list[dict[str, float]]:
    """``alignment`` at each guidance weight w, one row per w (with key ``"w"``)."""
    if not guidances:
        raise ValueError("guidances is empty; give at least one weight w >= 0")
    return [
        {"w": float(w)}
        | alignment(cascade, prompts, guidance=w, steps=steps, seed=seed, batch_size=batch_size)
        for w in guidances
    ]


def format_table(rows: Sequence[dict[str, float]], first: str = "w") -> str:
    """A plain-text table of sweep rows, accuracies as percentages."""
    lines = [f"{first:>8} " + " ".join(f"{a:>7}" for a in ATTRIBUTES) + "       n"]
    for row in rows:
        cells = " ".join(f"{100 * row[a]:>6.1f}%" for a in ATTRIBUTES)
        lines.append(f"{row[first]!s:>8} {cells} {int(row['n']):>7}")
    return "\n".join(lines)
