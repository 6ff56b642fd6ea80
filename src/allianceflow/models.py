"""Fit multilevel (linear mixed) models written in lme4 syntax, and report them tidily.

Two engines fit the models. By default (``engine="auto"``) nested structures -- patients
within therapists, with any random slopes, correlated or not -- go to
:mod:`allianceflow.engine` (lme4's profiled REML/ML deviance); crossed factors go to
statsmodels' ``MixedLM``, for which :mod:`allianceflow.formula` translates the lme4 formula
into ``groups`` / ``re_formula`` / ``vc_formula``. Both return the same result dict. Around
the statsmodels fit this module adds what a published analysis needs and MixedLM does not
give reliably:

* a deliberate optimiser order with recorded fall-backs and a convergence check of our own
  (gradient of the profiled log-likelihood, curvature, boundary variances), because
  statsmodels can report ``converged=True`` at a point that is not the optimum;
* a guard against statsmodels issue #10239 (a random-effect variance below 1e-10 makes
  between-group fixed effects come back as exactly 0.0);
* ICC per level, Nakagawa & Schielzeth (2013) R² (Johnson 2014 for random slopes), an
  r-equivalent per fixed effect, AIC/BIC, likelihood-ratio tests;
* a JSON-serialisable result dict with reproducibly rounded floats and a readable text form.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import replace
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy import stats

from allianceflow.formula import (
    FormulaSpec,
    MixedLMPlan,
    RandomTerm,
    formula_variables,
    model_rows,
    parse_formula,
    to_mixedlm,
)

__all__ = [
    "OPTIMIZERS",
    "PRESETS",
    "fit_model",
    "format_model",
    "likelihood_ratio_test",
    "compare_models",
    "preset_formula",
    "fixed_effects_table",
    "random_effects_table",
]

Optimizer = Literal["lbfgsb", "lbfgs", "bfgs", "powell", "nm", "cg", "newton"]

#: Default optimiser order. "lbfgsb" is scipy's L-BFGS-B run by us on statsmodels' profiled
#: (RE)ML log-likelihood with lme4's box constraints (standard deviations >= 0, here >= 1e-4
#: relative to the residual SD, because statsmodels' likelihood is discontinuous below a
#: variance ratio of 1e-10, issue #10239). The others are statsmodels' own optimisers:
#: 'lbfgs' reached lme4's answer to 1e-7 where statsmodels' default 'bfgs' stopped
#: unconverged (issue 6), but unbounded it can also report convergence at a wrong point or
#: run into a zero variance with an infinite likelihood. Each fall-back starts from the best
#: point found so far.
OPTIMIZERS: tuple[str, ...] = ("lbfgsb", "lbfgs", "bfgs", "powell", "nm")
_LOWER = 1e-4  # lower bound of SD-type parameters (relative to the residual SD) in "lbfgsb"

_SM_TOL = 1e-10  # statsmodels' tolerance in MixedLM.get_fe_params (issue #10239)
_SIG = 12  # significant digits kept in results


# --------------------------------------------------------------------------- helpers


def _r(x: Any) -> float | None:
    """Round to ``_SIG`` significant digits as a plain float; NaN/inf become None."""
    if x is None:
        return None
    x = float(x)
    if not math.isfinite(x):
        return None
    if x == 0.0:
        return 0.0
    return float(f"{x:.{_SIG}g}")


def _check_data(data: Any) -> None:
    if not isinstance(data, pd.DataFrame):
        raise TypeError(f"`data` must be a pandas DataFrame; got {type(data).__name__}.")
    if len(data) == 0:
        raise ValueError("`data` has no rows.")


def _check_optimizers(optimizers: Any) -> tuple[str, ...]:
    allowed = ("lbfgsb", "lbfgs", "bfgs", "powell", "nm", "cg", "newton")
    if isinstance(optimizers, str):
        optimizers = (optimizers,)
    optimizers = tuple(optimizers)
    if not optimizers:
        raise ValueError(f"`optimizers` must list at least one of {allowed}; got ().")
    for opt in optimizers:
        if opt not in allowed:
            raise ValueError(
                f"`optimizers` entries must be one of {', '.join(map(repr, allowed))}; got {opt!r}."
            )
    return optimizers


def _check_name(name: Any) -> None:
    if not isinstance(name, str) or not name:
        raise ValueError(f"`name` must be a non-empty string; got {name!r}.")


# --------------------------------------------------------------------------- fitting


def _prepare(data: pd.DataFrame, spec: FormulaSpec) -> tuple[pd.DataFrame, MixedLMPlan, int]:
    d, n_dropped = model_rows(data, spec)
    for fac in {f for t in spec.random for f in t.factor}:
        d[fac] = d[fac].astype(str)
    plan = to_mixedlm(spec, d)
    for col, parts in plan.derived_columns.items():
        d[col] = d[list(parts)].agg(":".join, axis=1)
    if plan.groups == "_all":
        d["_all"] = "all"
    return d, plan, n_dropped


def _build_model(d: pd.DataFrame, plan: MixedLMPlan, reml: bool):
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


def _sqrt_hessian(model, packed: np.ndarray) -> np.ndarray:
    """Central-difference Hessian of the profiled log-likelihood from the analytic score."""
    k = len(packed)
    h = np.zeros((k, k))
    for j in range(k):
        # relative step: a parameter near 0 must not be pushed across 0, where the
        # covariance becomes singular and statsmodels' likelihood jumps (#10239)
        step = 1e-5 * min(1.0, max(abs(packed[j]), 1e-3))
        e = np.zeros(k)
        e[j] = step
        h[:, j] = (
            model.score(packed + e, profile_fe=True) - model.score(packed - e, profile_fe=True)
        ) / (2 * step)
    return 0.5 * (h + h.T)


def _boundary_mask(model, packed: np.ndarray, tol: float = 2 * _LOWER) -> np.ndarray:
    """Sqrt-scale parameters that are a single standard deviation (relative to the residual
    SD) sitting at the zero boundary: every variance component, and the random-effect SD
    of the outer factor when it has one effect.
    """
    mask = np.zeros(len(packed), dtype=bool)
    k_re2 = model.k_re2
    idx = list(range(k_re2, k_re2 + model.k_vc))
    if model.k_re == 1:
        idx.append(0)
    for j in idx:
        mask[j] = abs(packed[j]) < tol
    return mask


def _convergence_check(model, result, grad_tol: float) -> dict:
    """Optimality of a MixedLM solution on the profiled, sqrt (Cholesky) scale.

    Interior parameters: the Newton step's predicted gain must be below 1e-6 with a
    negative definite curvature (or the gradient below ``grad_tol``). Parameters at the zero
    boundary (an SD below 1e-4 of the residual SD) are held there, as the statsmodels
    likelihood is discontinuous just below it (#10239); for them the gradient must point
    towards zero (the Karush-Kuhn-Tucker condition for a variance at 0) or be negligible.
    """
    packed = result.params_object.get_packed(use_sqrt=True, has_fe=False)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        grad = np.asarray(model.score(packed, profile_fe=True), dtype=float)
        hess = _sqrt_hessian(model, packed) if len(packed) else np.zeros((0, 0))
    max_grad = float(np.max(np.abs(grad))) if grad.size else 0.0
    on_bound = _boundary_mask(model, packed)
    free = ~on_bound
    improvement = 0.0
    curv_ok = True
    if not np.all(np.isfinite(grad)) or not np.all(np.isfinite(hess)):
        return {
            "ok": False,
            "max_abs_gradient": max_grad,
            "newton_improvement": float("nan"),
            "curvature_negative_definite": False,
        }
    g_f, h_f = grad[free], hess[np.ix_(free, free)]
    if g_f.size:
        try:
            np.linalg.cholesky(-h_f)
            improvement = float(0.5 * g_f @ np.linalg.solve(-h_f, g_f))
        except np.linalg.LinAlgError:
            curv_ok = False
            improvement = float("nan")
    ok_free = (
        (improvement < 1e-6 or float(np.max(np.abs(g_f))) < grad_tol)
        if curv_ok
        else (g_f.size == 0 or float(np.max(np.abs(g_f))) < grad_tol)
    )
    ok_bound = all(
        grad[j] * packed[j] <= 0 or abs(grad[j]) < grad_tol for j in np.flatnonzero(on_bound)
    )
    return {
        "ok": bool(ok_free and ok_bound),
        "max_abs_gradient": max_grad,
        "newton_improvement": improvement,
        "curvature_negative_definite": curv_ok,
    }


def _loglike(model, packed: np.ndarray) -> float:
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        try:
            val = float(model.loglike(packed, profile_fe=True))
        except (np.linalg.LinAlgError, ValueError, FloatingPointError):
            return float("nan")
    return val if math.isfinite(val) else float("nan")


def _newton_polish(model, packed: np.ndarray, max_steps: int = 25) -> tuple[np.ndarray, int]:
    """Safeguarded Newton ascent on the profiled log-likelihood (sqrt scale).

    Quasi-Newton optimisers in statsmodels minimise the log-likelihood divided by the number
    of observations and can stop early with ``converged=True``; a few Newton steps with the
    analytic score and a finite-difference Hessian finish the job (quadratic convergence).
    Parameters at the zero boundary (:func:`_boundary_mask`) are held fixed; steps are
    halved until the log-likelihood is finite and does not decrease.
    """
    p = np.asarray(packed, dtype=float).copy()
    l0 = _loglike(model, p)
    if not math.isfinite(l0) or p.size == 0:
        return p, 0
    free = ~_boundary_mask(model, p)
    if not free.any():
        return p, 0
    steps = 0
    for _ in range(max_steps):
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            g = np.asarray(model.score(p, profile_fe=True), dtype=float)[free]
            h = _sqrt_hessian(model, p)[np.ix_(free, free)]
        if not (np.all(np.isfinite(g)) and np.all(np.isfinite(h))):
            break
        try:
            np.linalg.cholesky(-h)
            step = np.zeros_like(p)
            step[free] = np.linalg.solve(-h, g)
        except np.linalg.LinAlgError:
            break
        t, accepted = 1.0, False
        while t > 1e-6:
            l1 = _loglike(model, p + t * step)
            if math.isfinite(l1) and l1 >= l0:
                accepted = True
                break
            t /= 2
        if not accepted:
            break
        p = p + t * step
        gain, l0 = l1 - l0, l1
        steps += 1
        if gain < 1e-10:
            break
    return p, steps


def _result_at(model, packed: np.ndarray, converged: bool):
    """A statsmodels MixedLMResults at given (sqrt-scale, profiled) parameters.

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


def _gls_cov_fe(model, result) -> np.ndarray:
    """Covariance of the fixed effects, :math:`\\sigma^2 (X^\\top V^{-1} X)^{-1}`, as lme4's ``vcov``.

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
        ii = np.flatnonzero(w >= _SM_TOL)
        cov_re_inv = (v[:, ii] / w[ii]) @ v[:, ii].T
    xtvx = np.zeros((model.k_fe, model.k_fe))
    for gi, _ in enumerate(model.group_labels):
        vc_var = model._expand_vcomp(po.vcomp, gi)
        if vc_var.size:
            vc_vari = np.where(vc_var >= _SM_TOL, 1.0 / np.maximum(vc_var, _SM_TOL), 0.0)
        else:
            vc_vari = np.empty(0)
        solver = _smw_solver(1.0, model._aex_r[gi], model._aex_r2[gi], cov_re_inv, vc_vari)
        ex = model.exog_li[gi]
        xtvx += ex.T @ solver(ex)
    return float(result.scale) * np.linalg.inv(xtvx)


def _fit_lbfgsb(model, reml: bool, start: np.ndarray | None, maxiter: int):
    """Box-constrained L-BFGS-B on statsmodels' profiled log-likelihood (lme4's formulation).

    Parameters are the Cholesky factor of the random-effects covariance and the square roots
    of the variance components, relative to the residual SD. Diagonal elements and square
    roots are bounded below by ``_LOWER`` (lme4 bounds them by 0; statsmodels' likelihood is
    unusable below a variance ratio of 1e-10). Unlike statsmodels' own ``fit``, the objective is
    not divided by the number of observations, so the stopping tolerances do not loosen as
    the data grow.
    """
    from scipy.optimize import minimize

    # the attributes MixedLM.fit sets before optimising
    model.reml = reml
    model.cov_pen = None
    model.fe_pen = None
    model._freepat = None
    model._cov_sing = 0
    k_re, k_vc = model.k_re, model.k_vc
    tril = np.tril_indices(k_re)
    if start is None:
        start = np.concatenate([np.eye(k_re)[tril], np.ones(k_vc)])
    bounds = [(_LOWER, None) if i == j else (None, None) for i, j in zip(*tril)]
    bounds += [(_LOWER, None)] * k_vc
    x0 = np.array([max(v, _LOWER) if b[0] is not None else v for v, b in zip(start, bounds)])

    def objective(p):
        val = _loglike(model, p)
        return -val if math.isfinite(val) else 1e300

    def gradient(p):
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            g = -np.asarray(model.score(p, profile_fe=True), dtype=float)
        return np.where(np.isfinite(g), g, 0.0)

    out = minimize(
        objective,
        x0,
        jac=gradient,
        method="L-BFGS-B",
        bounds=bounds,
        options={"maxiter": maxiter, "ftol": 1e-14, "gtol": 1e-8},
    )
    return _result_at(model, np.asarray(out.x, dtype=float), bool(out.success))


def _fit_attempts(model, reml: bool, optimizers: tuple[str, ...], grad_tol: float, maxiter: int):
    attempts: list[dict] = []
    best = best_conv = best_msgs = best_opt = None
    start = None
    for opt in optimizers:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                if opt == "lbfgsb":
                    res = _fit_lbfgsb(model, reml, start, maxiter)
                else:
                    res = model.fit(reml=reml, method=[opt], start_params=start, maxiter=maxiter)
            except (np.linalg.LinAlgError, ValueError, FloatingPointError) as exc:
                attempts.append(
                    {
                        "optimizer": opt,
                        "loglik": None,
                        "converged": False,
                        "statsmodels_converged": False,
                        "newton_steps": 0,
                        "max_abs_gradient": None,
                        "warnings": [f"{type(exc).__name__}: {exc}"],
                    }
                )
                continue
        msgs = sorted({str(w.message) for w in caught})
        sm_conv = bool(res.converged)
        packed = res.params_object.get_packed(use_sqrt=True, has_fe=False)
        polished, n_steps = _newton_polish(model, packed)
        if n_steps and _loglike(model, polished) > _loglike(model, packed):
            res = _result_at(model, polished, sm_conv)
        else:
            n_steps = 0
        llf = float(res.llf)
        check = _convergence_check(model, res, grad_tol)
        if not math.isfinite(llf):
            check["ok"] = False
        attempts.append(
            {
                "optimizer": opt,
                "loglik": _r(llf),
                "converged": check["ok"],
                "statsmodels_converged": sm_conv,
                "newton_steps": int(n_steps),
                "max_abs_gradient": _r(check["max_abs_gradient"]),
                "warnings": msgs,
            }
        )
        finite = math.isfinite(llf)
        if finite and (
            best is None
            or (check["ok"] and not best_conv["ok"])
            or (check["ok"] == best_conv["ok"] and llf > float(best.llf) + 1e-9)
        ):
            best, best_conv, best_msgs, best_opt = res, check, msgs, opt
        if best is not None:
            start = best.params_object.get_packed(use_sqrt=True, has_fe=False)
        if check["ok"]:
            break
    if best is None:
        raise RuntimeError(
            "MixedLM failed with every optimiser: "
            + "; ".join(f"{a['optimizer']}: {a['warnings']}" for a in attempts)
        )
    return best, best_conv, best_msgs, best_opt, attempts


def _degenerate_effects(result, plan: MixedLMPlan) -> list[tuple[str, str]]:
    """(group, term) of random effects whose unscaled variance is below statsmodels' 1e-10."""
    out = []
    cov = np.atleast_2d(np.asarray(result.params_object.cov_re))
    for i, lab in enumerate(plan.re_labels):
        if cov.size and cov[i, i] < _SM_TOL:
            out.append(lab)
    vc = np.asarray(result.params_object.vcomp)
    for j, name in enumerate(plan.vc_formula):
        if vc[j] < _SM_TOL:
            out.append(plan.vc_labels[name])
    return out


