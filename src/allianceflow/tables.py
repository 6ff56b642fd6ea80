"""Tables for people (Markdown, HTML, LaTeX, Word) and machines (CSV), the same bytes every run.

Every published table is a :class:`Table`: the unrounded numbers (``data``, written as CSV)
and their APA-style rendering (``body``, strings only) with a title and a note. The
``render_*`` functions turn a :class:`Table` into Markdown, a standalone HTML page, a LaTeX
``table`` float (booktabs + threeparttable) or a Word ``.docx``; :func:`write_table_files`
writes any of them by file suffix. Nothing in any format depends on the clock: the
``.docx`` zip members carry a fixed 1980-01-01 timestamp and fixed core properties.

Numbers are formatted APA style (American Psychological Association, 2020, ch. 6–7):
estimates and intervals to two decimals, *p* to three decimals with "< .001" below that,
no leading zero for quantities that cannot exceed 1 (*p*, *r*, ICC, R²).

Counts of patients between 1 and ``min_cell - 1`` are suppressed ("< 5") in every table
that counts people, as are percentages, means and SDs computed on fewer than ``min_cell``
patients; when one cell of a block is suppressed, the next smallest cell of that block is
suppressed too, so the hidden count cannot be recovered from the total (secondary
suppression; Office for National Statistics, 2006). The CSV carries the suppressed cells as
empty, with a ``suppressed`` flag, so no file under ``results/`` holds a small count.

References
----------
American Psychological Association. (2020). *Publication manual of the American
Psychological Association* (7th ed.).
Office for National Statistics. (2006). *Review of the dissemination of health statistics:
Confidentiality guidance*. ONS.
"""

from __future__ import annotations

import html
import io as _io
import math
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from ._checks import check_columns, check_frame

__all__ = [
    "Table",
    "TABLE_FORMATS",
    "DEFAULT_LABELS",
    "format_p",
    "format_r",
    "fixed_effects_table",
    "to_markdown",
    "model_markdown",
    "reliability_markdown",
    "model_table",
    "reliability_table",
    "table1",
    "intake_correlations",
    "clinical_significance_table",
    "sudden_gains_table",
    "ruptures_table",
    "render_markdown",
    "render_html",
    "render_latex",
    "render_docx",
    "write_table_files",
]

#: File formats :func:`write_table_files` writes, by suffix.
TABLE_FORMATS = ("csv", "md", "html", "tex", "docx")

#: Readable names of the pipeline's standard variables and model terms.
DEFAULT_LABELS: dict[str, str] = {
    "Intercept": "Intercept",
    "alliance": "Alliance",
    "outcome": "Outcome",
    "alliance_within_lag": "Alliance, within patient (previous session)",
    "alliance_within": "Alliance, within patient",
    "alliance_between": "Alliance, between patients",
    "alliance_therapist": "Alliance, between therapists",
    "outcome_lag": "Outcome (previous session)",
    "session": "Session",
    "log_session": "log(session)",
}

#: Fixed timestamp of every .docx zip member and core property (the zip format's epoch).
_EPOCH = (1980, 1, 1, 0, 0, 0)
_FIXED_DATE = datetime(2000, 1, 1, tzinfo=UTC)
_FIXED_COLUMNS = ["term", "estimate", "se", "ci_low", "ci_high", "statistic", "p"]


# --------------------------------------------------------------------------- the Table


