"""Render the figures the README shows, from the shipped toy cascade: `make docs`.

docs/cascade_samples.gif     the shipped cascade's final videos on eight prompts (two held out)
docs/cascade_stages.gif      the same run, every stage side by side (four of the prompts)
docs/base_training.png       its training loss and caption alignment during training
docs/alignment_vs_guidance.png  caption alignment vs guidance weight w (data/toy/alignment.json)
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from ivref import data, train, video
from ivref.cascade import Cascade

DOCS = Path(__file__).resolve().parent
TOY = DOCS.parent / "data" / "toy"
PROMPTS = [
    "a red circle moving left",
    "a green square moving up",
    "a yellow triangle moving right",
    "a cyan circle moving down",
    "a white square moving left",
    "a magenta triangle moving up",
] + [data.caption(*combo) for combo in data.HELDOUT[:2]]


def samples_gifs(display: int = 128) -> list[Path]:
    """One run of the shipped cascade on PROMPTS: the final videos in a 4 x 2 grid, and every
    stage side by side for four prompts; nearest-upscaled so that small frames show."""
    cascade = Cascade.from_pretrained(TOY)
    final, stages = cascade.generate(PROMPTS, seed=0, return_stages=True)
    last = cascade.trained_stages[-1]
    k = video.display_factor(last.height, last.width, display)
    finals = video.grid(video.upscale(final, k), ncols=4, pad=2)
    columns = video.upscale(video.stage_grid([s[:4] for s in stages], pad=2), max(1, k // 2))
    return [
        video.write_video(DOCS / "cascade_samples.gif", finals, last.fps),
        video.write_video(DOCS / "cascade_stages.gif", columns, last.fps),
    ]


def training_plot() -> Path:
    """Loss (running mean) and caption alignment during the base stage's training."""
    log = train.read_log(TOY / "base_log.jsonl")
    fig, (ax_loss, ax_eval) = plt.subplots(1, 2, figsize=(10, 3.5))
    video.plot_losses(log, keys=("loss",), smooth=20, ax=ax_loss)
    ax_loss.set_title("base stage: v-MSE training loss")
    ax_loss.set_ylabel("loss")
    ax_loss.set_yscale("log")
    for key in ("eval_color", "eval_shape", "eval_motion", "eval_all"):
        rows = [(r["step"], 100 * r[key]) for r in log if key in r]
        if rows:
            ax_eval.plot(*zip(*rows, strict=True), marker="o", label=key.removeprefix("eval_"))
    _accuracy_axes(ax_eval, "caption alignment of EMA samples during training", "step")
    return _save(fig, "base_training.png")


def guidance_plot() -> Path:
    """Caption alignment vs w, per split, from the sweep recorded when the weights shipped."""
    sweeps = json.loads((TOY / "alignment.json").read_text())
    fig, axes = plt.subplots(1, len(sweeps), figsize=(5 * len(sweeps), 3.5), squeeze=False)
    for ax, (split, rows) in zip(axes[0], sweeps.items(), strict=True):
        ws = [r["w"] for r in rows]
        for key in ("color", "shape", "motion", "all"):
            ax.plot(ws, [100 * r[key] for r in rows], marker="o", label=key)
        title = f"{split} captions ({rows[0]['n']} samples per w)"
        _accuracy_axes(ax, title, "guidance weight w")
    return _save(fig, "alignment_vs_guidance.png")


def _accuracy_axes(ax: plt.Axes, title: str, xlabel: str) -> None:
    ax.set(title=title, xlabel=xlabel, ylabel="accuracy (%)", ylim=(0, 102))
    ax.legend()


def _save(fig: plt.Figure, name: str) -> Path:
    fig.tight_layout()
    fig.savefig(DOCS / name, dpi=110)
    return DOCS / name


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    for path in (*samples_gifs(), training_plot(), guidance_plot()):
        print("wrote", path.relative_to(DOCS.parent))