def _boundary_effects(model, result, plan: MixedLMPlan) -> list[tuple[str, str]]:
    """(group, term) of single-SD parameters at the zero boundary (see ``_boundary_mask``)."""
    packed = result.params_object.get_packed(use_sqrt=True, has_fe=False)
    mask = _boundary_mask(model, packed)
    out = []
    if model.k_re == 1 and mask[0]:
        out.append(plan.re_labels[0])
    for j, name in enumerate(plan.vc_formula):
        if mask[model.k_re2 + j]:
            out.append(plan.vc_labels[name])
    return out


def _re_singular(result) -> bool:
    cov = np.atleast_2d(np.asarray(result.params_object.cov_re))
    if cov.size == 0:
        return False
    return bool(np.linalg.eigvalsh(cov).min() < _SM_TOL)


def _drop_effects(spec: FormulaSpec, drop: list[tuple[str, str]]) -> FormulaSpec:
    terms: list[RandomTerm] = []
    for t in spec.random:
        gone = {e for g, e in drop if g == t.label}
        if not gone:
            terms.append(t)
            continue
        intercept = t.intercept and "(Intercept)" not in gone
        slopes = tuple(s for s in t.slopes if s not in gone)
        if intercept or slopes:
            terms.append(
                replace(
                    t,
                    intercept=intercept,
                    slopes=slopes,
                    correlated=t.correlated and (int(intercept) + len(slopes)) > 1,
                )
            )
    return replace(spec, random=tuple(terms))


