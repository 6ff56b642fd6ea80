r"""Effect sizes of binary patient outcomes between arms, and their published benchmarks.

Proportions with Wilson score intervals, the risk difference (success-rate difference)
with Newcombe's hybrid score interval, the number needed to treat with Altman's interval,
and the end-of-treatment Hedges' *g* between arms: the numbers a feedback trial reports
for deterioration and improvement, next to the meta-analytic benchmarks
(:data:`BENCHMARKS`).

Why unadjusted score intervals: the benchmark success-rate differences (Barkham et al.,
2023) are differences of observed proportions, so the pipeline reports the same quantity;
with randomised arms the unadjusted difference is unbiased for the marginal risk
difference. Wilson's and Newcombe's intervals keep close to their nominal coverage with
small counts and proportions near 0, where the Wald interval fails (Newcombe, 1998). They
treat patients as independent: with patients clustered in therapists the intervals are
too narrow by about the square root of the design effect; the GLMM's odds ratio
(:func:`allianceflow.models.fit_model` with ``family="binomial"``) is the clustered
analysis.

References
----------
Altman, D. G. (1998). Confidence intervals for the number needed to treat. *BMJ, 317*,
1309–1312. https://doi.org/10.1136/bmj.317.7168.1309

Barkham, M., De Jong, K., Delgadillo, J., & Lutz, W. (2023). Routine outcome monitoring
(ROM) and feedback: Research review and recommendations. *Psychotherapy Research, 33*(7),
841–855. https://doi.org/10.1080/10503307.2023.2181114 (sometimes cited as de Jong et al.
2023: De Jong is the second author).

Hedges, L. V., & Olkin, I. (1985). *Statistical methods for meta-analysis*. Academic
Press.

Newcombe, R. G. (1998). Interval estimation for the difference between independent
proportions: Comparison of eleven methods. *Statistics in Medicine, 17*(8), 873–890.

Sharf, J., Primavera, L. H., & Diener, M. J. (2010). Dropout and therapeutic alliance: A
meta-analysis of adult individual psychotherapy. *Psychotherapy, 47*(4), 637–645.
https://doi.org/10.1037/a0021175

Wilson, E. B. (1927). Probable inference, the law of succession, and statistical
inference. *Journal of the American Statistical Association, 22*(158), 209–212.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

__all__ = [
    "wilson_interval",
    "newcombe_difference",
    "nnt_interval",
    "hedges_g",
    "arm_contrasts",
    "ARM_CONTRAST_COLUMNS",
    "BENCHMARKS",
]


def _z(alpha: float) -> float:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"`alpha` must lie in (0, 1); got {alpha!r}.")
    # scipy.stats.norm.ppf's float, without importing scipy.stats (1.5 CPU-s) in the jobs
    # that draw the rates' Wilson intervals
    from .models.distributions import norm_ppf

    return norm_ppf(1.0 - alpha / 2.0)


def _check_counts(successes, n, name: str = "successes") -> tuple[int, int]:
    for label, value in ((name, successes), ("n", n)):
        if isinstance(value, bool) or not float(value).is_integer() or value < 0:
            raise ValueError(
                f"`{label}` must be a count (an integer of at least 0); got {value!r}."
            )
    if successes > n:
        raise ValueError(f"`{name}` ({successes}) must not exceed `n` ({n}).")
    return int(successes), int(n)


def wilson_interval(successes: int, n: int, *, alpha: float = 0.05) -> tuple[float, float, float]:
    r"""Proportion and its Wilson score interval.

    Parameters
    ----------
    successes, n : int
        Events and trials.
    alpha : float
        One minus the confidence level.

    Returns
    -------
    tuple of float
        :math:`(\hat p, L, U)`; all NaN when *n* is 0.

    Notes
    -----
    .. math::

        \frac{\hat p + \frac{z^2}{2n} \mp z\sqrt{\frac{\hat p(1-\hat p)}{n}
        + \frac{z^2}{4n^2}}}{1 + \frac{z^2}{n}}

    (Wilson 1927; Newcombe 1998, method 3). It agrees with R's
    ``prop.test(x, n, correct = FALSE)$conf.int``.

    Examples
    --------
    >>> [round(v, 4) for v in wilson_interval(8, 40)]
    [0.2, 0.105, 0.3476]
    """
    x, n = _check_counts(successes, n)
    if n == 0:
        return (math.nan, math.nan, math.nan)
    z = _z(alpha)
    p = x / n
    centre = p + z * z / (2 * n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    denom = 1 + z * z / n
    # the limits are exactly 0 at x = 0 and 1 at x = n (rounding could push them past p)
    low = 0.0 if x == 0 else min(p, max(0.0, (centre - half) / denom))
    high = 1.0 if x == n else max(p, min(1.0, (centre + half) / denom))
    return (p, low, high)


def newcombe_difference(
    x1: int, n1: int, x0: int, n0: int, *, alpha: float = 0.05
) -> tuple[float, float, float]:
    r"""Risk difference :math:`p_1 - p_0` with Newcombe's hybrid score interval.

    Parameters
    ----------
    x1, n1 : int
        Events and patients in the first group (e.g. feedback).
    x0, n0 : int
        Events and patients in the second group (e.g. treatment as usual).
    alpha : float
        One minus the confidence level.

    Returns
    -------
    tuple of float
        :math:`(\hat d, L, U)`; NaN when a group is empty.

    Notes
    -----
    With :math:`(l_i, u_i)` the Wilson intervals of the two proportions,

    .. math::

        L = \hat d - \sqrt{(\hat p_1 - l_1)^2 + (u_0 - \hat p_0)^2}, \qquad
        U = \hat d + \sqrt{(u_1 - \hat p_1)^2 + (\hat p_0 - l_0)^2}

    (Newcombe 1998, method 10, recommended there over the Wald interval). The example
    is Newcombe's (1998) example (a), 56/70 − 48/80, whose method-10 interval he gives as
    0.0524 to 0.3339.

    Examples
    --------
    >>> [round(v, 4) for v in newcombe_difference(56, 70, 48, 80)]
    [0.2, 0.0524, 0.3339]
    """
    x1, n1 = _check_counts(x1, n1, "x1")
    x0, n0 = _check_counts(x0, n0, "x0")
    if n1 == 0 or n0 == 0:
        return (math.nan, math.nan, math.nan)
    p1, l1, u1 = wilson_interval(x1, n1, alpha=alpha)
    p0, l0, u0 = wilson_interval(x0, n0, alpha=alpha)
    d = p1 - p0
    low = d - math.sqrt((p1 - l1) ** 2 + (u0 - p0) ** 2)
    high = d + math.sqrt((u1 - p1) ** 2 + (p0 - l0) ** 2)
    return (d, low, high)


def nnt_interval(difference: float, low: float, high: float) -> dict[str, float | str]:
    r"""Number needed to treat from a risk difference and its interval (Altman 1998).

    Parameters
    ----------
    difference, low, high : float
        The risk difference of a *beneficial* event (improvement; for a harmful event
        such as deterioration pass the difference of its absence, i.e. the negated
        difference and interval swapped) and its confidence limits.

    Returns
    -------
    dict
        ``nnt`` (:math:`1/|\hat d|`, NNTB when :math:`\hat d > 0`, NNTH when below 0),
        ``kind`` ("NNTB", "NNTH" or "none" when :math:`\hat d = 0`), ``nnt_low`` and
        ``nnt_high`` (the interval when it excludes 0: :math:`1/U` to :math:`1/L` on the
        benefit side), ``crosses_zero`` and ``text``: when the interval includes 0 it
        holds infinity, and is written "NNTB a to ∞ to NNTH b" with :math:`a = 1/U`,
        :math:`b = 1/|L|` (Altman 1998); the numeric limits are then NaN.

    Examples
    --------
    >>> r = nnt_interval(0.2, 0.0524, 0.3339)
    >>> round(r["nnt"], 2), round(r["nnt_low"], 2), round(r["nnt_high"], 2)
    (5.0, 2.99, 19.08)
    >>> nnt_interval(0.05, -0.02, 0.12)["text"]
    'NNTB 20.0 (NNTB 8.3 to ∞ to NNTH 50.0)'
    """
    if any(np.isnan(v) for v in (difference, low, high)):
        return {
            "nnt": math.nan,
            "kind": "none",
            "nnt_low": math.nan,
            "nnt_high": math.nan,
            "crosses_zero": True,
            "text": "not estimable",
        }
    if not low <= difference <= high:
        raise ValueError(
            f"`difference` ({difference}) must lie between `low` ({low}) and `high` ({high})."
        )
    kind = "NNTB" if difference > 0 else "NNTH" if difference < 0 else "none"
    nnt = 1.0 / abs(difference) if difference != 0 else math.inf
    crosses = low <= 0.0 <= high
    point = f"{kind} {nnt:.1f}" if kind != "none" else "∞"
    if crosses:
        benefit = f"NNTB {1.0 / high:.1f}" if high > 0 else "∞"
        harm = f"NNTH {1.0 / abs(low):.1f}" if low < 0 else "∞"
        return {
            "nnt": nnt,
            "kind": kind,
            "nnt_low": math.nan,
            "nnt_high": math.nan,
            "crosses_zero": True,
            "text": f"{point} ({benefit} to ∞ to {harm})",
        }
    a, b = sorted((1.0 / abs(low), 1.0 / abs(high)))
    return {
        "nnt": nnt,
        "kind": kind,
        "nnt_low": a,
        "nnt_high": b,
        "crosses_zero": False,
        "text": f"{point} ({a:.1f} to {b:.1f})",
    }


def hedges_g(
    treated: np.ndarray | pd.Series, control: np.ndarray | pd.Series, *, alpha: float = 0.05
) -> tuple[float, float, float]:
    r"""Hedges' *g* of *treated* minus *control* with its normal-approximation interval.

    Parameters
    ----------
    treated, control : array-like
        Scores (NaN dropped). Sign them so that positive is better before the call.
    alpha : float
        One minus the confidence level.

    Returns
    -------
    tuple of float
        :math:`(g, L, U)`; NaN with fewer than two scores in a group.

    Notes
    -----
    .. math::

        d = \frac{\bar x_1 - \bar x_0}{s_p}, \quad
        g = J d, \quad J = 1 - \frac{3}{4(n_1 + n_0) - 9}, \quad
        \operatorname{SE}(g) = \sqrt{\frac{n_1 + n_0}{n_1 n_0} + \frac{g^2}{2(n_1 + n_0)}}

    with :math:`s_p` the pooled SD (Hedges & Olkin 1985). Patients are treated as
    independent.

    Examples
    --------
    >>> [round(v, 4) for v in hedges_g([3.0, 4.0, 5.0, 6.0], [1.0, 2.0, 3.0, 4.0])]
    [1.3471, -0.1879, 2.8822]
    """
    a = pd.Series(treated, dtype=float).dropna().to_numpy()
    b = pd.Series(control, dtype=float).dropna().to_numpy()
    n1, n0 = a.size, b.size
    if n1 < 2 or n0 < 2:
        return (math.nan, math.nan, math.nan)
    pooled = math.sqrt(((n1 - 1) * a.var(ddof=1) + (n0 - 1) * b.var(ddof=1)) / (n1 + n0 - 2))
    if pooled == 0:
        return (math.nan, math.nan, math.nan)
    g = (1 - 3 / (4 * (n1 + n0) - 9)) * (a.mean() - b.mean()) / pooled
    se = math.sqrt((n1 + n0) / (n1 * n0) + g * g / (2 * (n1 + n0)))
    z = _z(alpha)
    return (float(g), float(g - z * se), float(g + z * se))


#: Columns of :func:`arm_contrasts`.
ARM_CONTRAST_COLUMNS = [
    "outcome",
    "subgroup",
    "n_treated",
    "events_treated",
    "rate_treated",
    "rate_treated_low",
    "rate_treated_high",
    "n_control",
    "events_control",
    "rate_control",
    "rate_control_low",
    "rate_control_high",
    "risk_difference",
    "rd_low",
    "rd_high",
    "success_rate_difference",
    "srd_low",
    "srd_high",
    "nnt",
    "nnt_kind",
    "nnt_low",
    "nnt_high",
    "nnt_text",
    "hedges_g",
    "g_low",
    "g_high",
]

#: Which direction is good for each binary outcome of the presets.
_BENEFICIAL = {"improved": True, "deteriorated": False, "dropout": False}


def arm_contrasts(
    patients: pd.DataFrame,
    *,
    outcomes: tuple[str, ...] = ("deteriorated", "improved"),
    arm: str = "condition",
    treated: str = "feedback",
    control: str = "tau",
    subgroup: str | None = "off_track",
    end_score: str = "score_last",
    higher_is_better: bool = True,
    alpha: float = 0.05,
) -> pd.DataFrame:
    r"""Rates by arm, risk difference, NNT and end-of-treatment Hedges' *g*, per subgroup.

    Parameters
    ----------
    patients : pandas.DataFrame
        The patients table (:func:`allianceflow.clinical.patient_outcomes` columns).
    outcomes : tuple of str
        0/1 columns; rows with a missing value are left out of that outcome's counts.
    arm, treated, control : str
        The arm column and its two levels.
    subgroup : str or None
        A 0/1 column (``off_track``): rows for all patients, then for ``not_on_track``
        (1) and ``on_track`` (0) patients. None: all patients only.
    end_score : str
        The last observed outcome score, for Hedges' *g* (:func:`hedges_g`).
    higher_is_better : bool
        The outcome's direction, so that a positive *g* favours *treated*.
    alpha : float
        One minus the confidence level.

    Returns
    -------
    pandas.DataFrame
        One row per outcome and subgroup, columns :data:`ARM_CONTRAST_COLUMNS`: counts,
        rates with Wilson intervals (:func:`wilson_interval`), the risk difference treated
        − control with Newcombe's interval (:func:`newcombe_difference`), the success-rate
        difference (the risk difference signed so that positive favours *treated*: negated
        for deterioration and dropout), the NNT from it (:func:`nnt_interval`), and
        Hedges' *g* of *end_score* in the same patients.

    Raises
    ------
    KeyError
        A named column is missing.
    ValueError
        *treated* or *control* is not a level of *arm*.
    """
    needed = [arm, *outcomes, end_score] + ([subgroup] if subgroup else [])
    missing = [c for c in needed if c not in patients.columns]
    if missing:
        raise KeyError(
            f"`patients` has no column {missing[0]!r}; "
            f"columns: {', '.join(map(str, patients.columns))}."
        )
    levels = set(patients[arm].dropna().astype(str))
    for name, level in (("treated", treated), ("control", control)):
        if level not in levels:
            raise ValueError(
                f"`{name}` must be a level of column {arm!r} ({', '.join(sorted(levels))}); "
                f"got {level!r}."
            )
    groups: list[tuple[str, pd.Series]] = [("all", pd.Series(True, index=patients.index))]
    if subgroup:
        flag = patients[subgroup]
        groups += [("not_on_track", flag.eq(1)), ("on_track", flag.eq(0))]
    arms = patients[arm].astype(str)
    rows = []
    sign = 1.0 if higher_is_better else -1.0
    for outcome in outcomes:
        good = _BENEFICIAL.get(outcome, True)
        for label, mask in groups:
            row: dict[str, object] = {"outcome": outcome, "subgroup": label}
            counts = {}
            for side, level in (("treated", treated), ("control", control)):
                y = patients.loc[mask & arms.eq(level), outcome].dropna()
                x, n = int(y.sum()), int(y.size)
                p, lo, hi = wilson_interval(x, n, alpha=alpha)
                row.update(
                    {
                        f"n_{side}": n,
                        f"events_{side}": x,
                        f"rate_{side}": p,
                        f"rate_{side}_low": lo,
                        f"rate_{side}_high": hi,
                    }
                )
                counts[side] = (x, n)
            d, lo, hi = newcombe_difference(*counts["treated"], *counts["control"], alpha=alpha)
            row.update({"risk_difference": d, "rd_low": lo, "rd_high": hi})
            srd, slo, shi = (d, lo, hi) if good else (-d, -hi, -lo)
            row.update({"success_rate_difference": srd, "srd_low": slo, "srd_high": shi})
            nnt = nnt_interval(srd, slo, shi)
            row.update(
                {
                    "nnt": nnt["nnt"],
                    "nnt_kind": nnt["kind"],
                    "nnt_low": nnt["nnt_low"],
                    "nnt_high": nnt["nnt_high"],
                    "nnt_text": nnt["text"],
                }
            )
            g = hedges_g(
                sign * patients.loc[mask & arms.eq(treated), end_score],
                sign * patients.loc[mask & arms.eq(control), end_score],
                alpha=alpha,
            )
            row.update({"hedges_g": g[0], "g_low": g[1], "g_high": g[2]})
            rows.append(row)
    return pd.DataFrame(rows, columns=ARM_CONTRAST_COLUMNS)


#: Published benchmarks the binary presets are read against. A number is given only when
#: it was read in its source (the abstract, for both); ``None`` marks one that was not.
BENCHMARKS: list[dict[str, object]] = [
    {
        "source": "Barkham, De Jong, Delgadillo & Lutz (2023)",
        "doi": "10.1080/10503307.2023.2181114",
        "comparison": "ROM feedback vs usual care, all patients",
        "hedges_g": 0.15,
        "success_rate_difference": "≈ 8%",
        "note": "review of 11 meta-analyses; abstract: g ≈ 0.15, SRD ≈ 8%",
    },
    {
        "source": "Barkham, De Jong, Delgadillo & Lutz (2023)",
        "doi": "10.1080/10503307.2023.2181114",
        "comparison": "feedback with clinical support tools, not-on-track patients",
        "hedges_g": "0.36–0.53",
        "success_rate_difference": "≈ 20–29%",
        "note": "abstract: g ≈ 0.36–0.53, SRD ≈ 20–29%",
    },
    {
        "source": "Sharf, Primavera & Diener (2010)",
        "doi": "10.1037/a0021175",
        "comparison": "weaker alliance vs dropout (11 studies, 1,301 patients)",
        "hedges_g": None,
        "success_rate_difference": "not reported",
        "d": 0.55,
        "note": "abstract: d = .55 (alliance-dropout); as a log odds ratio d·π/√3 = 1.00",
    },
]
