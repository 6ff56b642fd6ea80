"""The modules a student reads first show how they are called.

The docstring examples themselves run as doctests (``--doctest-modules`` over
``src/allianceflow`` in pyproject.toml), each reported as its own test; this module checks
that the examples are there to run, so that deleting them is not silently "green".
"""

from __future__ import annotations

import doctest
import importlib

import pytest

DOCUMENTED = [
    "allianceflow.clinical",
    "allianceflow.suddengains",
    "allianceflow.models",
    "allianceflow.tables",
]


@pytest.mark.parametrize("name", DOCUMENTED)
def test_the_documented_modules_have_examples(name):
    module = importlib.import_module(name)
    tests = doctest.DocTestFinder().find(module)
    assert sum(len(t.examples) for t in tests) > 0, f"{name} has no docstring examples"