def _level_df(
    d: pd.DataFrame, plan: MixedLMPlan, spec: FormulaSpec, exog: pd.DataFrame
) -> dict[str, float]:
    """Denominator df per fixed term after Pinheiro & Bates (2000, sec. 2.4.2)."""
    n = len(d)
    p = exog.shape[1]
    if plan.groups == "_all" or not spec.random:
        return {c: float(n - p) for c in exog.columns}
    # nesting chain outer -> inner (only intercept-level factors that nest)
    facs = sorted(
        {t.factor for t in spec.random},
        key=lambda f: (len(f), d.groupby(_key_col(f, plan)).ngroups),
    )
    keys = [_key_col(f, plan) for f in facs]
    return _containment_df(d, keys, exog)


def _containment_df(d: pd.DataFrame, keys: list[str], exog: pd.DataFrame) -> dict[str, float]:
    """Containment df for nested grouping columns *keys*, ordered outer to inner."""
    n = len(d)
    sizes = [1] + [int(d[k].nunique()) if k in d else int(d.groupby(k).ngroups) for k in keys] + [n]
    # level index of each column: innermost level within which it is constant
    level = {}
    x = exog.reset_index(drop=True)
    for c in x.columns:
        if np.ptp(x[c].to_numpy()) == 0:  # intercept
            level[c] = len(keys) + 1
            continue
        lev = len(keys) + 1
        for i in range(len(keys) - 1, -1, -1):
            spread = x[c].groupby(d[keys[i]].to_numpy()).agg(lambda s: np.ptp(s.to_numpy()))
            if float(spread.max()) <= 1e-12 * max(1.0, float(np.abs(x[c]).max())):
                lev = i + 1
            else:
                break
        level[c] = lev
    # The intercept is already accounted for by sizes[0] = 1 (Pinheiro & Bates 2000, sec.
    # 2.4.2; nlme's Orthodont example: 108 rows, 27 subjects, age within, Sex between gives
    # df 80 for intercept and age, 25 for Sex); it is reported at the innermost level.
    intercepts = {c for c in x.columns if np.ptp(x[c].to_numpy()) == 0}
    n_at = {
        lv: sum(1 for c in level if level[c] == lv and c not in intercepts)
        for lv in range(1, len(keys) + 2)
    }
    out = {}
    for c, lv in level.items():
        out[c] = float(max(sizes[lv] - sizes[lv - 1] - n_at[lv], 1))
    return out


def _key_col(factor: tuple[str, ...], plan: MixedLMPlan) -> str:
    if len(factor) == 1:
        return factor[0]
    for col, parts in plan.derived_columns.items():
        if parts == factor:
            return col
    raise KeyError(factor)


def _group_count(d: pd.DataFrame, factor: tuple[str, ...], plan: MixedLMPlan) -> int:
    col = _key_col(factor, plan)
    if plan.groups not in ("_all", col) and col != plan.groups:
        # inner factor: count levels within outer groups (the units the model fits)
        return int(d.groupby([plan.groups, col]).ngroups)
    return int(d[col].nunique())


