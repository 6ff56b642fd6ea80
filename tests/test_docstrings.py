"""The examples in the package's docstrings run and print what they claim (the docs are
read by students; an example that no longer holds teaches the wrong thing).
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import allianceflow

FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _modules_with_examples() -> list[str]:
    names = []
    for info in pkgutil.walk_packages(allianceflow.__path__, prefix="allianceflow."):
        if info.name.endswith("__main__"):
            continue
        tests = doctest.DocTestFinder().find(importlib.import_module(info.name))
        if any(t.examples for t in tests):
            names.append(info.name)
    return sorted(names)


MODULES = _modules_with_examples()


def test_the_documented_modules_have_examples():
    # the modules a student reads first show how they are called
    assert {
        "allianceflow.clinical",
        "allianceflow.suddengains",
        "allianceflow.models",
        "allianceflow.tables",
    } <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=FLAGS, report=False)
    assert result.attempted > 0
    assert result.failed == 0, (
        f"{result.failed} of {result.attempted} docstring examples in {name} failed; run python -m doctest -v on it"
    )
