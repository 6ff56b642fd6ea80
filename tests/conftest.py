"""Shared fixtures. Figures draw on the Agg backend; paths are relative to the project."""

import os
import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def root() -> Path:
    """The project folder."""
    return ROOT


#: What a temporary copy of the project needs to run the pipeline (never results/ or data/processed/).
PROJECT_FILES = ["Snakefile", "config.yaml", "workflow", "data/raw"]


def _copy_project(root: Path, target: Path) -> Path:
    for name in PROJECT_FILES:
        source, dest = root / name, target / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, dest)
        else:
            shutil.copy2(source, dest)
    return target


@pytest.fixture(scope="session")
def copy_project(root):
    """A function that copies the project's pipeline files into a folder and returns it."""
    return lambda target: _copy_project(root, Path(target))
