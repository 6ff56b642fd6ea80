"""Tables of the binary and count presets: odds and rate ratios, and arm contrasts.

:func:`ratio_table` is the APA table of a binomial or Poisson GLMM (odds ratios or
incidence rate ratios with their 95% CIs beside the log-scale estimates);
:func:`binary_effects_table` sets the study's rates, risk differences, NNTs and Hedges'
*g* by arm (:func:`allianceflow.effects.arm_contrasts`) beside the published benchmarks
(:data:`allianceflow.effects.BENCHMARKS`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from .formatting import _label, format_number, format_p
from .table import Table

__all__ = ["ratio_table", "binary_effects_table", "RATIO_NAMES"]

#: The ratio a family's exponentiated coefficients are, by family.
RATIO_NAMES = {"binomial": "OR", "poisson": "IRR"}


def _exp(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else math.exp(value)


def ratio_table(
    result: Mapping[str, Any],
    *,
    labels: Any = None,
    name: str | None = None,
    number: int | None = None,
) -> Table:
    r"""APA table of a binomial (logit) or Poisson (log) model, with OR or IRR.

    Parameters
    ----------
    result : mapping
        A fitted model's JSON record (``fixed`` rows with ``term``, ``estimate``, ``se``,
        ``ci_low``, ``ci_high``, ``p``; ``family``; optionally ``random`` and ``n_obs``).
    labels : Labels, its record, or mapping, optional
        The study's :class:`~allianceflow.labels.Labels` (or its ``to_dict()`` record):
        terms in words and the title, the model's research question
        (:meth:`~allianceflow.labels.Labels.question`, as the summary and the forest plot
        word it); or a mapping of term -> label for the rows only.
    name : str, optional
        File stem; the model's name by default.
    number : int, optional
        The table's number in its study (:func:`allianceflow.stages.table_settings`).

    Returns
    -------
    Table
        Rows per fixed effect: *b*, *SE*, OR (binomial) or IRR (Poisson) and its 95% CI,
        *p*. ``data`` holds the unrounded numbers with ``ratio``, ``ratio_low`` and
        ``ratio_high``.

    Raises
    ------
    ValueError
        A family other than binomial or Poisson.

    Notes
    -----
    :math:`\mathrm{OR} = e^{b}` with the interval :math:`(e^{L}, e^{U})` of the interval
    :math:`(L, U)` of *b*: exponentiating the limits keeps the coverage of the
    log-scale interval. With a therapist random intercept these are conditional
    (therapist-specific) ratios, as ``glmer`` reports.

    Examples
    --------
    >>> r = {"name": "dropout", "family": "binomial", "n_obs": 300,
    ...      "fixed": [{"term": "early_alliance", "estimate": -0.1, "se": 0.02,
    ...                 "ci_low": -0.14, "ci_high": -0.06, "p": 0.0001}]}
    >>> ratio_table(r).body.iloc[0].tolist()
    ['Alliance, mean of the first sessions', '−0.10', '0.02', '0.90', '[0.87, 0.94]', '< .001']
    """
    from ..labels import Labels, lower_first, title_case

    if isinstance(labels, Mapping) and set(labels) <= set(Labels.__dataclass_fields__):
        labels = Labels.from_dict(labels)
    words = labels if isinstance(labels, Labels) else Labels()
    family = result.get("family")
    if family not in RATIO_NAMES:
        raise ValueError(
            f"`result` must be a binomial or poisson model; got family {family!r} "
            f"(model {result.get('name')!r})."
        )
    ratio = RATIO_NAMES[family]
    rows, body = [], []
    for row in result["fixed"]:
        r = {
            "term": row["term"],
            "estimate": row["estimate"],
            "se": row["se"],
            "ci_low": row["ci_low"],
            "ci_high": row["ci_high"],
            "p": row.get("p"),
            "ratio": _exp(row["estimate"]),
            "ratio_low": _exp(row["ci_low"]),
            "ratio_high": _exp(row["ci_high"]),
        }
        rows.append(r)
        body.append(
            [
                _label(r["term"], labels),
                format_number(r["estimate"]),
                format_number(r["se"]),
                format_number(r["ratio"]),
                f"[{format_number(r['ratio_low'])}, {format_number(r['ratio_high'])}]",
                format_p(r["p"]),
            ]
        )
    columns = ["Predictor", "*b*", "*SE*", ratio, "95% CI", "*p*"]
    scale = "log odds" if family == "binomial" else "log rate"
    what = "odds ratio" if family == "binomial" else "incidence rate ratio"
    note = (
        f"*b* = fixed effect on the {scale} scale; {ratio} = {what}, e^*b*, with the "
        "exponentiated 95% CI of *b*."
    )
    if result.get("n_obs") is not None:
        note += f" N = {result['n_obs']} patients."
    random = result.get("random") or []
    if random:
        groups = list(dict.fromkeys(str(r["group"]) for r in random))
        effects = "intercepts" if all(r["term"] == "(Intercept)" for r in random) else "effects"
        named = " and ".join(lower_first(words.variable(g)) + "s" for g in groups)
        note += (
            f" Random {effects} for {named}: the ratios are conditional on them (a typical "
            f"{lower_first(words.variable(groups[0]))})."
        )
    kind = "Logistic" if family == "binomial" else "Poisson"
    agq = int(result.get("nAGQ") or 1)
    method = (
        "Laplace approximation" if agq == 1 else f"adaptive Gauss–Hermite quadrature, {agq} points"
    )
    note += f" {kind} mixed model ({method})."
    return Table(
        name=name or str(result["name"]),
        title=title_case(words.question(result)),
        body=pd.DataFrame(body, columns=columns),
        data=pd.DataFrame(rows),
        note=note,
        number=number,
    )


_OUTCOME_LABELS = {
    "deteriorated": "Reliable deterioration",
    "improved": "Reliable improvement or recovery",
}
_SUBGROUP_LABELS = {"all": "all patients", "not_on_track": "not on track", "on_track": "on track"}


def _pct(value: float) -> str:
    if value is None or not math.isfinite(value):
        return "—"
    return f"{100 * value:.1f}%".replace("-", "−")  # the minus sign, as format_number


def binary_effects_table(
    contrasts: pd.DataFrame,
    benchmarks: Sequence[Mapping[str, Any]],
    *,
    treated: str = "feedback",
    control: str = "tau",
    name: str = "binary_effects",
    labels: Any = None,
    number: int | None = None,
) -> Table:
    """Rates, risk difference, NNT and Hedges' *g* by arm, beside the published benchmarks.

    Parameters
    ----------
    contrasts : pandas.DataFrame
        :func:`allianceflow.effects.arm_contrasts`.
    benchmarks : sequence of mapping
        :data:`allianceflow.effects.BENCHMARKS` (``source``, ``comparison``, ``hedges_g``,
        ``success_rate_difference``, ``note``); a number that was not confirmed is None
        and shown as "not confirmed".
    treated, control : str
        The two arms' canonical levels.
    name : str
        File stem.
    labels : Labels or its record, optional
        The study's :class:`~allianceflow.labels.Labels`: the arms in words
        (:meth:`~allianceflow.labels.Labels.arm`, "treatment as usual" for ``tau``).
    number : int, optional
        The table's number in its study (:func:`allianceflow.stages.table_settings`).

    Returns
    -------
    Table
        One row per outcome and subgroup, then a section of benchmark rows. ``data`` is
        *contrasts* unrounded, with the benchmarks appended (``source`` column).
    """
    from ..labels import Labels, upper_first

    words = Labels.from_dict(labels)
    treated_words, control_words = words.arm(treated), words.arm(control)
    body = []
    for _, r in contrasts.iterrows():
        body.append(
            [
                f"{_OUTCOME_LABELS.get(r['outcome'], r['outcome'])}, "
                f"{_SUBGROUP_LABELS.get(r['subgroup'], r['subgroup'])}",
                f"{int(r['events_treated'])}/{int(r['n_treated'])} ({_pct(r['rate_treated'])})",
                f"{int(r['events_control'])}/{int(r['n_control'])} ({_pct(r['rate_control'])})",
                f"{_pct(r['success_rate_difference'])} "
                f"[{_pct(r['srd_low'])}, {_pct(r['srd_high'])}]",
                str(r["nnt_text"]),
                f"{format_number(r['hedges_g'])} "
                f"[{format_number(r['g_low'])}, {format_number(r['g_high'])}]",
            ]
        )
    sections = [len(body)]
    body.append(["Published benchmarks", "", "", "", "", ""])
    for b in benchmarks:
        g = b.get("hedges_g")
        srd = b.get("success_rate_difference")
        d = b.get("d")
        g_text = (
            "not confirmed" if g is None and d is None else (f"d = {d}" if g is None else str(g))
        )
        body.append(
            [
                f"{b['source']}: {b['comparison']}",
                "",
                "",
                "not confirmed" if srd is None else str(srd),
                "",
                g_text,
            ]
        )
    columns = [
        "Outcome, subgroup",
        f"{upper_first(treated_words)}: events/N (%)",
        f"{upper_first(control_words)}: events/N (%)",
        "Success-rate difference [95% CI]",
        "NNT [95% CI]",
        "Hedges' *g* [95% CI]",
    ]
    data = pd.concat(
        [contrasts.assign(source="this study"), pd.DataFrame(list(benchmarks))],
        ignore_index=True,
    )
    note = (
        f"Success-rate difference = the difference in the proportion of patients with the "
        f"better result ({treated_words} minus {control_words}: fewer deteriorations, more "
        "improvements), with Newcombe's (1998) hybrid score interval; NNT = its reciprocal, "
        "with Altman's (1998) interval (NNTB = benefit, NNTH = harm; an interval that "
        "includes no difference runs through infinity). Hedges' *g* = end-of-treatment "
        f"difference in the last observed outcome, {treated_words} minus {control_words}, "
        f"positive favouring {treated_words}. Not on track = flagged at any session (a "
        "post-randomisation subgroup). Intervals treat patients as independent; the mixed "
        "models' odds ratios allow for therapists. Benchmarks as stated in their abstracts."
    )
    return Table(
        name=name,
        title="Deterioration and Improvement by Arm, Beside Published Benchmarks",
        body=pd.DataFrame(body, columns=columns),
        data=data,
        note=note,
        sections=tuple(sections),
        number=number,
    )
