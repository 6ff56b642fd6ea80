"""allianceflow: a reproducible pipeline for alliance-outcome studies.

The package holds all logic; the Snakemake workflow, the notebooks and the tests call it.
The functions a study's analysis needs are importable from the top level::

    >>> import allianceflow as af
    >>> af.preset_formula("growth", therapist=False)
    'outcome ~ session + (1 + session | patient)'

They are loaded on first use (PEP 562), so ``import allianceflow`` stays cheap for the
pipeline's jobs, each of which imports only the stage it runs.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: Public name -> the module that defines it.
_EXPORTS: dict[str, str] = {
    # simulated studies with known truth
    "simulate_study": "allianceflow.simulate",
    "simulate_couples": "allianceflow.simulate",
    # configuration
    "load_config": "allianceflow.config",
    # clean, score, derive
    "clean_sessions": "allianceflow.clean",
    "score_sessions": "allianceflow.score",
    "reliability": "allianceflow.score",
    "within_between": "allianceflow.derive",
    "lag_within_patient": "allianceflow.derive",
    "system_variables": "allianceflow.couples",
    "reliable_change": "allianceflow.clinical",
    "clinical_cutoffs": "allianceflow.clinical",
    "fit_expected_response": "allianceflow.ontrack",
    "on_track": "allianceflow.ontrack",
    "sudden_gains": "allianceflow.suddengains",
    "detect_ruptures": "allianceflow.ruptures",
    # multilevel models
    "fit_model": "allianceflow.models",
    "preset_formula": "allianceflow.models",
    "MixedModelResult": "allianceflow.models",
    "GLMMResult": "allianceflow.models.result",
    "format_model": "allianceflow.models",
    "likelihood_ratio_test": "allianceflow.models",
    "compare_models": "allianceflow.models",
    "satterthwaite_df": "allianceflow.models",
    "kenward_roger": "allianceflow.models",
    # across studies
    "meta_analysis": "allianceflow.pool",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    """Load a public name from its module on first use."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'allianceflow' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The public names, for tab completion."""
    return sorted(__all__)
