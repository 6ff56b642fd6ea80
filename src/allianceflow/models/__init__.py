"""Multilevel (linear and generalised linear mixed) models in lme4 syntax, reported tidily.

:func:`fit_model` parses an lme4 formula once (:mod:`~allianceflow.models.formula`), fits it
with the fast nested engine (:mod:`~allianceflow.models.engine`, lme4's profiled deviance
vectorised over units), the sparse engine for crossed and partially crossed factors
(:mod:`~allianceflow.models.sparse`), the GLMM engine for binomial and Poisson outcomes
(:mod:`~allianceflow.models.glmm`, glmer's Laplace and adaptive quadrature), or statsmodels'
``MixedLM`` for what none of them covers (:mod:`~allianceflow.models.statsmodels_backend`),
all driven by one optimiser and convergence check (:mod:`~allianceflow.models.optimize`),
and returns a
:class:`MixedModelResult` (:mod:`~allianceflow.models.result`): ``.fixed`` and ``.random``
DataFrames, ICC, R², convergence, ``.summary()`` and ``to_dict()`` for JSON. Inference --
Wald tests, containment df, r-equivalents, likelihood-ratio tests -- lives in
:mod:`~allianceflow.models.inference`, Satterthwaite and Kenward–Roger df in
:mod:`~allianceflow.models.ddf`; the standard research questions as formulas in
:mod:`~allianceflow.models.presets`.

Examples
--------
>>> from allianceflow.models import fit_model, preset_formula
>>> preset_formula("growth", therapist=False)
'outcome ~ session + (1 + session | patient)'
"""

import importlib
from typing import Any

#: Public name -> the submodule that defines it. The submodules are imported on first use
#: (PEP 562), so that a job which only reads results (``allianceflow.models.result``, for
#: tables and figures) does not load the fitting engines, and a fit loads only its own.
_EXPORTS: dict[str, str] = {
    "fit_model": "fit",
    "preset_formula": "presets",
    "PRESETS": "presets",
    "MixedModelResult": "result",
    "format_model": "result",
    "likelihood_ratio_test": "inference",
    "compare_models": "inference",
    "parse_formula": "formula",
    "FormulaSpec": "formula",
    "RandomTerm": "formula",
    "OPTIMIZERS": "statsmodels_backend",
    "fit_lmm": "engine",
    "LMMFit": "engine",
    "supports": "pls",
    "satterthwaite_df": "ddf",
    "kenward_roger": "ddf",
    "f_test": "ddf",
    "compare_df": "ddf",
}

#: The package's submodules, importable as attributes (``allianceflow.models.glmm``).
_SUBMODULES = frozenset(
    {
        "blas",
        "ddf",
        "ddf_moments",
        "design",
        "distributions",
        "engine",
        "fit",
        "formula",
        "glmm",
        "inference",
        "mixedlm",
        "moderation",
        "optimize",
        "pls",
        "presets",
        "result",
        "sparse",
        "statsmodels_backend",
    }
)

__all__ = [
    "fit_model",
    "preset_formula",
    "PRESETS",
    "MixedModelResult",
    "format_model",
    "likelihood_ratio_test",
    "compare_models",
    "parse_formula",
    "FormulaSpec",
    "RandomTerm",
    "OPTIMIZERS",
    "fit_lmm",
    "LMMFit",
    "supports",
    "satterthwaite_df",
    "kenward_roger",
    "f_test",
    "compare_df",
]


def __getattr__(name: str) -> Any:
    """Load a public name, or a submodule, on first use."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The public names and the submodules, for tab completion."""
    return sorted({*__all__, *_SUBMODULES})