def fit_model(
    data: pd.DataFrame,
    formula: str,
    *,
    reml: bool = True,
    name: str = "model",
    optimizers: tuple[str, ...] | list[str] = OPTIMIZERS,
    grad_tol: float = 1e-3,
    boundary_tol: float = 1e-4,
    maxiter: int = 2000,
    engine: Literal["auto", "fast", "statsmodels"] = "auto",
) -> dict:
    """Fit a linear mixed model written in lme4 syntax and return tidy, JSON-ready results.

    Parameters
    ----------
    data : DataFrame
        Long format, one row per observation (session). Rows with a missing value in any
        model variable are dropped and counted (``n_dropped_missing``).
    formula : str
        lme4 formula, e.g. ``"outcome ~ alliance_within_lag + alliance_between + session +
        (1 | therapist) + (1 | patient)"``; see :func:`allianceflow.formula.parse_formula`.
    reml : bool, default True
        REML (default, as lme4) or maximum likelihood (needed to compare fixed effects by LRT).
    name : str, default "model"
        Stored in the result.
    optimizers : sequence of str, default ``OPTIMIZERS`` = lbfgsb, lbfgs, bfgs, powell, nm
        Tried in order until our convergence check passes; each starts from the best point
        found so far. Every attempt is recorded in ``result["convergence"]["attempts"]``.
    grad_tol : float, default 1e-3
        Largest absolute gradient of the profiled log-likelihood (on the scale of the
        Cholesky factor of the relative covariance) accepted when the Newton test cannot be
        used.
    boundary_tol : float, default 1e-4
        A random-effect variance below ``boundary_tol`` times the residual variance is
        reported as at the boundary (a singular fit, as lme4's ``isSingular``), as is a
        covariance matrix whose smallest eigenvalue is below ``boundary_tol`` times its
        largest variance.
    maxiter : int, default 2000
        Iteration limit per optimiser.
    engine : {"auto", "fast", "statsmodels"}, default "auto"
        "fast": :func:`allianceflow.engine.fit_lmm`, lme4's profiled-deviance formulation
        vectorised over patients (nested grouping factors only; any ``|`` or ``||`` block
        at any level). "statsmodels": ``MixedLM`` with the optimiser fall-backs below.
        "auto" takes the fast engine whenever :func:`allianceflow.engine.supports` the
        structure and statsmodels otherwise (crossed factors). Both give the same result
        keys; ``result["engine"]`` says which ran. The options ``optimizers``, ``grad_tol``
        and ``maxiter`` apply to statsmodels only.

    Returns
    -------
    dict
        ``name, formula, reml, n_obs, n_groups, n_dropped_missing, fixed, random,
        covariances, residual_variance, icc, r2_marginal, r2_conditional, loglik, aic, bic,
        n_params, convergence``. ``fixed`` rows: ``term, estimate, se, ci_low, ci_high,
        statistic, p, df, r``. ``random`` rows: ``group, term, variance, sd, boundary``.
        Floats are plain Python floats rounded to 12 significant digits (``None`` for NaN).

    Raises
    ------
    TypeError, ValueError, KeyError
        Bad ``data``/``formula``/options; unsupported random structure (see
        :func:`allianceflow.formula.to_mixedlm`); a column that does not exist.

    Notes
    -----
    *Optimisation.* The profiled (RE)ML log-likelihood of statsmodels' MixedLM is maximised
    over the Cholesky factor of the random-effects covariance relative to the residual
    variance (lme4's :math:`\\theta`). The first optimiser, ``lbfgsb``, is scipy's L-BFGS-B
    with lme4's box constraints (standard deviations bounded below, here by 1e-4); the
    fall-backs are statsmodels' own. After each, a safeguarded Newton polish (analytic score,
    finite-difference Hessian) finishes the optimisation, with boundary parameters held.

    *Convergence check.* At the solution we take the gradient :math:`g` and Hessian
    :math:`H` over the free (non-boundary) parameters and accept when :math:`-H` is positive
    definite and one more Newton step would gain less than :math:`10^{-6}` in
    log-likelihood, :math:`\\tfrac12 g^\\top(-H)^{-1}g < 10^{-6}` (or :math:`\\max|g| <`
    ``grad_tol``); for a standard deviation at the zero boundary the gradient must point
    towards 0. The test is scale-free, avoiding lme4's absolute-gradient false alarms on large
    data (issue 10). ``hessian_positive_definite`` reports :math:`-H` (free parameters).
    statsmodels' own ``converged`` flag is recorded per attempt and not trusted: on simulated
    data its ``lbfgs`` reports convergence a whole log-likelihood unit below the optimum.

    *Boundary (singular) fits and statsmodels #10239.* When a variance falls below 1e-10
    relative to the residual variance, ``MixedLM.get_fe_params`` treats it as infinite and
    returns between-group fixed effects as 0.0 with ``converged=True`` (and its likelihood
    jumps). When a standard deviation ends at the boundary (below 2e-4 of the residual SD) or
    a variance below 1e-10, the model is refit without that effect, which is the same model at
    the boundary; the effect is kept in ``random`` with variance 0.0, flagged ``boundary``,
    and counted in ``n_params`` as lme4 does. A (nearly) singular covariance matrix of
    correlated effects (a correlation of ±1) is flagged in ``boundary`` as
    ``"correlation | <group>"``.

    *Standard errors* are :math:`\\sqrt{\\operatorname{diag}\\,\\hat\\sigma^2 (X^\\top
    V^{-1}X)^{-1}}` at the estimates, as lme4's ``vcov`` (statsmodels' ``bse_fe`` differs
    by up to a few per cent).

    *Agreement with lme4 1.1-31* (tests/test_lme4.py, eight models: nested, crossed,
    correlated and uncorrelated random slopes at the patient or therapist level, ML; lme4
    run with tight optimiser tolerances, since with its defaults it stopped 8e-6 short on
    one of them and warned): log-likelihood within 4e-9, fixed effects within 4e-7 SE,
    standard errors within 3e-7 relative, variances and covariances within 1e-3 relative.

    *Tests.* Wald :math:`z = \\hat\\beta/\\mathrm{SE}`, two-sided normal p, 95% CI
    :math:`\\hat\\beta \\pm 1.96\\,\\mathrm{SE}` (as statsmodels and lme4's ``confint(method
    = "Wald")``). ``df`` follows the containment rule of Pinheiro & Bates (2000, sec. 2.4.2):
    a term constant within the groups of level *i* gets :math:`m_i - m_{i-1} - p_i` df
    (:math:`m` = number of groups; observations are the innermost level); ``r`` is the
    r-equivalent :math:`r = z/\\sqrt{z^2 + df}` (Rosenthal 1991), comparable in spirit to
    meta-analytic correlations such as Flückiger et al. (2018)'s :math:`r = .28`.

    *Variance explained.* With :math:`\\sigma^2_f = \\operatorname{var}(X\\hat\\beta)`,
    :math:`\\sigma^2_l = \\frac1n\\sum_i z_{li}^\\top \\Sigma_l z_{li}` per level *l*
    (Johnson 2014; the variance itself for random intercepts) and residual :math:`\\sigma^2_e`:
    :math:`R^2_m = \\sigma^2_f/(\\sigma^2_f + \\sum_l\\sigma^2_l + \\sigma^2_e)`,
    :math:`R^2_c = (\\sigma^2_f + \\sum_l\\sigma^2_l)/(\\ldots)` (Nakagawa & Schielzeth 2013),
    and :math:`\\mathrm{ICC}_l = \\sigma^2_l/(\\sum_l\\sigma^2_l + \\sigma^2_e)`.
    AIC :math:`= -2\\ell + 2k`, BIC :math:`= -2\\ell + k\\log n` with *k* fixed effects +
    covariance parameters + 1, for REML and ML fits alike (as lme4).

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> rng = np.random.default_rng(1)
    >>> d = pd.DataFrame({"patient": np.repeat([f"P{i:02d}" for i in range(30)], 5),
    ...                   "session": np.tile(np.arange(1, 6), 30)})
    >>> d["outcome"] = (10 + 0.5 * d["session"] + np.repeat(rng.normal(0, 2, 30), 5)
    ...                 + rng.normal(0, 1, 150))
    >>> res = fit_model(d, "outcome ~ session + (1 | patient)")
    >>> res["convergence"]["converged"], res["n_groups"]
    (True, {'patient': 30})
    >>> round(res["fixed"][1]["estimate"], 2), round(res["icc"]["patient"], 2)
    (0.52, 0.77)

    References
    ----------
    Bates, D., Mächler, M., Bolker, B., & Walker, S. (2015). Fitting linear mixed-effects
    models using lme4. *Journal of Statistical Software, 67*(1), 1–48.
    Flückiger, C., Del Re, A. C., Wampold, B. E., & Horvath, A. O. (2018). The alliance in
    adult psychotherapy: A meta-analytic synthesis. *Psychotherapy, 55*(4), 316–340.
    Johnson, P. C. D. (2014). Extension of Nakagawa & Schielzeth's R²GLMM to random slopes
    models. *Methods in Ecology and Evolution, 5*(9), 944–946.
    Nakagawa, S., & Schielzeth, H. (2013). A general and simple method for obtaining R² from
    generalized linear mixed-effects models. *Methods in Ecology and Evolution, 4*(2), 133–142.
    Pinheiro, J. C., & Bates, D. M. (2000). *Mixed-effects models in S and S-PLUS*. Springer.
    Rosenthal, R. (1991). *Meta-analytic procedures for social research*. Sage.
    """
    _check_data(data)
    _check_name(name)
    optimizers = _check_optimizers(optimizers)
    if not isinstance(reml, (bool, np.bool_)):
        raise TypeError(f"`reml` must be True or False; got {reml!r}.")
    if engine not in ("auto", "fast", "statsmodels"):
        raise ValueError(f"`engine` must be 'auto', 'fast' or 'statsmodels'; got {engine!r}.")
    spec = parse_formula(formula)
    if engine != "statsmodels":
        from .engine import supports

        # nesting is a property of the rows the model uses (incomplete rows are dropped)
        rows, n_dropped = model_rows(data, spec)
        if supports(spec, rows):
            return _fit_fast(
                rows,
                spec,
                n_dropped=n_dropped,
                reml=bool(reml),
                name=name,
                boundary_tol=boundary_tol,
            )
        if engine == "fast":
            raise ValueError(
                f"The fast engine cannot fit {formula!r}: it needs nested grouping factors "
                "(e.g. patients within therapists); use engine='statsmodels' (or 'auto') for "
                "crossed factors."
            )
    d, plan, n_dropped = _prepare(data, spec)
    model = _build_model(d, plan, bool(reml))
    _check_rank(model)
    res, conv, msgs, opt, attempts = _fit_attempts(model, bool(reml), optimizers, grad_tol, maxiter)

    # statsmodels' own messages stay with their attempt; the top-level list holds our verdicts
    warn_list: list[str] = []
    zeroed: list[tuple[str, str]] = []
    below_tol = _degenerate_effects(res, plan)
    at_bound = _boundary_effects(model, res, plan)
    degenerate = below_tol + [e for e in at_bound if e not in below_tol]
    fit_spec, fit_plan, fit_model_obj, fit_d = spec, plan, model, d
    if degenerate:
        reduced = _drop_effects(spec, degenerate)
        names = ", ".join(f"{e} | {g}" for g, e in degenerate)
        zeroed = degenerate
        if not reduced.random:
            raise ValueError(
                f"every random-effect variance of {formula!r} is zero ({names}); the data show "
                "no clustering, so fit an ordinary regression instead."
            )
        fit_d, fit_plan, _ = _prepare(data, reduced)
        fit_model_obj = _build_model(fit_d, fit_plan, bool(reml))
        res, conv, _msgs, opt, att2 = _fit_attempts(
            fit_model_obj, bool(reml), optimizers, grad_tol, maxiter
        )
        why = (
            "variance < 1e-10, statsmodels #10239 guard"
            if below_tol
            else "variance at the boundary"
        )
        for att in att2:
            att["note"] = f"refit without {names} ({why})"
        attempts.extend(att2)
        fit_spec = reduced
        if below_tol:
            warn_list.append(
                f"variance of {names} fell below 1e-10 (singular fit); statsmodels would return "
                "between-group fixed effects as exactly 0.0 (issue #10239), so the model was "
                "refit without it and the variance is reported as 0."
            )
        else:
            warn_list.append(
                f"singular fit: the variance of {names} is at the boundary (0); the model was "
                "refit without it (same likelihood) and the variance is reported as 0."
            )
    elif _re_singular(res):
        warn_list.append(
            "the random-effects covariance matrix is singular (a correlation of ±1): "
            "between-group fixed effects may be inaccurate (statsmodels #10239); "
            "consider uncorrelated slopes '||'."
        )

    # ----------------------------------------------------------- assemble the result
    scale = float(res.scale)
    fe = res.fe_params
    vcov = _gls_cov_fe(fit_model_obj, res)
    bse = pd.Series(np.sqrt(np.diag(vcov)), index=fe.index)
    exog = pd.DataFrame(fit_model_obj.exog, columns=fit_model_obj.exog_names)
    dfs = _level_df(fit_d, fit_plan, fit_spec, exog)
    zcrit = float(stats.norm.ppf(0.975))
    fixed = _fixed_rows(
        list(fe.index), fe.to_numpy(), bse.to_numpy(), dfs, float(len(fit_d) - len(fe))
    )

    random_rows: list[dict] = []
    covs: list[dict] = []
    level_var: dict[str, float] = {}
    cov_re = np.atleast_2d(np.asarray(res.cov_re, dtype=float))
    if fit_plan.re_labels:
        z_re = np.asarray(fit_model_obj.exog_re, dtype=float)
        contrib = np.sum((z_re @ cov_re) * z_re, axis=1).mean()
        lab = fit_plan.re_labels[0][0]
        level_var[lab] = level_var.get(lab, 0.0) + float(contrib)
        for i, (g, t) in enumerate(fit_plan.re_labels):
            random_rows.append((g, t, float(cov_re[i, i])))
        for i in range(len(fit_plan.re_labels)):
            for j in range(i + 1, len(fit_plan.re_labels)):
                c = float(cov_re[i, j])
                den = math.sqrt(max(cov_re[i, i], 0) * max(cov_re[j, j], 0))
                covs.append(
                    {
                        "group": fit_plan.re_labels[i][0],
                        "term1": fit_plan.re_labels[i][1],
                        "term2": fit_plan.re_labels[j][1],
                        "covariance": _r(c),
                        "correlation": _r(c / den) if den > 0 else None,
                    }
                )
    vcomp = np.asarray(res.vcomp, dtype=float)
    for j, vname in enumerate(fit_plan.vc_formula):
        g, t = fit_plan.vc_labels[vname]
        v = float(vcomp[j])
        random_rows.append((g, t, v))
        zz = 1.0 if t == "(Intercept)" else float(np.mean(fit_d[t].to_numpy(dtype=float) ** 2))
        level_var[g] = level_var.get(g, 0.0) + v * zz
    for g, t in zeroed:
        random_rows.append((g, t, 0.0))
        level_var.setdefault(g, 0.0)
    # order: groups as in the formula, terms as in the formula
    order_g = [t.label for t in spec.random]
    order_t = {(t.label, e): k for k, t in enumerate(spec.random) for e in t.effects}
    random_rows.sort(
        key=lambda r: (
            order_g.index(r[0]) if r[0] in order_g else 99,
            order_t.get((r[0], r[1]), 99),
        )
    )
    random = [
        {
            "group": g,
            "term": t,
            "variance": _r(v),
            "sd": _r(math.sqrt(max(v, 0.0))),
            "boundary": bool(v < boundary_tol * scale),
        }
        for g, t, v in random_rows
    ]
    boundary = [f"{r['term']} | {r['group']}" for r in random if r["boundary"]]
    if len(fit_plan.re_labels) > 1 and not any(
        r["boundary"] for r in random if r["group"] == fit_plan.re_labels[0][0]
    ):
        rel = cov_re / scale
        if float(np.linalg.eigvalsh(rel).min()) < boundary_tol * float(np.max(np.diag(rel))):
            boundary.append(f"correlation | {fit_plan.re_labels[0][0]}")
            warn_list.append(
                f"singular fit: the random-effects covariance of {fit_plan.re_labels[0][0]!r} is "
                "(nearly) singular, i.e. a correlation at ±1; its correlation is not identified "
                "(the likelihood is flat in it). Consider uncorrelated effects '||'."
            )
    if boundary and not any("singular" in w for w in warn_list):
        warn_list.append(
            "singular fit: variance at the boundary (near 0) for "
            + ", ".join(boundary)
            + "; the model is over-parameterised for these data."
        )

    fixed_pred = exog.to_numpy() @ fe.to_numpy()
    var_f = float(np.var(fixed_pred, ddof=1)) if len(fixed_pred) > 1 else 0.0
    var_r = float(sum(level_var.values()))
    total = var_f + var_r + scale
    icc = {
        g: _r(v / (var_r + scale))
        for g, v in sorted(
            level_var.items(), key=lambda kv: order_g.index(kv[0]) if kv[0] in order_g else 99
        )
    }

    n_fixed = len(_fixed_names(model))
    n_cov = sum(
        (len(t.effects) * (len(t.effects) + 1)) // 2 if t.correlated else len(t.effects)
        for t in spec.random
    )
    k = n_fixed + n_cov + 1
    llf = float(res.llf)
    n = len(d)

    hess_pd = bool(conv["curvature_negative_definite"])
    if not hess_pd:
        warn_list.append(
            "the log-likelihood is not curved at the solution (Hessian of the free variance "
            "parameters not positive definite): the optimum is not unique."
        )
    if not conv["ok"]:
        warn_list.append(
            "no optimiser reached a point that passes the convergence check; estimates are "
            "from the best attempt and should not be reported."
        )

    n_groups = {}
    for t in spec.random:
        if t.label not in n_groups:
            n_groups[t.label] = _group_count(d, t.factor, plan)

    modes = _conditional_modes(res, fit_plan, fit_d, zcrit)

    return {
        "name": name,
        "formula": spec.formula,
        "reml": bool(reml),
        "engine": "statsmodels.MixedLM",
        "n_obs": int(n),
        "n_groups": n_groups,
        "n_dropped_missing": n_dropped,
        "fixed": fixed,
        "random": random,
        "covariances": covs,
        "residual_variance": _r(scale),
        "icc": icc,
        "r2_marginal": _r(var_f / total),
        "r2_conditional": _r((var_f + var_r) / total),
        "loglik": _r(llf),
        "n_params": int(k),
        "conditional_modes": modes,
        "vcov_fixed": {"terms": list(fe.index), "matrix": [[_r(v) for v in row] for row in vcov]},
        "aic": _r(-2 * llf + 2 * k),
        "bic": _r(-2 * llf + k * math.log(n)),
        "convergence": {
            "converged": bool(conv["ok"]),
            "optimizer": opt,
            "attempts": attempts,
            "max_abs_gradient": _r(conv["max_abs_gradient"]),
            "hessian_positive_definite": hess_pd,
            "boundary": boundary,
            "warnings": sorted(dict.fromkeys(warn_list), key=warn_list.index),
        },
    }


