r"""The pooled (across-study) meta-analysis as an APA table, like the study tables.

:func:`meta_analysis_table` turns the record of :func:`allianceflow.pool.meta_analysis`
(and, optionally, the two-stage vs one-stage comparison of
:func:`allianceflow.pool.compare_stages`) into a :class:`~allianceflow.tables.table.Table`:
numbered, titled in words, correlations to two decimals without the leading zero, and a
note that names the method, the heterogeneity, the abbreviations and, with few studies,
why the interval is wide.

Why the interval is wide with few studies
-----------------------------------------
Under the Hartung–Knapp–Sidik–Jonkman (HKSJ) method the interval of the pooled
:math:`z` is :math:`\hat\mu \pm t_{k-1,\,1-\alpha/2}\,\widehat{SE}_{HK}`. With
:math:`k = 2` studies that is :math:`t_{1,\,.975} = 12.71` instead of the normal 1.96,
and :math:`\tau^2` rests on two studies. The interval is wide because two studies say
little about the average effect across studies; the normal (Wald) interval would be too
narrow, with error rates far above the nominal level (IntHout, Ioannidis & Borm, 2014;
Röver, Knapp & Friede, 2015).

References
----------
IntHout, J., Ioannidis, J. P. A., & Borm, G. F. (2014). The Hartung-Knapp-Sidik-Jonkman
method for random effects meta-analysis is straightforward and considerably outperforms
the standard DerSimonian-Laird method. *BMC Medical Research Methodology, 14*, 25.
https://doi.org/10.1186/1471-2288-14-25
Röver, C., Knapp, G., & Friede, T. (2015). Hartung-Knapp-Sidik-Jonkman approach and its
modification for random-effects meta-analysis with few studies. *BMC Medical Research
Methodology, 15*, 99. https://doi.org/10.1186/s12874-015-0091-1
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from .formatting import format_number, format_p, format_r
from .table import Table

__all__ = ["meta_analysis_table", "few_studies_note"]

_METHODS = {
    "pm": "Paule–Mandel",
    "dl": "DerSimonian–Laird",
    "reml": "restricted maximum likelihood",
}


def few_studies_note(k: int, *, hksj: bool, alpha: float = 0.05) -> str:
    r"""The sentence on why a meta-analysis of few studies has a wide interval ("" for k > 4).

    Parameters
    ----------
    k : int
        Number of studies.
    hksj : bool
        Whether the interval is the Hartung–Knapp–Sidik–Jonkman one (:math:`t_{k-1}`).
    alpha : float
        One minus the confidence level.

    Examples
    --------
    >>> print(few_studies_note(2, hksj=True))  # doctest: +NORMALIZE_WHITESPACE
    With k = 2 studies the 95% CI uses a t distribution with k − 1 = 1 degree of freedom
    (critical value 12.71 instead of 1.96) and τ² is estimated from two studies, so the
    interval is wide: two studies say little about the average effect across studies
    (Hartung–Knapp–Sidik–Jonkman method; IntHout et al., 2014; Röver et al., 2015).
    >>> few_studies_note(12, hksj=True)
    ''
    """
    if k > 4:
        return ""
    level = f"{100 * (1 - alpha):g}%"
    words = {1: "one", 2: "two", 3: "three", 4: "four"}.get(k, str(k))
    if hksj and k > 1:
        from scipy import stats  # here, so that every table job does not import scipy.stats

        crit = float(stats.t.isf(alpha / 2, k - 1))
        normal = float(stats.norm.isf(alpha / 2))
        df = "degree" if k == 2 else "degrees"
        return (
            f"With k = {k} studies the {level} CI uses a t distribution with k − 1 = {k - 1} "
            f"{df} of freedom (critical value {crit:.2f} instead of {normal:.2f}) and τ² is "
            f"estimated from {words} studies, so the interval is wide: {words} studies say "
            "little about the average effect across studies (Hartung–Knapp–Sidik–Jonkman "
            "method; IntHout et al., 2014; Röver et al., 2015)."
        )
    return (
        f"With k = {k} studies τ² is estimated from {words} studies and the normal interval "
        "is too narrow: its error rate is far above the nominal level with so few studies "
        "(IntHout et al., 2014; Röver et al., 2015)."
    )


def meta_analysis_table(
    meta: Mapping[str, Any],
    comparison: pd.DataFrame | None = None,
    *,
    what: str = "the within-patient alliance–outcome association",
    name: str = "meta_analysis",
    number: int | None = None,
) -> Table:
    r"""APA table of a random-effects meta-analysis of correlations across studies.

    Parameters
    ----------
    meta : mapping
        The record of :func:`allianceflow.pool.meta_analysis`.
    comparison : pandas.DataFrame, optional
        :func:`allianceflow.pool.compare_stages`'s rows (``approach, r, ci_low, ci_high``),
        printed as a second section.
    what : str
        What is pooled, in words (the title reads "Random-Effects Meta-Analysis of …").
    name : str
        File stem.
    number : int, optional
        The table's number.

    Returns
    -------
    Table
        Sections *Studies* (study, n, r, 95% CI, weight), *Pooled* (the random-effects
        estimate, and its prediction interval) and, with *comparison*, *Two-stage and
        one-stage estimates*. ``data`` holds the unrounded numbers.

    Examples
    --------
    >>> from allianceflow.pool import meta_analysis
    >>> meta = meta_analysis(pd.DataFrame({"study": ["a", "b"], "r": [0.2, 0.3],
    ...                                    "n": [200, 120]}))
    >>> t = meta_analysis_table(meta, number=1)
    >>> t.body.iloc[1].tolist()
    ['a', '200', '.20', '[.06, .33]', '62.7']
    >>> "k = 2 studies" in t.note
    True
    """
    studies = list(meta["studies"])
    pooled = meta["pooled"]
    het = meta["heterogeneity"]
    k = int(meta.get("k", len(studies)))
    level = f"{100 * (1 - float(meta.get('alpha', 0.05))):g}%"
    ci = f"{level} CI"
    rows: list[list[str]] = []
    sections: list[int] = []
    records: list[dict[str, Any]] = []

    def interval(lo, hi) -> str:
        return f"[{format_r(lo)}, {format_r(hi)}]"

    sections.append(len(rows))
    rows.append(["Studies", "", "", "", ""])
    for s in studies:
        rows.append(
            [
                str(s.get("label") or s["study"]),
                format_number(s["n"], 0),
                format_r(s["r"]),
                interval(s["ci_low"], s["ci_high"]),
                format_number(s["weight"], 1),
            ]
        )
        records.append({"section": "study", "label": str(s["study"]), **_numbers(s)})
    sections.append(len(rows))
    rows.append(["Pooled", "", "", "", ""])
    total_n = sum(float(s["n"]) for s in studies)
    rows.append(
        [
            "Random-effects estimate",
            format_number(total_n, 0),
            format_r(pooled["r"]),
            interval(pooled["ci_low"], pooled["ci_high"]),
            "100.0",
        ]
    )
    records.append(
        {
            "section": "pooled",
            "label": "random effects",
            "n": total_n,
            "r": pooled["r"],
            "ci_low": pooled["ci_low"],
            "ci_high": pooled["ci_high"],
            "weight": 100.0,
        }
    )
    if pooled.get("pi_low") is not None and not pd.isna(pooled.get("pi_low")):
        rows.append(
            [
                f"  {level} prediction interval",
                "",
                "",
                interval(pooled["pi_low"], pooled["pi_high"]),
                "",
            ]
        )
        records.append(
            {
                "section": "pooled",
                "label": "prediction interval",
                "ci_low": pooled["pi_low"],
                "ci_high": pooled["pi_high"],
            }
        )
    if comparison is not None and len(comparison):
        sections.append(len(rows))
        rows.append(["Two-stage and one-stage estimates", "", "", "", ""])
        for _, c in comparison.iterrows():
            label = str(c["approach"])
            words = (
                "One-stage model (all studies in one multilevel model)"
                if label == "one-stage"
                else "Two-stage (this meta-analysis)"
            )
            rows.append(
                ["  " + words, "", format_r(c["r"]), interval(c["ci_low"], c["ci_high"]), ""]
            )
            records.append(
                {
                    "section": "comparison",
                    "label": label,
                    "r": c["r"],
                    "ci_low": c["ci_low"],
                    "ci_high": c["ci_high"],
                }
            )
    body = pd.DataFrame(rows, columns=["Study", "n", "r", ci, "Weight (%)"])
    data = pd.DataFrame(
        records, columns=["section", "label", "n", "r", "ci_low", "ci_high", "weight"]
    )
    method = _METHODS.get(str(meta.get("method")), str(meta.get("method")))
    interval_words = (
        "Hartung–Knapp–Sidik–Jonkman interval (t distribution, k − 1 df)"
        if meta.get("hksj")
        else "normal (Wald) interval"
    )
    note = (
        f"k = {k} studies. r = correlation (r-equivalent of each study's estimate), pooled on "
        f"Fisher's z scale by a random-effects model, τ² by {method}, with a {interval_words}; "
        "CI = confidence interval; n = effective sample size (the degrees of freedom of the "
        "study's estimate + 2, the sample size of a correlation on as many degrees of "
        "freedom); weight = share of the random-effects weights. "
        f"Q({het['df']}) = {format_number(het['q'])}, p = {format_p(het['p'])}; "
        f"I² = {format_number(100 * het['i2'], 1)}%; τ² = {format_number(het['tau2'], 4)} "
        "(z scale). The prediction interval is where the effect of a new study would lie."
    )
    extra = few_studies_note(k, hksj=bool(meta.get("hksj")), alpha=float(meta.get("alpha", 0.05)))
    if extra:
        note += " " + extra
    return Table(
        name=name,
        title=_title(f"random-effects meta-analysis of {what}"),
        body=body,
        data=data,
        note=note,
        sections=tuple(sections),
        number=number,
    )


def _numbers(s: Mapping[str, Any]) -> dict[str, Any]:
    return {key: s.get(key) for key in ("n", "r", "ci_low", "ci_high", "weight")}


def _title(text: str) -> str:
    from ..labels import title_case

    return title_case(text)
