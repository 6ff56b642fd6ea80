"""Fit a linear mixed model written in lme4 syntax: :func:`fit_model`.

The formula is parsed once and the model's complete rows selected once. Grouping factors
with too few levels are dropped (with a warning), then the fit goes to the fast engine
(:mod:`allianceflow.models.engine`, nested factors; :mod:`allianceflow.models.sparse`,
crossed factors) or to statsmodels' ``MixedLM``
(:mod:`allianceflow.models.statsmodels_backend`, what neither covers). All return a
:class:`~allianceflow.models.result.BackendFit`, from which
:func:`~allianceflow.models.result.build_result` makes the one
:class:`~allianceflow.models.result.MixedModelResult`.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pandas as pd

from allianceflow.models import engine as fast
from allianceflow.models import sparse
from allianceflow.models import statsmodels_backend as sm
from allianceflow.models.ddf import (
    BlockTooLarge,
    kenward_roger,
    satterthwaite_df,
    variance_structure,
)
from allianceflow.models.design import (
    ModelError,
    check_identifiable,
    complete_rows,
    group_codes,
    shared_codes,
)
from allianceflow.models.formula import FormulaSpec, drop_effects, parse_formula
from allianceflow.models.pls import supports
from allianceflow.models.result import MixedModelResult, build_result, variance_record

__all__ = ["fit_model", "check_data", "DDF_METHODS", "DDF_MAX_MEMORY"]

#: Denominator df methods of :func:`fit_model` (its ``ddf`` argument).
DDF_METHODS = ("containment", "satterthwaite", "kenward-roger")
#: Most memory (bytes) the Satterthwaite or Kenward–Roger df may take
#: (:func:`allianceflow.models.ddf_moments.moments_memory` of the largest independent block
#: of the marginal covariance, counted in random effects, not rows); beyond it the
#: containment df are kept, with a warning. 1 GiB is a crossed block of about 3,000 random
#: effects (2 variance parameters), some 20 CPU-s; nested blocks are far smaller.
DDF_MAX_MEMORY = 2**30


def check_data(data: Any) -> None:
    """Refuse anything but a non-empty DataFrame (``TypeError`` / ``ValueError``)."""
    if not isinstance(data, pd.DataFrame):
        raise TypeError(f"`data` must be a pandas DataFrame; got {type(data).__name__}.")
    if len(data) == 0:
        raise ValueError("`data` has no rows.")


def _check_name(name: Any) -> None:
    if not isinstance(name, str) or not name:
        raise ValueError(f"`name` must be a non-empty string; got {name!r}.")


def _check_min_levels(min_levels: Any) -> int:
    if isinstance(min_levels, bool) or not isinstance(min_levels, (int, np.integer)):
        raise TypeError(f"`min_levels` must be an integer of at least 2; got {min_levels!r}.")
    if min_levels < 2:
        raise ValueError(f"`min_levels` must be at least 2; got {min_levels!r}.")
    return int(min_levels)


def _check_ddf(ddf: Any) -> str:
    if ddf not in DDF_METHODS:
        raise ValueError(
            f"`ddf` must be 'containment', 'satterthwaite' or 'kenward-roger'; got {ddf!r}."
        )
    return str(ddf)


_DDF_LABEL = {"satterthwaite": "Satterthwaite", "kenward-roger": "Kenward–Roger"}


def _ddf_table(rows: pd.DataFrame, spec: FormulaSpec, record: dict, ddf: str) -> pd.DataFrame:
    """Satterthwaite or Kenward–Roger ``term, se, df`` of a REML fit's fixed effects."""
    # the fit's complete rows: their grouping codes and design are reused (shared_codes)
    structure = variance_structure(rows, spec, record, max_memory=DDF_MAX_MEMORY, _complete=True)
    if ddf == "satterthwaite":
        return satterthwaite_df(structure=structure)
    return kenward_roger(structure=structure)


