"""Pool the alliance–outcome effect across studies: two-stage meta-analysis and one-stage model.

Two stages. Each study's model gives an r-equivalent of the alliance term
(:func:`allianceflow.models.fit_model`, ``r = z / sqrt(z² + df)``, Rosenthal 1991). The
r's are pooled on Fisher's z scale with a random-effects model whose between-study variance
τ² comes from restricted maximum likelihood (``"reml"``, metafor's default), DerSimonian–Laird
(``"dl"``) or Paule–Mandel (``"pm"``, both from
:func:`statsmodels.stats.meta_analysis.combine_effects`); the Hartung–Knapp–Sidik–Jonkman
interval (by default with Knapp & Hartung's 2003 ad hoc correction, which also keeps it
finite when the studies agree exactly) and metafor's two kinds of prediction interval are
options, and both the Q-based and metafor's τ²-based I² are reported. The pooled z and its
interval are turned back into r and drawn in a forest plot, beside a benchmark (by default
Flückiger et al. 2018, r = .278) only when the pooled term is comparable with it: Flückiger
et al. pooled between-patient correlations, so the default within-patient lagged term
(``alliance_within_lag``) is shown without it.

One stage. The studies' analysis tables are stacked, with study as the top level of the
multilevel model (patients in therapists in studies), and the same model is fitted once.
:func:`compare_stages` sets the two answers side by side.

References
----------
DerSimonian, R., & Laird, N. (1986). Meta-analysis in clinical trials. *Controlled Clinical
Trials, 7*(3), 177–188.
Flückiger, C., Del Re, A. C., Wampold, B. E., & Horvath, A. O. (2018). The alliance in adult
psychotherapy: A meta-analytic synthesis. *Psychotherapy, 55*(4), 316–340.
Hartung, J., & Knapp, G. (2001). A refined method for the meta-analysis of controlled
clinical trials with binary outcome. *Statistics in Medicine, 20*(24), 3875–3889.
Higgins, J. P. T., & Thompson, S. G. (2002). Quantifying heterogeneity in a meta-analysis.
*Statistics in Medicine, 21*(11), 1539–1558.
Higgins, J. P. T., Thompson, S. G., & Spiegelhalter, D. J. (2009). A re-evaluation of
random-effects meta-analysis. *Journal of the Royal Statistical Society A, 172*(1), 137–159.
Knapp, G., & Hartung, J. (2003). Improved tests for a random effects meta-regression with a
single covariate. *Statistics in Medicine, 22*(17), 2693–2710.
Paule, R. C., & Mandel, J. (1982). Consensus values and weighting factors. *Journal of
Research of the National Bureau of Standards, 87*(5), 377–385.
Rosenthal, R. (1991). *Meta-analytic procedures for social research* (rev. ed.). Sage.
Sidik, K., & Jonkman, J. N. (2002). A simple confidence interval for meta-analysis.
*Statistics in Medicine, 21*(21), 3153–3159.
Viechtbauer, W. (2005). Bias and efficiency of meta-analytic variance estimators in the
random-effects model. *Journal of Educational and Behavioral Statistics, 30*(3), 261–293.
Viechtbauer, W. (2010). Conducting meta-analyses in R with the metafor package. *Journal of
Statistical Software, 36*(3), 1–48.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from ._checks import check_columns, check_frame
from .models.inference import round_sig

__all__ = [
    "Benchmark",
    "FLUCKIGER_2018",
    "METHODS",
    "fisher_z",
    "inverse_fisher_z",
    "study_effects",
    "outcome_direction",
    "PI_TYPES",
    "reml_tau2",
    "random_effects",
    "meta_analysis",
    "meta_table",
    "plot_forest",
    "effect_words",
    "study_label",
    "stack_studies",
    "LEVEL_SUFFIXES",
    "CENTRED_SUFFIXES",
    "one_stage_model",
    "compare_stages",
    "pool_markdown",
]

Method = Literal["reml", "dl", "pm"]
PiType = Literal["default", "riley"]
Direction = Literal["higher_is_better", "lower_is_better"]

#: Random-effects estimators of τ² offered (statsmodels' names).
METHODS: tuple[str, ...] = ("reml", "dl", "pm")
#: Full names of the τ² estimators, for tables and notes.
METHOD_NAMES: dict[str, str] = {
    "reml": "restricted maximum likelihood",
    "dl": "DerSimonian–Laird",
    "pm": "Paule–Mandel",
}
#: Prediction intervals offered (metafor's ``predict.rma(pi.type = ...)`` names).
PI_TYPES: tuple[str, ...] = ("default", "riley")


@dataclass(frozen=True)
class Benchmark:
    """A published pooled correlation to compare against: label, r and its 95% CI."""

    label: str
    r: float
    ci_low: float
    ci_high: float

    def __post_init__(self) -> None:
        """Check that r and its interval lie in (-1, 1) and the interval holds r."""
        for name in ("r", "ci_low", "ci_high"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not -1.0 < float(value) < 1.0:
                raise ValueError(f"benchmark `{name}` must be a number in (-1, 1); got {value!r}.")
        if not self.ci_low <= self.r <= self.ci_high:
            raise ValueError(
                f"benchmark interval must hold its r: got r = {self.r!r} with CI "
                f"[{self.ci_low!r}, {self.ci_high!r}]."
            )


#: Flückiger et al. (2018): 295 studies, > 30,000 patients; alliance–outcome r = .278,
#: 95% CI .256–.299 (random-effects, adult individual psychotherapy).
FLUCKIGER_2018 = Benchmark("Flückiger et al. (2018)", 0.278, 0.256, 0.299)


# --------------------------------------------------------------------------- checks


def _check_method(method: Any) -> None:
    if method not in METHODS:
        raise ValueError(f"`method` must be 'reml', 'dl' or 'pm'; got {method!r}.")


def _check_alpha(alpha: Any) -> None:
    if not isinstance(alpha, (int, float)) or not 0.0 < float(alpha) < 1.0:
        raise ValueError(f"`alpha` must lie in (0, 1); got {alpha!r}.")


def _check_columns(frame: pd.DataFrame, columns: list[str], argument: str = "effects") -> None:
    check_frame(frame, argument)
    check_columns(frame, *columns, name=argument)


def _check_direction(study: str, direction: Any) -> None:
    if direction not in ("higher_is_better", "lower_is_better"):
        raise ValueError(
            f"direction of study {study!r} must be 'higher_is_better' or 'lower_is_better'; "
            f"got {direction!r}."
        )


#: Plain float for JSON (None for NaN/inf), rounded to 12 significant digits: the rounding
#: of every number allianceflow writes (:func:`allianceflow.models.inference.round_sig`).
_f = round_sig


# --------------------------------------------------------------------------- effects


def fisher_z(r):
    r"""Fisher's variance-stabilising transform :math:`z = \operatorname{artanh}(r)`."""
    return np.arctanh(r)


def inverse_fisher_z(z):
    r"""Back-transform :math:`r = \tanh(z)`."""
    return np.tanh(z)


