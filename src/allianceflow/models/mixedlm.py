r"""statsmodels' ``MixedLM`` as a function of its parameters, for the statsmodels back-end.

The layer under :mod:`allianceflow.models.statsmodels_backend`: build the model from an
lme4 formula's plan (:func:`prepare`, :func:`build_model`), evaluate the profiled
log-likelihood and a Hessian from the analytic score (:func:`loglike`,
:func:`sqrt_hessian`), make a results object at given parameters without re-optimising
(:func:`result_at`), the fixed effects' covariance as lme4's ``vcov`` (:func:`gls_cov_fe`)
and the conditional modes of the outer factor (:func:`conditional_modes`).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd

from allianceflow.models.design import check_rank, group_codes, level_labels
from allianceflow.models.formula import FormulaSpec, MixedLMPlan, to_mixedlm

__all__ = [
    "SM_TOL",
    "prepare",
    "build_model",
    "loglike",
    "sqrt_hessian",
    "result_at",
    "gls_cov_fe",
    "check_model_rank",
    "conditional_modes",
]

SM_TOL = 1e-10  # statsmodels' tolerance in MixedLM.get_fe_params (statsmodels #10239)


def prepare(rows: pd.DataFrame, spec: FormulaSpec) -> tuple[pd.DataFrame, MixedLMPlan]:
    """Return the complete rows with grouping factors as strings, and the ``MixedLM`` plan."""
    d = rows.copy()
    for fac in {f for t in spec.random for f in t.factor}:
        d[fac] = d[fac].astype(str)
    plan = to_mixedlm(spec, d)
    for col, parts in plan.derived_columns.items():
        codes, levels = group_codes(d, parts)
        d[col] = np.asarray(level_labels(levels), dtype=object)[codes]
    if plan.groups == "_all":
        d["_all"] = "all"
    return d, plan


def build_model(d: pd.DataFrame, plan: MixedLMPlan):
    """Build ``MixedLM.from_formula`` for the prepared rows and plan (warnings silenced)."""
    from statsmodels.regression.mixed_linear_model import MixedLM

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return MixedLM.from_formula(
            plan.formula,
            data=d,
            groups=plan.groups,
            re_formula=plan.re_formula,
            vc_formula=plan.vc_formula or None,
        )


def sqrt_hessian(model, packed: np.ndarray) -> np.ndarray:
    """Central-difference Hessian of the profiled log-likelihood from the analytic score."""
    k = len(packed)
    h = np.zeros((k, k))
    for j in range(k):
        # relative step: a parameter near 0 must not be pushed across 0, where the
        # covariance becomes singular and statsmodels' likelihood jumps (statsmodels #10239)
        step = 1e-5 * min(1.0, max(abs(packed[j]), 1e-3))
        e = np.zeros(k)
        e[j] = step
        h[:, j] = (
            model.score(packed + e, profile_fe=True) - model.score(packed - e, profile_fe=True)
        ) / (2 * step)
    return 0.5 * (h + h.T)


def loglike(model, packed: np.ndarray) -> float:
    """Return the profiled log-likelihood at sqrt-scale *packed*; NaN where it fails."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        try:
            val = float(model.loglike(packed, profile_fe=True))
        except (np.linalg.LinAlgError, ValueError, FloatingPointError):
            return float("nan")
    return val if math.isfinite(val) else float("nan")