def _few_level_terms(
    rows: pd.DataFrame, spec: FormulaSpec, min_levels: int
) -> tuple[FormulaSpec, list[dict]]:
    """Drop the random terms of grouping factors with fewer than *min_levels* levels."""
    dropped = []
    for factor in spec.factors:
        n_levels = len(group_codes(rows, factor, sort=False)[1])
        if n_levels >= min_levels:
            continue
        label = ":".join(factor)
        terms = [t for t in spec.random if t.factor == factor]
        effects = [e for t in terms for e in t.effects]
        # name the effects left out, not the whole term: in (1 | therapist/patient) only
        # the therapist part goes
        named = ", ".join("intercept" if e == "(Intercept)" else f"slope of {e}" for e in effects)
        dropped.append(
            {
                "group": label,
                "terms": [f"{e} | {label}" for e in effects],
                "n_levels": n_levels,
                "min_levels": min_levels,
                "warning": (
                    f"the grouping factor {label!r} has {n_levels} level"
                    f"{'' if n_levels == 1 else 's'} in the rows used, fewer than "
                    f"min_levels = {min_levels}: its variance cannot be estimated reliably "
                    f"(with one level not at all), so its random {named} was left out of the "
                    "model and no variance or ICC is reported for it."
                ),
                "effects": [(label, e) for e in effects],
            }
        )
    reduced = drop_effects(spec, [pair for d in dropped for pair in d["effects"]])
    if dropped and not reduced.random:
        detail = "; ".join(f"{d['group']!r} has {d['n_levels']}" for d in dropped)
        raise ModelError(
            f"`formula` {spec.formula!r}: every grouping factor has fewer than min_levels = "
            f"{min_levels} levels in the {len(rows)} complete rows ({detail}), so no random "
            "effect can be estimated. Fit the study with more units, lower `min_levels` "
            "(at least 2), or use an ordinary regression."
        )
    return reduced, dropped