def outcome_direction(study: Mapping[str, Any]) -> Direction:
    """Direction of improvement of a study's outcome score, from its instrument file.

    *study* is a config block with ``instruments`` (a list of ids, or a mapping of id to
    null / overrides / a full definition) and ``outcome`` (a score column such as
    ``"phq9_total"``). Returns ``"higher_is_better"`` or ``"lower_is_better"``.

    Raises
    ------
    ValueError
        No configured instrument scores the outcome column.
    """
    from .instruments import load_instrument
    from .score import score_columns

    specs = study["instruments"]
    items = specs.items() if isinstance(specs, Mapping) else ((name, None) for name in specs)
    for name, spec in items:
        inst = load_instrument(
            dict(spec) if isinstance(spec, Mapping) and "items" in spec else name
        )
        if study["outcome"] in score_columns(inst):
            return inst.direction
    raise ValueError(
        f"the study's `outcome` is {study['outcome']!r}, which none of its `instruments` "
        f"({list(specs)}) scores."
    )


def study_effects(
    results: Mapping[str, dict],
    *,
    term: str = "alliance_within_lag",
    directions: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    r"""Tabulate each study's alliance term: its r-equivalent and effective sample size.

    Parameters
    ----------
    results : mapping of str to dict
        Study name -> result of :func:`allianceflow.models.fit_model` (or its JSON file
        read back).
    term : str, default "alliance_within_lag"
        The fixed effect to pool (the within-patient effect of last session's alliance);
        ``"alliance_between"`` pools the between-patient effect.
    directions : mapping of str to str, optional
        Study name -> the outcome's direction of improvement (``"higher_is_better"`` or
        ``"lower_is_better"``, as in the instrument files). For a lower-is-better outcome
        (PHQ-9, OQ-45) the sign of r is flipped, so that a positive r always means a better
        alliance goes with a better outcome. Missing studies count as higher-is-better.

    Returns
    -------
    pandas.DataFrame
        Sorted by study: ``study, term, estimate, se, statistic, df, r, sign, n``, where ``r``
        is already multiplied by ``sign`` (+1 or −1) and ``n = df + 2``, the sample size of
        a correlation with the same degrees of freedom.

    Raises
    ------
    KeyError
        A result has no fixed effect called *term* (the message lists those it has).
    ValueError
        No results; a bad direction; a term without an r-equivalent.

    Notes
    -----
    The r-equivalent :math:`r = z/\sqrt{z^2 + \nu}` (Rosenthal 1991) treats the Wald
    statistic like a *t* with ν degrees of freedom, as for a correlation from
    :math:`n = \nu + 2` pairs; :func:`meta_analysis` then uses the usual Fisher-z sampling
    variance :math:`1/(n - 3)`.
    """
    if not results:
        raise ValueError("`results` is empty: give at least one study's model result.")
    directions = dict(directions or {})
    rows = []
    for study in sorted(results):
        res = results[study]
        fixed = {row["term"]: row for row in res["fixed"]}
        if term not in fixed:
            raise KeyError(
                f"the model of study {study!r} has no fixed effect {term!r}; it has {list(fixed)}."
            )
        row = fixed[term]
        direction = directions.get(study, "higher_is_better")
        _check_direction(study, direction)
        if row.get("r") is None or row.get("df") is None:
            raise ValueError(
                f"the {term!r} effect of study {study!r} has no r-equivalent (r or df is missing)."
            )
        sign = -1 if direction == "lower_is_better" else 1
        rows.append(
            {
                "study": study,
                "term": term,
                "estimate": row["estimate"],
                "se": row["se"],
                "statistic": row["statistic"],
                "df": float(row["df"]),
                "r": sign * float(row["r"]),
                "sign": sign,
                "n": float(row["df"]) + 2.0,
            }
        )
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- meta-analysis


def reml_tau2(yi, vi) -> float:
    r"""REML estimate of the between-study variance τ² of a random-effects model.

    Parameters
    ----------
    yi, vi : array-like
        Study effects and their (known) sampling variances (> 0), at least two.

    Returns
    -------
    float
        :math:`\hat\tau^2_{REML} \ge 0`.

    Notes
    -----
    With :math:`w_i = 1/(v_i + \tau^2)`, :math:`\hat\mu(\tau^2) = \sum w_i y_i / \sum w_i`
    and :math:`P = W - w w^\top / \sum w_i`, the restricted log-likelihood
    :math:`\ell_R = -\tfrac12 \sum \log(v_i + \tau^2) - \tfrac12 \log \sum w_i
    - \tfrac12 \sum w_i (y_i - \hat\mu)^2` has the score

    .. math::

        \frac{\partial \ell_R}{\partial \tau^2} = \tfrac12\bigl(y^\top P P y -
        \operatorname{tr} P\bigr) = \tfrac12\Bigl(\sum w_i^2 (y_i - \hat\mu)^2 -
        \sum w_i + \frac{\sum w_i^2}{\sum w_i}\Bigr).

    When the score at :math:`\tau^2 = 0` is not positive the estimate is 0 (the boundary);
    otherwise it is the root of the score, bracketed by doubling and solved with Brent's
    method to :math:`10^{-14}`. metafor (Viechtbauer 2005, 2010) reaches the same root by
    Fisher scoring, :math:`\tau^2 \leftarrow \tau^2 + (y^\top PPy - \operatorname{tr}P)
    / \operatorname{tr}(PP)`, stopping when a step is below ``threshold`` (1e-5 by default),
    so with its defaults it agrees to about 1e-7 and with ``threshold = 1e-12`` to 1e-10
    (tests/test_pool.py). statsmodels 0.15 offers DL and Paule–Mandel but not REML.

    References
    ----------
    Viechtbauer, W. (2005). Bias and efficiency of meta-analytic variance estimators in the
    random-effects model. *Journal of Educational and Behavioral Statistics, 30*(3), 261–293.
    """
    from scipy import optimize

    y = np.asarray(yi, dtype=float)
    v = np.asarray(vi, dtype=float)

    def score(tau2: float) -> float:
        w = 1.0 / (v + tau2)
        mu = (w * y).sum() / w.sum()
        return float((w**2 * (y - mu) ** 2).sum() - w.sum() + (w**2).sum() / w.sum())

    if score(0.0) <= 0.0:
        return 0.0
    upper = max(float(np.var(y)), float(v.mean()), 1e-8)
    while score(upper) > 0.0:
        upper *= 2.0
    return float(optimize.brentq(score, 0.0, upper, xtol=1e-14, rtol=4 * np.finfo(float).eps))


def random_effects(
    yi,
    vi,
    *,
    method: Method = "reml",
    hksj: bool = False,
    hksj_adhoc: bool = True,
    pi_type: PiType = "default",
    alpha: float = 0.05,
) -> dict:
    r"""Random-effects model of k effects with known sampling variances (metafor's ``rma``).

    Parameters
    ----------
    yi, vi : array-like
        Effects and their sampling variances (> 0); at least two.
    method : {'reml', 'dl', 'pm'}, default 'reml'
        Estimator of τ²: restricted maximum likelihood (:func:`reml_tau2`, metafor's
        default), DerSimonian–Laird (1986) or Paule–Mandel (1982).
    hksj : bool, default False
        Knapp–Hartung (Hartung–Knapp–Sidik–Jonkman) inference: the variance of
        :math:`\hat\mu` is multiplied by the weighted residual mean square *q* and the
        interval and test use :math:`t_{k-1}`.
    hksj_adhoc : bool, default True
        Under ``hksj``, Knapp & Hartung's (2003) ad hoc correction: the multiplier is
        :math:`\max(1, q)`, so the variance is never below the usual :math:`1/\sum w_i^*`
        (metafor's ``test = "adhoc"``). ``False`` is the unmodified method (metafor's
        ``test = "knha"``), which refuses effects that are all equal (see Notes).
    pi_type : {'default', 'riley'}, default 'default'
        The prediction interval, as metafor's ``predict.rma``: ``'default'`` uses the
        critical value of the test (normal, or :math:`t_{k-1}` under ``hksj``);
        ``'riley'`` uses :math:`t_{k-2}` (at least 1 df), as Higgins, Thompson &
        Spiegelhalter (2009) and Riley, Higgins & Deeks (2011) propose.
    alpha : float, default 0.05
        One minus the confidence level.

    Returns
    -------
    dict
        ``pooled`` (``estimate, se, ci_low, ci_high, statistic, p, pi_low, pi_high,
        distribution, pi_distribution``), ``fixed`` (``estimate, se``: the common-effect
        model), ``heterogeneity`` (``q, df, p, tau2, tau, i2, h2, i2_tau2, h2_tau2``) and
        ``weights`` (random-effects weights in %, in input order).

    Raises
    ------
    TypeError
        ``hksj`` or ``hksj_adhoc`` is not a bool.
    ValueError
        Bad ``method``, ``pi_type``, ``alpha`` or effects; or the unmodified Knapp–Hartung
        method (``hksj_adhoc=False``) on effects that are all equal.

    Notes
    -----
    With :math:`w_i^* = 1/(v_i + \hat\tau^2)`, :math:`\hat\mu = \sum w_i^* y_i / \sum
    w_i^*` and :math:`\operatorname{SE}^2 = 1/\sum w_i^*`. Under Knapp–Hartung

    .. math::

        \operatorname{SE}^2_{HK} = \frac{q}{\sum w_i^*}, \qquad
        q = \frac{1}{k-1}\sum w_i^*(y_i - \hat\mu)^2,

    and with the ad hoc correction (``hksj_adhoc``, Knapp & Hartung 2003) *q* is replaced
    by :math:`q^* = \max(1, q)`. The correction matters when the effects agree more closely
    than their sampling variances lead one to expect (:math:`q < 1`): the unmodified
    standard error is then below the Wald one on the same weights, and when every
    effect is the same (:math:`Q = 0`, so :math:`\hat\tau^2 = 0` and :math:`q = 0`) it
    has zero width and an infinite *t* — metafor 3.8-1's ``test = "knha"`` prints
    ``se = 0``, ``tval = Inf``. With :math:`q^*` the interval is
    :math:`\hat\mu \pm t_{k-1}/\sqrt{\sum w_i^*}`, as metafor's ``test = "adhoc"``.
    IntHout et al. (2014) recommend Knapp–Hartung inference over the Wald interval, and
    Röver, Knapp & Friede (2015) its corrected form when there are few studies of unequal
    precision, the pipeline's usual case; with Paule–Mandel's
    :math:`\hat\tau^2 > 0`, :math:`q = 1` by construction and the two agree. A weighted
    residual sum of squares at or below machine epsilon counts as 0, as in metafor; the
    unmodified method then raises ``ValueError`` rather than report a zero-width interval.

    The prediction interval is :math:`\hat\mu \pm c\,\sqrt{\hat\tau^2 +
    \operatorname{SE}^2}` with *c* as under ``pi_type``.

    Two I² are reported, because they differ for every τ² estimator but DL:

    - ``i2`` and ``h2``, Higgins & Thompson's (2002) Q-based
      :math:`I^2_Q = \max(0, (Q - (k-1))/Q)` and :math:`H^2_Q = Q/(k-1)`, which do not
      depend on the τ² estimator;
    - ``i2_tau2`` and ``h2_tau2``, metafor's τ²-based :math:`I^2 = \hat\tau^2 /
      (\hat\tau^2 + s^2)` and :math:`H^2 = (\hat\tau^2 + s^2)/s^2`, with the "typical"
      within-study variance :math:`s^2 = (k-1)\sum w_i / ((\sum w_i)^2 - \sum w_i^2)`,
      :math:`w_i = 1/v_i` (Higgins & Thompson 2002, eq. 9). This is what ``rma`` prints as
      I² and H² (as a proportion here, a percentage there).

    The common-effect fit, Q and the DL and PM τ² are
    :func:`statsmodels.stats.meta_analysis.combine_effects`; its DL τ² is not truncated at
    0, so a negative value is set to 0 (the common-effect model), and PM is iterated to
    :math:`|Q_{gen} - (k-1)| < 10^{-10}`. On metafor's ``dat.bcg`` (log risk ratios from
    ``escalc("RR")``) everything agrees with metafor 3.8-1 ``rma(method = "REML",
    test = "z" | "knha")`` and ``predict(pi.type = "default" | "riley")`` to 1e-9
    (tests/test_pool.py).

    On four equal effects (0.2 with variances 0.01, 0.02, 0.04, 0.05) the corrected
    interval agrees with metafor 3.8-1 ``rma(method = "REML" | "DL" | "PM",
    test = "adhoc")`` to 1e-9 (tests/test_pool.py).

    References
    ----------
    IntHout, J., Ioannidis, J. P. A., & Borm, G. F. (2014). The Hartung-Knapp-Sidik-Jonkman
    method for random effects meta-analysis is straightforward and considerably outperforms
    the standard DerSimonian-Laird method. *BMC Medical Research Methodology, 14*, 25.
    Knapp, G., & Hartung, J. (2003). Improved tests for a random effects meta-regression
    with a single covariate. *Statistics in Medicine, 22*(17), 2693–2710.
    Riley, R. D., Higgins, J. P. T., & Deeks, J. J. (2011). Interpretation of random effects
    meta-analyses. *BMJ, 342*, d549.
    Röver, C., Knapp, G., & Friede, T. (2015). Hartung-Knapp-Sidik-Jonkman approach and its
    modification for random-effects meta-analysis with few studies. *BMC Medical Research
    Methodology, 15*, 99.
    """
    from scipy import stats  # imported here: the forest plot's job does not need it
    from statsmodels.stats.meta_analysis import combine_effects

    _check_method(method)
    _check_alpha(alpha)
    for name, flag in (("hksj", hksj), ("hksj_adhoc", hksj_adhoc)):
        if not isinstance(flag, (bool, np.bool_)):
            raise TypeError(f"`{name}` must be True or False; got {flag!r}.")
    if pi_type not in PI_TYPES:
        raise ValueError(f"`pi_type` must be 'default' or 'riley'; got {pi_type!r}.")
    y = np.asarray(yi, dtype=float).ravel()
    v = np.asarray(vi, dtype=float).ravel()
    if y.shape != v.shape:
        raise ValueError(f"`yi` and `vi` must have the same length; got {len(y)} and {len(v)}.")
    if len(y) < 2:
        raise ValueError(f"at least 2 effects are needed to pool; got {len(y)}.")
    if not np.isfinite(y).all():
        raise ValueError(f"`yi` must be finite; got {y[~np.isfinite(y)].tolist()}.")
    if not (np.isfinite(v) & (v > 0)).all():
        raise ValueError(f"`vi` must be positive and finite; got {v[~(v > 0)].tolist()}.")
    k = len(y)
    sm_method = "dl" if method == "reml" else method  # reml: only Q and the common effect
    with warnings.catch_warnings(), np.errstate(invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # DL with a negative tau2 (set to 0)
        res = combine_effects(
            y,
            v,
            method_re=sm_method,
            **({"atol": 1e-10, "maxiter": 1000} if sm_method == "pm" else {}),
        )
    tau2 = reml_tau2(y, v) if method == "reml" else float(max(res.tau2, 0.0))
    ws = 1.0 / (v + tau2)
    mu = float((ws * y).sum() / ws.sum())
    if hksj:
        rss = float((ws * (y - mu) ** 2).sum())
        q_hk = rss / (k - 1) if rss > np.finfo(float).eps else 0.0  # metafor's cut
        if hksj_adhoc:
            q_hk = max(1.0, q_hk)
        elif q_hk == 0.0:
            raise ValueError(
                f"the unmodified Knapp–Hartung variance is 0 because the {k} effects are equal "
                f"(weighted residual sum of squares {rss:.3g}): its interval would have zero "
                "width; use "
                "`hksj_adhoc=True` (Knapp & Hartung's max(1, q)) or `hksj=False`."
            )
        se = math.sqrt(q_hk / float(ws.sum()))
        crit = float(stats.t.isf(alpha / 2, k - 1))
        stat = mu / se
        p = float(2 * stats.t.sf(abs(stat), k - 1))
        distribution = f"t({k - 1})"
    else:
        se = math.sqrt(1.0 / float(ws.sum()))
        crit = float(stats.norm.isf(alpha / 2))
        stat = mu / se
        p = float(2 * stats.norm.sf(abs(stat)))
        distribution = "normal"
    if pi_type == "riley":
        pi_df = max(1, k - 2)
        pi_crit = float(stats.t.isf(alpha / 2, pi_df))
        pi_distribution = f"t({pi_df})"
    else:
        pi_crit, pi_distribution = crit, distribution
    half = pi_crit * math.sqrt(tau2 + se**2)
    q = float(res.q)
    w = 1.0 / v
    s2 = (k - 1) * w.sum() / (w.sum() ** 2 - (w**2).sum())
    return {
        "pooled": {
            "estimate": mu,
            "se": se,
            "ci_low": mu - crit * se,
            "ci_high": mu + crit * se,
            "statistic": stat,
            "p": p,
            "pi_low": mu - half,
            "pi_high": mu + half,
            "distribution": distribution,
            "pi_distribution": pi_distribution,
        },
        "fixed": {"estimate": float(res.mean_effect_fe), "se": float(res.sd_eff_w_fe)},
        "heterogeneity": {
            "q": q,
            "df": int(k - 1),
            "p": float(stats.chi2.sf(q, k - 1)),
            "tau2": tau2,
            "tau": math.sqrt(tau2),
            "i2": max(0.0, (q - (k - 1)) / q) if q > 0 else 0.0,
            "h2": q / (k - 1),
            "i2_tau2": tau2 / (tau2 + s2),
            "h2_tau2": (tau2 + s2) / s2,
        },
        "weights": (100.0 * ws / ws.sum()).tolist(),
    }


def meta_analysis(
    effects: pd.DataFrame,
    *,
    study: str = "study",
    r: str = "r",
    n: str = "n",
    method: Method = "pm",
    hksj: bool = True,
    hksj_adhoc: bool = True,
    pi_type: PiType = "default",
    alpha: float = 0.05,
) -> dict:
    r"""Random-effects meta-analysis of correlations on Fisher's z scale.

    The defaults are the pipeline's (config ``pool``: Paule–Mandel τ² with the
    Hartung–Knapp–Sidik–Jonkman interval), so a notebook and the pipeline give the same
    analysis.

    Parameters
    ----------
    effects : pandas.DataFrame
        One row per study with its correlation and sample size (e.g. from
        :func:`study_effects`).
    study, r, n : str
        Column names of the study label, the correlation and the sample size (> 3).
    method : {'reml', 'dl', 'pm'}, default 'pm'
        Estimator of the between-study variance τ²: restricted maximum likelihood
        (metafor's default), DerSimonian–Laird (1986) method of moments, or Paule–Mandel
        (1982), which solves the generalised Q equation and is recommended by Veroniki et
        al. (2016, Research Synthesis Methods 7, 55-79).
    hksj : bool, default True
        Use the Hartung–Knapp–Sidik–Jonkman interval: the variance of the pooled z is
        rescaled by the weighted residual mean square and the interval uses
        :math:`t_{k-1}` instead of the normal; recommended with few studies (IntHout et
        al. 2014, BMC Medical Research Methodology 14, 25).
    hksj_adhoc : bool, default True
        Under ``hksj``, Knapp & Hartung's (2003) ad hoc correction: the rescaling factor is
        at least 1, so the interval is never built on a smaller variance than the Wald one,
        and studies with equal r get a finite, non-zero-width interval (metafor's
        ``test = "adhoc"``; see :func:`random_effects`).
    pi_type : {'default', 'riley'}, default 'default'
        The prediction interval as metafor's ``predict.rma`` computes it: with the test's
        critical value (normal, or :math:`t_{k-1}` under HKSJ), or ``'riley'`` with
        :math:`t_{k-2}` (Higgins, Thompson & Spiegelhalter 2009; at least 1 df).
    alpha : float, default 0.05
        One minus the confidence level.

    Returns
    -------
    dict
        JSON-ready: ``method, hksj, hksj_adhoc, pi_type, alpha, k, studies`` (rows:
        ``study, r, n, z, variance, ci_low, ci_high, weight`` — r-scale CI, random-effects
        weight in %),
        ``pooled`` (``z, se, ci_low_z, ci_high_z, r, ci_low, ci_high, statistic, p, pi_low,
        pi_high, distribution, pi_distribution``), ``fixed`` (the common-effect z, se and
        r), ``heterogeneity`` (``q, df, p, tau2, tau, i2, h2, i2_tau2, h2_tau2``: ``i2`` and
        ``h2`` are Higgins & Thompson's Q-based ones, ``i2_tau2`` and ``h2_tau2`` metafor's
        τ²-based ones; see :func:`random_effects`).

    Raises
    ------
    KeyError
        A named column is missing.
    ValueError
        Fewer than two studies, an r outside (−1, 1), an n of 3 or less, a duplicated study
        label, a bad ``method``, ``pi_type`` or ``alpha``; ``hksj_adhoc=False`` with
        studies whose r are all equal.

    Notes
    -----
    With :math:`y_i = \operatorname{artanh}(r_i)`, :math:`v_i = 1/(n_i - 3)`,
    :math:`w_i = 1/v_i`, the heterogeneity statistic is
    :math:`Q = \sum w_i (y_i - \bar y_w)^2` on :math:`k-1` df and

    .. math::

        \hat\tau^2_{DL} = \max\Bigl(0, \frac{Q - (k-1)}{\sum w_i - \sum w_i^2/\sum w_i}\Bigr),
        \qquad
        \sum_i \frac{(y_i - \hat\mu(\tau^2))^2}{v_i + \tau^2} = k - 1 \;\text{for}\;
        \hat\tau^2_{PM}

    (0 when the left side is below :math:`k-1` at :math:`\tau^2 = 0`); REML is
    :func:`reml_tau2`. The pooled :math:`\hat\mu = \sum w_i^* y_i / \sum w_i^*` with
    :math:`w_i^* = 1/(v_i + \hat\tau^2)` has :math:`\operatorname{SE} = (\sum
    w_i^*)^{-1/2}`; under HKSJ, :math:`\operatorname{SE}^2 = q / \sum w_i^*` with
    :math:`q = \sum w_i^*(y_i - \hat\mu)^2 / (k-1)`, or :math:`\max(1, q)` with
    ``hksj_adhoc``, and :math:`t_{k-1}` quantiles. The prediction interval is
    :math:`\hat\mu \pm c\sqrt{\hat\tau^2 + \operatorname{SE}^2}` (see ``pi_type``).
    Everything is back-transformed with :math:`\tanh`; the computation is
    :func:`random_effects`.

    On the 16 correlations of Molloy et al. (2014) (metafor's ``dat.molloy2014``) the DL
    results agree with metafor 3.8-1 (``rma(yi, vi, method = "DL", test = "z" | "knha")``)
    to 1e-9; PM τ² is the exact root of the equation above (to 1e-12), which metafor's
    default tolerance reaches to 3e-7; REML on the first 2 and 5 of these studies agrees
    with metafor to 1e-9 (tests/test_pool.py).

    Examples
    --------
    >>> import pandas as pd
    >>> effects = pd.DataFrame(
    ...     {"study": ["a", "b", "c"], "r": [0.2, 0.3, 0.25], "n": [103, 203, 53]}
    ... )
    >>> res = meta_analysis(effects)
    >>> round(res["pooled"]["r"], 4), res["heterogeneity"]["tau2"]
    (0.2648, 0.0)
    """
    from scipy import stats  # imported here: the forest plot's job does not need it

    _check_method(method)
    _check_alpha(alpha)
    _check_columns(effects, [study, r, n])
    if len(effects) < 2:
        raise ValueError(f"`effects` must hold at least 2 studies to pool; got {len(effects)}.")
    labels = effects[study].astype(str)
    if labels.duplicated().any():
        raise ValueError(
            f"study labels in column {study!r} must be unique; "
            f"{labels[labels.duplicated()].tolist()} repeat."
        )
    rr = effects[r].to_numpy(dtype=float)
    nn = effects[n].to_numpy(dtype=float)
    bad_r = ~((rr > -1) & (rr < 1))
    if bad_r.any():
        raise ValueError(
            f"column {r!r} must hold correlations in (-1, 1); got {rr[bad_r].tolist()}."
        )
    bad_n = ~(nn > 3)
    if bad_n.any():
        raise ValueError(f"column {n!r} must hold sample sizes above 3; got {nn[bad_n].tolist()}.")

    y = fisher_z(rr)
    v = 1.0 / (nn - 3.0)
    k = len(y)
    fit = random_effects(
        y, v, method=method, hksj=hksj, hksj_adhoc=hksj_adhoc, pi_type=pi_type, alpha=alpha
    )
    pooled, het = fit["pooled"], fit["heterogeneity"]
    mu = pooled["estimate"]
    zcrit = float(stats.norm.isf(alpha / 2))
    studies = [
        {
            "study": labels.iloc[i],
            "r": _f(rr[i]),
            "n": _f(nn[i]),
            "z": _f(y[i]),
            "variance": _f(v[i]),
            "ci_low": _f(np.tanh(y[i] - zcrit * math.sqrt(v[i]))),
            "ci_high": _f(np.tanh(y[i] + zcrit * math.sqrt(v[i]))),
            "weight": _f(fit["weights"][i]),
        }
        for i in range(k)
    ]
    return {
        "method": method,
        "hksj": bool(hksj),
        "hksj_adhoc": bool(hksj_adhoc),
        "pi_type": pi_type,
        "alpha": float(alpha),
        "k": int(k),
        "studies": studies,
        "pooled": {
            "z": _f(mu),
            "se": _f(pooled["se"]),
            "ci_low_z": _f(pooled["ci_low"]),
            "ci_high_z": _f(pooled["ci_high"]),
            "r": _f(np.tanh(mu)),
            "ci_low": _f(np.tanh(pooled["ci_low"])),
            "ci_high": _f(np.tanh(pooled["ci_high"])),
            "statistic": _f(pooled["statistic"]),
            "p": _f(pooled["p"]),
            "pi_low": _f(np.tanh(pooled["pi_low"])),
            "pi_high": _f(np.tanh(pooled["pi_high"])),
            "distribution": pooled["distribution"],
            "pi_distribution": pooled["pi_distribution"],
        },
        "fixed": {
            "z": _f(fit["fixed"]["estimate"]),
            "se": _f(fit["fixed"]["se"]),
            "r": _f(np.tanh(fit["fixed"]["estimate"])),
        },
        "heterogeneity": {key: (_f(val) if key != "df" else val) for key, val in het.items()},
    }


def meta_table(result: dict) -> pd.DataFrame:
    """Tabulate the forest plot: one row per study, then the pooled row.

    Returns
    -------
    pandas.DataFrame
        ``study, n, r, ci_low, ci_high, weight`` (weight in %, empty for the pooled row).
    """
    rows = [
        {k: s[k] for k in ("study", "n", "r", "ci_low", "ci_high", "weight")}
        for s in result["studies"]
    ]
    p = result["pooled"]
    label = f"Random effects ({result['method'].upper()}{', HKSJ' if result['hksj'] else ''})"
    rows.append(
        {
            "study": label,
            "n": sum(s["n"] for s in result["studies"]),
            "r": p["r"],
            "ci_low": p["ci_low"],
            "ci_high": p["ci_high"],
            "weight": None,
        }
    )
    return pd.DataFrame(rows, columns=["study", "n", "r", "ci_low", "ci_high", "weight"])


def effect_words(term: str, *, labels: Any = None) -> str:
    """The pooled effect in words, e.g. "within-patient alliance–outcome association".

    The two terms the pipeline pools have their own wording; any other term is its label
    (:meth:`allianceflow.labels.Labels.term`, the study's labels when given).

    Examples
    --------
    >>> effect_words("alliance_within_lag"), effect_words("alliance_between")
    ('within-patient alliance–outcome association', 'between-patient alliance–outcome association')
    """
    from .labels import Labels, lower_first

    fixed = {
        "alliance_within_lag": "within-patient alliance–outcome association",
        "alliance_within_detrended_lag": "detrended within-patient alliance–outcome association",
        "alliance_between": "between-patient alliance–outcome association",
    }
    if term in fixed:
        return fixed[term]
    return f"association of {lower_first(Labels.from_dict(labels).term(term))} with outcome"


def study_label(study: str, labels: Any = None) -> str:
    """A study named with its alliance and outcome scores in words.

    *labels* is the study's :class:`allianceflow.labels.Labels` (or its record); without
    it the study's name alone.

    Examples
    --------
    >>> from allianceflow.labels import Labels
    >>> study_label("example", Labels(alliance="wai_sr_total", outcome="ors_total",
    ...                               variables={"wai_sr_total": "WAI-SR total",
    ...                                          "ors_total": "ORS total"}))
    'example: alliance WAI-SR total, outcome ORS total'
    """
    if labels is None:
        return str(study)
    from .labels import Labels

    words = Labels.from_dict(labels)
    if not (words.alliance and words.outcome):
        return str(study)
    alliance, outcome = words.variable(words.alliance), words.variable(words.outcome)
    return f"{study}: alliance {alliance}, outcome {outcome}"


def plot_forest(
    result: dict,
    *,
    benchmark: Benchmark | None = FLUCKIGER_2018,
    comparable: bool = False,
    title: str | None = None,
    studies: Mapping[str, str] | None = None,
):
    """Forest plot of study r's (95% CI), the pooled r and, when comparable, a benchmark band.

    Everything is in words: each study by its label (*studies*, else the ``label`` of its
    row in *result*, as :func:`allianceflow.stages.pool_stage` writes it with
    :func:`study_label`, else its name) and its n, the pooled effect by
    :func:`effect_words` of ``result["term"]``, the method spelled out under the plot.

    Parameters
    ----------
    result : dict
        From :func:`meta_analysis` (with ``term``, the pooled fixed effect, when known).
    benchmark : Benchmark or None, default :data:`FLUCKIGER_2018`
        Drawn as a dashed line at its r with its CI shaded when *comparable*; None draws
        none.
    comparable : bool, default False
        Whether the pooled term estimates the same quantity as the benchmark. Flückiger et
        al. (2018) pooled between-patient alliance–outcome correlations, so only a pooled
        ``alliance_between`` is comparable
        (:func:`allianceflow.stages.meta_forest_figure_stage` sets
        ``comparable = term == "alliance_between"``). When False the band is not drawn and
        a note under the plot says why; the default within-patient lagged effect
        (``alliance_within_lag``) answers a different question and is typically smaller.
    title : str, optional
        Figure title; by default "Random-effects meta-analysis of the <effect>".
    studies : mapping of str to str, optional
        Study name -> label.

    Returns
    -------
    matplotlib.figure.Figure
        Squares scaled by random-effects weight, a diamond for the pooled estimate and, when
        there are three or more studies, a thin bar for the prediction interval; the legend
        of the benchmark and the notes sit below the axes. Save it with
        :func:`allianceflow.figures.save_figure`.
    """
    import matplotlib.pyplot as plt

    from .figures import TWO_COLUMNS, _wrap, style
    from .labels import upper_first
    from .tables.formatting import format_number, format_r

    if benchmark is not None and not isinstance(benchmark, Benchmark):
        raise TypeError(f"`benchmark` must be a Benchmark or None; got {type(benchmark).__name__}.")
    rows = result["studies"]
    k = len(rows)
    names = dict(studies or {})
    effect = effect_words(str(result.get("term", "alliance_within_lag")))
    level = f"{100 * (1 - float(result.get('alpha', 0.05))):g}%"
    with style():
        fig, ax = plt.subplots(figsize=(TWO_COLUMNS, 2.6 + 0.35 * (k + 2)), layout="constrained")
        ys = np.arange(k, 0, -1) + 1.0
        max_w = max(s["weight"] for s in rows)
        for yy, s in zip(ys, rows, strict=True):
            ax.plot([s["ci_low"], s["ci_high"]], [yy, yy], color="#000000", lw=1)
            ax.plot(
                s["r"],
                yy,
                marker="s",
                color="#0072B2",
                linestyle="none",
                markersize=4 + 6 * math.sqrt(s["weight"] / max_w),
            )
        p = result["pooled"]
        diamond_x = [p["ci_low"], p["r"], p["ci_high"], p["r"], p["ci_low"]]
        diamond_y = [0.5, 0.8, 0.5, 0.2, 0.5]
        ax.fill(diamond_x, diamond_y, color="#D55E00", zorder=3)
        if p["pi_low"] is not None:
            ax.plot([p["pi_low"], p["pi_high"]], [0.5, 0.5], color="#D55E00", lw=1, zorder=2)
        if benchmark is not None and comparable:
            ax.axvspan(benchmark.ci_low, benchmark.ci_high, color="#009E73", alpha=0.2, lw=0)
            ax.axvline(benchmark.r, color="#009E73", ls="--", lw=1)
        ax.axvline(0.0, color="#999999", lw=0.8)
        het = result["heterogeneity"]
        ticks = [
            _wrap(f"{names.get(s['study']) or s.get('label') or s['study']} (n = {s['n']:.0f})", 46)
            for s in rows
        ]
        ticks.append(
            f"Pooled, random effects\nI² = {format_number(100 * het['i2'], 0)}%, "
            f"τ² = {format_number(het['tau2'], 4)}"
        )
        ax.set_yticks(list(ys) + [0.5], ticks)
        right = [
            f"{format_r(s['r'])} [{format_r(s['ci_low'])}, {format_r(s['ci_high'])}]" for s in rows
        ]
        right.append(f"{format_r(p['r'])} [{format_r(p['ci_low'])}, {format_r(p['ci_high'])}]")
        twin = ax.twinx()
        twin.set_yticks(list(ys) + [0.5], right)
        twin.tick_params(length=0)
        ax.set_ylim(-0.2, k + 1.8)
        twin.set_ylim(-0.2, k + 1.8)
        ax.set_xlabel(
            _wrap(
                f"r-equivalent of the {effect} ({level} CI); positive: a stronger alliance "
                "with a better outcome",
                80,
            )
        )
        fig.suptitle(
            _wrap(title or upper_first(f"random-effects meta-analysis of the {effect}"), 80),
            fontsize=plt.rcParams["axes.titlesize"],
        )
        method = METHOD_NAMES.get(result["method"], result["method"])
        notes = [
            f"τ² by {method}"
            + (", Hartung–Knapp–Sidik–Jonkman interval" if result["hksj"] else "")
            + (
                " (its variance never below the Wald one: Knapp & Hartung, 2003)"
                if result["hksj"] and result.get("hksj_adhoc")
                else ""
            )
            + (
                f"; the thin bar is the {level} prediction interval"
                if p["pi_low"] is not None
                else ""
            )
            + ". n = effective sample size (the term's degrees of freedom + 2)."
        ]
        if benchmark is not None and comparable:
            notes.append(
                f"Dashed line and band: {benchmark.label}, r = {benchmark.r:.3f} "
                f"[{benchmark.ci_low:.3f}, {benchmark.ci_high:.3f}]."
            )
        if benchmark is not None and not comparable:
            notes.append(
                f"{benchmark.label} benchmark (r = {benchmark.r:.3f}) not shown: it is a "
                f"between-patient correlation, not comparable with the {effect}."
            )
        fig.supxlabel(_wrap(" ".join(notes), 120), fontsize="x-small", color="#555555")
    return fig


# --------------------------------------------------------------------------- one stage

#: Suffixes of derived columns on the score's own scale (a level): standardised as
#: :math:`(x - \bar a)/s_a`, with the mean and SD of the session-level score.
LEVEL_SUFFIXES: tuple[str, ...] = ("", "_lag", "_next", "_baseline", "_pmean", "_tmean")
#: Suffixes of derived columns that are already centred (deviations, differences of
#: means): only divided by :math:`s_a`, never shifted.
CENTRED_SUFFIXES: tuple[str, ...] = (
    "_within",
    "_between",
    "_gmc",
    "_therapist",
    "_patient",
    "_within_lag",
    "_within_detrended",
    "_within_detrended_lag",
    "_therapist_mean",
    "_patient_deviation",
)
_RESERVED = {s.strip("_").split("_")[0] for s in LEVEL_SUFFIXES + CENTRED_SUFFIXES if s}


def _scale_plan(columns, alliance: str, outcome: str) -> dict[str, tuple[str, str]]:
    """Column -> (base score column, "level" | "centred") for every column to standardise.

    The bases are *outcome*, *alliance* and each alliance component ``<alliance>_<c>``
    (``c`` one word, not a suffix word such as ``lag`` or ``within``), which gets its own
    mean and SD. Columns starting with *alliance* or *outcome* that fit no pattern are left
    out (and :func:`one_stage_model` refuses formulas that use them).
    """
    columns = [str(c) for c in columns]
    bases = [outcome, alliance] + sorted(
        c
        for c in columns
        if c.startswith(alliance + "_")
        and "_" not in c[len(alliance) + 1 :]
        and c[len(alliance) + 1 :] not in _RESERVED
    )
    plan: dict[str, tuple[str, str]] = {}
    for base in bases:
        if base not in columns:
            continue
        for kind, suffixes in (("level", LEVEL_SUFFIXES), ("centred", CENTRED_SUFFIXES)):
            for suffix in suffixes:
                if base + suffix in columns:
                    plan.setdefault(base + suffix, (base, kind))
    return plan


def _unscaled(columns, plan: Mapping[str, Any], alliance: str, outcome: str) -> list[str]:
    """Columns named like alliance or outcome variables that *plan* does not standardise."""
    return [
        str(c)
        for c in columns
        if str(c) not in plan and (str(c).startswith(alliance) or str(c).startswith(outcome))
    ]


def _stack(tables, *, directions, standardise, alliance, outcome, study, ids):
    if not tables:
        raise ValueError("`tables` is empty: give at least one study's analysis table.")
    directions = dict(directions or {})
    parts = []
    scaled: set[str] = set()
    unscaled: set[str] = set()
    for name in sorted(tables):
        frame = tables[name].copy()
        _check_columns(frame, [alliance, outcome], argument=f"tables[{name!r}]")
        direction = directions.get(name, "higher_is_better")
        _check_direction(name, direction)
        if standardise:
            sign = -1.0 if direction == "lower_is_better" else 1.0
            plan = _scale_plan(frame.columns, alliance, outcome)
            moments = {}
            for base in {b for b, _ in plan.values()}:
                sd = float(frame[base].std())
                if not (sd > 0):
                    label = (
                        "outcome"
                        if base == outcome
                        else "alliance"
                        if base == alliance
                        else f"component {base!r}"
                    )
                    raise ValueError(
                        f"study {name!r}: the {label} column has no variation (SD = {sd}); "
                        "cannot standardise."
                    )
                moments[base] = (float(frame[base].mean()), sd, sign if base == outcome else 1.0)
            for col, (base, kind) in plan.items():
                mean, sd, s = moments[base]
                shift = mean if kind == "level" else 0.0
                frame[col] = s * (frame[col].astype(float) - shift) / sd
            scaled |= set(plan)
            unscaled |= set(_unscaled(frame.columns, plan, alliance, outcome))
        for col in ids:
            if col in frame.columns:
                frame[col] = name + ":" + frame[col].astype(str)
        frame.insert(0, study, name)
        parts.append(frame)
    return pd.concat(parts, ignore_index=True), scaled - unscaled, unscaled


def stack_studies(
    tables: Mapping[str, pd.DataFrame],
    *,
    directions: Mapping[str, str] | None = None,
    standardise: bool = True,
    alliance: str = "alliance",
    outcome: str = "outcome",
    study: str = "study",
    ids: tuple[str, ...] = ("patient", "therapist"),
) -> pd.DataFrame:
    r"""Stack the studies' analysis tables into one, with a study column and nested ids.

    Parameters
    ----------
    tables : mapping of str to DataFrame
        Study name -> its analysis table (the derive stage's output).
    directions : mapping of str to str, optional
        Outcome direction per study (see :func:`study_effects`); a lower-is-better
        outcome is negated so that higher means better in every study.
    standardise : bool, default True
        Put every study on a common scale, within study, using the mean :math:`\bar x` and
        SD :math:`s_x` of the session-level score *x* (outcome, alliance, or an alliance
        component ``alliance_<c>``) that a column derives from:

        * level columns (suffixes :data:`LEVEL_SUFFIXES`: the score itself, ``_lag``,
          ``_next``, ``_baseline``, ``_pmean``, ``_tmean``) become
          :math:`\text{sign}\,(v - \bar x)/s_x`;
        * centred columns (suffixes :data:`CENTRED_SUFFIXES`: ``_within``, ``_between``,
          ``_within_lag``, ``_gmc``, ``_within_detrended_lag``, ``_therapist_mean``,
          ``_patient_deviation`` …) become :math:`\text{sign}\,v/s_x` (no shift).

        The sign is −1 for every outcome column of a lower-is-better study and +1
        otherwise. An alliance component uses its own mean and SD. Needed when studies
        use different instruments (WAI-SR vs SRS, ORS vs PHQ-9).
    alliance, outcome : str
        Session-level alliance and outcome score columns (and the prefixes of the columns
        derived from them).
    study : str
        Name of the new study column.
    ids : tuple of str
        Id columns made unique across studies by prefixing ``"<study>:"``.

    Returns
    -------
    pandas.DataFrame
        The rows of every table in study order, with ``study`` first. Columns named like
        alliance or outcome variables that fit none of the patterns above are left raw;
        :func:`one_stage_model` refuses formulas that use them.

    Raises
    ------
    ValueError
        No tables, a bad direction, a constant alliance, component or outcome.
    KeyError
        A table lacks the alliance or outcome column.
    """
    return _stack(
        tables,
        directions=directions,
        standardise=standardise,
        alliance=alliance,
        outcome=outcome,
        study=study,
        ids=ids,
    )[0]


def one_stage_model(
    tables: Mapping[str, pd.DataFrame],
    formula: str | None,
    *,
    directions: Mapping[str, str] | None = None,
    reml: bool = True,
    standardise: bool = True,
    name: str = "one_stage",
    moderation: Mapping[str, Any] | None = None,
) -> dict:
    """Fit the model once to all studies, with study as the top level.

    Parameters
    ----------
    tables : mapping of str to DataFrame
        Study name -> analysis table.
    formula : str
        The per-study lme4 formula, e.g. ``"outcome ~ alliance_within_lag + alliance_between
        + session + (1 | therapist) + (1 | patient)"``. ``(1 | study)`` is added unless the
        formula already has a study term.
    directions, standardise
        As in :func:`stack_studies`. With ``standardise`` every alliance or outcome column
        the formula uses must be one that :func:`stack_studies` rescales.
    reml : bool, default True
        REML or ML.
    name : str
        Stored in the result.
    moderation : mapping, optional
        A moderated preset, ``{"preset": ..., "options": {"moderator": ..., ...}}``, whose
        formula depends on the data (the moderator's levels, and whether it varies within
        patients): its columns are made on the stacked table and its formula is that of
        :func:`allianceflow.models.moderation.moderated_formula`; *formula* must then be
        None.

    Returns
    -------
    dict
        The :func:`allianceflow.models.fit_model` result of the stacked data, plus
        ``studies`` (the names) and ``standardised`` (bool); with *moderation*, also
        ``moderation`` (the moderator's kind, levels and level of variation).

    Raises
    ------
    ValueError
        A formula without ``~``, or (with ``standardise``) one that uses an alliance or
        outcome column that would stay on its raw scale; the message lists the supported
        columns.

    Notes
    -----
    Patients and therapists are nested in studies (ids are prefixed by the study), so the
    random part is study / therapist / patient. With few studies the study variance is
    poorly determined and may sit at 0 (reported as a singular fit); the fixed effects
    and their r-equivalents are still the one-stage answer to compare with the pooled r.
    """
    from .models import fit_model

    if moderation is not None and formula is not None:
        raise ValueError(
            "`formula` must be None with `moderation` (the moderated preset's formula is made "
            f"from the stacked data); got formula={formula!r}."
        )
    if moderation is None and (not isinstance(formula, str) or "~" not in formula):
        raise ValueError(f"`formula` must be an lme4 formula with '~'; got {formula!r}.")
    stacked, supported, unscaled = _stack(
        tables,
        directions=directions,
        standardise=standardise,
        alliance="alliance",
        outcome="outcome",
        study="study",
        ids=("patient", "therapist"),
    )
    info = None
    if moderation is not None:
        from .models.moderation import moderated_formula

        stacked, formula, info = moderated_formula(
            stacked, moderation["preset"], moderation.get("options") or {}
        )
    if standardise:
        used = sorted(set(re.findall(r"[A-Za-z_][A-Za-z0-9_.]*", formula)) & unscaled)
        if used:
            raise ValueError(
                f"`formula` uses {used}, which the one-stage standardisation does not rescale "
                f"(it would stay on each study's raw scale); supported alliance and outcome "
                f"columns are {sorted(supported)}. Use those, or standardise=False."
            )
    if "| study)" not in formula.replace(" ", "").replace("|study)", "| study)"):
        formula = f"{formula} + (1 | study)"
    result = fit_model(stacked, formula, reml=reml, name=name, min_levels=2).to_dict()
    result["studies"] = sorted(tables)
    result["standardised"] = bool(standardise)
    if info is not None:
        result["moderation"] = info.to_dict()
    return result


def compare_stages(
    meta: dict, one_stage: dict, *, term: str = "alliance_within_lag"
) -> pd.DataFrame:
    """Set the pooled two-stage r beside the one-stage model's r-equivalent for the same term.

    Returns
    -------
    pandas.DataFrame
        Two rows, ``approach`` "two-stage (<method>)" and "one-stage", with ``r, ci_low,
        ci_high, estimate, se, p``: for the two-stage row ``estimate``/``se`` are on Fisher's z
        scale; for the one-stage row they are the (standardised) fixed effect, and the r
        interval is the Fisher-z interval around its r-equivalent with ``n = df + 2``.
    """
    from scipy import stats  # imported here: the forest plot's job does not need it

    fixed = {row["term"]: row for row in one_stage["fixed"]}
    if term not in fixed:
        raise KeyError(f"the one-stage model has no fixed effect {term!r}; it has {list(fixed)}.")
    row = fixed[term]
    r1 = float(row["r"])
    se_z = 1.0 / math.sqrt(float(row["df"]) - 1.0)
    zc = float(stats.norm.isf(meta["alpha"] / 2))
    p = meta["pooled"]
    label = f"two-stage ({meta['method'].upper()}{', HKSJ' if meta['hksj'] else ''})"
    return pd.DataFrame(
        [
            {
                "approach": label,
                "r": p["r"],
                "ci_low": p["ci_low"],
                "ci_high": p["ci_high"],
                "estimate": p["z"],
                "se": p["se"],
                "p": p["p"],
            },
            {
                "approach": "one-stage",
                "r": _f(r1),
                "ci_low": _f(np.tanh(np.arctanh(r1) - zc * se_z)),
                "ci_high": _f(np.tanh(np.arctanh(r1) + zc * se_z)),
                "estimate": row["estimate"],
                "se": row["se"],
                "p": row["p"],
            },
        ]
    )


# --------------------------------------------------------------------------- rendering


def pool_markdown(meta: dict, comparison: pd.DataFrame | None = None) -> str:
    """The pooled result as Markdown: the APA table the pipeline writes.

    One writer for the pooled table: :func:`allianceflow.tables.meta_analysis_table`
    (studies, the pooled estimate and its prediction interval, the two-stage and one-stage
    estimates; heterogeneity and the method in its note), rendered by
    :func:`allianceflow.tables.render_markdown`.

    Examples
    --------
    >>> meta = meta_analysis(pd.DataFrame({"study": ["a", "b"], "r": [0.2, 0.3],
    ...                                    "n": [200, 120]}))
    >>> pool_markdown({**meta, "term": "alliance_within_lag"}).splitlines()[0]
    '**Table 1**'
    """
    from .tables import meta_analysis_table, render_markdown

    what = f"the {effect_words(str(meta.get('term', 'alliance_within_lag')))}"
    return render_markdown(meta_analysis_table(meta, comparison, what=what, number=1))