def result_at(model, packed: np.ndarray, converged: bool):
    """Build a statsmodels MixedLMResults at given (sqrt-scale, profiled) parameters.

    Mirrors the end of ``MixedLM.fit`` (statsmodels 0.14/0.15) without re-optimising.
    """
    from statsmodels.regression.mixed_linear_model import (
        MixedLMParams,
        MixedLMResults,
        MixedLMResultsWrapper,
    )

    params = MixedLMParams.from_packed(
        packed, model.k_fe, model.k_re, use_sqrt=model.use_sqrt, has_fe=False
    )
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        fe_params, _ = model.get_fe_params(params.cov_re, params.vcomp)
        params.fe_params = fe_params
        scale = model.get_scale(fe_params, params.cov_re, params.vcomp)
        hess, _ = model.hessian(params)
        try:
            pcov = np.linalg.inv(-hess)
        except np.linalg.LinAlgError:
            pcov = np.full_like(hess, np.nan)
    results = MixedLMResults(model, params.get_packed(use_sqrt=False, has_fe=True), pcov / scale)
    results.params_object = params
    results.fe_params = fe_params
    results.cov_re = scale * params.cov_re
    results.vcomp = scale * params.vcomp
    results.scale = scale
    results.cov_re_unscaled = params.cov_re
    results.method = "REML" if model.reml else "ML"
    results.converged = converged
    results.hist = None
    results.reml = model.reml
    results.cov_pen = model.cov_pen
    results.k_fe = model.k_fe
    results.k_re = model.k_re
    results.k_re2 = model.k_re2
    results.k_vc = model.k_vc
    results.use_sqrt = model.use_sqrt
    results.freepat = None
    return MixedLMResultsWrapper(results)


def gls_cov_fe(model, result) -> np.ndarray:
    r"""Covariance of the fixed effects, :math:`\sigma^2 (X^\top V^{-1} X)^{-1}` (lme4's ``vcov``).

    Conditional on the estimated variance parameters (statsmodels' ``bse_fe`` instead
    inverts the joint observed information of fixed and variance parameters, which differs
    from lme4 by a few per cent in small samples).
    """
    from statsmodels.regression.mixed_linear_model import _smw_solver

    po = result.params_object
    cov_re = np.atleast_2d(np.asarray(po.cov_re, dtype=float))
    if model.k_re == 0:
        cov_re_inv = np.empty((0, 0))
    else:
        w, v = np.linalg.eigh(cov_re)
        ii = np.flatnonzero(w >= SM_TOL)
        cov_re_inv = (v[:, ii] / w[ii]) @ v[:, ii].T
    xtvx = np.zeros((model.k_fe, model.k_fe))
    for gi, _ in enumerate(model.group_labels):
        vc_var = model._expand_vcomp(po.vcomp, gi)
        if vc_var.size:
            vc_vari = np.where(vc_var >= SM_TOL, 1.0 / np.maximum(vc_var, SM_TOL), 0.0)
        else:
            vc_vari = np.empty(0)
        solver = _smw_solver(1.0, model._aex_r[gi], model._aex_r2[gi], cov_re_inv, vc_vari)
        ex = model.exog_li[gi]
        xtvx += ex.T @ solver(ex)
    return float(result.scale) * np.linalg.inv(xtvx)


def check_model_rank(model) -> None:
    """Refuse a rank-deficient fixed-effects design (statsmodels path)."""
    check_rank(np.asarray(model.exog, dtype=float), list(model.exog_names))


def conditional_modes(
    res, plan: MixedLMPlan, d: pd.DataFrame, max_groups: int = 5000
) -> list[tuple[str, str, str, float, float]]:
    """Conditional modes (BLUPs) of the outer grouping factor's random effects.

    One row per level and term: ``(group, level, term, mode, se)``, where ``se`` is the
    square root of the conditional variance of the random effect given the
    data at the estimates (statsmodels' ``random_effects_cov``; lme4's ``condVar``), and the
    interval is ``mode ± 1.96 se``: the intervals of a caterpillar plot. Empty for crossed
    designs (no outer factor) and when the outer factor has more than *max_groups* levels
    (the per-level covariance would dominate the fit's cost; use the fast engine there).
    """
    if not plan.re_labels or not plan.outer:
        return []
    levels = sorted(d[plan.groups].astype(str).unique())
    if len(levels) > max_groups:
        return []
    k = len(plan.re_labels)
    effects = res.random_effects
    covs = res.random_effects_cov
    rows = []
    for key in sorted(effects, key=str):
        values = np.asarray(effects[key], dtype=float)[:k]
        cond = np.atleast_2d(np.asarray(covs[key], dtype=float))[:k, :k]
        for j, (group, term) in enumerate(plan.re_labels):
            se = math.sqrt(max(float(cond[j, j]), 0.0))
            rows.append((group, str(key), term, float(values[j]), se))
    return rows
