r"""Inference from a fitted mixed model: Wald rows, df, r-equivalent, ICC and R², LRT.

Every number here is computed the same way whichever back-end fitted the model:

* Wald :math:`z = \hat\beta/\mathrm{SE}`, two-sided normal p, 95% CI
  :math:`\hat\beta \pm 1.96\,\mathrm{SE}` (:func:`wald_rows`), or with Satterthwaite or
  Kenward–Roger df (:mod:`allianceflow.models.ddf`) the *t* distribution on those df;
* denominator df by the containment rule of Pinheiro & Bates (2000, sec. 2.4.2)
  (:func:`containment_df`) and the r-equivalent :math:`r = z/\sqrt{z^2 + df}`
  (Rosenthal 1991);
* ICC per level and Nakagawa & Schielzeth (2013) R² with Johnson's (2014) extension to
  random slopes (:func:`variance_explained`);
* likelihood-ratio tests with the boundary-corrected p of Self & Liang (1987) and Stram &
  Lee (1994) (:func:`compare_models`, :func:`likelihood_ratio_test`).

Results are rounded to 12 significant digits (:func:`round_sig`) so that JSON output is
reproducible across platforms whose last bits differ.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import pandas as pd

from allianceflow.models.design import ModelError, group_codes
from allianceflow.models.distributions import chi2_sf, norm_ppf, norm_sf, t_ppf, t_sf
from allianceflow.models.formula import FormulaSpec, formula_variables, parse_formula

__all__ = [
    "round_sig",
    "wald_rows",
    "containment_df",
    "variance_explained",
    "is_boundary",
    "is_singular",
    "compare_models",
    "likelihood_ratio_test",
    "boundary_p",
]

SIG = 12  # significant digits kept in results


def round_sig(x: Any) -> float | None:
    """Round to ``SIG`` (12) significant digits as a plain float; NaN/inf become None."""
    if x is None:
        return None
    x = float(x)
    if not math.isfinite(x):
        return None
    if x == 0.0:
        return 0.0
    return float(f"{x:.{SIG}g}")


_r = round_sig


def is_boundary(variance: float, residual_variance: float, boundary_tol: float) -> bool:
    r"""Tell whether a random-effect variance is at the boundary (a singular fit).

    The test is on the scale of standard deviations relative to the residual SD, the scale
    of lme4's ``isSingular`` (tolerance 1e-4 on :math:`\theta`, the relative Cholesky factor,
    whose diagonal for a single effect is :math:`\sigma_b/\sigma`):
    :math:`\sigma_b/\sigma < \mathrm{tol}`, i.e. variance :math:`< \mathrm{tol}^2\sigma^2`.
    Every boundary flag of a fit (``random[].boundary``, ``convergence["boundary"]`` of both
    back-ends) uses this test, and :func:`is_singular` for correlated blocks.

    >>> is_boundary(1e-9, 1.0, 1e-4), is_boundary(1e-7, 1.0, 1e-4)
    (True, False)
    """
    return bool(variance < boundary_tol**2 * residual_variance)


def is_singular(covariance, residual_variance: float, boundary_tol: float) -> bool:
    r"""Tell whether a random-effects covariance matrix is singular (a correlation at ±1).

    On the scale of :func:`is_boundary`: some linear combination of the effects has an SD
    below ``boundary_tol`` times the residual SD, i.e. the smallest eigenvalue of
    :math:`\Sigma/\sigma^2` is below :math:`\mathrm{tol}^2`.

    >>> is_singular(np.array([[1.0, 1.0], [1.0, 1.0]]), 1.0, 1e-4)
    True
    >>> is_singular(np.array([[1.0, 0.5], [0.5, 1.0]]), 1.0, 1e-4)
    False
    """
    rel = np.asarray(covariance, dtype=float) / residual_variance
    return bool(np.linalg.eigvalsh(rel).min() < boundary_tol**2)


def variance_explained(
    var_fixed: float, level_variance: dict[str, float], residual: float, order: list[str]
) -> tuple[dict[str, float], float, float]:
    r"""ICC per level, marginal and conditional R² (unrounded).

    With :math:`\sigma^2_f = \operatorname{var}(X\hat\beta)`, :math:`\sigma^2_l` the
    variance of level *l* (:math:`\frac1n\sum_i z_{li}^\top \Sigma_l z_{li}`, Johnson
    2014; the variance itself for random intercepts) and residual :math:`\sigma^2_e`:
    :math:`R^2_m = \sigma^2_f/(\sigma^2_f + \sum_l\sigma^2_l + \sigma^2_e)`,
    :math:`R^2_c = (\sigma^2_f + \sum_l\sigma^2_l)/(\ldots)` (Nakagawa & Schielzeth 2013)
    and :math:`\mathrm{ICC}_l = \sigma^2_l/(\sum_l\sigma^2_l + \sigma^2_e)`.

    Parameters
    ----------
    var_fixed : float
    level_variance : dict
        Per level label; summed in the order given.
    residual : float
    order : list of str
        Level labels in the order to report the ICC (the formula's).

    Returns
    -------
    (dict, float, float)
        ICC per level, :math:`R^2_m`, :math:`R^2_c`.
    """
    var_r = float(sum(level_variance.values()))
    total = var_fixed + var_r + residual
    icc = {g: level_variance[g] / (var_r + residual) for g in order if g in level_variance}
    return icc, var_fixed / total, (var_fixed + var_r) / total


def wald_rows(
    terms: list[str],
    estimates,
    ses,
    dfs: dict[str, float],
    df_default: float,
    *,
    distribution: Literal["normal", "t"] = "normal",
) -> list[dict]:
    r"""Build the tidy fixed-effect rows, the same for either back-end.

    Parameters
    ----------
    terms, estimates, ses
        Fixed-effect names, estimates and standard errors, in the same order.
    dfs : dict
        Denominator df per term; ``df_default`` for a term without one.
    df_default : float
    distribution : {"normal", "t"}, default "normal"
        "normal" (containment df): Wald :math:`z = \hat\beta/\mathrm{SE}`, two-sided normal
        p and CI :math:`\hat\beta \pm z_{.975}\,\mathrm{SE}`, as statsmodels and lme4's
        ``confint(method = "Wald")``. "t" (Satterthwaite or Kenward–Roger df): the same
        statistic referred to a *t* distribution on the row's df, two-sided p and CI
        :math:`\hat\beta \pm t_{.975,\,df}\,\mathrm{SE}` (lmerTest's ``summary`` gives
        the same t and p; its ``contest(..., confint = TRUE)`` the same interval).

    Returns
    -------
    list of dict
        ``term, estimate, se, ci_low, ci_high, statistic, p, df, r`` with the r-equivalent
        :math:`r = z/\sqrt{z^2 + df}` (Rosenthal 1991; *t* in place of *z* for "t").
    """
    if distribution not in ("normal", "t"):
        raise ValueError(f"`distribution` must be 'normal' or 't'; got {distribution!r}.")
    zcrit = norm_ppf(0.975)
    rows = []
    for term, est, se in zip(terms, estimates, ses, strict=True):
        est, se = float(est), float(se)
        z = est / se if se > 0 else float("nan")
        df_t = dfs.get(term, df_default)
        if distribution == "t":
            crit = t_ppf(0.975, df_t)
            p = 2 * t_sf(abs(z), df_t) if math.isfinite(z) else None
        else:
            crit = zcrit
            p = 2 * norm_sf(abs(z)) if math.isfinite(z) else None
        rows.append(
            {
                "term": term,
                "estimate": _r(est),
                "se": _r(se),
                "ci_low": _r(est - crit * se),
                "ci_high": _r(est + crit * se),
                "statistic": _r(z),
                "p": _r(p),
                "df": _r(df_t),
                "r": _r(z / math.sqrt(z * z + df_t)) if math.isfinite(z) else None,
            }
        )
    return rows


def containment_df(
    data: pd.DataFrame, factors: list[tuple[str, ...]], exog: pd.DataFrame
) -> dict[str, float]:
    r"""Denominator df per fixed-effect column by the containment rule.

    Pinheiro & Bates (2000, sec. 2.4.2): with the grouping factors nested in one another
    and :math:`m_i` units at level *i* (outer to inner; observations innermost), a column
    constant within the units of level *i* but not of level *i* - 1 gets
    :math:`m_i - m_{i-1} - p_i` df, :math:`p_i` the number of such columns (at least 1).

    Parameters
    ----------
    data : DataFrame
        The model's rows.
    factors : list of tuple of str
        The grouping factors (each a tuple of columns), in formula order; they are ordered
        outer to inner by number of columns, then number of levels.
    exog : DataFrame
        The fixed-effects design, one column per term, rows as *data*.

    Returns
    -------
    dict
        Column name -> df.
    """
    coded = [(f, group_codes(data, f, sort=False)[0]) for f in factors]
    coded.sort(key=lambda fc: (len(fc[0]), int(fc[1].max()) + 1 if fc[1].size else 0))
    keys = [c for _, c in coded]
    n = len(data)
    sizes = [1] + [int(k.max()) + 1 for k in keys] + [n]
    x = exog.reset_index(drop=True)
    values = x.to_numpy(dtype=float)
    intercept_like = np.ptp(values, axis=0) == 0
    tolerance = 1e-12 * np.maximum(1.0, np.abs(values).max(axis=0))
    # per factor, per column: is the column constant within every level (range 0)?
    constant_within = [_largest_spread(values, codes) <= tolerance for codes in keys]
    # level index of each column: the outermost level within whose units it is constant
    # (counting from the innermost level outwards while it stays constant)
    level = {}
    for j, c in enumerate(x.columns):
        if intercept_like[j]:
            level[c] = len(keys) + 1
            continue
        lev = len(keys) + 1
        for i in range(len(keys) - 1, -1, -1):
            if constant_within[i][j]:
                lev = i + 1
            else:
                break
        level[c] = lev
    # The intercept is already accounted for by sizes[0] = 1 (Pinheiro & Bates 2000, sec.
    # 2.4.2; nlme's Orthodont example: 108 rows, 27 subjects, age within, Sex between gives
    # df 80 for intercept and age, 25 for Sex); it is reported at the innermost level.
    intercepts = {c for j, c in enumerate(x.columns) if intercept_like[j]}
    n_at = {
        lv: sum(1 for c in level if level[c] == lv and c not in intercepts)
        for lv in range(1, len(keys) + 2)
    }
    out = {}
    for c, lv in level.items():
        out[c] = float(max(sizes[lv] - sizes[lv - 1] - n_at[lv], 1))
    return out


def _largest_spread(values: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Per column of *values*, the largest range (max - min) within the groups of *codes*.

    One stable sort and ``reduceat`` over the sorted rows (a pandas groupby cost several
    times more on a small model's rows); max and min are exact, so the result is the same.

    >>> _largest_spread(np.array([[1.0, 5.0], [3.0, 5.0], [2.0, 7.0]]), np.array([0, 0, 1]))
    array([2., 0.])
    """
    order = np.argsort(codes, kind="stable")
    ordered = codes[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    sorted_values = values[order]
    spread = np.maximum.reduceat(sorted_values, starts, axis=0) - np.minimum.reduceat(
        sorted_values, starts, axis=0
    )
    return spread.max(axis=0)


def _lrt(r0: dict, r1: dict, random_only: bool) -> dict:
    ll0, ll1 = r0["loglik"], r1["loglik"]
    df = int(r1["n_params"] - r0["n_params"])
    dropped = [
        f"{d['group']!r} in {r['name']!r}"
        for r in (r0, r1)
        for d in r.get("dropped_random_terms") or []
    ]
    if df <= 0 and dropped:
        raise ModelError(
            f"models {r0['name']!r} and {r1['name']!r} cannot be compared by LRT: after "
            f"leaving out the random terms of grouping factors with too few levels "
            f"({', '.join(dropped)}; see `min_levels`), the larger model has no more "
            f"parameters than the smaller ({r1['n_params']} and {r0['n_params']})."
        )
    if df <= 0:
        raise ValueError(
            f"model {r1['name']!r} must have more parameters than {r0['name']!r} to be "
            f"compared by LRT; got {r1['n_params']} and {r0['n_params']}. Pass the smaller "
            "model first."
        )
    stat = max(2.0 * (ll1 - ll0), 0.0)
    p = chi2_sf(stat, df)
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
        out["p_boundary"] = _r(boundary_p(stat, df, len(r1["random"]) - len(r0["random"])))
    return out


def boundary_p(stat: float, df: int, added_variances: int) -> float | None:
    r"""P of an LRT whose null puts variances on the boundary of the parameter space.

    Under the null a variance is 0, on the edge of the parameter space, and the LRT
    statistic is not :math:`\chi^2_{df}` but a mixture (a :math:`\bar\chi^2`). What is
    returned assumes:

    * one variance added with its ``df - 1`` covariances (``added_variances == 1``): the
      50:50 mixture :math:`\tfrac12\chi^2_{df-1} + \tfrac12\chi^2_{df}`
      (:math:`\chi^2_0` a point mass at 0): Self & Liang (1987) for one variance,
      Stram & Lee (1994) for a random effect added with its covariances; the 5% critical
      values are 2.71 (df 1) and 5.14 (df 2);
    * *k* variances without covariances (``added_variances == df == k``): binomial weights
      :math:`\binom{k}{j}/2^k` on :math:`\chi^2_j`, j = 0..k. This is Self & Liang's
      result when the *k* estimators are asymptotically independent; when they are
      correlated the true weights depend on the information matrix, and this p is an
      approximation.

    Both are asymptotic: the other parameters interior, the units of the grouping factor
    independent and many. Other cases (e.g. several variances with covariances) have no
    simple mixture and return None: use the ordinary ``p``, which is conservative.

    References
    ----------
    Self, S. G., & Liang, K.-Y. (1987). Asymptotic properties of maximum likelihood
    estimators and likelihood ratio tests under nonstandard conditions. *Journal of the
    American Statistical Association, 82*(398), 605–610.
    Stram, D. O., & Lee, J. W. (1994). Variance components testing in the longitudinal
    mixed effects model. *Biometrics, 50*(4), 1171–1177.
    """

    def sf(x: float, j: int) -> float:
        return float(stat <= 0) if j == 0 else chi2_sf(x, j)

    if added_variances == df and df >= 1:
        return sum(math.comb(df, j) / 2**df * sf(stat, j) for j in range(df + 1))
    if added_variances == 1:
        return 0.5 * sf(stat, df - 1) + 0.5 * sf(stat, df)
    return None


def _as_record(value: Any, argument: str) -> dict:
    """Return the JSON record of a result or of its ``to_dict()`` (e.g. a model's JSON file)."""
    if hasattr(value, "to_dict") and hasattr(value, "summary"):
        return value.to_dict()
    if isinstance(value, dict) and "loglik" in value:
        return value
    raise TypeError(
        f"`{argument}` must be a MixedModelResult from fit_model or its to_dict(); "
        f"got {type(value).__name__}."
    )


def compare_models(result0: Any, result1: Any) -> dict:
    r"""Likelihood-ratio test between two fitted, nested models (results of ``fit_model``).

    Parameters
    ----------
    result0, result1 : MixedModelResult or dict
        The smaller and the larger model, fitted to the same rows with the same method (a
        result of :func:`allianceflow.models.fit_model` or its ``to_dict()``).

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
    :math:`\chi^2 = 2(\ell_1 - \ell_0)` on :math:`k_1 - k_0` df. When only random effects
    differ the null puts variances on the boundary and the chi-square p is conservative;
    ``p_boundary`` gives the 50:50 mixture of :math:`\chi^2_{df-1}` and :math:`\chi^2_{df}`
    for one added variance (with its covariances) and binomial weights for several
    independent ones (Self & Liang 1987; Stram & Lee 1994; the assumptions are listed in
    :func:`boundary_p`), None otherwise.

    References
    ----------
    Self, S. G., & Liang, K.-Y. (1987). Asymptotic properties of maximum likelihood
    estimators and likelihood ratio tests under nonstandard conditions. *JASA, 82*, 605–610.
    Stram, D. O., & Lee, J. W. (1994). Variance components testing in the longitudinal mixed
    effects model. *Biometrics, 50*, 1171–1177.
    """
    result0, result1 = _as_record(result0, "result0"), _as_record(result1, "result1")
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
        Passed to :func:`allianceflow.models.fit_model`.

    Returns
    -------
    dict
        As :func:`compare_models`, plus ``fit0`` and ``fit1`` (the two
        :class:`~allianceflow.models.MixedModelResult`).
        Rows with a missing value in a variable of either model are dropped before both fits.

    Notes
    -----
    The refits use ``fit_model``'s default containment df unless ``ddf`` is passed in
    ``fit_options``, whatever df the models were reported with: the test compares
    likelihoods, which do not depend on the df, and the refits' fixed-effect rows are not
    the reported ones (an ML refit, needed when the fixed parts differ, cannot have
    Satterthwaite or Kenward–Roger df, which are defined for REML fits).
    """
    from allianceflow.models.fit import check_data, fit_model

    check_data(data)
    if reml not in ("auto", True, False):
        raise ValueError(f"`reml` must be True, False or 'auto'; got {reml!r}.")
    s0, s1 = parse_formula(formula0), parse_formula(formula1)
    cols = data.columns
    used = list(dict.fromkeys(formula_variables(s0, cols) + formula_variables(s1, cols)))
    complete = data.loc[data[used].notna().all(axis=1)]
    if reml == "auto":
        reml = fixed_key(s0) == fixed_key(s1)
    r0 = fit_model(complete, s0, reml=bool(reml), name=names[0], **fit_options)
    r1 = fit_model(complete, s1, reml=bool(reml), name=names[1], **fit_options)
    out = compare_models(r0, r1)
    out["n_dropped_missing"] = int(len(data) - len(complete))
    out["fit0"], out["fit1"] = r0, r1
    return out


def fixed_key(spec: FormulaSpec) -> tuple[str, ...]:
    """Sort the fixed part's terms: equal keys for formulas with the same fixed effects."""
    return tuple(sorted(t.strip() for t in spec.fixed.split("+")))
