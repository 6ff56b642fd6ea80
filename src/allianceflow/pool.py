"""Pool the alliance–outcome effect across studies: two-stage meta-analysis and one-stage model.

Two stages. Each study's model gives an r-equivalent of the alliance term
(:func:`allianceflow.models.fit_model`, ``r = z / sqrt(z² + df)``, Rosenthal 1991). The
r's are pooled on Fisher's z scale with a random-effects model whose between-study variance
τ² comes from DerSimonian–Laird (``"dl"``) or Paule–Mandel (``"pm"``), using
:func:`statsmodels.stats.meta_analysis.combine_effects`; the Hartung–Knapp–Sidik–Jonkman
interval is an option. The pooled z and its interval are turned back into r and drawn in a
forest plot, beside a benchmark (by default Flückiger et al. 2018, r = .278) only when the
pooled term is comparable with it: Flückiger et al. pooled between-patient correlations, so
the default within-patient lagged term (``alliance_within_lag``) is shown without it.

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
Paule, R. C., & Mandel, J. (1982). Consensus values and weighting factors. *Journal of
Research of the National Bureau of Standards, 87*(5), 377–385.
Rosenthal, R. (1991). *Meta-analytic procedures for social research* (rev. ed.). Sage.
Sidik, K., & Jonkman, J. N. (2002). A simple confidence interval for meta-analysis.
*Statistics in Medicine, 21*(21), 3153–3159.
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
from scipy import stats

__all__ = [
    "Benchmark",
    "FLUCKIGER_2018",
    "METHODS",
    "fisher_z",
    "inverse_fisher_z",
    "study_effects",
    "outcome_direction",
    "meta_analysis",
    "meta_table",
    "plot_forest",
    "stack_studies",
    "LEVEL_SUFFIXES",
    "CENTRED_SUFFIXES",
    "one_stage_model",
    "compare_stages",
    "pool_markdown",
    "pool_stage",
    "forest_figure_stage",
]

Method = Literal["dl", "pm"]
Direction = Literal["higher_is_better", "lower_is_better"]

#: Random-effects estimators of τ² offered (statsmodels' names).
METHODS: tuple[str, ...] = ("dl", "pm")


@dataclass(frozen=True)
class Benchmark:
    """A published pooled correlation to compare against: label, r and its 95% CI."""

    label: str
    r: float
    ci_low: float
    ci_high: float

    def __post_init__(self) -> None:
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
        raise ValueError(f"`method` must be 'dl' or 'pm'; got {method!r}.")


def _check_alpha(alpha: Any) -> None:
    if not isinstance(alpha, (int, float)) or not 0.0 < float(alpha) < 1.0:
        raise ValueError(f"`alpha` must lie in (0, 1); got {alpha!r}.")


def _check_columns(frame: pd.DataFrame, columns: list[str], argument: str = "effects") -> None:
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"`{argument}` must be a pandas DataFrame; got {type(frame).__name__}.")
    import difflib

    for col in columns:
        if col not in frame.columns:
            close = difflib.get_close_matches(col, list(map(str, frame.columns)), n=1)
            hint = f" Closest match: {close[0]!r}." if close else ""
            raise KeyError(
                f"`{argument}` has no column {col!r}; columns are {list(frame.columns)}.{hint}"
            )


def _check_direction(study: str, direction: Any) -> None:
    if direction not in ("higher_is_better", "lower_is_better"):
        raise ValueError(
            f"direction of study {study!r} must be 'higher_is_better' or 'lower_is_better'; "
            f"got {direction!r}."
        )


def _f(x: Any) -> float | None:
    """Plain float for JSON (None for NaN/inf), rounded to 12 significant digits."""
    if x is None:
        return None
    x = float(x)
    if not math.isfinite(x):
        return None
    return float(f"{x:.12g}")


# --------------------------------------------------------------------------- effects


def fisher_z(r):
    """Fisher's variance-stabilising transform :math:`z = \\operatorname{artanh}(r)`."""
    return np.arctanh(r)


