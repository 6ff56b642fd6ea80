"""The public API is importable from the top level, and ``import allianceflow`` stays cheap."""

import subprocess
import sys

import pytest

import allianceflow


@pytest.mark.parametrize("name", sorted(set(allianceflow.__all__) - {"__version__"}))
def test_every_public_name_resolves_to_its_module(name):
    value = getattr(allianceflow, name)
    module = allianceflow._EXPORTS[name]
    assert value is getattr(__import__(module, fromlist=[name]), name)
    assert value.__doc__, f"allianceflow.{name} has no docstring"


def test_unknown_names_raise_attribute_error():
    with pytest.raises(AttributeError, match="has no attribute 'fit_modle'"):
        allianceflow.fit_modle  # noqa: B018


def test_import_loads_no_statistics_library():
    code = (
        "import sys, allianceflow; "
        "print(sorted(m for m in ('statsmodels', 'pandas', 'matplotlib', 'scipy') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
