"""pyproject.toml and environment.yml list the same packages with the same version ranges."""

import re
import tomllib

import yaml

# PyPI name -> conda-forge name, where they differ.
CONDA_NAMES: dict[str, str] = {}


def _split(requirement: str) -> tuple[str, str]:
    name, spec = re.match(r"^([A-Za-z0-9_.\-]+)\s*(.*)$", requirement.strip()).groups()
    return name.lower().replace("_", "-"), spec.replace(" ", "")


def test_pyproject_and_environment_agree(root):
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    pip = dict(
        _split(r) for r in project["dependencies"] + project["optional-dependencies"]["test"]
    )
    env = yaml.safe_load((root / "environment.yml").read_text())
    conda = dict(
        _split(d)
        for d in env["dependencies"]
        if isinstance(d, str) and not re.match(r"^(python|pip)\b(?!-)", d)
    )
    assert {CONDA_NAMES.get(k, k): v for k, v in pip.items()} == conda
    assert "python=3.11" in env["dependencies"]
    assert {"pip": ["-e ."]} in env["dependencies"]