def inverse_fisher_z(z):
    """Back-transform :math:`r = \\tanh(z)`."""
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
    """One row per study: the alliance term's r-equivalent and its effective sample size.

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
    The r-equivalent :math:`r = z/\\sqrt{z^2 + \\nu}` (Rosenthal 1991) treats the Wald
    statistic like a *t* with ν degrees of freedom, as for a correlation from
    :math:`n = \\nu + 2` pairs; :func:`meta_analysis` then uses the usual Fisher-z sampling
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


def meta_analysis(
    effects: pd.DataFrame,
    *,
    study: str = "study",
    r: str = "r",
    n: str = "n",
    method: Method = "dl",
    hksj: bool = False,
    alpha: float = 0.05,
) -> dict:
    """Random-effects meta-analysis of correlations on Fisher's z scale.

    Parameters
    ----------
    effects : pandas.DataFrame
        One row per study with its correlation and sample size (e.g. from
        :func:`study_effects`).
    study, r, n : str
        Column names of the study label, the correlation and the sample size (> 3).
    method : {'dl', 'pm'}, default 'dl'
        Estimator of the between-study variance τ²: DerSimonian–Laird (1986) method of
        moments, or Paule–Mandel (1982), which solves the generalised Q equation.
    hksj : bool, default False
        Use the Hartung–Knapp–Sidik–Jonkman interval: the variance of the pooled z is
        rescaled by the weighted residual mean square and the interval uses
        :math:`t_{k-1}` instead of the normal.
    alpha : float, default 0.05
        One minus the confidence level.

    Returns
    -------
    dict
        JSON-ready: ``method, hksj, alpha, k, studies`` (rows: ``study, r, n, z, variance,
        ci_low, ci_high, weight`` — r-scale CI, random-effects weight in %), ``pooled``
        (``z, se, ci_low_z, ci_high_z, r, ci_low, ci_high, statistic, p, pi_low,
        pi_high, distribution``), ``fixed`` (the common-effect z, se and r),
        ``heterogeneity`` (``q, df, p, tau2, tau, i2, h2``).

    Raises
    ------
    KeyError
        A named column is missing.
    ValueError
        Fewer than two studies, an r outside (−1, 1), an n of 3 or less, a duplicated study
        label, a bad ``method`` or ``alpha``.

    Notes
    -----
    With :math:`y_i = \\operatorname{artanh}(r_i)`, :math:`v_i = 1/(n_i - 3)`,
    :math:`w_i = 1/v_i`, the heterogeneity statistic is
    :math:`Q = \\sum w_i (y_i - \\bar y_w)^2` on :math:`k-1` df and

    .. math::

        \\hat\\tau^2_{DL} = \\max\\Bigl(0, \\frac{Q - (k-1)}{\\sum w_i - \\sum w_i^2/\\sum w_i}\\Bigr),
        \\qquad
        \\sum_i \\frac{(y_i - \\hat\\mu(\\tau^2))^2}{v_i + \\tau^2} = k - 1 \\;\\text{for}\\;
        \\hat\\tau^2_{PM}

    (0 when the left side is below :math:`k-1` at :math:`\\tau^2 = 0`). The pooled
    :math:`\\hat\\mu = \\sum w_i^* y_i / \\sum w_i^*` with :math:`w_i^* = 1/(v_i +
    \\hat\\tau^2)` has :math:`\\operatorname{SE} = (\\sum w_i^*)^{-1/2}`; under HKSJ,
    :math:`\\operatorname{SE}^2 = \\sum w_i^*(y_i - \\hat\\mu)^2 / ((k-1)\\sum w_i^*)`
    with :math:`t_{k-1}` quantiles. :math:`I^2 = \\max(0, (Q - (k-1))/Q)` and
    :math:`H^2 = Q/(k-1)` (Higgins & Thompson 2002) do not depend on the τ² estimator
    (metafor reports a τ²-based I² instead, which equals this one for DL only). The
    prediction interval is :math:`\\hat\\mu \\pm t_{k-2}\\sqrt{\\hat\\tau^2 +
    \\operatorname{SE}^2}` (Higgins, Thompson & Spiegelhalter 2009; needs k ≥ 3).
    Everything is back-transformed with :math:`\\tanh`.

    The computation is :func:`statsmodels.stats.meta_analysis.combine_effects`. Its DL
    τ² is not truncated at 0; when Q < k − 1 we take the Paule–Mandel result instead,
    which is then exactly the truncated DL answer (τ² = 0, the common-effect model).
    Paule–Mandel is iterated to :math:`|Q_{gen} - (k-1)| < 10^{-10}`.

    On the 16 correlations of Molloy et al. (2014) (metafor's ``dat.molloy2014``) the DL
    results agree with metafor 3.8-1 (``rma(yi, vi, method = "DL", test = "z" | "knha")``)
    to 1e-9; PM τ² is the exact root of the equation above (to 1e-12), which metafor's
    default tolerance reaches to 3e-7 (tests/test_pool.py).

    Examples
    --------
    >>> import pandas as pd
    >>> effects = pd.DataFrame({"study": ["a", "b", "c"], "r": [0.2, 0.3, 0.25], "n": [103, 203, 53]})
    >>> res = meta_analysis(effects)
    >>> round(res["pooled"]["r"], 4), res["heterogeneity"]["tau2"]
    (0.2648, 0.0)
    """
    from statsmodels.stats.meta_analysis import combine_effects

    _check_method(method)
    _check_alpha(alpha)
    if not isinstance(hksj, (bool, np.bool_)):
        raise TypeError(f"`hksj` must be True or False; got {hksj!r}.")
    _check_columns(effects, [study, r, n])
    if len(effects) < 2:
        raise ValueError(f"`effects` must hold at least 2 studies to pool; got {len(effects)}.")
    labels = effects[study].astype(str)
    if labels.duplicated().any():
        raise ValueError(
            f"study labels in column {study!r} must be unique; {labels[labels.duplicated()].tolist()} repeat."
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
    with warnings.catch_warnings(), np.errstate(invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # DL with a negative tau2 (handled below)
        res = combine_effects(
            y,
            v,
            method_re=method,
            row_names=list(labels),
            use_t=bool(hksj),
            alpha=alpha,
            **({"atol": 1e-10, "maxiter": 1000} if method == "pm" else {}),
        )
    if res.tau2 < 0:  # DL with Q < k - 1: truncate at 0 (== PM result, the common-effect model)
        res = combine_effects(
            y,
            v,
            method_re="pm",
            row_names=list(labels),
            use_t=bool(hksj),
            alpha=alpha,
            atol=1e-10,
            maxiter=1000,
        )
    tau2 = float(max(res.tau2, 0.0))
    mu = float(res.mean_effect_re)
    if hksj:
        se = float(math.sqrt(res.var_hksj_re))
        crit = float(stats.t.isf(alpha / 2, k - 1))
        stat = mu / se
        p = float(2 * stats.t.sf(abs(stat), k - 1))
        distribution = f"t({k - 1})"
    else:
        se = float(res.sd_eff_w_re)
        crit = float(stats.norm.isf(alpha / 2))
        stat = mu / se
        p = float(2 * stats.norm.sf(abs(stat)))
        distribution = "normal"
    lo_z, hi_z = mu - crit * se, mu + crit * se
    if k >= 3:
        half = float(stats.t.isf(alpha / 2, k - 2)) * math.sqrt(tau2 + se**2)
        pi = (float(np.tanh(mu - half)), float(np.tanh(mu + half)))
    else:
        pi = (None, None)
    q = float(res.q)
    i2 = max(0.0, (q - (k - 1)) / q) if q > 0 else 0.0
    weights = res.weights_rel_re * 100.0
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
            "weight": _f(weights[i]),
        }
        for i in range(k)
    ]
    return {
        "method": method,
        "hksj": bool(hksj),
        "alpha": float(alpha),
        "k": int(k),
        "studies": studies,
        "pooled": {
            "z": _f(mu),
            "se": _f(se),
            "ci_low_z": _f(lo_z),
            "ci_high_z": _f(hi_z),
            "r": _f(np.tanh(mu)),
            "ci_low": _f(np.tanh(lo_z)),
            "ci_high": _f(np.tanh(hi_z)),
            "statistic": _f(stat),
            "p": _f(p),
            "pi_low": _f(pi[0]),
            "pi_high": _f(pi[1]),
            "distribution": distribution,
        },
        "fixed": {
            "z": _f(res.mean_effect_fe),
            "se": _f(res.sd_eff_w_fe),
            "r": _f(np.tanh(res.mean_effect_fe)),
        },
        "heterogeneity": {
            "q": _f(q),
            "df": int(k - 1),
            "p": _f(stats.chi2.sf(q, k - 1)),
            "tau2": _f(tau2),
            "tau": _f(math.sqrt(tau2)),
            "i2": _f(i2),
            "h2": _f(q / (k - 1)),
        },
    }


def meta_table(result: dict) -> pd.DataFrame:
    """The forest plot as a table: one row per study, then the pooled row.

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


def plot_forest(
    result: dict,
    *,
    benchmark: Benchmark | None = FLUCKIGER_2018,
    comparable: bool = False,
    title: str | None = None,
):
    """Forest plot of study r's (95% CI), the pooled r and, when comparable, a benchmark band.

    Parameters
    ----------
    result : dict
        From :func:`meta_analysis`.
    benchmark : Benchmark or None, default :data:`FLUCKIGER_2018`
        Drawn as a dashed line at its r with its CI shaded when *comparable*; None draws
        none.
    comparable : bool, default False
        Whether the pooled term estimates the same quantity as the benchmark. Flückiger et
        al. (2018) pooled between-patient alliance–outcome correlations, so only a pooled
        ``alliance_between`` is comparable (:func:`forest_figure_stage` sets
        ``comparable = term == "alliance_between"``). When False the band is not drawn and
        a one-line note under the plot says why; the default within-patient lagged effect
        (``alliance_within_lag``) answers a different question and is typically smaller.
    title : str, optional
        Axis title.

    Returns
    -------
    matplotlib.figure.Figure
        Squares scaled by random-effects weight, a diamond for the pooled estimate and, when
        there are three or more studies, a thin bar for the prediction interval. Save it
        with :func:`allianceflow.figures.save_figure`.
    """
    import matplotlib.pyplot as plt

    from .figures import ONE_COLUMN, TWO_COLUMNS, style

    if benchmark is not None and not isinstance(benchmark, Benchmark):
        raise TypeError(f"`benchmark` must be a Benchmark or None; got {type(benchmark).__name__}.")
    studies = result["studies"]
    k = len(studies)
    with style():
        fig, ax = plt.subplots(figsize=(TWO_COLUMNS, max(ONE_COLUMN * 0.8, 1.0 + 0.35 * (k + 2))))
        ys = np.arange(k, 0, -1) + 1.0
        max_w = max(s["weight"] for s in studies)
        for yy, s in zip(ys, studies):
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
            ax.axvline(
                benchmark.r,
                color="#009E73",
                ls="--",
                lw=1,
                label=f"{benchmark.label}: r = {benchmark.r:.3f} [{benchmark.ci_low:.3f}, {benchmark.ci_high:.3f}]",
            )
            ax.legend(loc="upper left", frameon=False, fontsize="small")
        ax.axvline(0.0, color="#999999", lw=0.8)
        method = result["method"].upper() + (", HKSJ" if result["hksj"] else "")
        het = result["heterogeneity"]
        labels = [f"{s['study']} (n = {s['n']:.0f})" for s in studies]
        labels.append(f"Pooled ({method}); I² = {100 * het['i2']:.0f}%, τ² = {het['tau2']:.4f}")
        ax.set_yticks(list(ys) + [0.5], labels)
        right = [f"{s['r']:.3f} [{s['ci_low']:.3f}, {s['ci_high']:.3f}]" for s in studies]
        right.append(f"{p['r']:.3f} [{p['ci_low']:.3f}, {p['ci_high']:.3f}]")
        twin = ax.twinx()
        twin.set_ylim(ax.get_ylim())
        twin.set_yticks(list(ys) + [0.5], right)
        twin.tick_params(length=0)
        ax.set_ylim(-0.2, k + 1.8)
        twin.set_ylim(-0.2, k + 1.8)
        ax.set_xlabel("alliance–outcome r (95% CI)")
        if title:
            ax.set_title(title)
        if benchmark is not None and not comparable:
            pooled_term = result.get("term", "the pooled term")
            fig.text(
                0.01,
                0.01,
                f"{benchmark.label} benchmark (r = {benchmark.r:.3f}) not shown: it is a "
                f"between-patient correlation, not comparable with {pooled_term}.",
                fontsize="x-small",
                ha="left",
                va="bottom",
                color="#555555",
            )
            fig.tight_layout(rect=(0, 0.06, 1, 1))
        else:
            fig.tight_layout()
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
                        f"study {name!r}: the {label} column has no variation (SD = {sd}); cannot standardise."
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
    formula: str,
    *,
    directions: Mapping[str, str] | None = None,
    reml: bool = True,
    standardise: bool = True,
    name: str = "one_stage",
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

    Returns
    -------
    dict
        The :func:`allianceflow.models.fit_model` result of the stacked data, plus
        ``studies`` (the names) and ``standardised`` (bool).

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

    if not isinstance(formula, str) or "~" not in formula:
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
    return result


def compare_stages(
    meta: dict, one_stage: dict, *, term: str = "alliance_within_lag"
) -> pd.DataFrame:
    """The pooled two-stage r beside the one-stage model's r-equivalent for the same term.

    Returns
    -------
    pandas.DataFrame
        Two rows, ``approach`` "two-stage (<method>)" and "one-stage", with ``r, ci_low,
        ci_high, estimate, se, p``: for the two-stage row ``estimate``/``se`` are on Fisher's z
        scale; for the one-stage row they are the (standardised) fixed effect, and the r
        interval is the Fisher-z interval around its r-equivalent with ``n = df + 2``.
    """
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


# --------------------------------------------------------------------------- pipeline stages


def pool_markdown(meta: dict, comparison: pd.DataFrame | None = None) -> str:
    """The pooled result as Markdown: the study table, heterogeneity and the two stages."""
    table = meta_table(meta)
    shown = pd.DataFrame(
        {
            "Study": table["study"],
            "n": table["n"].map("{:.0f}".format),
            "r": table["r"].map("{:.3f}".format),
            "95% CI": [
                f"[{lo:.3f}, {hi:.3f}]" for lo, hi in zip(table["ci_low"], table["ci_high"])
            ],
            "Weight (%)": table["weight"].map(
                lambda w: "" if w is None or pd.isna(w) else f"{w:.1f}"
            ),
        }
    )
    het = meta["heterogeneity"]
    p = meta["pooled"]
    parts = [
        "**Alliance–outcome correlation, random-effects meta-analysis**\n",
        shown.to_markdown(index=False, disable_numparse=True),
        "",
        f"*Note.* Fisher-z pooling, τ² by {'Paule–Mandel' if meta['method'] == 'pm' else 'DerSimonian–Laird'}"
        f"{', Hartung–Knapp–Sidik–Jonkman interval' if meta['hksj'] else ''}. "
        f"Q({het['df']}) = {het['q']:.2f}, p = {het['p']:.3g}; I² = {100 * het['i2']:.1f}%; "
        f"τ² = {het['tau2']:.4f} (z scale)."
        + (
            f" 95% prediction interval for r: [{p['pi_low']:.3f}, {p['pi_high']:.3f}]."
            if p["pi_low"] is not None
            else ""
        ),
    ]
    if comparison is not None:
        comp = pd.DataFrame(
            {
                "Approach": comparison["approach"],
                "r": comparison["r"].map("{:.3f}".format),
                "95% CI": [
                    f"[{lo:.3f}, {hi:.3f}]"
                    for lo, hi in zip(comparison["ci_low"], comparison["ci_high"])
                ],
            }
        )
        parts += [
            "",
            "**Two-stage and one-stage estimates**\n",
            comp.to_markdown(index=False, disable_numparse=True),
        ]
    return "\n".join(parts) + "\n"


def pool_stage(
    *,
    models: Mapping[str, Any],
    analyses: Mapping[str, Any],
    directions: Mapping[str, str],
    formula: str,
    reml: bool = True,
    term: str = "alliance_within_lag",
    method: Method = "pm",
    hksj: bool = True,
    alpha: float = 0.05,
    one_stage: bool = True,
    standardise: bool = True,
    meta_json,
    table_csv,
    table_md,
    one_stage_json,
    comparison_csv,
) -> None:
    """Pool the studies' fitted models (two stages) and refit the stacked data (one stage).

    *models* and *analyses* map study names to the fit stage's JSON and the derive stage's
    analysis table. Writes the meta-analysis (JSON), its table (CSV, Markdown), the
    one-stage model (JSON; ``{"skipped": true}`` when ``one_stage`` is false) and the
    comparison of the two (CSV).
    """
    from . import io

    results = {name: io.read_json(path) for name, path in models.items()}
    effects = study_effects(results, term=term, directions=directions)
    meta = meta_analysis(effects, method=method, hksj=hksj, alpha=alpha)
    meta["term"] = term
    comparison = None
    if one_stage:
        tables = {name: io.read_table(path) for name, path in analyses.items()}
        one = one_stage_model(
            tables, formula, directions=directions, reml=reml, standardise=standardise
        )
        comparison = compare_stages(meta, one, term=term)
    else:
        one = {"skipped": True}
        comparison = pd.DataFrame(
            columns=["approach", "r", "ci_low", "ci_high", "estimate", "se", "p"]
        )
    io.write_json(meta, meta_json)
    io.write_table(meta_table(meta), table_csv)
    io.write_text(pool_markdown(meta, comparison if one_stage else None), table_md)
    io.write_json(one, one_stage_json)
    io.write_table(comparison, comparison_csv)


def forest_figure_stage(meta_json, *, benchmark: Mapping[str, Any] | None, outputs) -> None:
    """Draw the forest plot of a saved meta-analysis in every format asked for.

    The benchmark band is drawn only when the pooled term (``meta["term"]``, written by
    :func:`pool_stage`) is ``alliance_between``, the between-patient association the
    benchmark estimates; otherwise the figure notes that it is not comparable.
    """
    from . import io
    from .figures import save_figure

    mark = None if not benchmark else Benchmark(**benchmark)
    meta = io.read_json(meta_json)
    term = meta.get("term", "alliance_within_lag")
    save_figure(plot_forest(meta, benchmark=mark, comparable=term == "alliance_between"), outputs)