def fit_model(
    data: pd.DataFrame,
    formula: str | FormulaSpec,
    *,
    reml: bool = True,
    name: str = "model",
    optimizers: tuple[str, ...] | list[str] = sm.OPTIMIZERS,
    grad_tol: float = 1e-3,
    boundary_tol: float = 1e-4,
    maxiter: int = 2000,
    engine: Literal["auto", "fast", "statsmodels"] = "auto",
    min_levels: int = 5,
    ddf: Literal["containment", "satterthwaite", "kenward-roger"] = "containment",
    family: Literal["gaussian", "binomial", "poisson"] = "gaussian",
    link: str | None = None,
    nAGQ: int = 1,  # noqa: N803 -- lme4's name
    vcov: Literal["hessian", "beta_only"] = "hessian",
) -> MixedModelResult:
    r"""Fit a linear mixed model written in lme4 syntax and return tidy, JSON-ready results.

    Parameters
    ----------
    data : DataFrame
        Long format, one row per observation (session). Rows with a missing value in any
        model variable are dropped and counted (``n_dropped_missing``, and per variable
        ``dropped_missing_by_variable``).
    formula : str or FormulaSpec
        lme4 formula, e.g. ``"outcome ~ alliance_within_lag + alliance_between + session +
        (1 | therapist) + (1 | patient)"``; see
        :func:`allianceflow.models.formula.parse_formula` (a parsed spec is used as is).
    reml : bool, default True
        REML (default, as lme4) or maximum likelihood (needed to compare fixed effects by LRT).
    name : str, default "model"
        Stored in the result.
    optimizers : sequence of str, default ``OPTIMIZERS`` = lbfgsb, lbfgs, bfgs, powell, nm
        Tried in order until our convergence check passes; each starts from the best point
        found so far. Every attempt is recorded in ``result.convergence["attempts"]``.
    grad_tol : float, default 1e-3
        Largest absolute gradient of the profiled log-likelihood (on the scale of the
        Cholesky factor of the relative covariance) accepted when the Newton test cannot be
        used.
    boundary_tol : float, default 1e-4
        On the scale of standard deviations relative to the residual SD, as lme4's
        ``isSingular`` (tolerance 1e-4 on θ): a random effect whose SD is below
        ``boundary_tol`` times the residual SD (variance below ``boundary_tol``² times the
        residual variance) is reported as at the boundary (a singular fit), as is a
        covariance matrix of correlated effects with a direction whose SD is that small
        (smallest eigenvalue of the covariance over the residual variance below
        ``boundary_tol``²: a correlation at ±1). ``random[].boundary`` and
        ``convergence["boundary"]`` use this one test
        (:func:`allianceflow.models.inference.is_boundary`, ``is_singular``) whichever
        engine ran.
    maxiter : int, default 2000
        Iteration limit per optimiser.
    engine : {"auto", "fast", "statsmodels"}, default "auto"
        "fast": :func:`allianceflow.models.engine.fit_lmm`, lme4's profiled-deviance formulation
        vectorised over patients, for nested grouping factors (any ``|`` or ``||`` block
        at any level), and :func:`allianceflow.models.sparse.fit_crossed`, the same
        formulation with a sparse Cholesky factor, for crossed or partially crossed ones.
        "statsmodels": ``MixedLM`` with the optimiser fall-backs below. "auto" takes the
        fast engine whenever it supports the structure and statsmodels otherwise (warning
        first when that fit will be slow or large). All give the same result
        keys; ``to_dict()["engine"]`` says which ran. The options ``optimizers``,
        ``grad_tol`` and ``maxiter`` apply to statsmodels only.
    min_levels : int, default 5
        A grouping factor with fewer levels in the rows used has its random terms left out
        of the model before fitting, with a warning (see Notes). At least 2.
    ddf : {"containment", "satterthwaite", "kenward-roger"}, default "containment"
        Denominator df of the fixed effects' tests and intervals (see Notes, *Tests*).
        "containment": Wald z with the containment df (the record of earlier versions).
        "satterthwaite": *t* on Satterthwaite's df as lmerTest computes them
        (:func:`allianceflow.models.ddf.satterthwaite_df`). "kenward-roger": *t* on
        Kenward–Roger's df with its adjusted standard errors, as pbkrtest
        (:func:`allianceflow.models.ddf.kenward_roger`). The last two need a REML fit: with
        ``reml=False`` the containment df are kept and a warning says so, as they are (with a
        warning) when their computation would need more than ``DDF_MAX_MEMORY`` (1 GiB),
        i.e. an independent block of the marginal covariance with more than about 3,000
        random effects, e.g. crossed factors with thousands of levels (the number of rows
        does not matter). Cost: the default adds nothing to the fit; the other two work on
        each level of the outermost factor through Woodbury's identity
        (:mod:`allianceflow.models.ddf_moments`), less than the fit itself with 2,000
        patients, alone or in 40 therapists (``benchmarks/results/ddf_speed.txt``).
    family : {"gaussian", "binomial", "poisson"}, default "gaussian"
        "gaussian": the linear mixed model described here. "binomial" (0/1 response or
        ``cbind(successes, failures)``) and "poisson" fit a generalised linear mixed model
        as lme4's ``glmer`` (:func:`allianceflow.models.glmm.fit_model_glmm`, which
        documents the GLMM's options and record); ``reml``, ``ddf``, ``optimizers``,
        ``grad_tol``, ``maxiter`` and ``engine`` do not apply to it.
    link : str, optional
        GLMM link: binomial "logit" (default) or "probit"; Poisson "log".
    nAGQ : int, default 1
        GLMM: 1 for the Laplace approximation, more for adaptive Gauss–Hermite quadrature
        (a single scalar random effect only), as glmer's ``nAGQ``.
    vcov : {"hessian", "beta_only"}, default "hessian"
        GLMM: covariance of the fixed effects, glmer's default (Hessian in θ and β jointly)
        or conditional on θ.

    Returns
    -------
    MixedModelResult
        ``.fixed`` (``term, estimate, se, ci_low, ci_high, statistic, p, df, r``),
        ``.random`` (``group, term, variance, sd, boundary``, residual last), ``.icc``,
        ``.r2``, ``.convergence``, ``.summary()``. ``to_dict()`` is the JSON record:
        ``name, formula, reml, engine, n_obs, n_groups, n_dropped_missing, fixed, random,
        covariances, residual_variance, icc, r2_marginal, r2_conditional, loglik, n_params,
        conditional_modes, vcov_fixed, aic, bic, convergence, dropped_missing_by_variable,
        dropped_random_terms`` and, last, ``ddf`` (``"satterthwaite"`` or
        ``"kenward-roger"``) when those df were used (no ``ddf`` key: containment);
        ``conditional_modes`` are those of the outermost grouping factor (the one the others
        are nested in; none for crossed factors or more than 5,000 levels); floats
        are plain Python floats rounded to 12 significant digits (``None`` for NaN).
        ``vcov_fixed`` is the unadjusted covariance also with Kenward–Roger (as lme4's
        ``vcov``).

    Raises
    ------
    TypeError, ValueError, KeyError
        Bad ``data``/``formula``/options; unsupported random structure (see
        :func:`allianceflow.models.formula.to_mixedlm`); a column that does not exist; every
        grouping factor with fewer than ``min_levels`` levels.

    Notes
    -----
    *Optimisation.* The profiled (RE)ML log-likelihood of statsmodels' MixedLM is maximised
    over the Cholesky factor of the random-effects covariance relative to the residual
    variance (lme4's :math:`\theta`). The first optimiser, ``lbfgsb``, is scipy's L-BFGS-B
    with lme4's box constraints (standard deviations bounded below, here by 1e-4); the
    fall-backs are statsmodels' own. After each, a safeguarded Newton polish (analytic score,
    finite-difference Hessian) finishes the optimisation, with boundary parameters held.

    *Convergence check.* At the solution we take the gradient :math:`g` and Hessian
    :math:`H` over the free (non-boundary) parameters and accept when :math:`-H` is positive
    definite and one more Newton step would gain less than :math:`10^{-6}` in
    log-likelihood, :math:`\tfrac12 g^\top(-H)^{-1}g < 10^{-6}` (or :math:`\max|g| <`
    ``grad_tol``); for a standard deviation at the zero boundary the gradient must point
    towards 0. The test is scale-free, avoiding lme4's absolute-gradient false alarms on large
    data (on 20,000 simulated patients and more lme4 warned, max|grad| above its 0.002,
    on fits whose answers were right). ``hessian_positive_definite`` reports :math:`-H`
    (free parameters).
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

    *Standard errors* are :math:`\sqrt{\operatorname{diag}\,\hat\sigma^2 (X^\top
    V^{-1}X)^{-1}}` at the estimates, as lme4's ``vcov`` (statsmodels' ``bse_fe`` differs
    by up to a few per cent).

    *Agreement with lme4 1.1-31* (tests/test_lme4.py, eight models: nested, crossed,
    correlated and uncorrelated random slopes at the patient or therapist level, ML; lme4
    run with tight optimiser tolerances, since with its defaults it stopped 8e-6 short on
    one of them and warned): log-likelihood within 4e-9, fixed effects within 4e-7 SE,
    standard errors within 3e-7 relative, variances and covariances within 1e-3 relative.

    *Grouping factors with few levels.* lme4 refuses a grouping factor with a single level
    (``check.nlev.gtr.1 = "stop"``) and fits one with 2-4 levels (its
    ``check.nlev.gtreq.5`` check, off by default, warns that such variances are unreliable).
    Here a factor with fewer than ``min_levels`` (default 5) levels in the rows used has
    its random terms dropped before fitting, the model is fitted without them on the same
    rows, and the result records ``dropped_random_terms`` and a warning: its variance is
    never reported. Why: with one level the variance is not identified (it is confounded
    with the intercept; a study with a single therapist reported a therapist variance equal
    to the residual, ICC 0.499, as converged), and with *m* levels the variance rests on
    *m* - 1 degrees of freedom, so below five its estimate and the ICC built on it are too
    imprecise to report (Bolker et al. 2009 recommend at least five to six levels for a
    random effect; five is also the threshold of lme4's optional check). The fixed effects
    then ignore that level's clustering:
    with few therapists, add the therapist as a fixed factor if its effect matters.

    *Tests.* With ``ddf="containment"``: Wald :math:`z = \hat\beta/\mathrm{SE}`, two-sided
    normal p, 95% CI :math:`\hat\beta \pm 1.96\,\mathrm{SE}` (as statsmodels and lme4's
    ``confint(method = "Wald")``); ``df`` follows the containment rule of Pinheiro & Bates
    (2000, sec. 2.4.2): a term constant within the groups of level *i* gets
    :math:`m_i - m_{i-1} - p_i` df (:math:`m` = number of groups; observations are the
    innermost level). With ``ddf="satterthwaite"`` the statistic :math:`t =
    \hat\beta/\mathrm{SE}` is referred to the *t* distribution on Satterthwaite's
    (1946) df, as lmerTest's ``summary`` (Kuznetsova et al. 2017), p two-sided and CI
    :math:`\hat\beta \pm t_{.975,\,\nu}\,\mathrm{SE}`; with ``"kenward-roger"`` SE is
    the Kenward & Roger (1997) adjusted standard error and :math:`\nu` their df, as
    pbkrtest (Halekoh & Højsgaard 2014). Both are computed from the REML estimates of the
    variance components (:mod:`allianceflow.models.ddf`). Luke (2017) found both kept the
    type I error of fixed effects near nominal in small samples where z tests were
    liberal. ``benchmarks/coverage_df.py`` measures the coverage of the three on the
    alliance_outcome model (2000 simulated studies per design): with 20 therapists and 150
    patients all cover 94.8 to 95.7%, within Monte Carlo error of one another; with 8
    therapists and 40 patients the between-patient effect's 95% CI covers 91.9%
    (containment), 92.7% (Satterthwaite) and 94.8% (Kenward–Roger). ``r`` is the
    r-equivalent :math:`r = z/\sqrt{z^2 + df}` (Rosenthal 1991; *t* in place of *z*),
    comparable in spirit to meta-analytic correlations such as Flückiger et al. (2018)'s
    :math:`r = .28`.

    *Variance explained.* With :math:`\sigma^2_f = \operatorname{var}(X\hat\beta)`,
    :math:`\sigma^2_l = \frac1n\sum_i z_{li}^\top \Sigma_l z_{li}` per level *l*
    (Johnson 2014; the variance itself for random intercepts) and residual :math:`\sigma^2_e`:
    :math:`R^2_m = \sigma^2_f/(\sigma^2_f + \sum_l\sigma^2_l + \sigma^2_e)`,
    :math:`R^2_c = (\sigma^2_f + \sum_l\sigma^2_l)/(\ldots)` (Nakagawa & Schielzeth 2013),
    and :math:`\mathrm{ICC}_l = \sigma^2_l/(\sum_l\sigma^2_l + \sigma^2_e)`.
    AIC :math:`= -2\ell + 2k`, BIC :math:`= -2\ell + k\log n` with *k* fixed effects +
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
    >>> res.converged, res.to_dict()["n_groups"]
    (True, {'patient': 30})
    >>> round(float(res.fixed["estimate"][1]), 2), round(res.icc["patient"], 2)
    (0.52, 0.77)

    References
    ----------
    Bates, D., Mächler, M., Bolker, B., & Walker, S. (2015). Fitting linear mixed-effects
    models using lme4. *Journal of Statistical Software, 67*(1), 1–48.
    Bolker, B. M., Brooks, M. E., Clark, C. J., Geange, S. W., Poulsen, J. R., Stevens,
    M. H. H., & White, J.-S. S. (2009). Generalized linear mixed models: a practical guide
    for ecology and evolution. *Trends in Ecology & Evolution, 24*(3), 127–135.
    Flückiger, C., Del Re, A. C., Wampold, B. E., & Horvath, A. O. (2018). The alliance in
    adult psychotherapy: A meta-analytic synthesis. *Psychotherapy, 55*(4), 316–340.
    Halekoh, U., & Højsgaard, S. (2014). A Kenward–Roger approximation and parametric
    bootstrap methods for tests in linear mixed models – the R package pbkrtest. *Journal
    of Statistical Software, 59*(9), 1–30.
    Johnson, P. C. D. (2014). Extension of Nakagawa & Schielzeth's R²GLMM to random slopes
    models. *Methods in Ecology and Evolution, 5*(9), 944–946.
    Kenward, M. G., & Roger, J. H. (1997). Small sample inference for fixed effects from
    restricted maximum likelihood. *Biometrics, 53*(3), 983–997.
    Kuznetsova, A., Brockhoff, P. B., & Christensen, R. H. B. (2017). lmerTest package:
    Tests in linear mixed effects models. *Journal of Statistical Software, 82*(13), 1–26.
    Luke, S. G. (2017). Evaluating significance in linear mixed-effects models in R.
    *Behavior Research Methods, 49*(4), 1494–1502.
    Nakagawa, S., & Schielzeth, H. (2013). A general and simple method for obtaining R² from
    generalized linear mixed-effects models. *Methods in Ecology and Evolution, 4*(2), 133–142.
    Pinheiro, J. C., & Bates, D. M. (2000). *Mixed-effects models in S and S-PLUS*. Springer.
    Rosenthal, R. (1991). *Meta-analytic procedures for social research*. Sage.
    Satterthwaite, F. E. (1946). An approximate distribution of estimates of variance
    components. *Biometrics Bulletin, 2*(6), 110–114.
    """
    check_data(data)
    _check_name(name)
    if family not in ("gaussian", "binomial", "poisson"):
        raise ValueError(f"`family` must be 'gaussian', 'binomial' or 'poisson'; got {family!r}.")
    if family != "gaussian":
        if ddf != "containment":
            raise ValueError(
                f"`ddf` applies to linear models (family='gaussian'); a {family} GLMM has Wald "
                f"z tests, as glmer; got ddf={ddf!r}."
            )
        from allianceflow.models.glmm import fit_model_glmm

        return fit_model_glmm(
            data,
            formula,
            family=family,
            link=link,
            nAGQ=nAGQ,
            vcov=vcov,
            name=name,
            boundary_tol=boundary_tol,
            min_levels=min_levels,
        )
    if link not in (None, "identity") or nAGQ != 1:
        raise ValueError(
            f"`link` and `nAGQ` apply to family='binomial' or 'poisson'; got link={link!r}, "
            f"nAGQ={nAGQ!r} with family='gaussian'."
        )
    optimizers = sm.check_optimizers(optimizers)
    if not isinstance(reml, (bool, np.bool_)):
        raise TypeError(f"`reml` must be True or False; got {reml!r}.")
    if engine not in ("auto", "fast", "statsmodels"):
        raise ValueError(f"`engine` must be 'auto', 'fast' or 'statsmodels'; got {engine!r}.")
    min_levels = _check_min_levels(min_levels)
    ddf = _check_ddf(ddf)
    spec = formula if isinstance(formula, FormulaSpec) else parse_formula(formula)
    if spec.cbind is not None:
        raise ValueError(
            f"`formula` {spec.formula!r}: a cbind(successes, failures) response needs "
            "family='binomial'."
        )
    rows, n_dropped, by_variable = complete_rows(data, spec)
    # every step below identifies the grouping levels of these same rows: factorise once
    with shared_codes(rows):
        return _fit_rows(
            by_variable,
            spec,
            rows,
            n_dropped,
            reml=reml,
            optimizers=optimizers,
            grad_tol=grad_tol,
            maxiter=maxiter,
            engine=engine,
            min_levels=min_levels,
            ddf=ddf,
            boundary_tol=boundary_tol,
            name=name,
        )