def _fixed_rows(
    terms: list[str], estimates, ses, dfs: dict[str, float], df_default: float
) -> list[dict]:
    """Tidy fixed-effect rows: Wald z, two-sided normal p, 95% CI, containment df and the
    r-equivalent r = z / sqrt(z² + df) (see :func:`fit_model`), for either engine.
    """
    zcrit = float(stats.norm.ppf(0.975))
    rows = []
    for term, est, se in zip(terms, estimates, ses):
        est, se = float(est), float(se)
        z = est / se if se > 0 else float("nan")
        df_t = dfs.get(term, df_default)
        rows.append(
            {
                "term": term,
                "estimate": _r(est),
                "se": _r(se),
                "ci_low": _r(est - zcrit * se),
                "ci_high": _r(est + zcrit * se),
                "statistic": _r(z),
                "p": _r(2 * stats.norm.sf(abs(z))) if math.isfinite(z) else None,
                "df": _r(df_t),
                "r": _r(z / math.sqrt(z * z + df_t)) if math.isfinite(z) else None,
            }
        )
    return rows


def _fit_fast(
    rows: pd.DataFrame,
    spec: FormulaSpec,
    *,
    n_dropped: int,
    reml: bool,
    name: str,
    boundary_tol: float,
) -> dict:
    """Fit the model's complete *rows* (:func:`allianceflow.formula.model_rows`; *n_dropped*
    were incomplete) with :func:`allianceflow.engine.fit_lmm` and return the same result dict
    as the statsmodels path (same keys, same definitions of df, r, ICC and R²).
    """
    import patsy

    from .engine import fit_lmm

    d = rows.copy()
    design = patsy.dmatrix(spec.fixed, d, return_type="dataframe")
    _check_rank_design(design.to_numpy(dtype=float), list(design.columns))
    fit = fit_lmm(rows, spec, reml=reml, boundary_tol=boundary_tol)
    keys = []
    # outer to inner: fewer parts first, then fewer levels (study, therapist, patient)
    for factor in sorted(
        spec.factors, key=lambda f: (len(f), d[list(f)].drop_duplicates().shape[0])
    ):
        key = ":".join(factor)
        if key not in d:
            d[key] = d[list(factor)].astype(str).agg(":".join, axis=1)
        keys.append(key)
    exog = design.reset_index(drop=True)
    exog.columns = list(fit.fixed_names)
    dfs = _containment_df(d, keys, exog)

    zcrit = float(stats.norm.ppf(0.975))
    fixed = _fixed_rows(
        list(fit.fixed_names),
        fit.fe_params,
        np.sqrt(np.diag(fit.cov_fe)),
        dfs,
        float(fit.n_obs - len(fit.fixed_names)),
    )
    scale = float(fit.sigma2)
    random, covs = [], []
    order = [t.label for t in spec.random]
    for group in dict.fromkeys(order):
        cov = fit.cov_re[group]
        terms = list(cov.index)
        for i, t in enumerate(terms):
            v = float(cov.iloc[i, i])
            random.append(
                {
                    "group": group,
                    "term": t,
                    "variance": _r(v),
                    "sd": _r(math.sqrt(max(v, 0.0))),
                    "boundary": bool(v < boundary_tol * scale),
                }
            )
        correlated = [
            rt for rt in spec.random if rt.label == group and rt.correlated and len(rt.effects) > 1
        ]
        for rt in correlated:
            effects = list(rt.effects)
            for i in range(len(effects)):
                for j in range(i + 1, len(effects)):
                    c = float(cov.loc[effects[i], effects[j]])
                    den = math.sqrt(
                        max(cov.loc[effects[i], effects[i]], 0)
                        * max(cov.loc[effects[j], effects[j]], 0)
                    )
                    covs.append(
                        {
                            "group": group,
                            "term1": effects[i],
                            "term2": effects[j],
                            "covariance": _r(c),
                            "correlation": _r(c / den) if den > 0 else None,
                        }
                    )
    var_r = float(sum(fit.level_variance.values()))
    total = fit.var_fixed + var_r + scale
    icc = {g: _r(fit.level_variance[g] / (var_r + scale)) for g in dict.fromkeys(order)}

    modes = []
    outer = order[0] if order else None
    if outer is not None and outer in fit.ranef and len(fit.ranef[outer]) <= 5000:
        frame = fit.ranef[outer]
        level_col = frame.columns[0]
        terms = [c for c in frame.columns[1:] if not str(c).startswith("se_")]
        frame = frame.assign(_level=frame[level_col].astype(str)).sort_values(
            "_level", kind="mergesort"
        )
        for _, row in frame.iterrows():
            for t in terms:
                est, se = float(row[t]), float(row[f"se_{t}"])
                modes.append(
                    {
                        "group": outer,
                        "level": row["_level"],
                        "term": t,
                        "estimate": _r(est),
                        "se": _r(se),
                        "ci_low": _r(est - zcrit * se),
                        "ci_high": _r(est + zcrit * se),
                    }
                )
    warnings_ = list(fit.warnings)
    if not fit.converged:
        warnings_.append(
            "the fit did not pass the convergence check; estimates should not be reported."
        )
    return {
        "name": name,
        "formula": spec.formula,
        "reml": bool(reml),
        "engine": "allianceflow.engine",
        "n_obs": int(fit.n_obs),
        "n_groups": {g: int(fit.n_groups[g]) for g in dict.fromkeys(order)},
        "n_dropped_missing": int(n_dropped),
        "fixed": fixed,
        "random": random,
        "covariances": covs,
        "residual_variance": _r(scale),
        "icc": icc,
        "r2_marginal": _r(fit.var_fixed / total),
        "r2_conditional": _r((fit.var_fixed + var_r) / total),
        "loglik": _r(fit.loglik),
        "n_params": int(fit.n_params),
        "conditional_modes": modes,
        "vcov_fixed": {
            "terms": list(fit.fixed_names),
            "matrix": [[_r(v) for v in row] for row in fit.cov_fe],
        },
        "aic": _r(fit.aic),
        "bic": _r(fit.bic),
        "convergence": {
            "converged": bool(fit.converged),
            "optimizer": fit.optimizer,
            "attempts": [
                {
                    "optimizer": fit.optimizer,
                    "loglik": _r(fit.loglik),
                    "converged": bool(fit.converged),
                    "evaluations": int(fit.n_evaluations),
                    "newton_decrement": _r(fit.newton_decrement),
                    "max_abs_gradient": _r(fit.max_abs_gradient),
                    "warnings": list(fit.warnings),
                }
            ],
            "max_abs_gradient": _r(fit.max_abs_gradient),
            "hessian_positive_definite": bool(fit.hessian_positive_definite),
            "boundary": list(fit.boundary),
            "warnings": warnings_,
        },
    }


