"""Every citation key used in ivref/ and notebooks/ is defined in REFERENCES.md."""

import re

KEY = re.compile(r"\[([A-Z][A-Z0-9-]*)(?=[\] ,§])")


def _defined(root):
    text = (root / "REFERENCES.md").read_text()
    return set(re.findall(r"^\| \[([A-Z][A-Z0-9-]*)\] \|", text, flags=re.M))


def test_reference_table_parses(repo_root):
    defined = _defined(repo_root)
    assert {"IV", "VDM", "PD", "GD", "IMG", "CFG", "CDM"} <= defined


def test_every_cited_key_is_defined(repo_root):
    defined = _defined(repo_root)
    files = sorted((repo_root / "ivref").rglob("*.py")) + sorted(
        (repo_root / "notebooks").glob("*.py")
    )
    assert files, "no sources found to scan"
    missing = {}
    for path in files:
        for key in KEY.findall(path.read_text()):
            if key not in defined:
                missing.setdefault(key, []).append(path.name)
    assert not missing, f"cited but not in REFERENCES.md: {missing}"


def test_the_key_pattern_finds_section_and_plain_citations():
    text = "see [IV §2.5], [PD Alg. 2], [VDM] and [GD, eq. 3] but not [1] or [b c f h w]"
    assert KEY.findall(text) == ["IV", "PD", "VDM", "GD"]
