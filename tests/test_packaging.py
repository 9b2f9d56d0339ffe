"""pyproject.toml and environment.yml list the same packages; the pins file pins, not ranges."""

import re

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib


def _name_and_spec(req: str) -> tuple[str, str]:
    match = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(.*)$", req)
    assert match, req
    return match.group(1).lower().replace("_", "-"), match.group(2).replace(" ", "")


def test_environment_yml_mirrors_pyproject(repo_root):
    project = tomllib.loads((repo_root / "pyproject.toml").read_text())["project"]
    wanted = dict(
        map(_name_and_spec, project["dependencies"] + project["optional-dependencies"]["dev"])
    )
    text = (repo_root / "environment.yml").read_text()
    pip_section = text.split("- pip:", 1)[1]
    listed = [
        line.strip()[2:] for line in pip_section.splitlines() if line.strip().startswith("- ")
    ]
    listed = [item for item in listed if not item.startswith("-e")]
    got = dict(map(_name_and_spec, listed))
    assert got == wanted


def test_console_script_and_python_floor(repo_root):
    project = tomllib.loads((repo_root / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["ivref"] == "ivref.cli:main"
    assert project["requires-python"] == ">=3.10"


def test_library_keeps_ranges_and_constraints_pin(repo_root):
    project = tomllib.loads((repo_root / "pyproject.toml").read_text())["project"]
    assert not any("==" in dep for dep in project["dependencies"])
    pins = (repo_root / "constraints.txt").read_text()
    assert "torch==2.13.0" in pins and "imageio-ffmpeg==0.7.0" in pins


def test_the_package_says_it_is_typed(repo_root):
    """PEP 561: without py.typed in the installed package, mypy and pyright users importing
    ivref see none of its annotations (a wheel built here holds ivref/py.typed)."""
    assert (repo_root / "ivref" / "py.typed").is_file()
    tool = tomllib.loads((repo_root / "pyproject.toml").read_text())["tool"]
    assert "py.typed" in tool["setuptools"]["package-data"]["ivref"]