def _check_rank(model) -> None:
    """Refuse a rank-deficient fixed-effects design (statsmodels path)."""
    _check_rank_design(np.asarray(model.exog, dtype=float), list(model.exog_names))


def _check_rank_design(exog: np.ndarray, names: list[str]) -> None:
    """Refuse a rank-deficient fixed-effects design with the columns that cause it."""
    rank = np.linalg.matrix_rank(exog)
    if rank == exog.shape[1]:
        return
    constant = [n for n, col in zip(names, exog.T) if n != "Intercept" and np.ptp(col) == 0]
    redundant = []
    kept: list[int] = []
    for j, name in enumerate(names):
        if np.linalg.matrix_rank(exog[:, kept + [j]]) == len(kept) + 1:
            kept.append(j)
        else:
            redundant.append(name)
    detail = (
        f"constant in the rows used: {', '.join(constant)}"
        if constant
        else f"a combination of earlier terms: {', '.join(redundant)}"
    )
    raise ValueError(
        f"The fixed effects cannot all be estimated from the {exog.shape[0]} complete rows: "
        f"{detail}. Drop or recode these terms, or check which rows are missing (rows with a "
        "missing value in any model variable are dropped)."
    )


def _conditional_modes(
    res, plan: MixedLMPlan, d: pd.DataFrame, zcrit: float, max_groups: int = 5000
) -> list[dict]:
    """Conditional modes (BLUPs) of the outer grouping factor's random effects.

    One row per level and term: ``group, level, term, estimate, se, ci_low, ci_high``, where
    ``se`` is the square root of the conditional variance of the random effect given the
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
            rows.append(
                {
                    "group": group,
                    "level": str(key),
                    "term": term,
                    "estimate": _r(values[j]),
                    "se": _r(se),
                    "ci_low": _r(values[j] - zcrit * se),
                    "ci_high": _r(values[j] + zcrit * se),
                }
            )
    return rows


def _fixed_names(model) -> list[str]:
    """Names of the fixed-effect columns of a statsmodels model."""
    return list(model.exog_names)


# --------------------------------------------------------------------------- tables and text


def fixed_effects_table(result: dict) -> pd.DataFrame:
    """Fixed effects of a :func:`fit_model` result as a DataFrame (one row per term)."""
    return pd.DataFrame(
        result["fixed"],
        columns=["term", "estimate", "se", "ci_low", "ci_high", "statistic", "p", "df", "r"],
    )


def random_effects_table(result: dict) -> pd.DataFrame:
    """Variance components of a :func:`fit_model` result, residual last."""
    rows = [dict(r) for r in result["random"]]
    rows.append(
        {
            "group": "Residual",
            "term": "",
            "variance": result["residual_variance"],
            "sd": (
                _r(math.sqrt(result["residual_variance"]))
                if result["residual_variance"] is not None
                else None
            ),
            "boundary": False,
        }
    )
    return pd.DataFrame(rows, columns=["group", "term", "variance", "sd", "boundary"])


def _fmt(x: Any, nd: int = 4) -> str:
    if x is None:
        return "NA"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    if x != 0 and (abs(x) < 10 ** -(nd - 1) or abs(x) >= 1e6):
        return f"{x:.{nd - 1}e}"
    return f"{x:.{nd}f}"


def _p(p: Any) -> str:
    if p is None:
        return "NA"
    return "<.0001" if p < 1e-4 else f"{p:.4f}"


def format_model(result: dict) -> str:
    """Render a :func:`fit_model` result as plain text (deterministic; no dates or timings).

    Convergence, the optimiser and every warning appear in the text, not only in a log.
    """
    lines = []
    method = "REML" if result["reml"] else "ML"
    lines.append(
        f"Linear mixed model '{result['name']}' fit by {method} ({result.get('engine', 'statsmodels.MixedLM')})"
    )
    lines.append(f"Formula: {result['formula']}")
    groups = ", ".join(f"{g}: {n}" for g, n in result["n_groups"].items())
    lines.append(
        f"Observations: {result['n_obs']}  Groups: {groups}  Dropped (missing): {result['n_dropped_missing']}"
    )
    lines.append(
        f"logLik: {_fmt(result['loglik'])}  AIC: {_fmt(result['aic'], 2)}  BIC: {_fmt(result['bic'], 2)}  "
        f"parameters: {result['n_params']}"
    )
    lines.append("")
    lines.append("Fixed effects (Wald z, 95% CI; r = z / sqrt(z^2 + df)):")
    rows = [["term", "estimate", "SE", "CI low", "CI high", "z", "p", "df", "r"]]
    for f in result["fixed"]:
        rows.append(
            [
                f["term"],
                _fmt(f["estimate"]),
                _fmt(f["se"]),
                _fmt(f["ci_low"]),
                _fmt(f["ci_high"]),
                _fmt(f["statistic"], 2),
                _p(f["p"]),
                _fmt(f["df"], 0),
                _fmt(f["r"], 3),
            ]
        )
    lines.extend(_table(rows))
    lines.append("")
    lines.append("Random effects:")
    rows = [["group", "term", "variance", "SD", "boundary"]]
    for r in result["random"]:
        rows.append(
            [
                r["group"],
                r["term"],
                _fmt(r["variance"]),
                _fmt(r["sd"]),
                "yes" if r["boundary"] else "",
            ]
        )
    rows.append(
        [
            "Residual",
            "",
            _fmt(result["residual_variance"]),
            (
                _fmt(math.sqrt(result["residual_variance"]))
                if result["residual_variance"] is not None
                else "NA"
            ),
            "",
        ]
    )
    lines.extend(_table(rows))
    for c in result.get("covariances", []):
        lines.append(
            f"  cov({c['term1']}, {c['term2']} | {c['group']}) = {_fmt(c['covariance'])}, corr = {_fmt(c['correlation'], 3)}"
        )
    lines.append("")
    icc = ", ".join(f"{g} {_fmt(v, 3)}" for g, v in result["icc"].items())
    lines.append(f"ICC: {icc}")
    lines.append(
        f"R2 marginal: {_fmt(result['r2_marginal'], 3)}  R2 conditional: {_fmt(result['r2_conditional'], 3)}  (Nakagawa & Schielzeth 2013)"
    )
    lines.append("")
    c = result["convergence"]
    lines.append(
        f"Convergence: {'converged' if c['converged'] else 'NOT CONVERGED'} (optimizer {c['optimizer']}, "
        f"max |gradient| {_fmt(c['max_abs_gradient'], 3)}, Hessian positive definite: {_fmt(c['hessian_positive_definite'])})"
    )
    att = "; ".join(
        f"{a['optimizer']}: logLik {_fmt(a.get('loglik'))}, {'ok' if a['converged'] else 'failed check'}"
        for a in c["attempts"]
    )
    lines.append(f"Attempts: {att}")
    if c["boundary"]:
        lines.append("Boundary (singular) variances: " + ", ".join(c["boundary"]))
    for w in c["warnings"]:
        lines.append(f"Warning: {w}")
    return "\n".join(lines) + "\n"


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    out = []
    for k, r in enumerate(rows):
        cells = [
            str(v).ljust(widths[i]) if i == 0 else str(v).rjust(widths[i]) for i, v in enumerate(r)
        ]
        out.append("  " + "  ".join(cells).rstrip())
    return out


# --------------------------------------------------------------------------- comparisons


def _lrt(r0: dict, r1: dict, random_only: bool) -> dict:
    ll0, ll1 = r0["loglik"], r1["loglik"]
    df = int(r1["n_params"] - r0["n_params"])
    if df <= 0:
        raise ValueError(
            f"model {r1['name']!r} must have more parameters than {r0['name']!r} to be "
            f"compared by LRT; got {r1['n_params']} and {r0['n_params']}. Pass the smaller model first."
        )
    stat = max(2.0 * (ll1 - ll0), 0.0)
    p = float(stats.chi2.sf(stat, df))
    out = {
        "model0": r0["name"],
        "model1": r1["name"],
        "formula0": r0["formula"],
        "formula1": r1["formula"],
        "method": "REML" if r0["reml"] else "ML",
        "n_obs": r0["n_obs"],
        "loglik0": _r(ll0),
        "loglik1": _r(ll1),
        "aic0": r0["aic"],
        "aic1": r1["aic"],
        "bic0": r0["bic"],
        "bic1": r1["bic"],
        "df": df,
        "statistic": _r(stat),
        "p": _r(p),
        "p_boundary": None,
    }
    if random_only:
        out["p_boundary"] = _r(_boundary_p(stat, df, len(r1["random"]) - len(r0["random"])))
    return out


def _boundary_p(stat: float, df: int, added_variances: int) -> float | None:
    """P of an LRT whose null puts variances on the boundary of the parameter space.

    Self & Liang (1987); Stram & Lee (1994): adding *k* independent variances (no
    covariances, ``df == k``) gives a mixture of :math:`\\chi^2_j`, j = 0..k, with binomial
    weights :math:`\binom{k}{j}/2^k`; adding one variance with its ``df - 1`` covariances
    gives the 50:50 mixture of :math:`\\chi^2_{df-1}` and :math:`\\chi^2_{df}`. Other cases
    have no simple mixture and return None (use the ordinary ``p``, which is conservative).
    """

    def sf(x: float, j: int) -> float:
        return float(stat <= 0) if j == 0 else float(stats.chi2.sf(x, j))

    if added_variances == df and df >= 1:
        return sum(math.comb(df, j) / 2**df * sf(stat, j) for j in range(df + 1))
    if added_variances == 1:
        return 0.5 * sf(stat, df - 1) + 0.5 * sf(stat, df)
    return None


def compare_models(result0: dict, result1: dict) -> dict:
    """Likelihood-ratio test between two fitted, nested models (results of :func:`fit_model`).

    Parameters
    ----------
    result0, result1 : dict
        The smaller and the larger model, fitted to the same rows with the same method.

    Returns
    -------
    dict
        ``model0, model1, formula0, formula1, method, n_obs, loglik0, loglik1, aic0, aic1,
        bic0, bic1, df, statistic, p, p_boundary``.

    Raises
    ------
    ValueError
        Different ``n_obs`` (different rows were used: fit both on the same complete cases,
        as :func:`likelihood_ratio_test` does), mixed REML/ML, REML fits whose fixed effects
        differ (REML likelihoods are not comparable then: refit with ``reml=False``), or a
        larger model without more parameters.

    Notes
    -----
    :math:`\\chi^2 = 2(\\ell_1 - \\ell_0)` on :math:`k_1 - k_0` df. When only random effects
    differ the null puts variances on the boundary and the chi-square p is conservative;
    ``p_boundary`` gives the 50:50 mixture of :math:`\\chi^2_{df-1}` and :math:`\\chi^2_{df}`
    (Self & Liang 1987; Stram & Lee 1994), exact for one added variance.

    References
    ----------
    Self, S. G., & Liang, K.-Y. (1987). Asymptotic properties of maximum likelihood
    estimators and likelihood ratio tests under nonstandard conditions. *JASA, 82*, 605–610.
    Stram, D. O., & Lee, J. W. (1994). Variance components testing in the longitudinal mixed
    effects model. *Biometrics, 50*, 1171–1177.
    """
    for k, r in (("result0", result0), ("result1", result1)):
        if not isinstance(r, dict) or "loglik" not in r:
            raise TypeError(f"`{k}` must be a result dict from fit_model; got {type(r).__name__}.")
    if result0["n_obs"] != result1["n_obs"]:
        raise ValueError(
            f"models were fitted to different rows (n_obs {result0['n_obs']} vs "
            f"{result1['n_obs']}); fit both to the same complete cases, e.g. with "
            "likelihood_ratio_test(data, formula0, formula1)."
        )
    if result0["reml"] != result1["reml"]:
        raise ValueError("one model was fitted by REML and the other by ML; use the same method.")
    fixed_same = [f["term"] for f in result0["fixed"]] == [f["term"] for f in result1["fixed"]]
    if result0["reml"] and not fixed_same:
        raise ValueError(
            "REML fits with different fixed effects cannot be compared by LRT; refit both "
            "with reml=False (likelihood_ratio_test does this automatically)."
        )
    return _lrt(result0, result1, random_only=fixed_same)


def likelihood_ratio_test(
    data: pd.DataFrame,
    formula0: str,
    formula1: str,
    *,
    reml: bool | Literal["auto"] = "auto",
    names: tuple[str, str] = ("model0", "model1"),
    **fit_options,
) -> dict:
    """Fit two nested models to the same complete cases and compare them by LRT.

    Parameters
    ----------
    data : DataFrame
    formula0, formula1 : str
        The smaller and the larger model in lme4 syntax.
    reml : bool or "auto", default "auto"
        "auto": REML when the fixed parts are identical (the models differ only in random
        effects), ML otherwise, as the comparison requires (lme4's ``anova`` refits with ML
        the same way).
    names : (str, str)
        Names stored in the results.
    **fit_options
        Passed to :func:`fit_model`.

    Returns
    -------
    dict
        As :func:`compare_models`, plus ``fit0`` and ``fit1`` (the two full results).
        Rows with a missing value in a variable of either model are dropped before both fits.
    """
    _check_data(data)
    if reml not in ("auto", True, False):
        raise ValueError(f"`reml` must be True, False or 'auto'; got {reml!r}.")
    s0, s1 = parse_formula(formula0), parse_formula(formula1)
    cols = data.columns
    used = list(dict.fromkeys(formula_variables(s0, cols) + formula_variables(s1, cols)))
    complete = data.loc[data[used].notna().all(axis=1)]
    if reml == "auto":
        reml = _fixed_key(s0) == _fixed_key(s1)
    r0 = fit_model(complete, formula0, reml=bool(reml), name=names[0], **fit_options)
    r1 = fit_model(complete, formula1, reml=bool(reml), name=names[1], **fit_options)
    out = compare_models(r0, r1)
    out["n_dropped_missing"] = int(len(data) - len(complete))
    out["fit0"], out["fit1"] = r0, r1
    return out


def _fixed_key(spec: FormulaSpec) -> tuple[str, ...]:
    return tuple(sorted(t.strip() for t in spec.fixed.split("+")))


# --------------------------------------------------------------------------- presets

PRESETS: tuple[str, ...] = (
    "growth",
    "alliance_outcome",
    "therapist_effects",
    "feedback",
    "rupture_repair",
    "alliance_components",
    "informants",
)


def _random_part(time: str, therapist: bool, random: str | None, slopes: str = "correlated") -> str:
    if random is not None:
        return random
    bar = "|" if slopes == "correlated" else "||"
    patient = f"(1 + {time} {bar} patient)"
    return f"(1 | therapist) + {patient}" if therapist else patient


def _check_choice(name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(
            f"`{name}` must be {', '.join(map(repr, allowed[:-1]))} or {allowed[-1]!r}; got {value!r}."
        )


def preset_formula(name: str, **options: Any) -> str:
    """lme4 formula of a standard research question, by name.

    Parameters
    ----------
    name : str
        One of :data:`PRESETS`. Options common to all: ``outcome="outcome"``,
        ``time="session"``, ``therapist=True`` (add a therapist random intercept),
        ``slopes="correlated"`` (patient random intercepts and time slopes with their
        covariance, ``(1 + time | patient)``; ``"uncorrelated"`` fixes the covariance at
        0, ``(1 + time || patient)``), ``random=None`` (a random part to use instead),
        ``covariates=()`` (extra fixed terms).

        Why correlated by default: fixing the intercept-slope covariance at 0 makes the
        model depend on where time is zero (session 1 or session 0, say), because the
        intercept variance and covariance change when time is shifted (Biesanz et al.
        2004); with the covariance free, a shift of time gives the same fit. statsmodels'
        MixedLM cannot fit the correlated version under a therapist level, so with
        ``engine="statsmodels"`` use ``slopes="uncorrelated"``; the default engine
        (:mod:`allianceflow.engine`) fits both.

        ``growth``
            ``time_shape="linear" | "log" | "quadratic"``. Log time uses the column
            ``log_<time>`` (= ln(session)), which must exist, for the fixed and random slope.
        ``alliance_outcome``
            Last session's within- and between-patient alliance predicting this session's
            outcome: ``alliance_within_lag + alliance_between + time``.
            ``previous_outcome=False`` adds ``outcome_lag`` (note: with a patient random
            intercept a lagged outcome is biased in short series; Nickell 1981).
            ``detrend="none" | "linear"``: "linear" uses ``alliance_within_detrended_lag``, the
            deviation from each patient's own linear alliance trajectory (Falkenström et al.
            2017), so that shared time trends do not masquerade as within-patient effects;
            "none" relies on the time covariate alone.
        ``therapist_effects``
            ``alliance_therapist_mean + alliance_patient_deviation + time``: the therapist's
            mean alliance across their patients and each patient's deviation from it
            (Baldwin, Wampold & Imel 2007). ``baseline=True`` adds ``outcome_baseline``.
        ``feedback``
            ``time * arm * off_track``: ``arm="condition"`` (study arm, as ``C(condition)``)
            and ``on_track="off_track"`` (1 when the patient was flagged not on track).
        ``rupture_repair``
            ``ruptures_before + repairs_before + alliance_within_lag + alliance_between +
            time``: the numbers of detected ruptures and of their repairs at the patient's
            earlier sessions, so ``repairs_before`` is a repaired versus a not (yet) repaired
            rupture, from information available before the session (Eubanks, Muran &
            Safran 2018).
        ``alliance_components``
            ``components=("task", "bond", "goal")``: ``alliance_<c>_within_lag`` and
            ``alliance_<c>_between`` for each component (WAI-SR subscales).
        ``informants``
            ``informants=("patient", "therapist")``: ``alliance_rater_<i>_within_lag`` and
            ``alliance_rater_<i>_between`` for each rater
            (:func:`allianceflow.derive.informant_alliances`).

    Returns
    -------
    str
        The formula, ready for :func:`fit_model`.

    Raises
    ------
    ValueError
        Unknown preset name, unknown option, or an option value outside its choices.

    Examples
    --------
    >>> preset_formula("alliance_outcome")
    'outcome ~ alliance_within_lag + alliance_between + session + (1 | therapist) + (1 + session | patient)'
    >>> preset_formula("growth", time_shape="quadratic", therapist=False, slopes="uncorrelated")
    'outcome ~ session + I(session^2) + (1 + session || patient)'

    References
    ----------
    Baldwin, S. A., Wampold, B. E., & Imel, Z. E. (2007). Untangling the alliance-outcome
    correlation. *Journal of Consulting and Clinical Psychology, 75*(6), 842–852.
    Biesanz, J. C., Deeb-Sossa, N., Papadakis, A. A., Bollen, K. A., & Curran, P. J. (2004).
    The role of coding time in estimating and interpreting growth curve models.
    *Psychological Methods, 9*(1), 30–52.
    Eubanks, C. F., Muran, J. C., & Safran, J. D. (2018). Alliance rupture repair: A
    meta-analysis. *Psychotherapy, 55*(4), 508–519.
    Falkenström, F., Finkel, S., Sandell, R., Rubel, J. A., & Holmqvist, R. (2017). Dynamic
    models of individual change in psychotherapy process research. *Journal of Consulting
    and Clinical Psychology, 85*(6), 537–549.
    Nickell, S. (1981). Biases in dynamic models with fixed effects. *Econometrica, 49*(6),
    1417–1426.
    """
    if name not in PRESETS:
        raise ValueError(f"`name` must be one of {', '.join(map(repr, PRESETS))}; got {name!r}.")
    specific = {
        "growth": {"time_shape": "linear"},
        "alliance_outcome": {"previous_outcome": False, "detrend": "none"},
        "therapist_effects": {"baseline": False},
        "feedback": {"arm": "condition", "on_track": "off_track"},
        "rupture_repair": {},
        "alliance_components": {"components": ("task", "bond", "goal")},
        "informants": {"informants": ("patient", "therapist")},
    }[name]
    common = {
        "outcome": "outcome",
        "time": "session",
        "therapist": True,
        "slopes": "correlated",
        "random": None,
        "covariates": (),
    }
    allowed = {**common, **specific}
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(
            f"preset {name!r} has no option {unknown[0]!r}; options are {sorted(allowed)}."
        )
    o = {**allowed, **options}
    y, t = o["outcome"], o["time"]
    if not isinstance(o["therapist"], bool):
        raise ValueError(f"`therapist` must be True or False; got {o['therapist']!r}.")
    _check_choice("slopes", o["slopes"], ("correlated", "uncorrelated"))
    covs = [o["covariates"]] if isinstance(o["covariates"], str) else list(o["covariates"])
    time_slope = t
    if name == "growth":
        _check_choice("time_shape", o["time_shape"], ("linear", "log", "quadratic"))
        if o["time_shape"] == "log":
            time_slope = f"log_{t}"
            fixed = [time_slope]
        elif o["time_shape"] == "quadratic":
            fixed = [t, f"I({t}^2)"]
        else:
            fixed = [t]
    elif name == "alliance_outcome":
        _check_choice("detrend", o["detrend"], ("none", "linear"))
        _check_choice("previous_outcome", o["previous_outcome"], (False, True))
        within = (
            "alliance_within_detrended_lag" if o["detrend"] == "linear" else "alliance_within_lag"
        )
        fixed = [within, "alliance_between", t] + ([f"{y}_lag"] if o["previous_outcome"] else [])
    elif name == "therapist_effects":
        _check_choice("baseline", o["baseline"], (False, True))
        fixed = ["alliance_therapist_mean", "alliance_patient_deviation", t]
        fixed += [f"{y}_baseline"] if o["baseline"] else []
    elif name == "feedback":
        fixed = [f"{t} * C({o['arm']}) * {o['on_track']}"]
    elif name == "rupture_repair":
        fixed = ["ruptures_before", "repairs_before", "alliance_within_lag", "alliance_between", t]
    elif name == "alliance_components":
        comps = o["components"]
        if isinstance(comps, str) or not comps:
            raise ValueError(f"`components` must be a non-empty list of names; got {comps!r}.")
        fixed = (
            [f"alliance_{c}_within_lag" for c in comps]
            + [f"alliance_{c}_between" for c in comps]
            + [t]
        )
    else:  # informants
        infs = o["informants"]
        if isinstance(infs, str) or len(infs) < 1:
            raise ValueError(f"`informants` must be a non-empty list of names; got {infs!r}.")
        fixed = []
        for inf in infs:
            fixed += [f"alliance_rater_{inf}_within_lag", f"alliance_rater_{inf}_between"]
        fixed += [t]
    fixed += covs
    rand = _random_part(time_slope, o["therapist"], o["random"], o["slopes"])
    return f"{y} ~ {' + '.join(fixed)} + {rand}"
