"""Execute the course notebooks at one scale and render them to HTML in docs/course/.

    python docs/course.py [--scale toy] [notebooks/01_diffusion_and_v_parameterization.ipynb ...]

`make course` runs this (COURSE_SCALE=ci by default, fast; COURSE_SCALE=toy for the copies
meant for reading: trained longer, more samples). Each notebook runs top to bottom in a fresh
kernel with IVREF_SCALE set, from the notebooks/ folder, exactly as a reader would run it; a
cell that fails stops the build. docs/course/README.md lists what was rendered and at which
scale, so the folder can be read on the web (HTML pages keep their figures and videos).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbconvert import HTMLExporter

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "course"


def render(path: Path, scale: str, timeout: int) -> Path:
    """Run one notebook at ``scale`` and write it as self-contained HTML; returns the page."""
    notebook = nbformat.read(path, as_version=4)
    os.environ["IVREF_SCALE"] = scale  # the kernel inherits it
    # and its matplotlib backend: `make` exports MPLBACKEND=Agg for the tests, under which
    # plt.show() draws nothing; without it the kernel shows figures inline
    os.environ.pop("MPLBACKEND", None)
    where = {"metadata": {"path": path.parent}}
    NotebookClient(notebook, timeout=timeout, kernel_name="python3", resources=where).execute()
    html, _ = HTMLExporter(embed_images=True).from_notebook_node(notebook)
    page = OUT / f"{path.stem}.html"
    page.write_text(html)
    return page


def write_index(scale: str) -> Path:
    """docs/course/README.md: one row per rendered page, with the notebook's title."""
    rows = []
    for page in sorted(OUT.glob("[0-9][0-9]_*.html")):
        source = ROOT / "notebooks" / f"{page.stem}.py"
        heads = [ln[4:].strip() for ln in source.read_text().splitlines() if ln.startswith("# # ")]
        title = heads[0] if heads else page.stem
        kib = page.stat().st_size // 1024
        link = f"[{source.name}](../../notebooks/{source.name})"
        rows.append(f"| [{title}]({page.name}) | {link} | {kib} KiB |")
    text = [
        "# The course, executed",
        "",
        "The notebooks of `notebooks/`, run top to bottom and rendered to HTML with their",
        f"figures and videos, so they can be read without running anything. Scale: `{scale}`.",
        "Rebuild with `make course` (`COURSE_SCALE=toy make course` for the reading copies).",
        "",
    ]
    if rows:
        text += ["| notebook | source | size |", "|---|---|---|", *rows]
    else:
        text += ["No page is rendered in this checkout yet: run `make course`."]
    index = OUT / "README.md"
    index.write_text("\n".join(text) + "\n")
    return index


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path)
    parser.add_argument("--scale", default="ci", choices=("ci", "toy", "paper"))
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per cell")
    args = parser.parse_args(argv)
    notebooks = args.notebooks or sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    OUT.mkdir(parents=True, exist_ok=True)
    for path in notebooks:
        print(f"course: {path.name} at {args.scale} ...", flush=True)
        page = render(path.resolve(), args.scale, args.timeout)
        print(f"course: wrote {page.relative_to(ROOT)} ({page.stat().st_size // 1024} KiB)")
    print(f"course: index {write_index(args.scale).relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