@dataclass(frozen=True)
class Table:
    """A table ready to publish.

    Attributes
    ----------
    name : str
        File stem and LaTeX label (``tab:<name>``).
    title : str
        The APA title (italic title case in the rendered forms).
    body : pandas.DataFrame
        What people read: strings only, column names are the column headings.
    data : pandas.DataFrame
        The numbers behind it, unrounded, tidy (written as CSV).
    note : str
        The general note printed under the table ("*Note.* ...").
    sections : tuple of int
        Row positions of *body* that are section headings (only the first cell is shown,
        spanning the row).
    """

    name: str
    title: str
    body: pd.DataFrame
    data: pd.DataFrame
    note: str = ""
    sections: tuple[int, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if not isinstance(self.body, pd.DataFrame) or not isinstance(self.data, pd.DataFrame):
            raise TypeError("`body` and `data` must be pandas DataFrames.")
        bad = [c for c in self.body.columns if not all(isinstance(v, str) for v in self.body[c])]
        if bad:
            raise TypeError(f"`body` must hold strings only; columns {bad} do not.")


# --------------------------------------------------------------------------- numbers


def _check_min_cell(min_cell: Any) -> int:
    if isinstance(min_cell, bool) or not isinstance(min_cell, (int, np.integer)) or min_cell < 1:
        raise ValueError(f"`min_cell` must be a whole number of at least 1; got {min_cell!r}.")
    return int(min_cell)


def format_p(p: float | None) -> str:
    """APA p value: ``"< .001"``, else three decimals without the leading zero.

    >>> format_p(0.0004), format_p(0.0456), format_p(1.0)
    ('< .001', '.046', '1.000')
    """
    if p is None or pd.isna(p):
        return ""
    if p < 0.001:
        return "< .001"
    return f"{p:.3f}".replace("0.", ".", 1)


def format_r(r: float | None, digits: int = 2) -> str:
    """A quantity bounded by 1 (r, ICC, R²) without the leading zero, APA style.

    >>> format_r(0.283), format_r(-0.05), format_r(1.0)
    ('.28', '−.05', '1.00')
    """
    if r is None or pd.isna(r):
        return ""
    text = f"{abs(r):.{digits}f}"
    if text.startswith("0."):
        text = text[1:]
    return ("−" if r < 0 and float(text) != 0 else "") + text


def _num(value: float | None, digits: int = 2) -> str:
    """Fixed decimals with a true minus sign; empty for missing."""
    if value is None or pd.isna(value):
        return ""
    text = f"{value:.{digits}f}"
    return text.replace("-", "−") if float(text) != 0 else text.lstrip("-")


def _label(term: str, labels: Mapping[str, str] | None) -> str:
    if labels and term in labels:
        return labels[term]
    return DEFAULT_LABELS.get(term, term)


# --------------------------------------------------------------------------- model tables


def fixed_effects_table(result: dict[str, Any]) -> pd.DataFrame:
    """One row per fixed effect of a fitted model (see :func:`allianceflow.models.fit_model`).

    Returns
    -------
    pandas.DataFrame
        Columns ``model``, ``term``, ``estimate``, ``se``, ``ci_low``, ``ci_high``,
        ``statistic``, ``p``, ``converged``, ``optimizer``: the unrounded numbers, with the
        model's convergence status on every row so it travels with the estimates.
    """
    fixed = pd.DataFrame(result["fixed"])
    missing = [c for c in _FIXED_COLUMNS if c not in fixed.columns]
    if missing:
        raise KeyError(f"`result['fixed']` lacks columns {missing}; it has {list(fixed.columns)}.")
    table = fixed[_FIXED_COLUMNS].copy()
    table.insert(0, "model", result["name"])
    table["converged"] = bool(result["convergence"]["converged"])
    table["optimizer"] = result["convergence"]["optimizer"]
    return table


def to_markdown(table: pd.DataFrame, *, title: str | None = None, note: str | None = None) -> str:
    """Render a fixed-effects table (:func:`fixed_effects_table`) as Markdown, APA numbers."""
    shown = pd.DataFrame(
        {
            "Term": table["term"],
            "b": table["estimate"].map("{:.2f}".format),
            "SE": table["se"].map("{:.2f}".format),
            "95% CI": [
                f"[{lo:.2f}, {hi:.2f}]" for lo, hi in zip(table["ci_low"], table["ci_high"])
            ],
            "z": table["statistic"].map("{:.2f}".format),
            "p": table["p"].map(format_p),
        }
    )
    parts = []
    if title:
        parts.append(f"**{title}**\n")
    parts.append(shown.to_markdown(index=False, disable_numparse=True))
    if note:
        parts.append(f"\n*Note.* {note}")
    return "\n".join(parts) + "\n"


def model_markdown(result: dict[str, Any]) -> str:
    """A model's fixed effects, variance components, ICC, R², fit and convergence as Markdown.

    Convergence, the optimiser and any boundary (singular) fit are printed under the table,
    never only in a log. (The plain-text companion of :func:`model_table`.)
    """
    conv = result["convergence"]
    fixed = to_markdown(
        fixed_effects_table(result), title=f"Model {result['name']}: {result['formula']}"
    )
    random = pd.DataFrame(result["random"])
    lines = [fixed, "", "Variance components", ""]
    if not random.empty:
        shown = pd.DataFrame(
            {
                "Group": random["group"],
                "Term": random["term"],
                "Variance": random["variance"].map(lambda v: _num(v, 3)),
                "SD": random["sd"].map(lambda v: _num(v, 3)),
            }
        )
        lines.append(shown.to_markdown(index=False, disable_numparse=True))
    for c in result.get("covariances", []):
        lines.append(
            f"\n{c['group'].capitalize()} {c['term1']} with {c['term2']}: covariance "
            f"{_num(c['covariance'], 3)}, correlation {_num(c['correlation'], 3)}."
        )
    lines.append(f"\nResidual variance {_num(result['residual_variance'], 3)}.")
    icc = ", ".join(f"{k} {_num(v, 3)}" for k, v in sorted(result.get("icc", {}).items()))
    lines.append(
        f"ICC: {icc}. Marginal R² {_num(result.get('r2_marginal'), 3)}, conditional R² "
        f"{_num(result.get('r2_conditional'), 3)}."
    )
    lines.append(_fit_sentence(result))
    lines.append(_convergence_sentence(result))
    return "\n".join(lines) + "\n"


def _fit_sentence(result: dict[str, Any]) -> str:
    groups = ", ".join(f"{v} {k}s" for k, v in sorted(result["n_groups"].items()))
    return (
        f"{result['n_obs']} observations ({groups}); {result.get('n_dropped_missing', 0)} rows "
        f"dropped for missing values. {'REML' if result['reml'] else 'ML'}: logLik "
        f"{_num(result['loglik'])}, AIC {_num(result['aic'])}, BIC {_num(result['bic'])}."
    )


def _convergence_sentence(result: dict[str, Any]) -> str:
    conv = result["convergence"]
    status = "converged" if conv["converged"] else "DID NOT CONVERGE"
    boundary = ", ".join(conv.get("boundary", [])) or "none"
    warnings = "; ".join(conv.get("warnings", [])) or "none"
    grad = conv.get("max_abs_gradient")
    grad_text = "n/a" if grad is None else f"{grad:.2g}"
    return (
        f"Fit of {result['name']} {status} with optimiser {conv['optimizer']}; max |gradient| "
        f"{grad_text}; variances at the boundary: {boundary}; warnings: {warnings}."
    )


def model_table(
    results: Sequence[dict[str, Any]],
    *,
    labels: Mapping[str, str] | None = None,
    name: str = "models",
    title: str | None = None,
) -> Table:
    """APA table of one or several fitted models side by side.

    Parameters
    ----------
    results : sequence of dict
        Results of :func:`allianceflow.models.fit_model` (their ``name`` heads the
        columns; names must be unique).
    labels : mapping, optional
        Readable names of terms and groups; :data:`DEFAULT_LABELS` otherwise.
    name, title : str
        File stem and table title.

    Returns
    -------
    Table
        Sections *Fixed effects* (per term: b, SE, 95% CI, z, p for one model; b (SE),
        95% CI and p per model for several), *Random effects* (variances, residual last),
        with the covariance and correlation of each correlated pair, e.g. patient intercepts
        with time slopes), and *Model fit* (ICC per level, marginal and conditional R², observations, groups,
        estimation, log-likelihood, AIC, BIC, convergence). ``data`` is long: ``model,
        section, term, statistic, value`` with the unrounded numbers.

    Raises
    ------
    ValueError
        No results, or two results with the same name.
    """
    results = list(results)
    if not results:
        raise ValueError("`results` must hold at least one model result; got none.")
    names = [r["name"] for r in results]
    if len(set(names)) != len(names):
        raise ValueError(f"`results` must have unique names; got {names}.")
    single = len(results) == 1
    records: list[dict[str, Any]] = []
    for r in results:
        for f in r["fixed"]:
            for stat in ("estimate", "se", "ci_low", "ci_high", "statistic", "p"):
                records.append(
                    {
                        "model": r["name"],
                        "section": "fixed",
                        "term": f["term"],
                        "statistic": stat,
                        "value": f[stat],
                    }
                )
        for v in r["random"]:
            records.append(
                {
                    "model": r["name"],
                    "section": "random",
                    "term": f"{v['group']}: {v['term']}",
                    "statistic": "variance",
                    "value": v["variance"],
                }
            )
        for c in r.get("covariances", []):
            for stat in ("covariance", "correlation"):
                records.append(
                    {
                        "model": r["name"],
                        "section": "random",
                        "term": f"{c['group']}: {c['term1']} with {c['term2']}",
                        "statistic": stat,
                        "value": c[stat],
                    }
                )
        records.append(
            {
                "model": r["name"],
                "section": "random",
                "term": "Residual",
                "statistic": "variance",
                "value": r["residual_variance"],
            }
        )
        for g, v in r.get("icc", {}).items():
            records.append(
                {
                    "model": r["name"],
                    "section": "fit",
                    "term": f"ICC {g}",
                    "statistic": "value",
                    "value": v,
                }
            )
        for key in ("r2_marginal", "r2_conditional", "n_obs", "loglik", "aic", "bic", "n_params"):
            records.append(
                {
                    "model": r["name"],
                    "section": "fit",
                    "term": key,
                    "statistic": "value",
                    "value": r.get(key),
                }
            )
        for g, v in r["n_groups"].items():
            records.append(
                {
                    "model": r["name"],
                    "section": "fit",
                    "term": f"n_{g}",
                    "statistic": "value",
                    "value": v,
                }
            )
        records.append(
            {
                "model": r["name"],
                "section": "fit",
                "term": "converged",
                "statistic": "value",
                "value": float(bool(r["convergence"]["converged"])),
            }
        )
    data = pd.DataFrame(records, columns=["model", "section", "term", "statistic", "value"])

    per_model = ["b", "SE", "95% CI", "z", "p"] if single else ["b (SE)", "95% CI", "p"]
    headings = per_model if single else [f"{n} {c}" for n in names for c in per_model]
    width = len(headings)
    rows: list[list[str]] = []
    sections: list[int] = []

    def section(label: str) -> None:
        sections.append(len(rows))
        rows.append([label] + [""] * width)

    def cells(r: dict | None, f: dict | None) -> list[str]:
        if f is None:
            return [""] * len(per_model)
        ci = f"[{_num(f['ci_low'])}, {_num(f['ci_high'])}]"
        if single:
            return [_num(f["estimate"]), _num(f["se"]), ci, _num(f["statistic"]), format_p(f["p"])]
        return [f"{_num(f['estimate'])} ({_num(f['se'])})", ci, format_p(f["p"])]

    def stat_row(label: str, values: list[str]) -> None:
        row = [label]
        for v in values:
            row += [v] + [""] * (len(per_model) - 1)
        rows.append(row)

    section("Fixed effects")
    terms: list[str] = []
    for r in results:
        terms += [f["term"] for f in r["fixed"] if f["term"] not in terms]
    for term in terms:
        row = [_label(term, labels)]
        for r in results:
            row += cells(r, next((f for f in r["fixed"] if f["term"] == term), None))
        rows.append(row)
    has_cov = any(r.get("covariances") for r in results)
    section("Random effects (variance, covariance)" if has_cov else "Random effects (variance)")
    components: list[tuple[str, str]] = []
    for r in results:
        components += [
            (v["group"], v["term"])
            for v in r["random"]
            if (v["group"], v["term"]) not in components
        ]
    for g, t in components:
        values = []
        for r in results:
            match = next((v for v in r["random"] if (v["group"], v["term"]) == (g, t)), None)
            values.append("" if match is None else _num(match["variance"]))
        what = "intercept" if t in ("(Intercept)", "Intercept", "1") else _label(t, labels)
        stat_row(f"{_label(g, labels).capitalize()} {what}", values)
    pairs: list[tuple[str, str, str]] = []
    for r in results:
        pairs += [
            (c["group"], c["term1"], c["term2"])
            for c in r.get("covariances", [])
            if (c["group"], c["term1"], c["term2"]) not in pairs
        ]
    for g, t1, t2 in pairs:
        values = []
        for r in results:
            match = next(
                (
                    c
                    for c in r.get("covariances", [])
                    if (c["group"], c["term1"], c["term2"]) == (g, t1, t2)
                ),
                None,
            )
            values.append(
                ""
                if match is None
                else f"{_num(match['covariance'])} (r = {format_r(match['correlation'])})"
            )
        names = [
            "intercept" if t in ("(Intercept)", "Intercept", "1") else _label(t, labels)
            for t in (t1, t2)
        ]
        stat_row(
            f"{_label(g, labels).capitalize()} {names[0]} with {names[1]}, covariance (r)", values
        )
    stat_row("Residual", [_num(r["residual_variance"]) for r in results])
    section("Model fit")
    levels: list[str] = []
    for r in results:
        levels += [g for g in r.get("icc", {}) if g not in levels]
    for g in levels:
        stat_row(f"ICC {_label(g, labels)}", [format_r(r.get("icc", {}).get(g)) for r in results])
    stat_row("Marginal R²", [format_r(r.get("r2_marginal")) for r in results])
    stat_row("Conditional R²", [format_r(r.get("r2_conditional")) for r in results])
    stat_row("Observations", [str(r["n_obs"]) for r in results])
    groups: list[str] = []
    for r in results:
        groups += [g for g in r["n_groups"] if g not in groups]
    for g in groups:
        stat_row(
            f"{_label(g, labels).capitalize()}s", [str(r["n_groups"].get(g, "")) for r in results]
        )
    stat_row("Estimation", ["REML" if r["reml"] else "ML" for r in results])
    stat_row("Log-likelihood", [_num(r["loglik"]) for r in results])
    stat_row("AIC", [_num(r["aic"]) for r in results])
    stat_row("BIC", [_num(r["bic"]) for r in results])
    stat_row("Converged", ["yes" if r["convergence"]["converged"] else "NO" for r in results])

    body = pd.DataFrame(rows, columns=["Parameter", *headings])
    formulas = " ".join(f"{r['name']}: {r['formula']}." for r in results)
    note = (
        f"{formulas} b = unstandardised coefficient; SE = standard error; CI = Wald confidence "
        "interval; p two-sided (normal reference). ICC = share of the random-effects plus "
        "residual variance at each level; R² after Nakagawa and Schielzeth (2013). "
        + " ".join(_convergence_sentence(r) for r in results)
    )
    if title is None:
        title = (
            "Multilevel Model of Outcome" if single else "Multilevel Models of Outcome Side by Side"
        )
    return Table(name=name, title=title, body=body, data=data, note=note, sections=tuple(sections))


def reliability_markdown(table: pd.DataFrame) -> str:
    """Reliability (alpha and omega with 95% CIs) per instrument, scale and occasion."""
    return render_markdown(reliability_table(table))


def reliability_table(table: pd.DataFrame) -> Table:
    """Internal consistency per instrument, scale and occasion as a :class:`Table`.

    Parameters
    ----------
    table : pandas.DataFrame
        The output of :func:`allianceflow.score.reliability` (columns ``instrument, scale,
        occasion, n, k, alpha, alpha_ci_low, alpha_ci_high, omega, omega_ci_low,
        omega_ci_high`` and optionally ``note``).
    """
    check_frame(table, "table")
    check_columns(
        table,
        "instrument",
        "scale",
        "occasion",
        "n",
        "k",
        "alpha",
        "alpha_ci_low",
        "alpha_ci_high",
        "omega",
        "omega_ci_low",
        "omega_ci_high",
        name="table",
    )

    def ci(lo, hi):
        return "" if pd.isna(lo) else f"[{format_r(lo)}, {format_r(hi)}]"

    body = pd.DataFrame(
        {
            "Instrument": table["instrument"].astype(str),
            "Scale": table["scale"].astype(str),
            "Occasion": table["occasion"].astype(str),
            "n": table["n"].astype(int).astype(str),
            "Items": table["k"].astype(int).astype(str),
            "α": table["alpha"].map(format_r),
            "α 95% CI": [ci(a, b) for a, b in zip(table["alpha_ci_low"], table["alpha_ci_high"])],
            "ω": table["omega"].map(format_r),
            "ω 95% CI": [ci(a, b) for a, b in zip(table["omega_ci_low"], table["omega_ci_high"])],
        }
    ).reset_index(drop=True)
    notes = sorted({n for n in table.get("note", pd.Series(dtype=str)).dropna() if n})
    note = "α = Cronbach's alpha; ω = McDonald's omega total. " + " ".join(notes)
    return Table(
        name="reliability",
        title="Internal Consistency of the Instruments",
        body=body,
        data=table.reset_index(drop=True),
        note=note.strip(),
    )


# --------------------------------------------------------------------------- descriptives


def _suppress_block(counts: pd.Series, min_cell: int, total_shown: bool = True) -> pd.Series:
    """Which cells of one block of counts to hide: primary (1 ≤ n < min_cell) and, when a
    single cell is hidden and the total is shown, the next smallest non-zero cell.
    """
    hide = (counts > 0) & (counts < min_cell)
    if total_shown and int(hide.sum()) == 1:
        others = counts[~hide & (counts > 0)]
        if len(others):
            hide[others.sort_values(kind="mergesort").index[0]] = True
    return hide


def _count_cell(count: float, percent: float | None, hidden: bool, min_cell: int) -> str:
    if hidden:
        return f"< {min_cell}" if 0 < count < min_cell else "suppressed"
    if percent is None or pd.isna(percent):
        return f"{int(count)}"
    return f"{int(count)} ({percent:.1f})"


def _intake_rows(data: pd.DataFrame, patient: str, session: str) -> pd.DataFrame:
    return (
        data.sort_values([patient, session], kind="mergesort")
        .groupby(patient, observed=True, sort=True)
        .head(1)
        .set_index(patient)
    )


def _groups(frame: pd.DataFrame, by: str | None) -> list[tuple[str, pd.DataFrame]]:
    """(label, rows) per arm in sorted order, then the total."""
    out = []
    if by is not None:
        keys = frame[by].astype(str)
        for level in sorted(keys.dropna().unique()):
            out.append((level, frame[keys == level]))
    out.append(("Total", frame))
    return out


def table1(
    analysis: pd.DataFrame,
    *,
    by: str | None = "condition",
    continuous: Mapping[str, str] | None = None,
    categorical: Mapping[str, str] | None = None,
    patients: pd.DataFrame | None = None,
    patient: str = "patient",
    session: str = "session",
    therapist: str | None = "therapist",
    min_cell: int = 5,
) -> Table:
    """Table 1: the sample by arm, at intake, with small-cell suppression.

    Parameters
    ----------
    analysis : pandas.DataFrame
        Session-level table (one row per patient × session).
    by : str or None
        The arm column (``condition``); None gives the total only.
    continuous : mapping, optional
        Column → label of scores described at intake (the patient's first session) as
        M (SD); default ``alliance`` and ``outcome`` when present.
    categorical : mapping, optional
        Column → label of patient-level categories described as n (%): columns of
        *patients* (e.g. ``ending``) or constant within patient in *analysis*.
    patients : pandas.DataFrame, optional
        The patients table (one row per patient), for categorical columns and, when it has
        ``weeks`` (:func:`allianceflow.clinical.endings_and_dose`), weeks in treatment.
        Levels of a categorical column are listed in the order of its categories (e.g.
        planned, unilateral, dropout, ongoing), others alphabetically.
    patient, session, therapist : str
        Column names (*therapist* None when there are none).
    min_cell : int, default 5
        Counts from 1 to ``min_cell - 1`` are shown as "< min_cell"; M (SD) and % on fewer
        than *min_cell* patients are not shown.

    Returns
    -------
    Table
        ``body``: one row per characteristic, one column per arm and a Total column headed
        with its n. ``data``: ``variable, level, group, n, count, percent, mean, sd,
        suppressed`` (suppressed numbers empty).

    Examples
    --------
    >>> import pandas as pd
    >>> df = pd.DataFrame({"patient": list("aabbc"), "session": [1, 2, 1, 2, 1],
    ...                    "condition": ["x", "x", "y", "y", "y"], "outcome": [1., 2, 3, 4, 5]})
    >>> t = table1(df, min_cell=2, therapist=None)
    >>> t.body.iloc[0].tolist()  # arm y's 2 would reveal arm x's 1 from the total of 3
    ['Patients, n', '< 2', 'suppressed', '3']
    """
    check_frame(analysis, "analysis")
    min_cell = _check_min_cell(min_cell)
    check_columns(analysis, patient, session, name="analysis")
    if by is not None:
        check_columns(analysis, by, name="analysis")
    if continuous is None:
        continuous = {
            c: DEFAULT_LABELS[c] for c in ("alliance", "outcome") if c in analysis.columns
        }
    check_columns(analysis, *continuous, name="analysis")
    categorical = dict(categorical or {})
    intake = _intake_rows(analysis, patient, session)
    sessions = (
        analysis.groupby(patient, observed=True, sort=True)[session].size().rename("_sessions")
    )
    per_patient = intake.join(sessions)
    if patients is not None:
        check_frame(patients, "patients")
        check_columns(patients, patient, name="patients")
        # the patients table wins for its own columns (e.g. an ending inferred by derive)
        extra = [
            c
            for c in patients.columns
            if c != patient and (c not in per_patient.columns or c in categorical)
        ]
        per_patient = per_patient.drop(columns=[c for c in extra if c in per_patient.columns])
        per_patient = per_patient.join(patients.set_index(patient)[extra])
    for column in categorical:
        if column not in per_patient.columns:
            check_columns(per_patient.reset_index(), column, name="patients")
    groups = _groups(per_patient, by)
    records: list[dict[str, Any]] = []
    rows: list[list[str]] = []
    sections: list[int] = []
    n_arm = {g: len(f) for g, f in groups}
    hide_arm = {g: 0 < n < min_cell for g, n in n_arm.items()}
    # primary suppression of an arm, plus a second arm so the total does not reveal it
    if by is not None:
        arm_counts = pd.Series({g: n for g, n in n_arm.items() if g != "Total"})
        hidden = _suppress_block(arm_counts, min_cell)
        hide_arm.update({g: bool(h) for g, h in hidden.items()})

    row = ["Patients, n"]
    for g, _ in groups:
        row.append(
            f"< {min_cell}"
            if hide_arm[g] and n_arm[g] < min_cell
            else ("suppressed" if hide_arm[g] else str(n_arm[g]))
        )
        records.append(
            {
                "variable": "patients",
                "level": "",
                "group": g,
                "n": None if hide_arm[g] else n_arm[g],
                "count": None if hide_arm[g] else n_arm[g],
                "percent": None,
                "mean": None,
                "sd": None,
                "suppressed": hide_arm[g],
            }
        )
    rows.append(row)
    if therapist is not None and therapist in per_patient.columns:
        row = ["Therapists, n"]
        for g, f in groups:
            k = int(f[therapist].nunique())
            hide = hide_arm[g] or 0 < k < min_cell
            row.append(
                f"< {min_cell}" if hide and k < min_cell else ("suppressed" if hide else str(k))
            )
            records.append(
                {
                    "variable": "therapists",
                    "level": "",
                    "group": g,
                    "n": None if hide_arm[g] else n_arm[g],
                    "count": None if hide else k,
                    "percent": None,
                    "mean": None,
                    "sd": None,
                    "suppressed": hide,
                }
            )
        rows.append(row)

    def describe(column: str, label: str, values_of) -> None:
        row = [label]
        for g, f in groups:
            v = pd.to_numeric(values_of(f), errors="coerce").dropna()
            hide = hide_arm[g] or len(v) < min_cell
            m, s = (
                (float(v.mean()), float(v.std(ddof=1)))
                if len(v) > 1
                else (float(v.mean()) if len(v) else None, None)
            )
            row.append("n < " + str(min_cell) if hide else f"{_num(m)} ({_num(s)})")
            records.append(
                {
                    "variable": column,
                    "level": "",
                    "group": g,
                    "n": None if hide else len(v),
                    "count": None,
                    "percent": None,
                    "mean": None if hide else m,
                    "sd": None if hide else s,
                    "suppressed": hide,
                }
            )
        rows.append(row)

    describe("sessions", "Sessions attended, M (SD)", lambda f: f["_sessions"])
    if "weeks" in per_patient.columns and per_patient["weeks"].notna().any():
        describe("weeks", "Weeks in treatment, M (SD)", lambda f: f["weeks"])
    if continuous:
        sections.append(len(rows))
        rows.append(["At intake, M (SD)"] + [""] * len(groups))
        for column, label in continuous.items():
            describe(column, f"  {label}", lambda f, c=column: f[c])
    for column, label in categorical.items():
        sections.append(len(rows))
        rows.append([f"{label}, n (%)"] + [""] * len(groups))
        present = set(per_patient[column].dropna().astype(str))
        if isinstance(per_patient[column].dtype, pd.CategoricalDtype):  # the categories' own order
            levels = [str(c) for c in per_patient[column].cat.categories if str(c) in present]
        else:
            levels = sorted(present)
        shown_levels = levels + (["Missing"] if per_patient[column].isna().any() else [])
        table_cells: dict[str, dict[str, str]] = {lv: {} for lv in shown_levels}
        for g, f in groups:
            values = f[column].astype(object).where(f[column].notna(), "Missing").astype(str)
            counts = values.value_counts().reindex(shown_levels, fill_value=0)
            hidden = _suppress_block(counts, min_cell) | hide_arm[g]
            for lv in shown_levels:
                c = int(counts[lv])
                pct = 100.0 * c / len(f) if len(f) else None
                table_cells[lv][g] = _count_cell(c, pct, bool(hidden[lv]), min_cell)
                records.append(
                    {
                        "variable": column,
                        "level": lv,
                        "group": g,
                        "n": None if hide_arm[g] else len(f),
                        "count": None if hidden[lv] else c,
                        "percent": None if hidden[lv] else pct,
                        "mean": None,
                        "sd": None,
                        "suppressed": bool(hidden[lv]),
                    }
                )
        for lv in shown_levels:
            rows.append([f"  {lv}"] + [table_cells[lv][g] for g, _ in groups])

    headings = ["Characteristic"] + [
        f"{g} (n {'< ' + str(min_cell) if hide_arm[g] and n_arm[g] < min_cell else '= ' + str(n_arm[g]) if not hide_arm[g] else 'suppressed'})"
        for g, _ in groups
    ]
    body = pd.DataFrame(rows, columns=headings)
    data = pd.DataFrame(
        records,
        columns=["variable", "level", "group", "n", "count", "percent", "mean", "sd", "suppressed"],
    )
    note = (
        f"Intake = each patient's first recorded session. Percentages are of the patients in "
        f'the column. Counts from 1 to {min_cell - 1} are shown as "< {min_cell}" and '
        f'statistics on fewer than {min_cell} patients are not shown ("n < {min_cell}"); '
        'where one count of a block is hidden, the next smallest is hidden too ("suppressed") '
        "so that it cannot be recovered from the total."
    )
    return Table(
        name="table1",
        title="Sample Characteristics by Arm",
        body=body,
        data=data,
        note=note,
        sections=tuple(sections),
    )


def intake_correlations(
    analysis: pd.DataFrame,
    columns: Mapping[str, str] | Sequence[str] | None = None,
    *,
    patient: str = "patient",
    session: str = "session",
    min_cell: int = 5,
) -> Table:
    """Pearson correlations of alliance and outcome scores at intake.

    Parameters
    ----------
    analysis : pandas.DataFrame
        Session-level table.
    columns : mapping or sequence, optional
        Scores to correlate (column → label); default ``alliance``, ``outcome`` and the
        alliance subscales (``wai_sr_task``, ``wai_sr_bond``, ``wai_sr_goal``) present.
    min_cell : int
        Pairs with fewer complete patients are not shown.

    Returns
    -------
    Table
        ``body``: lower triangle of r with significance marks, then M and SD rows.
        ``data``: ``var1, var2, n, r, ci_low, ci_high, p`` per pair (Fisher-z 95% CI).

    Notes
    -----
    The 95% CI is :math:`\\tanh(\\operatorname{artanh} r \\pm 1.96/\\sqrt{n-3})`; *p* from
    :math:`t = r\\sqrt{(n-2)/(1-r^2)}` on *n* − 2 df (pairwise complete patients).
    """
    check_frame(analysis, "analysis")
    min_cell = _check_min_cell(min_cell)
    if columns is None:
        columns = [
            c
            for c in (
                "alliance",
                "outcome",
                "wai_sr_task",
                "wai_sr_bond",
                "wai_sr_goal",
                "srs_total",
            )
            if c in analysis.columns
        ]
    if not isinstance(columns, Mapping):
        columns = {c: DEFAULT_LABELS.get(c, c) for c in columns}
    if len(columns) < 2:
        raise ValueError(f"`columns` must name at least two scores; got {list(columns)}.")
    check_columns(analysis, patient, session, *columns, name="analysis")
    intake = _intake_rows(analysis, patient, session)
    names = list(columns)
    records = []
    for i, a in enumerate(names):
        for b in names[:i]:
            pair = intake[[a, b]].apply(pd.to_numeric, errors="coerce").dropna()
            n = len(pair)
            if n >= max(min_cell, 4):
                r, p = stats.pearsonr(pair[a], pair[b])
                r = float(r)
                half = 1.96 / math.sqrt(n - 3)
                z = math.atanh(max(min(r, 0.999999), -0.999999))
                lo, hi = math.tanh(z - half), math.tanh(z + half)
                records.append(
                    {
                        "var1": a,
                        "var2": b,
                        "n": n,
                        "r": r,
                        "ci_low": lo,
                        "ci_high": hi,
                        "p": float(p),
                    }
                )
            else:
                records.append(
                    {
                        "var1": a,
                        "var2": b,
                        "n": n,
                        "r": None,
                        "ci_low": None,
                        "ci_high": None,
                        "p": None,
                    }
                )
    data = pd.DataFrame(records, columns=["var1", "var2", "n", "r", "ci_low", "ci_high", "p"])
    lookup = {(r["var1"], r["var2"]): r for r in records}
    rows = []
    for i, a in enumerate(names):
        row = [f"{i + 1}. {columns[a]}"]
        for j, b in enumerate(names):
            if j < i:
                rec = lookup[(a, b)]
                if rec["r"] is None:
                    row.append("")
                else:
                    mark = "**" if rec["p"] < 0.01 else "*" if rec["p"] < 0.05 else ""
                    row.append(format_r(rec["r"]) + mark)
            elif j == i:
                row.append("—")
            else:
                row.append("")
        rows.append(row)
    values = intake[names].apply(pd.to_numeric, errors="coerce")
    rows.append(["M"] + [_num(values[c].mean()) for c in names])
    rows.append(["SD"] + [_num(values[c].std(ddof=1)) for c in names])
    rows.append(["n"] + [str(int(values[c].notna().sum())) for c in names])
    body = pd.DataFrame(rows, columns=["Variable"] + [str(k + 1) for k in range(len(names))])
    note = (
        "Pearson correlations at intake (each patient's first recorded session), pairwise "
        "complete; 95% confidence intervals (Fisher z) are in the CSV. * p < .05. ** p < .01."
    )
    return Table(
        name="intake_correlations",
        title="Correlations of Alliance and Outcome at Intake",
        body=body,
        data=data,
        note=note,
    )


def _count_table(
    patients: pd.DataFrame,
    *,
    by: str | None,
    blocks: list[tuple[str, str, Any, str]],
    min_cell: int,
    name: str,
    title: str,
    note: str,
    patient: str = "patient",
    partition: bool = False,
) -> Table:
    """Shared machinery of the by-arm count tables (*partition*: the patient rows split
    each arm, so a column's hidden cells need a second hidden cell too).

    *blocks*: (row label, variable id, function frame -> (count, denominator or None),
    kind) with kind ``"patients"`` (count of patients: suppressed, n (%)), ``"events"``
    (count of events, with % of the denominator events), ``"mean"`` (function returns a
    Series; M (SD)).
    """
    check_frame(patients, "patients")
    min_cell = _check_min_cell(min_cell)
    check_columns(patients, patient, name="patients")
    if by is not None and by not in patients.columns:
        by = None
    groups = _groups(patients, by)
    n_arm = {g: len(f) for g, f in groups}
    arm_counts = pd.Series({g: n for g, n in n_arm.items() if g != "Total"}, dtype=float)
    hide_arm = {g: False for g in n_arm}
    if len(arm_counts):
        hide_arm.update({g: bool(h) for g, h in _suppress_block(arm_counts, min_cell).items()})
    hide_arm["Total"] = 0 < n_arm["Total"] < min_cell
    computed = [
        (label, var, {g: func(f) for g, f in groups}, kind) for label, var, func, kind in blocks
    ]
    names = [g for g, _ in groups]
    hidden: dict[tuple[int, str], bool] = {}
    for i, (_, _, values, kind) in enumerate(computed):
        if kind != "mean":
            for g in names:
                hidden[(i, g)] = hide_arm[g] or bool(0 < values[g][0] < min_cell)
    count_rows = [i for i, c in enumerate(computed) if c[3] == "patients"]
    arms = [g for g in names if g != "Total"]

    def hide_one_more(cells: list[tuple[int, str]]) -> bool:
        if sum(hidden[c] for c in cells) != 1:
            return False
        rest = [c for c in cells if not hidden[c] and computed[c[0]][2][c[1]][0] > 0]
        if not rest:
            return False
        hidden[min(rest, key=lambda c: (computed[c[0]][2][c[1]][0], c))] = True
        return True

    changed = True
    while (
        changed
    ):  # secondary suppression across arms (row totals) and, for partitions, down columns
        changed = False
        for i in count_rows:
            changed |= hide_one_more([(i, g) for g in arms])
        if partition:
            for g in names:
                changed |= hide_one_more([(i, g) for i in count_rows])
    rows, records = [], []
    for i, (label, var, values, kind) in enumerate(computed):
        row = [label]
        if kind == "mean":
            for g in names:
                v = pd.to_numeric(values[g], errors="coerce").dropna()
                hide = hide_arm[g] or len(v) < min_cell
                m = float(v.mean()) if len(v) else None
                s = float(v.std(ddof=1)) if len(v) > 1 else None
                row.append(f"n < {min_cell}" if hide else f"{_num(m)} ({_num(s)})")
                records.append(
                    {
                        "variable": var,
                        "group": g,
                        "count": None,
                        "denominator": None if hide else len(v),
                        "percent": None,
                        "mean": None if hide else m,
                        "sd": None if hide else s,
                        "suppressed": hide,
                    }
                )
        else:
            for g in names:
                c, den = values[g]
                pct = 100.0 * c / den if den else None
                hide = bool(hidden[(i, g)])
                row.append(_count_cell(c, pct, hide, min_cell))
                records.append(
                    {
                        "variable": var,
                        "group": g,
                        "count": None if hide else int(c),
                        "denominator": None if hide else den,
                        "percent": None if hide else pct,
                        "mean": None,
                        "sd": None,
                        "suppressed": hide,
                    }
                )
        rows.append(row)
    headings = ["Measure"] + [
        f"{g} (n {'= ' + str(n_arm[g]) if not hide_arm[g] else ('< ' + str(min_cell) if n_arm[g] < min_cell else 'suppressed')})"
        for g, _ in groups
    ]
    data = pd.DataFrame(
        records,
        columns=[
            "variable",
            "group",
            "count",
            "denominator",
            "percent",
            "mean",
            "sd",
            "suppressed",
        ],
    )
    note = note + (
        f' Counts from 1 to {min_cell - 1} are shown as "< {min_cell}" (with a second count of '
        'patients "suppressed" where the total would reveal them); statistics on fewer than '
        f"{min_cell} patients are not shown."
    )
    return Table(
        name=name, title=title, body=pd.DataFrame(rows, columns=headings), data=data, note=note
    )


def clinical_significance_table(
    patients: pd.DataFrame,
    *,
    by: str | None = "condition",
    category: str = "rc_category",
    patient: str = "patient",
    min_cell: int = 5,
) -> Table:
    """Reliable and clinically significant change (Jacobson & Truax, 1991) by arm.

    Parameters
    ----------
    patients : pandas.DataFrame
        One row per patient with *category* (values of
        :data:`allianceflow.clinical.RC_CATEGORIES`; missing when the patient has one
        observed score).

    Returns
    -------
    Table
        Rows recovered, improved, unchanged, deteriorated and "not assessable", n (%) of the
        arm's patients.
    """
    from .clinical import RC_CATEGORIES

    check_frame(patients, "patients")
    check_columns(patients, category, name="patients")
    blocks = []
    for level in RC_CATEGORIES:
        blocks.append(
            (
                level.capitalize(),
                level,
                lambda f, lv=level: (int((f[category].astype(object) == lv).sum()), len(f)),
                "patients",
            )
        )
    blocks.append(
        (
            "Not assessable (one observed score)",
            "not_assessable",
            lambda f: (int(f[category].isna().sum()), len(f)),
            "patients",
        )
    )
    note = (
        "n (%) of the arm's patients. Recovered = reliable improvement and a move from the "
        "clinical to the functional range; improved = reliable improvement only; deteriorated = "
        "reliable deterioration (Jacobson & Truax, 1991), first to last observed score."
    )
    return _count_table(
        patients,
        by=by,
        blocks=blocks,
        min_cell=min_cell,
        name="clinical_significance",
        title="Reliable and Clinically Significant Change by Arm",
        note=note,
        patient=patient,
        partition=True,
    )


def sudden_gains_table(
    patients: pd.DataFrame,
    gains: pd.DataFrame | None = None,
    *,
    by: str | None = "condition",
    patient: str = "patient",
    min_cell: int = 5,
) -> Table:
    """Sudden gains and losses (Tang & DeRubeis, 1999) by arm.

    Parameters
    ----------
    patients : pandas.DataFrame
        Patients table with ``n_sudden_gains``, ``n_sudden_gains_reversed`` and, when losses
        were searched for, ``n_sudden_losses``.
    gains : pandas.DataFrame, optional
        The events table (:func:`allianceflow.suddengains.sudden_gains`): adds the mean
        magnitude of the gains.
    """
    check_frame(patients, "patients")
    check_columns(patients, "n_sudden_gains", "n_sudden_gains_reversed", name="patients")
    blocks = [
        (
            "Patients with ≥ 1 sudden gain",
            "patients_with_gain",
            lambda f: (int((f["n_sudden_gains"] > 0).sum()), len(f)),
            "patients",
        ),
        ("Sudden gains", "gains", lambda f: (int(f["n_sudden_gains"].sum()), None), "events"),
        (
            "Gains reversed, n (% of gains)",
            "gains_reversed",
            lambda f: (int(f["n_sudden_gains_reversed"].sum()), int(f["n_sudden_gains"].sum())),
            "events",
        ),
    ]
    if gains is not None and len(gains):
        check_columns(gains, patient, "event", "magnitude", name="gains")
        g = gains[gains["event"].astype(str) == "gain"]
        blocks.append(
            (
                "Magnitude of gains, M (SD)",
                "gain_magnitude",
                lambda f: g.loc[g[patient].isin(f[patient]), "magnitude"],
                "mean",
            )
        )
    if "n_sudden_losses" in patients.columns:
        blocks.append(
            (
                "Patients with ≥ 1 sudden loss",
                "patients_with_loss",
                lambda f: (int((f["n_sudden_losses"] > 0).sum()), len(f)),
                "patients",
            )
        )
        blocks.append(
            ("Sudden losses", "losses", lambda f: (int(f["n_sudden_losses"].sum()), None), "events")
        )
    note = (
        "Sudden gains after Tang and DeRubeis (1999): a between-session improvement at least "
        "the reliable change value, at least 25% of the pre-gain score, and larger than the "
        "fluctuation of the surrounding sessions; reversed = more than half of the gain lost later."
    )
    return _count_table(
        patients,
        by=by,
        blocks=blocks,
        min_cell=min_cell,
        name="sudden_gains",
        title="Sudden Gains and Losses by Arm",
        note=note,
        patient=patient,
    )


def ruptures_table(
    patients: pd.DataFrame,
    *,
    by: str | None = "condition",
    patient: str = "patient",
    min_cell: int = 5,
) -> Table:
    """Detected alliance ruptures and their repair by arm.

    Parameters
    ----------
    patients : pandas.DataFrame
        Patients table with ``n_ruptures``, ``n_repaired``, ``n_unrepaired``, ``n_censored``
        (:func:`allianceflow.ruptures.rupture_summary`).
    """
    check_frame(patients, "patients")
    check_columns(
        patients, "n_ruptures", "n_repaired", "n_unrepaired", "n_censored", name="patients"
    )
    blocks = [
        (
            "Patients with ≥ 1 rupture",
            "patients_with_rupture",
            lambda f: (int((f["n_ruptures"] > 0).sum()), len(f)),
            "patients",
        ),
        ("Ruptures per patient, M (SD)", "ruptures_per_patient", lambda f: f["n_ruptures"], "mean"),
        ("Ruptures", "ruptures", lambda f: (int(f["n_ruptures"].sum()), None), "events"),
        (
            "Repaired, n (% of ruptures)",
            "repaired",
            lambda f: (int(f["n_repaired"].sum()), int(f["n_ruptures"].sum())),
            "events",
        ),
        (
            "Not repaired, n (% of ruptures)",
            "unrepaired",
            lambda f: (int(f["n_unrepaired"].sum()), int(f["n_ruptures"].sum())),
            "events",
        ),
        (
            "Censored, n (% of ruptures)",
            "censored",
            lambda f: (int(f["n_censored"].sum()), int(f["n_ruptures"].sum())),
            "events",
        ),
    ]
    if "n_coded_ruptures" in patients.columns:
        blocks.append(
            (
                "Coded ruptures (observer)",
                "coded",
                lambda f: (int(f["n_coded_ruptures"].sum()), None),
                "events",
            )
        )
    note = (
        "A rupture is a drop in session alliance beyond the study's threshold; repaired = the "
        "alliance returned to its pre-rupture level within the repair window; censored = the "
        "patient's data ended before the window closed (Eubanks, Muran, & Safran, 2018)."
    )
    return _count_table(
        patients,
        by=by,
        blocks=blocks,
        min_cell=min_cell,
        name="ruptures",
        title="Alliance Ruptures and Repair by Arm",
        note=note,
        patient=patient,
    )


# --------------------------------------------------------------------------- rendering


def render_markdown(table: Table) -> str:
    """The table as Markdown: bold title, pipe table, italic *Note.*"""
    body = table.body.copy()
    first = body.columns[0]
    for i in table.sections:
        body.iloc[i, 0] = f"*{body.iloc[i, 0]}*"
    text = f"**{table.title}**\n\n" + body.to_markdown(index=False, disable_numparse=True) + "\n"
    if table.note:
        text += f"\n*Note.* {table.note}\n"
    del first
    return text


_HTML_STYLE = (
    "body{font-family:'DejaVu Sans',Arial,sans-serif;font-size:10pt;margin:2em;}"
    "table{border-collapse:collapse;}caption{text-align:left;font-style:italic;padding-bottom:.5em;}"
    "thead th{border-top:1.5px solid #000;border-bottom:1px solid #000;padding:.25em .6em;text-align:center;}"
    "tbody td{padding:.15em .6em;text-align:center;}tbody td:first-child,thead th:first-child{text-align:left;}"
    "tbody tr:last-child td{border-bottom:1.5px solid #000;}td.section{font-style:italic;}"
    "p.note{max-width:50em;}"
)


def render_html(table: Table) -> str:
    """The table as a standalone HTML5 page (APA rules: lines above and below the header
    and under the last row only).
    """
    e = html.escape
    ncol = len(table.body.columns)
    lines = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        '<head><meta charset="utf-8">',
        f"<title>{e(table.title)}</title>",
        f"<style>{_HTML_STYLE}</style>",
        "</head>",
        "<body>",
        f'<table id="{e(table.name)}">',
        f"<caption>{e(table.title)}</caption>",
        "<thead><tr>"
        + "".join(f"<th>{e(str(c))}</th>" for c in table.body.columns)
        + "</tr></thead>",
        "<tbody>",
    ]
    for i, row in enumerate(table.body.itertuples(index=False)):
        if i in table.sections:
            lines.append(f'<tr><td class="section" colspan="{ncol}">{e(row[0])}</td></tr>')
        else:
            lines.append("<tr>" + "".join(f"<td>{e(v)}</td>" for v in row) + "</tr>")
    lines += ["</tbody>", "</table>"]
    if table.note:
        lines.append(f'<p class="note"><em>Note.</em> {e(table.note)}</p>')
    lines += ["</body>", "</html>"]
    return "\n".join(lines) + "\n"


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "<": r"\textless{}",
    ">": r"\textgreater{}",
    "−": r"$-$",
    "–": "--",
    "—": "---",
    "α": r"$\alpha$",
    "ω": r"$\omega$",
    "²": r"\textsuperscript{2}",
    "≥": r"$\geq$",
    "≤": r"$\leq$",
    "×": r"$\times$",
    "|": r"\textbar{}",
    "±": r"$\pm$",
}


