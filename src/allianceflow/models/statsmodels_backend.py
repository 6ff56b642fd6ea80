r"""The statsmodels back-end: ``MixedLM`` with bounded optimisation and our own checks.

What neither fast engine fits (:mod:`allianceflow.models.engine` for nested factors,
:mod:`allianceflow.models.sparse` for crossed ones), or what ``engine="statsmodels"`` asks
for, goes to statsmodels' ``MixedLM``, for which
:func:`allianceflow.models.formula.to_mixedlm` translates the lme4 formula into ``groups``
/ ``re_formula`` / ``vc_formula``. Around that fit this module adds what a published
analysis needs and MixedLM does not give reliably:

* a deliberate optimiser order with recorded fall-backs, each polished by Newton steps and
  judged by our convergence check (gradient of the profiled log-likelihood, curvature,
  boundary variances), because statsmodels can report ``converged=True`` at a point that is
  not the optimum (:mod:`allianceflow.models.optimize` holds the shared steps);
* a guard against statsmodels issue #10239: a random-effect variance below 1e-10 makes
  ``MixedLM.get_fe_params`` return between-group fixed effects as exactly 0.0;
* lme4's ``vcov`` for the fixed effects, and the conditional modes of the outer factor
  (from :mod:`allianceflow.models.mixedlm`, the layer that evaluates ``MixedLM`` at given
  parameters);
* before a large fit, a :class:`LargeModelWarning` with an estimate of its time and memory
  (:func:`estimate_cost`): statsmodels holds each group's random-effects design densely.

:func:`fit_backend` returns a :class:`~allianceflow.models.result.BackendFit`.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pandas as pd

from allianceflow.models.design import ModelError
from allianceflow.models.formula import FormulaSpec, MixedLMPlan, drop_effects
from allianceflow.models.inference import containment_df, is_boundary, is_singular
from allianceflow.models.inference import round_sig as _r
from allianceflow.models.mixedlm import SM_TOL as _SM_TOL
from allianceflow.models.mixedlm import build_model as _build_model
from allianceflow.models.mixedlm import check_model_rank as _check_rank
from allianceflow.models.mixedlm import conditional_modes as _conditional_modes
from allianceflow.models.mixedlm import gls_cov_fe as _gls_cov_fe
from allianceflow.models.mixedlm import loglike as _loglike
from allianceflow.models.mixedlm import prepare as _prepare
from allianceflow.models.mixedlm import result_at as _result_at
from allianceflow.models.mixedlm import sqrt_hessian as _sqrt_hessian
from allianceflow.models.optimize import newton_decrement, newton_polish
from allianceflow.models.result import BackendFit

__all__ = [
    "OPTIMIZERS",
    "fit_backend",
    "check_optimizers",
    "LargeModelWarning",
    "estimate_cost",
    "WARN_SECONDS",
    "WARN_BYTES",
]

#: Default optimiser order. "lbfgsb" is scipy's L-BFGS-B run by us on statsmodels' profiled
#: (RE)ML log-likelihood with lme4's box constraints (standard deviations >= 0, here >= 1e-4
#: relative to the residual SD, because statsmodels' likelihood is discontinuous below a
#: variance ratio of 1e-10, statsmodels issue #10239). The others are statsmodels' own
#: optimisers: on a simulated 2,000-patient study 'lbfgs' reached lme4's answer to 1e-7
#: where statsmodels' default 'bfgs' stopped unconverged at a wrong log-likelihood after
#: 61 s, but unbounded it can also report convergence at a wrong point or run into a zero
#: variance with an infinite likelihood. Each fall-back starts from the best point found so far.
OPTIMIZERS: tuple[str, ...] = ("lbfgsb", "lbfgs", "bfgs", "powell", "nm")
_LOWER = 1e-4  # lower bound of SD-type parameters (relative to the residual SD) in "lbfgsb"


#: Estimated fitting time (s) and memory (bytes) above which :func:`fit_backend` warns.
WARN_SECONDS = 60.0
WARN_BYTES = 2**30
#: Calibration of :func:`estimate_cost`: seconds per unit of :math:`\sum_g n_g q_g^2` and
#: bytes per unit of :math:`\max_g n_g q_g` (see its Notes).
_SECONDS_PER_NQ2 = 7.6e-7
_BYTES_PER_NQ = 40.0


class LargeModelWarning(UserWarning):
    """statsmodels is about to fit a model it will take long or much memory to fit."""


def estimate_cost(d: pd.DataFrame, plan: MixedLMPlan) -> dict[str, float]:
    r"""Estimate the time and memory statsmodels' ``MixedLM`` needs for a model.

    Parameters
    ----------
    d : DataFrame
        The prepared rows (:func:`allianceflow.models.mixedlm.prepare`).
    plan : MixedLMPlan
        The translated formula.

    Returns
    -------
    dict
        ``rows``, ``groups``, ``max_group_rows``, ``max_random_effects`` (:math:`q_g`, the
        random effects of the largest group), ``seconds`` and ``bytes`` (estimates).

    Notes
    -----
    ``MixedLM`` holds each group's random-effects design as a dense :math:`n_g 	imes q_g`
    matrix (``groups`` is one all-data group for crossed factors, so :math:`n_g = n` and
    :math:`q_g` = every level of every crossed factor) and each likelihood evaluation costs
    :math:`O(n_g q_g^2)` per group. The estimates are :math:`7.6\cdot10^{-7}\,\mathrm{s}
        imes \sum_g n_g q_g^2` and :math:`40\,\mathrm{B} 	imes \max_g n_g q_g` (five dense
    copies), calibrated on issue 20's measurements of a crossed ``(1 | patient) + (1 |
    rater)`` model: 59.9 s at 200 patients (1,870 rows, 206 random effects) and 1.5 GB when
    stopped at 2,000 patients (18,700 rows, 2,006 random effects). They are orders of
    magnitude, not promises: the number of optimiser iterations varies with the data.
    """
    if plan.groups == "_all" or plan.groups not in d.columns:
        keys = np.zeros(len(d), dtype=np.int64)
    else:
        keys = pd.factorize(d[plan.groups])[0]
    frame = pd.DataFrame({"_g": keys})
    q = pd.Series(0.0, index=np.unique(keys))
    n_re = len(plan.re_labels) if plan.re_formula not in ("0", None) else 0
    q += n_re
    for fml in plan.vc_formula.values():
        # "0 + C(col)" or "0 + C(col):x" (one column per level of col within the group), or
        # "1" / "0 + x" (one column)
        if "C(" in fml:
            col = fml.split("C(", 1)[1].split(")", 1)[0]
            frame[col] = d[col].to_numpy()
            q += frame.groupby("_g")[col].nunique()
        else:
            q += 1.0
    n_g = frame.groupby("_g").size().astype(float)
    return {
        "rows": float(len(d)),
        "groups": float(len(n_g)),
        "max_group_rows": float(n_g.max()),
        "max_random_effects": float(q.max()),
        "seconds": float(_SECONDS_PER_NQ2 * (n_g * q**2).sum()),
        "bytes": float(_BYTES_PER_NQ * (n_g * q).max()),
    }


def _warn_if_large(d: pd.DataFrame, plan: MixedLMPlan, formula: str) -> str | None:
    cost = estimate_cost(d, plan)
    if cost["seconds"] < WARN_SECONDS and cost["bytes"] < WARN_BYTES:
        return None
    message = (
        f"statsmodels' MixedLM is about to fit {formula!r} on {int(cost['rows'])} rows with "
        f"up to {int(cost['max_random_effects'])} random effects in one group of "
        f"{int(cost['max_group_rows'])} rows; estimated time {_duration(cost['seconds'])} and "
        f"memory {cost['bytes'] / 2**30:.1f} GiB (orders of magnitude). The fast engine "
        "cannot fit this model; consider fewer random effects on the smaller factors."
    )
    warnings.warn(message, LargeModelWarning, stacklevel=3)
    return message


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.0f} h"


def check_optimizers(optimizers: Any) -> tuple[str, ...]:
    """Validate ``optimizers``: a name or a non-empty sequence of statsmodels-path optimisers."""
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


def _boundary_mask(model, packed: np.ndarray, tol: float = 2 * _LOWER) -> np.ndarray:
    """Mark the sqrt-scale parameters that are a single SD sitting at the zero boundary.

    Those are every variance component, and the random-effect SD of the outer factor when
    it has one effect (SDs relative to the residual SD).
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
    likelihood is discontinuous just below it (statsmodels #10239); for them the gradient must point
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
        curv_ok, improvement = newton_decrement(g_f, -h_f)
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


def _newton_polish(model, packed: np.ndarray, max_steps: int = 25) -> tuple[np.ndarray, int]:
    """Safeguarded Newton ascent on the profiled log-likelihood (sqrt scale).

    Quasi-Newton optimisers in statsmodels minimise the log-likelihood divided by the number
    of observations and can stop early with ``converged=True``; a few Newton steps with the
    analytic score and a finite-difference Hessian finish the job
    (:func:`allianceflow.models.optimize.newton_polish` on minus the log-likelihood).
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

    def grad(x):
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            return -np.asarray(model.score(x, profile_fe=True), dtype=float)

    def hess(x, mask):
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            return -_sqrt_hessian(model, x)[np.ix_(mask, mask)]

    p, _, steps = newton_polish(
        lambda x: -_loglike(model, x),
        p,
        -l0,
        grad=grad,
        hess=hess,
        free_at=lambda x: free,
        max_steps=max_steps,
        min_t=1e-6,
        gain_tol=1e-10,
        require_finite=True,
    )
    return p, steps


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
    bounds = [(_LOWER, None) if i == j else (None, None) for i, j in zip(*tril, strict=True)]
    bounds += [(_LOWER, None)] * k_vc
    x0 = np.array(
        [max(v, _LOWER) if b[0] is not None else v for v, b in zip(start, bounds, strict=False)]
    )

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
        raise ModelError(
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


def _level_df(
    d: pd.DataFrame, plan: MixedLMPlan, spec: FormulaSpec, exog: pd.DataFrame
) -> dict[str, float]:
    """Denominator df per fixed term: containment df, or n - p for crossed factors."""
    if plan.groups == "_all" or not spec.random:
        return {c: float(len(d) - exog.shape[1]) for c in exog.columns}
    return containment_df(d, list(spec.factors), exog)


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


def fit_backend(
    rows: pd.DataFrame,
    spec: FormulaSpec,
    *,
    reml: bool,
    optimizers: tuple[str, ...],
    grad_tol: float,
    maxiter: int,
    boundary_tol: float,
) -> BackendFit:
    """Fit the complete *rows* with statsmodels' ``MixedLM`` for ``fit_model``.

    See :func:`allianceflow.models.fit_model` for the optimisation and its checks.

    A variance that ends at the boundary, or below statsmodels' 1e-10 (where its fixed
    effects break down), is dropped and the model refit on the same rows; the effect is
    reported with variance 0.
    """
    d, plan = _prepare(rows, spec)
    large = _warn_if_large(d, plan, spec.formula)
    model = _build_model(d, plan)
    _check_rank(model)
    res, conv, msgs, opt, attempts = _fit_attempts(model, reml, optimizers, grad_tol, maxiter)

    # statsmodels' own messages stay with their attempt; the top-level list holds our verdicts
    warn_list: list[str] = [large] if large else []
    zeroed: list[tuple[str, str]] = []
    below_tol = _degenerate_effects(res, plan)
    at_bound = _boundary_effects(model, res, plan)
    degenerate = below_tol + [e for e in at_bound if e not in below_tol]
    fit_spec, fit_plan, fit_model_obj, fit_d = spec, plan, model, d
    if degenerate:
        reduced = drop_effects(spec, degenerate)
        names = ", ".join(f"{e} | {g}" for g, e in degenerate)
        zeroed = degenerate
        if not reduced.random:
            raise ModelError(
                f"every random-effect variance of {spec.formula!r} is zero ({names}); the data "
                "show no clustering, so fit an ordinary regression instead."
            )
        fit_d, fit_plan = _prepare(rows, reduced)
        fit_model_obj = _build_model(fit_d, fit_plan)
        res, conv, _msgs, opt, att2 = _fit_attempts(
            fit_model_obj, reml, optimizers, grad_tol, maxiter
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

    scale = float(res.scale)
    fe = res.fe_params
    exog = pd.DataFrame(fit_model_obj.exog, columns=fit_model_obj.exog_names)
    random_rows: list[tuple[str, str, float]] = []
    covs: list[tuple] = []
    level_var: dict[str, float] = {}
    cov_re = np.atleast_2d(np.asarray(res.cov_re, dtype=float))
    labels = fit_plan.re_labels
    if labels:
        z_re = np.asarray(fit_model_obj.exog_re, dtype=float)
        contrib = np.sum((z_re @ cov_re) * z_re, axis=1).mean()
        lab = labels[0][0]
        level_var[lab] = level_var.get(lab, 0.0) + float(contrib)
        for i, (g, t) in enumerate(labels):
            random_rows.append((g, t, float(cov_re[i, i])))
        for i in range(len(labels)):
            for j in range(i + 1, len(labels)):
                den = math.sqrt(max(cov_re[i, i], 0) * max(cov_re[j, j], 0))
                covs.append((labels[i][0], labels[i][1], labels[j][1], float(cov_re[i, j]), den))
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
    at_zero = [(g, t) for g, t, v in random_rows if is_boundary(v, scale, boundary_tol)]
    boundary = [f"{t} | {g}" for g, t in at_zero]
    if len(labels) > 1 and not any(g == labels[0][0] for g, _ in at_zero):
        if is_singular(cov_re, scale, boundary_tol):
            boundary.append(f"correlation | {labels[0][0]}")
            warn_list.append(
                f"singular fit: the random-effects covariance of {labels[0][0]!r} is "
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
    n_cov = sum(
        (len(t.effects) * (len(t.effects) + 1)) // 2 if t.correlated else len(t.effects)
        for t in spec.random
    )
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
    return BackendFit(
        engine="statsmodels.MixedLM",
        n_obs=len(d),
        n_groups=n_groups,
        fixed_names=list(fe.index),
        beta=fe.to_numpy(),
        cov_fe=_gls_cov_fe(fit_model_obj, res),
        df=_level_df(fit_d, fit_plan, fit_spec, exog),
        df_default=float(len(fit_d) - len(fe)),
        sigma2=scale,
        random=random_rows,
        covariances=covs,
        level_variance=level_var,
        group_order=order_g,
        var_fixed=float(np.var(fixed_pred, ddof=1)) if len(fixed_pred) > 1 else 0.0,
        loglik=float(res.llf),
        n_params=len(model.exog_names) + n_cov + 1,
        conditional_modes=_conditional_modes(res, fit_plan, fit_d),
        converged=bool(conv["ok"]),
        optimizer=opt,
        attempts=attempts,
        max_abs_gradient=conv["max_abs_gradient"],
        hessian_positive_definite=hess_pd,
        boundary=boundary,
        warnings=warn_list,
    )