def _fit_rows(
    by_variable,
    spec,
    rows,
    n_dropped,
    *,
    reml,
    optimizers,
    grad_tol,
    maxiter,
    engine,
    min_levels,
    ddf,
    boundary_tol,
    name,
) -> MixedModelResult:
    """The Gaussian part of :func:`fit_model` on its complete *rows*."""
    fit_spec, dropped = _few_level_terms(rows, spec, min_levels)
    check_identifiable(rows, fit_spec)
    # nesting is a property of the rows the model uses (incomplete rows are dropped)
    if engine != "statsmodels" and supports(fit_spec, rows):
        backend = fast.fit_backend(rows, fit_spec, reml=bool(reml), boundary_tol=boundary_tol)
    elif engine != "statsmodels" and sparse.supports(fit_spec, rows):
        # crossed or partially crossed factors: lme4's sparse formulation
        backend = sparse.fit_backend(rows, fit_spec, reml=bool(reml), boundary_tol=boundary_tol)
    elif engine == "fast":
        raise ValueError(
            f"The fast engine cannot fit {spec.formula!r}: "
            f"{sparse.refusal(fit_spec, rows)} Use engine='statsmodels' (or 'auto')."
        )
    else:
        backend = sm.fit_backend(
            rows,
            fit_spec,
            reml=bool(reml),
            optimizers=optimizers,
            grad_tol=grad_tol,
            maxiter=maxiter,
            boundary_tol=boundary_tol,
        )
    settings = {
        "name": name,
        "formula": spec.formula,
        "reml": bool(reml),
        "n_dropped": n_dropped,
        "dropped_by_variable": by_variable,
        "dropped_terms": dropped,
        "boundary_tol": boundary_tol,
    }
    if ddf != "containment" and not reml:
        backend.warnings.append(
            f"ddf={ddf!r} was asked for, but the model was fitted by maximum likelihood "
            f"(reml=False); {_DDF_LABEL[ddf]} df are computed from a REML fit only, so the "
            "containment df and Wald z tests and intervals are reported. Fit with reml=True "
            f"for {_DDF_LABEL[ddf]} df."
        )
        ddf = "containment"
    table = None
    if ddf != "containment":
        # the df need only the variance components, as the record rounds them: the result
        # is built once, after them
        try:
            table = _ddf_table(rows, fit_spec, variance_record(backend), ddf)
        except BlockTooLarge as err:
            backend.warnings.append(
                f"ddf={ddf!r} was asked for, but {err} The containment df and Wald z tests "
                "and intervals are reported instead."
            )
    if table is None:
        return build_result(backend, **settings)
    return build_result(backend, **settings, ddf=ddf, ddf_table=table)