def _tex(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def render_latex(table: Table) -> str:
    """The table as a LaTeX float (needs ``\\usepackage{booktabs, threeparttable}``)."""
    ncol = len(table.body.columns)
    spec = "l" + "c" * (ncol - 1)
    lines = [
        f"% {table.name}: generated by allianceflow; needs \\usepackage{{booktabs,threeparttable}}",
        r"\begin{table}[htbp]",
        r"\centering",
        r"\begin{threeparttable}",
        f"\\caption{{{_tex(table.title)}}}",
        f"\\label{{tab:{table.name}}}",
        f"\\begin{{tabular}}{{{spec}}}",
        r"\toprule",
        " & ".join(_tex(c) for c in table.body.columns) + r" \\",
        r"\midrule",
    ]
    for i, row in enumerate(table.body.itertuples(index=False)):
        if i in table.sections:
            lines.append(f"\\multicolumn{{{ncol}}}{{l}}{{\\textit{{{_tex(row[0])}}}}} \\\\")
        else:
            cells = [
                _tex(v.strip())
                if j
                else (r"\quad " + _tex(v.strip()) if v.startswith("  ") else _tex(v))
                for j, v in enumerate(row)
            ]
            lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    if table.note:
        lines += [
            r"\begin{tablenotes}[flushleft]",
            r"\small",
            f"\\item \\textit{{Note.}} {_tex(table.note)}",
            r"\end{tablenotes}",
        ]
    lines += [r"\end{threeparttable}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def _set_borders(cell, **edges: str) -> None:
    """Set cell borders, e.g. ``top="12"`` (eighths of a point, single line)."""
    from docx.oxml import OxmlElement
    from docx.oxml.ns import qn

    tc_pr = cell._tc.get_or_add_tcPr()
    borders = tc_pr.find(qn("w:tcBorders"))
    if borders is None:
        borders = OxmlElement("w:tcBorders")
        tc_pr.append(borders)
    for edge in ("top", "bottom"):
        if edge in edges:
            element = OxmlElement(f"w:{edge}")
            element.set(qn("w:val"), "single")
            element.set(qn("w:sz"), edges[edge])
            element.set(qn("w:space"), "0")
            element.set(qn("w:color"), "000000")
            borders.append(element)


def _fixed_zip(raw: bytes) -> bytes:
    """Rewrite a zip with every member dated 1980-01-01, fixed attributes and no compression
    (stored: deflate output can differ between zlib builds), in the same order.
    """
    out = _io.BytesIO()
    with (
        zipfile.ZipFile(_io.BytesIO(raw)) as src,
        zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst,
    ):
        for info in src.infolist():
            fixed = zipfile.ZipInfo(info.filename, date_time=_EPOCH)
            fixed.compress_type = zipfile.ZIP_STORED
            fixed.external_attr = 0o600 << 16
            fixed.create_system = 0
            dst.writestr(fixed, src.read(info.filename))
    return out.getvalue()


def render_docx(table: Table) -> bytes:
    """The table as a Word document (.docx bytes), APA layout, identical bytes every run.

    The document's core properties are fixed (author and last editor "allianceflow",
    created and modified 2000-01-01, revision 1) and every zip member is dated 1980-01-01,
    so the same table gives the same bytes; members are stored uncompressed, as deflate
    output differs between zlib builds (python-docx would otherwise stamp the time
    of the run in both places).
    """
    import docx
    from docx.enum.text import WD_ALIGN_PARAGRAPH
    from docx.shared import Pt

    document = docx.Document()
    props = document.core_properties
    props.author = "allianceflow"
    props.last_modified_by = "allianceflow"
    props.title = table.title
    props.created = _FIXED_DATE.replace(tzinfo=None)
    props.modified = _FIXED_DATE.replace(tzinfo=None)
    props.last_printed = _FIXED_DATE.replace(tzinfo=None)
    props.revision = 1
    props.comments = ""
    props.keywords = ""
    style = document.styles["Normal"]
    style.font.name = "Times New Roman"
    style.font.size = Pt(11)
    title = document.add_paragraph()
    title.add_run(table.title).italic = True
    body = table.body
    grid = document.add_table(rows=len(body) + 1, cols=len(body.columns))
    for j, heading in enumerate(body.columns):
        cell = grid.cell(0, j)
        cell.text = str(heading)
        _set_borders(cell, top="12", bottom="8")
        if j:
            cell.paragraphs[0].alignment = WD_ALIGN_PARAGRAPH.CENTER
    last = len(body)
    for i, row in enumerate(body.itertuples(index=False), start=1):
        for j, value in enumerate(row):
            cell = grid.cell(i, j)
            if (i - 1) in table.sections:
                if j == 0:
                    cell.paragraphs[0].add_run(value).italic = True
            else:
                cell.text = value
                if j:
                    cell.paragraphs[0].alignment = WD_ALIGN_PARAGRAPH.CENTER
            if i == last:
                _set_borders(cell, bottom="12")
    if table.note:
        note = document.add_paragraph()
        note.add_run("Note.").italic = True
        note.add_run(f" {table.note}")
    raw = _io.BytesIO()
    document.save(raw)
    return _fixed_zip(raw.getvalue())


def write_table_files(table: Table, paths: Iterable[str | Path]) -> None:
    """Write *table* to each path in the format its suffix names (``.csv`` = the numbers,
    ``.md``, ``.html``, ``.tex``, ``.docx`` = the rendered table), atomically.

    Raises
    ------
    ValueError
        A suffix other than those of :data:`TABLE_FORMATS`.
    """
    from .io import atomic_path, write_table, write_text

    for path in map(Path, paths):
        fmt = path.suffix.lstrip(".").lower()
        if fmt == "csv":
            write_table(table.data, path)
        elif fmt == "md":
            write_text(render_markdown(table), path)
        elif fmt == "html":
            write_text(render_html(table), path)
        elif fmt == "tex":
            write_text(render_latex(table), path)
        elif fmt == "docx":
            with atomic_path(path) as tmp:
                Path(tmp).write_bytes(render_docx(table))
        else:
            raise ValueError(
                f"`paths` must end in .csv, .md, .html, .tex or .docx; got {path.name!r}."
            )
