"""References a reader can follow: citation keys, their locators, and links to files.

- Every citation key used in the repository is defined in REFERENCES.md.
- Every citation with a locator ([IV §2.4], [PD Alg. 2], [VDM eq. 4]) is listed in the citation
  index of docs/paper.md, so a wrong section number cannot slip in unnoticed.
- Nothing a user reads points to a file the repository does not have: no builder-only notes,
  no markdown link or repository path that does not resolve.
"""

import re
from pathlib import Path

import pytest

from .conftest import ROOT, load_script

KEY = re.compile(r"\[([A-Z][A-Z0-9-]*)(?=[\] ,§])")
# A citation opens a bracket not glued to code: x[SCALE] and f([PROMPT]) are indexing, not keys.
CITATION = re.compile(r"(?<![\w(\[.])\[([A-Z][A-Z0-9-]*(?:[ ,][^\]\n]{0,60})?)\]")
BUILDER_NOTES = re.compile(r"\b(?:DESIGN|PAPER|STYLE|NOTES)\.md\b")
MD_LINK = re.compile(r"\]\(([^)\s]+)\)")
REPO_PATH = re.compile(
    r"(?<![\w./-])((?:docs|data|notebooks|tests|benchmarks|ivref)/[\w./-]*\w"
    r"\.(?:md|py|ipynb|json|jsonl|png|gif|mp4|html|safetensors|txt|toml))\b"
)


def _user_files(root: Path) -> list[Path]:
    """Files users of the repository read: sources, notebooks, docs, tests, build files."""
    files = [root / "README.md", root / "REFERENCES.md", root / "Makefile", root / "pyproject.toml"]
    for folder, pattern in [
        ("ivref", "**/*.py"),
        ("notebooks", "*.py"),
        ("benchmarks", "**/*.py"),
        ("tests", "**/*.py"),
        ("docs", "**/*.md"),
        ("docs", "*.py"),
        ("data", "**/*.md"),
    ]:
        files += sorted((root / folder).glob(pattern))
    this = Path(__file__).resolve()
    return [f for f in files if f.exists() and f.resolve() != this]


def _defined(root):
    text = (root / "REFERENCES.md").read_text()
    return set(re.findall(r"^\| \[([A-Z][A-Z0-9-]*)\] \|", text, flags=re.M))


def _index(root) -> set[str]:
    """The citations listed in docs/paper.md's citation index, e.g. "IV §2.4"."""
    text = (root / "docs" / "paper.md").read_text()
    section = text.split("## Citation index", 1)[1]
    return set(re.findall(r"^\| \[([^\]]+)\] \|", section, flags=re.M))


def _split(citation: str) -> list[str]:
    """ "IV §2.3, §2.5; CDM" -> ["IV §2.3", "IV §2.5", "CDM"]: a bare locator inherits its key."""
    parts, key = [], None
    for raw in re.split(r"[;,]\s*", citation):
        part = raw.strip()
        head = re.match(r"[A-Z][A-Z0-9-]*(?= |$)", part)
        if head:
            key = head.group(0)
            parts.append(part)
        elif key and re.match(r"(§|Fig\.|Table|eq\.|Alg\.|App\.)", part):
            parts.append(f"{key} {part}")
        else:
            parts.append(part)
    return parts


def _citations(text: str) -> list[str]:
    found = []
    for inner in CITATION.findall(text):
        if not KEY.match(f"[{inner}]"):
            continue
        if inner == "GD, eq. 3":  # the one key-comma-locator form, listed whole in the index
            found.append(inner)
        else:
            found += _split(inner)
    return found


def test_reference_table_parses(repo_root):
    defined = _defined(repo_root)
    assert {"IV", "VDM", "PD", "GD", "IMG", "CFG", "CDM"} <= defined


def test_every_cited_key_is_defined(repo_root):
    defined = _defined(repo_root)
    files = _user_files(repo_root)
    assert files, "no sources found to scan"
    missing = {}
    for path in files:
        for citation in _citations(path.read_text()):
            key = citation.split()[0].rstrip(",")
            if key not in defined:
                missing.setdefault(key, []).append(path.name)
    assert not missing, f"cited but not in REFERENCES.md: {missing}"


def test_every_citation_locator_is_in_the_paper_index(repo_root):
    index = _index(repo_root)
    defined = _defined(repo_root)
    assert {"IV §2.4", "IV §2.6.2", "PD Alg. 2"} <= index
    assert all(entry.split()[0].rstrip(",") in defined for entry in index), "index key undefined"
    missing = {}
    for path in _user_files(repo_root):
        for citation in _citations(path.read_text()):
            if citation not in index:
                missing.setdefault(citation, []).append(str(path.relative_to(repo_root)))
    assert not missing, f"citations not in docs/paper.md's citation index: {missing}"


def test_nothing_points_to_builder_only_notes(repo_root):
    hits = []
    for path in _user_files(repo_root):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if BUILDER_NOTES.search(line):
                hits.append(f"{path.relative_to(repo_root)}:{n}: {line.strip()}")
    assert not hits, "points to files users do not have:\n" + "\n".join(hits)


def _link_targets(path: Path, text: str):
    for target in MD_LINK.findall(text):
        if re.match(r"[a-z]+:", target) or target.startswith("#") or "{" in target:
            continue
        yield (path.parent / target.split("#", 1)[0]).resolve(), target
    for target in REPO_PATH.findall(text):
        if "NN_" not in target:  # the naming pattern notebooks/NN_topic.py, not a file
            yield (ROOT / target).resolve(), target


def test_every_link_and_repository_path_resolves(repo_root):
    broken = []
    for path in _user_files(repo_root):
        for resolved, target in _link_targets(path, path.read_text()):
            if not resolved.exists():
                broken.append(f"{path.relative_to(repo_root)} -> {target}")
    assert not broken, "links to files the repository does not have:\n" + "\n".join(broken)


def test_the_key_pattern_finds_section_and_plain_citations():
    text = "see [IV §2.5], [PD Alg. 2], [VDM] and [GD, eq. 3] but not [1] or [b c f h w]"
    assert KEY.findall(text) == ["IV", "PD", "VDM", "GD"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[IV §2.3, §2.5; CDM]", ["IV §2.3", "IV §2.5", "CDM"]),
        ("[VDM §3, IV §2.3] and [IV Fig. 6]", ["VDM §3", "IV §2.3", "IV Fig. 6"]),
        ("x[SCALE], f([PROMPT]), [b c f h w], [1] and see [IV §2.4]", ["IV §2.4"]),
    ],
)
def test_citations_are_split_into_key_and_locator(text, expected):
    assert _citations(text) == expected


def test_the_checks_catch_a_wrong_section_and_a_dangling_link(tmp_path):
    assert "IV §2.1" not in _index(ROOT)  # T5 is [IV §2.2]: a stale §2.1 would fail
    page = tmp_path / "page.md"
    targets = [t for _, t in _link_targets(page, "[a](missing.md) [b](https://x.org) [c](#top)")]
    assert targets == ["missing.md"]
    assert BUILDER_NOTES.search("see NOTES.md") and not BUILDER_NOTES.search("docs/field-notes.md")


def test_the_paper_map_is_up_to_date(repo_root):
    paper_map = load_script(repo_root / "docs" / "paper_map.py")
    committed = (repo_root / "docs" / "paper_map.md").read_text()
    assert committed == paper_map.render(), "docs/paper_map.md is stale: run `make paper-map`"
