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

from allianceflow.models.ddf import compare_df, f_test, kenward_roger, satterthwaite_df
from allianceflow.models.engine import LMMFit, fit_lmm
from allianceflow.models.fit import fit_model
from allianceflow.models.formula import FormulaSpec, RandomTerm, parse_formula
from allianceflow.models.inference import compare_models, likelihood_ratio_test
from allianceflow.models.pls import supports
from allianceflow.models.presets import PRESETS, preset_formula
from allianceflow.models.result import MixedModelResult, format_model
from allianceflow.models.statsmodels_backend import OPTIMIZERS

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
