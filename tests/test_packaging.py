"""The package set is written down four times and they agree.

The four are pyproject.toml's ranges (for library users), environment.yml (for conda
users), the rules' conda environment (workflow/envs/allianceflow.yaml) and requirements.lock
(the exact versions, with hashes, that ``make run`` and ``make test`` install).
"""

import re
import tomllib

import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

# PyPI name -> conda-forge name, where they differ.
CONDA_NAMES: dict[str, str] = {}


def _split(requirement: str) -> tuple[str, str]:
    name, spec = re.match(r"^([A-Za-z0-9_.\-]+)\s*(.*)$", requirement.strip()).groups()
    return name.lower().replace("_", "-"), spec.replace(" ", "")


def _conda(path) -> dict[str, str]:
    env = yaml.safe_load(path.read_text())
    return dict(
        _split(d)
        for d in env["dependencies"]
        if isinstance(d, str) and not re.match(r"^(python|pip)\b(?!-)", d)
    )


def _project(root) -> dict:
    return tomllib.loads((root / "pyproject.toml").read_text())["project"]


def _lock(root) -> dict[str, Version]:
    """Package -> pinned version of requirements.lock; every pin carries a hash."""
    text = (root / "requirements.lock").read_text()
    pins = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):
        match = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s\\;]+)", block)
        if match:
            assert "--hash=sha256:" in block, f"{match.group(1)} is pinned without a hash"
            pins[canonicalize_name(match.group(1))] = Version(match.group(2))
    return pins


def test_pyproject_and_environment_agree(root):
    project = _project(root)
    extras = project["optional-dependencies"]
    requirements = project["dependencies"] + extras["test"] + extras["notebooks"]
    pip = dict(_split(r) for r in requirements)
    env = yaml.safe_load((root / "environment.yml").read_text())
    assert {CONDA_NAMES.get(k, k): v for k, v in pip.items()} == _conda(root / "environment.yml")
    assert "python=3.11" in env["dependencies"]
    assert {"pip": ["-e ."]} in env["dependencies"]


def test_the_rules_environment_is_the_runtime_part(root):
    runtime = dict(_split(r) for r in _project(root)["dependencies"])
    rules_env = root / "workflow" / "envs" / "allianceflow.yaml"
    assert {CONDA_NAMES.get(k, k): v for k, v in runtime.items()} == _conda(rules_env)
    assert {"pip": ["-e ../.."]} in yaml.safe_load(rules_env.read_text())["dependencies"]


def test_the_lock_pins_every_requirement_within_its_range(root):
    project = _project(root)
    pins = _lock(root)
    for line in project["dependencies"] + project["optional-dependencies"]["test"]:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is in pyproject.toml but not in requirements.lock"
        assert requirement.specifier.contains(pins[name]), (
            f"requirements.lock pins {name}=={pins[name]}, outside pyproject.toml's "
            f"{requirement.specifier}; run `make lock`"
        )
