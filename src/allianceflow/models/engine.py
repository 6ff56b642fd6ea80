r"""The fast engine: nested linear mixed models by profiled (RE)ML, as lme4 formulates it.

:func:`fit_lmm` fits a model whose grouping factors are nested in one another (patients in
therapists in studies) with the vectorised penalised least squares of
:mod:`allianceflow.models.pls` and the shared optimiser of
:mod:`allianceflow.models.optimize`, and returns an :class:`LMMFit`. :func:`fit_backend` turns
that fit into the :class:`~allianceflow.models.result.BackendFit` from which
:func:`allianceflow.models.fit_model` builds its result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from allianceflow.models.blas import one_blas_thread
from allianceflow.models.design import (
    ModelError,
    check_rank,
    fixed_design,
    level_labels,
    model_rows,
)
from allianceflow.models.formula import FormulaSpec
from allianceflow.models.inference import containment_df, is_boundary, is_singular
from allianceflow.models.inference import round_sig as _r
from allianceflow.models.optimize import minimize_bounded
from allianceflow.models.pls import (
    INTERCEPT,
    Problem,
    check_spec,
    levels_from_spec,
    nesting_order,
)
from allianceflow.models.result import BackendFit

__all__ = ["LMMFit", "fit_lmm", "fit_backend"]

# --------------------------------------------------------------------------- the result


@dataclass
class LMMFit:
    r"""Result of :func:`fit_lmm`.

    Attributes
    ----------
    formula : str
    reml : bool
    n_obs : int
        Rows used (complete cases).
    n_dropped_missing : int
        Rows dropped for a missing value in a model variable.
    n_groups : dict
        Number of units per grouping factor label (``{"patient": 2000, "therapist": 40}``).
    fixed_names : list of str
        Fixed-effect columns (patsy names, as statsmodels reports them).
    fe_params : ndarray
        Fixed-effect estimates :math:`\hat\beta`.
    cov_fe : ndarray
        Their covariance :math:`\hat\sigma^2 (X^\top V^{-1} X)^{-1}` (lme4's ``vcov``).
    sigma2 : float
        Residual variance :math:`\hat\sigma^2` (:math:`r^2/(n-p)` REML, :math:`r^2/n` ML).
    cov_re : dict
        Per grouping factor label, the covariance matrix
        :math:`\hat\sigma^2\Lambda\Lambda^\top`
        of its effects (a DataFrame indexed and labelled by effect names).
    theta : ndarray
        The relative covariance factor parameters at the optimum (lme4's ``getME(, "theta")``).
    loglik, deviance, aic, bic : float
        :math:`\ell`, :math:`-2\ell`, :math:`-2\ell + 2k`, :math:`-2\ell + k\log n` with
        *k* = fixed effects + covariance parameters + 1 (as lme4).
    n_params : int
    ranef : dict
        Per grouping factor label, a DataFrame with the factor column(s), one column per
        effect (the conditional modes :math:`\hat b`, lme4's ``ranef``) and ``se_<effect>``
        (conditional SDs given :math:`\hat\beta`, lme4's ``condVar``; exact for one or two
        grouping levels, with three levels the innermost ignores the grandparent's
        uncertainty), for caterpillar plots.
    var_fixed : float
        :math:`\operatorname{var}(X\hat\beta)` (ddof 1), for Nakagawa–Schielzeth R².
    level_variance : dict
        Per grouping factor label, :math:`\frac1n\sum_i z_i^\top\Sigma z_i` (Johnson 2014).
    converged : bool
        Our check passed (see :func:`fit_lmm` Notes).
    optimizer : str
    n_evaluations : int
        Deviance evaluations, including the convergence check.
    max_abs_gradient : float
        Largest |∂ deviance / ∂θ| over free parameters at the optimum.
    newton_decrement : float
        :math:`\tfrac12 g^\top H^{-1} g` (deviance units): the predicted gain of one more
        Newton step.
    hessian_positive_definite : bool
    boundary : list of str
        ``"<effect> | <factor>"`` for random-effect SDs at 0 (singular fit) and
        ``"correlation | <factor>"`` for a singular (rank-deficient) covariance matrix.
    warnings : list of str
    nesting : list of str
        Grouping factor labels from the innermost to the outermost (each nested in the next).
    """

    formula: str
    reml: bool
    n_obs: int
    n_dropped_missing: int
    n_groups: dict
    fixed_names: list
    fe_params: np.ndarray
    cov_fe: np.ndarray
    sigma2: float
    cov_re: dict
    theta: np.ndarray
    loglik: float
    deviance: float
    aic: float
    bic: float
    n_params: int
    ranef: dict
    var_fixed: float
    level_variance: dict
    converged: bool
    optimizer: str
    n_evaluations: int
    max_abs_gradient: float
    newton_decrement: float
    hessian_positive_definite: bool
    boundary: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
    nesting: list = field(default_factory=list)

    @property
    def bse(self) -> np.ndarray:
        """Standard errors of the fixed effects."""
        return np.sqrt(np.diag(self.cov_fe))

    def fixed_effects(self) -> pd.DataFrame:
        """Return the fixed effects as a DataFrame with columns ``term, estimate, se``."""
        return pd.DataFrame({"term": self.fixed_names, "estimate": self.fe_params, "se": self.bse})

    def variance_components(self) -> pd.DataFrame:
        """Return variances and covariances, residual last.

        Columns ``group, term1, term2, variance_or_cov``; ``term2`` is empty for variances.
        """
        rows = []
        for label, cov in self.cov_re.items():
            effects = list(cov.index)
            for i, a in enumerate(effects):
                rows.append((label, a, "", float(cov.iloc[i, i])))
            for i, a in enumerate(effects):
                for j in range(i + 1, len(effects)):
                    rows.append((label, a, effects[j], float(cov.iloc[i, j])))
        rows.append(("Residual", "", "", float(self.sigma2)))
        return pd.DataFrame(rows, columns=["group", "term1", "term2", "variance_or_cov"])


# --------------------------------------------------------------------------- fitting


def _prepare(data: pd.DataFrame, spec: FormulaSpec, *, complete: bool = False):
    """Rows, nesting, design and response of a fit; *complete*: *data* are the model's rows."""
    if not isinstance(data, pd.DataFrame):
        raise TypeError(f"`data` must be a pandas DataFrame; got {type(data).__name__}.")
    if len(data) == 0:
        raise ValueError("`data` has no rows.")
    if not spec.random:
        raise ValueError(
            f"`formula` {spec.formula!r} has no random part; add e.g. '(1 | patient)'."
        )
    d, n_dropped = (data, 0) if complete else model_rows(data, spec)
    levels = levels_from_spec(spec)
    nested = nesting_order(d, levels)
    if nested is None:
        raise ModelError(
            f"`formula` {spec.formula!r}: the grouping factors "
            f"{[lev.label for lev in levels]} are not nested in one another in the data "
            "(some level of an inner factor occurs in more than one level of an outer one); "
            "the fast engine fits nested designs only. Use the statsmodels engine, or give "
            "inner units ids that are unique across outer units (e.g. '(1 | therapist/patient)')."
        )
    levels, codes = nested
    X = fixed_design(spec, d)
    fixed_names = list(X.columns)
    Xv = X.to_numpy(dtype=float)
    check_rank(Xv, fixed_names)
    y = d[spec.response].to_numpy(dtype=float)
    Z_cols = []
    for lev in levels:
        for eff in lev.effects:
            Z_cols.append(np.ones(len(d)) if eff == INTERCEPT else d[eff].to_numpy(dtype=float))
    return d, levels, codes, Xv, fixed_names, y, Z_cols, n_dropped, X


def fit_lmm(
    data: pd.DataFrame,
    formula_or_spec: FormulaSpec | str,
    *,
    reml: bool = True,
    start: np.ndarray | None = None,
    tol: float = 1e-6,
    boundary_tol: float = 1e-4,
    maxiter: int = 1000,
) -> LMMFit:
    r"""Fit a nested linear mixed model by profiled REML or ML (lme4's formulation).

    Parameters
    ----------
    data : DataFrame
        Long format, one row per observation. Rows with a missing value in a model
        variable are dropped and counted.
    formula_or_spec : str or FormulaSpec
        lme4 formula, e.g. ``"outcome ~ session + alliance_within_lag + alliance_between
        + (1 + session | patient) + (1 | therapist)"``. Grouping factors must be nested in
        one another in the data (see :func:`supports`); correlated blocks are allowed at
        every level (unlike statsmodels' MixedLM).
    reml : bool, default True
        REML (as lme4's default) or maximum likelihood.
    start : array, optional
        Starting θ: per grouping factor, innermost first (patient, therapist, study), the
        free entries of the lower triangle of Λ column by column (lme4's order within a
        factor). Default: each diagonal entry 1/RMS of its effect's column (1 for an
        intercept), off-diagonal 0 — lme4 starts at 1, which for a slope on sessions 1..12
        is ten times too large.
    tol : float, default 1e-6
        Convergence: the predicted deviance gain of one more Newton step must be below
        ``tol`` (deviance units).
    boundary_tol : float, default 1e-4
        Boundary (singular fit) tolerance on the scale of standard deviations relative to
        the residual SD, as lme4's ``isSingular`` (whose tolerance 1e-4 applies to θ): an
        effect whose SD is below ``boundary_tol`` times the residual SD is at the boundary
        (``"<effect> | <factor>"``), and a correlated block none of whose effects is, whose
        covariance matrix has a direction with an SD that small (smallest eigenvalue of
        :math:`\Lambda\Lambda^\top` below ``boundary_tol``²), is singular
        (``"correlation | <factor>"``, a correlation at ±1). The optimiser also sets a
        diagonal θ below ``boundary_tol`` to 0 when that costs nothing.
    maxiter : int, default 1000
        Iteration limit of L-BFGS-B.

    Returns
    -------
    LMMFit

    Raises
    ------
    TypeError
        ``data`` is not a DataFrame, or ``formula_or_spec`` is neither a string nor a spec.
    ValueError
        No random part, non-nested grouping factors, rank-deficient fixed effects, or no
        complete rows.
    KeyError
        A formula variable is not a column.

    Notes
    -----
    With :math:`b = \Lambda_\theta u`, :math:`u \sim N(0, \sigma^2 I)`, the penalised
    least-squares problem
    :math:`\min_{u,\beta} \|y - X\beta - Z\Lambda_\theta u\|^2 + \|u\|^2`
    has the minimum :math:`r^2_\theta`, and with :math:`L_\theta L_\theta^\top =
    \Lambda_\theta^\top Z^\top Z \Lambda_\theta + I` the profiled deviances are
    (Bates et al. 2015, eqs. 34 and 41)

    .. math::

        d(\theta) = \log|L_\theta|^2 + n\left(1 + \log\frac{2\pi r^2_\theta}{n}\right),
        \qquad
        d_R(\theta) = \log|L_\theta|^2 + \log|R_X|^2
                      + (n-p)\left(1 + \log\frac{2\pi r^2_\theta}{n-p}\right).

    For nested factors the system is solved by block elimination, innermost level first:
    per unit :math:`A_i = \Lambda^\top G_i \Lambda + I` (:math:`G_i` the unit's reduced
    cross-products), whose Schur complements summed over the units of each parent give the
    parent's reduced cross-products; :math:`\log|L_\theta|^2 = \sum \log|A_i|`. What
    remains at the top is :math:`X^\top V^{-1} X`, :math:`X^\top V^{-1} y`, :math:`y^\top
    V^{-1} y` (times :math:`\sigma^2`), giving :math:`\hat\beta`, :math:`r^2` and
    :math:`\operatorname{vcov}(\hat\beta) = \hat\sigma^2 (X^\top V^{-1}X)^{-1}`.

    θ is optimised by L-BFGS-B (diagonal entries of Λ bounded below by 0) with
    forward-difference gradients until it stalls, then polished by safeguarded Newton steps
    on central-difference gradients and Hessian
    (:func:`allianceflow.models.optimize.minimize_bounded`). *Convergence* is checked on the
    free parameters (those not at the zero bound): the Hessian must be positive definite and
    the Newton decrement :math:`\tfrac12 g^\top H^{-1} g` (the deviance still to gain) below
    ``tol``. Unlike lme4's absolute gradient tolerance (0.002), which the deviance's growth
    with *n* trips on large data, this criterion has the same meaning at any sample size.
    Diagonal θ at 0 must have a non-negative gradient (Karush–Kuhn–Tucker); they are
    reported in ``boundary``. A diagonal θ at 0 inside a correlated block can be a saddle
    rather than a minimum (the deviance is flat in that θ alone but falls along a joint
    direction with its off-diagonal); :func:`allianceflow.models.optimize.escape_saddle`
    steps out along the most negative curvature and the optimiser restarts, as lme4's
    ``restart_edge`` does.

    The log-likelihood at given parameters equals statsmodels' ``MixedLM.loglike`` to 1e-10
    relative, and a dense-matrix computation for structures MixedLM cannot express
    (``tests/test_engine.py``). On simulated studies of 2,000-100,000 patients its optimum
    is at least as high as lme4 1.1-31's (within 4e-9 relative; lme4 stopped slightly short
    and warned) and statsmodels' (within 4e-11), fixed effects within 1e-5
    (``benchmarks/results/engine_speed.txt``).

    References
    ----------
    Bates, D., Mächler, M., Bolker, B., & Walker, S. (2015). Fitting linear mixed-effects
    models using lme4. *Journal of Statistical Software, 67*(1), 1–48.
    https://doi.org/10.18637/jss.v067.i01
    Johnson, P. C. D. (2014). Extension of Nakagawa & Schielzeth's R²GLMM to random slopes
    models. *Methods in Ecology and Evolution, 5*(9), 944–946.

    Examples
    --------
    >>> from allianceflow.simulate import simulate_study
    >>> df = simulate_study(seed=1, n_patients=200, n_therapists=20, max_sessions=8)
    >>> df["y"] = df[[f"ors_{i}" for i in range(1, 5)]].sum(axis=1)
    >>> fit = fit_lmm(df, "y ~ session + (1 + session | patient)")
    >>> fit.converged, fit.fixed_names
    (True, ['Intercept', 'session'])
    """
    spec = check_spec(formula_or_spec)
    if not isinstance(reml, (bool, np.bool_)):
        raise TypeError(f"`reml` must be True or False; got {reml!r}.")
    for name, val in (("tol", tol), ("boundary_tol", boundary_tol)):
        if not (isinstance(val, (int, float)) and val > 0):
            raise ValueError(f"`{name}` must be a positive number; got {val!r}.")
    prepared = _prepare(data, spec)
    with one_blas_thread():
        return _fit_prepared(
            prepared,
            spec,
            reml=bool(reml),
            start=start,
            tol=tol,
            boundary_tol=boundary_tol,
            maxiter=maxiter,
        )


def _fit_prepared(prepared, spec, *, reml, start, tol, boundary_tol, maxiter) -> LMMFit:
    """Fit the output of :func:`_prepare` (see :func:`fit_lmm`)."""
    d, levels, codes, X, fixed_names, y, Z_cols, n_dropped, _ = prepared
    prob = Problem(levels, codes, Z_cols, X, y, bool(reml))
    lower = prob.lower
    if start is None:
        x0 = prob.theta0()
    else:
        x0 = np.asarray(start, dtype=float)
        if x0.shape != (prob.n_theta,):
            raise ValueError(f"`start` must have {prob.n_theta} values; got shape {x0.shape}.")
    # optimise over phi = theta * s, s = RMS of each effect's column (row of Λ), so that
    # every parameter is on the scale of the response (a slope on sessions 1..12 would
    # otherwise start 10 times too large and be badly conditioned)
    scale = prob.theta_scale()
    dev_theta = prob.deviance

    memo: dict[bytes, float] = {}

    def f(phi):
        # memoised: L-BFGS-B asks for f and its gradient separately at the same point, and
        # the convergence check revisits the points of the last Newton step
        key = np.asarray(phi, dtype=float).tobytes()
        if key not in memo:
            memo[key] = dev_theta(phi / scale)
        return memo[key]

    phi = x0 * scale if start is not None else np.where(np.isfinite(lower), 1.0, 0.0)
    opt = minimize_bounded(
        f,
        phi,
        lower,
        unscale=scale,
        boundary_tol=boundary_tol,
        tol=tol,
        maxiter=maxiter,
        theta_slices=prob.theta_slices,
    )
    phi, optimizer, hess_pd, decrement, kkt_ok = (
        opt.x,
        opt.optimizer,
        opt.hessian_positive_definite,
        opt.decrement,
        opt.kkt_ok,
    )
    g_full, on_bound = opt.gradient, opt.on_bound
    warn: list[str] = []
    theta = phi / scale
    max_grad = float(np.max(np.abs((g_full * scale)[~on_bound]))) if (~on_bound).any() else 0.0
    converged = bool(hess_pd and math.isfinite(decrement) and decrement < tol and kkt_ok)
    if not hess_pd:
        warn.append(
            "the deviance is not curved at the solution (finite-difference Hessian of the free "
            "variance parameters not positive definite): the optimum is not unique."
        )
    if not converged:
        warn.append(
            f"convergence check failed (Newton decrement {decrement:.3g}, tolerance {tol:g}; "
            f"KKT at the boundary {'ok' if kkt_ok else 'violated'}); do not report these estimates."
        )

    sol = prob.solve(theta, keep=True)
    if "beta" not in sol:
        raise ModelError(
            f"`formula` {spec.formula!r}: the likelihood cannot be evaluated at any variance "
            f"parameters for these {prob.n} rows (the fixed effects reproduce the response "
            "exactly, or the cross-products are singular); check the response and the terms."
        )
    beta, sigma2 = sol["beta"], float(sol["sigma2"])
    cov_fe = sigma2 * np.linalg.inv(sol["XtVX"])
    dev = float(sol["deviance"])
    llf = -0.5 * dev
    n = prob.n
    k = len(beta) + prob.n_theta + 1
    # variance components, boundary
    cov_re: dict[str, pd.DataFrame] = {}
    boundary: list[str] = []
    level_variance: dict[str, float] = {}
    Zs = np.column_stack(Z_cols) if Z_cols else np.zeros((n, 0))
    col = 0
    for li, lev in enumerate(levels):
        Lam = prob.lam(theta, li)
        cov = sigma2 * Lam @ Lam.T
        cov_re[lev.label] = pd.DataFrame(cov, index=list(lev.effects), columns=list(lev.effects))
        # on the scale of SDs relative to the residual SD (see fit_lmm's boundary_tol)
        rel = Lam @ Lam.T
        at_zero = [is_boundary(rel[j, j], 1.0, boundary_tol) for j in range(lev.q)]
        boundary += [
            f"{eff} | {lev.label}" for eff, z in zip(lev.effects, at_zero, strict=True) if z
        ]
        if (
            lev.q > 1
            and not any(at_zero)
            and lev.pattern[np.tril_indices(lev.q, -1)].any()
            and is_singular(rel, 1.0, boundary_tol)
        ):
            boundary.append(f"correlation | {lev.label}")
        Zl = Zs[:, col : col + lev.q]
        level_variance[lev.label] = float(np.mean(np.sum((Zl @ cov) * Zl, axis=1)))
        col += lev.q
    if boundary:
        warn.append(
            "singular fit: random-effect variance at the boundary for "
            + ", ".join(boundary)
            + "; the model is over-parameterised for these data."
        )
    # conditional modes
    b_levels, ses = prob.conditional_modes(theta, sol)
    ranef: dict[str, pd.DataFrame] = {}
    for li, lev in enumerate(levels):
        # the level of each code (the codes number the sorted levels): a row that has it
        row_of = np.empty(int(codes[li].max()) + 1, dtype=np.int64)
        row_of[codes[li]] = np.arange(len(codes[li]))
        take = row_of[prob.unit_codes[li]]
        # one frame from whole columns (adding columns one by one costs more than the fit
        # of a small model)
        columns = {c: d[c].iloc[take].reset_index(drop=True) for c in lev.factor}
        columns.update({eff: b_levels[li][:, j] for j, eff in enumerate(lev.effects)})
        columns.update({f"se_{eff}": ses[li][:, j] for j, eff in enumerate(lev.effects)})
        ranef[lev.label] = pd.DataFrame(columns)
    fixed_pred = X @ beta
    var_fixed = float(np.var(fixed_pred, ddof=1)) if n > 1 else 0.0
    n_groups = {lev.label: int(prob.m[li]) for li, lev in enumerate(levels)}
    # report in formula order
    order = [lev.label for lev in levels_from_spec(spec)]
    return LMMFit(
        formula=spec.formula,
        reml=bool(reml),
        n_obs=int(n),
        n_dropped_missing=n_dropped,
        n_groups={g: n_groups[g] for g in order},
        fixed_names=fixed_names,
        fe_params=beta,
        cov_fe=cov_fe,
        sigma2=sigma2,
        cov_re={g: cov_re[g] for g in order},
        theta=theta,
        loglik=float(llf),
        deviance=dev,
        aic=float(dev + 2 * k),
        bic=float(dev + k * math.log(n)),
        n_params=int(k),
        ranef={g: ranef[g] for g in order},
        var_fixed=var_fixed,
        level_variance={g: level_variance[g] for g in order},
        converged=converged,
        optimizer=optimizer,
        n_evaluations=int(prob.n_evals),
        max_abs_gradient=max_grad,
        newton_decrement=decrement,
        hessian_positive_definite=bool(hess_pd),
        boundary=boundary,
        warnings=warn,
        nesting=[lev.label for lev in levels],
    )


def fit_backend(
    rows: pd.DataFrame, spec: FormulaSpec, *, reml: bool, boundary_tol: float
) -> BackendFit:
    """Fit the complete *rows* with :func:`fit_lmm` for ``allianceflow.models.fit_model``.

    Returns the :class:`~allianceflow.models.result.BackendFit`: containment df, random rows
    in formula order, the conditional modes of the outermost grouping factor (the one every
    other factor is nested in, as the statsmodels back-end reports; none when it has more
    than 5,000 levels), the convergence record. The rows, design and nesting are prepared
    once, for the fit and for the containment df.
    """
    prepared = _prepare(rows, spec, complete=True)
    with one_blas_thread():
        fit = _fit_prepared(
            prepared,
            spec,
            reml=bool(reml),
            start=None,
            tol=1e-6,
            boundary_tol=boundary_tol,
            maxiter=1000,
        )
    exog = prepared[-1]
    order = [t.label for t in spec.random]
    random, covs = [], []
    for group in dict.fromkeys(order):
        cov = fit.cov_re[group]
        for i, t in enumerate(cov.index):
            random.append((group, t, float(cov.iloc[i, i])))
        for rt in spec.random:
            if rt.label != group or not rt.correlated or len(rt.effects) < 2:
                continue
            effects = list(rt.effects)
            for i in range(len(effects)):
                for j in range(i + 1, len(effects)):
                    a, b = effects[i], effects[j]
                    den = math.sqrt(max(cov.loc[a, a], 0) * max(cov.loc[b, b], 0))
                    covs.append((group, a, b, float(cov.loc[a, b]), den))
    warnings_ = fit_warnings(fit)
    return BackendFit(
        engine="allianceflow.engine",
        n_obs=int(fit.n_obs),
        n_groups={g: int(fit.n_groups[g]) for g in dict.fromkeys(order)},
        fixed_names=list(fit.fixed_names),
        beta=fit.fe_params,
        cov_fe=fit.cov_fe,
        df=containment_df(rows, list(spec.factors), exog),
        df_default=float(fit.n_obs - len(fit.fixed_names)),
        sigma2=float(fit.sigma2),
        random=random,
        covariances=covs,
        level_variance=fit.level_variance,
        group_order=order,
        var_fixed=fit.var_fixed,
        loglik=fit.loglik,
        n_params=int(fit.n_params),
        conditional_modes=_outer_modes(fit, spec),
        converged=bool(fit.converged),
        optimizer=fit.optimizer,
        attempts=single_attempt(fit),
        max_abs_gradient=fit.max_abs_gradient,
        hessian_positive_definite=bool(fit.hessian_positive_definite),
        boundary=list(fit.boundary),
        warnings=warnings_,
    )


def fit_warnings(fit) -> list[str]:
    """The fit's warnings, plus one when it failed the convergence check."""
    warnings_ = list(fit.warnings)
    if not fit.converged:
        warnings_.append(
            "the fit did not pass the convergence check; estimates should not be reported."
        )
    return warnings_


def single_attempt(fit) -> list[dict]:
    """The ``attempts`` record of a fit made by one optimiser run (rounded for JSON)."""
    return [
        {
            "optimizer": fit.optimizer,
            "loglik": _r(fit.loglik),
            "converged": bool(fit.converged),
            "evaluations": int(fit.n_evaluations),
            "newton_decrement": _r(fit.newton_decrement),
            "max_abs_gradient": _r(fit.max_abs_gradient),
            "warnings": list(fit.warnings),
        }
    ]


def _outer_modes(fit: LMMFit, spec: FormulaSpec, max_groups: int = 5000) -> list[tuple]:
    """``(group, level, term, mode, se)`` of the outermost factor, levels sorted as text."""
    if not fit.nesting:
        return []
    outer = fit.nesting[-1]
    frame = fit.ranef[outer]
    if len(frame) > max_groups:
        return []
    k = len(next(t.factor for t in spec.random if t.label == outer))
    terms = [c for c in frame.columns[k:] if not str(c).startswith("se_")]
    labels = level_labels(frame.iloc[:, :k])
    est = {t: frame[t].to_numpy(dtype=float).tolist() for t in terms}
    se = {t: frame[f"se_{t}"].to_numpy(dtype=float).tolist() for t in terms}
    rank = sorted(range(len(labels)), key=labels.__getitem__)
    return [(outer, labels[i], t, est[t][i], se[t][i]) for i in rank for t in terms]
