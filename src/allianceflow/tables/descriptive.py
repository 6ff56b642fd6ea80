"""Descriptive tables: reliability, the sample by arm (Table 1), intake correlations."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from .._checks import check_columns, check_frame
from .formatting import DEFAULT_LABELS, format_number, format_r
from .render import render_markdown
from .suppression import (
    CellSuppression,
    _check_min_cell,
    _heading,
    cell_text,
    suppression_note,
)
from .table import Table

__all__ = ["reliability_markdown", "reliability_table", "table1", "intake_correlations"]


def reliability_markdown(table: pd.DataFrame) -> str:
    """Reliability (alpha and omega with 95% CIs) per instrument, scale and occasion."""
    return render_markdown(reliability_table(table))


def reliability_table(table: pd.DataFrame) -> Table:
    """Tabulate internal consistency per instrument, scale and occasion.

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
            "α 95% CI": [
                ci(a, b) for a, b in zip(table["alpha_ci_low"], table["alpha_ci_high"], strict=True)
            ],
            "ω": table["omega"].map(format_r),
            "ω 95% CI": [
                ci(a, b) for a, b in zip(table["omega_ci_low"], table["omega_ci_high"], strict=True)
            ],
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


def _intake_rows(data: pd.DataFrame, patient: str, session: str) -> pd.DataFrame:
    return (
        data.sort_values([patient, session], kind="mergesort")
        .groupby(patient, observed=True, sort=True)
        .head(1)
        .set_index(patient)
    )


def _count_row(
    sup: CellSuppression, row: tuple[str, str], counts: Mapping[str, int], names: Sequence[str]
) -> None:
    """Add one row of counts by arm (the last of *names* is the Total) and its sum."""
    for g in names:
        sup.count((*row, g), counts[g])
        sup.add_follows(("n", g), (*row, g))
    sup.add_sum((*row, "Total"), [(*row, g) for g in names[:-1]])


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
        Counts from 1 to ``min_cell - 1`` and M (SD) on fewer than *min_cell* values are
        suppressed, with complementary suppression so that no suppressed cell can be worked
        out from the totals, the column's n or the other cells
        (:mod:`allianceflow.tables.suppression`).

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
    ['Patients, n', 'suppressed', 'suppressed', '3']
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
    names = [g for g, _ in groups]
    arms = names[:-1]
    n_arm = {g: len(f) for g, f in groups}
    sup = CellSuppression(min_cell)
    for g in names:
        sup.count(("n", g), n_arm[g])
    sup.add_sum(("n", "Total"), [("n", g) for g in arms])

    # every cell of the table, with the relations a reader can use
    has_therapists = therapist is not None and therapist in per_patient.columns
    if has_therapists:
        counts = {g: int(f[therapist].nunique()) for g, f in groups}
        # sub-additive when arms share therapists; stated as a sum, which only hides more
        _count_row(sup, ("therapists", ""), counts, names)
    # (variable, label, column of per_patient, a score at intake)
    described = [("sessions", "Sessions attended, M (SD)", "_sessions", False)]
    if "weeks" in per_patient.columns and per_patient["weeks"].notna().any():
        described.append(("weeks", "Weeks in treatment, M (SD)", "weeks", False))
    described += [(c, f"  {label}", c, True) for c, label in continuous.items()]
    stats_of: dict[tuple[int, str], tuple[int, float | None, float | None]] = {}
    for i, (_, _, source, _) in enumerate(described):
        for g, f in groups:
            v = pd.to_numeric(f[source], errors="coerce").dropna()
            m = float(v.mean()) if len(v) else None
            sd = float(v.std(ddof=1)) if len(v) > 1 else None
            stats_of[(i, g)] = (len(v), m, sd)
            sup.mean(("mean", i, g), m, len(v))
            sup.add_follows(("n", g), ("mean", i, g))
            if source == "_sessions":  # every patient has a number of sessions
                sup.add_same_n(("mean", i, g), ("n", g))
        sup.add_mean_relation(("mean", i, "Total"), [("mean", i, g) for g in arms])
    levels_of: dict[str, list[str]] = {}
    counts_of: dict[tuple[str, str, str], int] = {}
    for column in categorical:
        present = set(per_patient[column].dropna().astype(str))
        if isinstance(per_patient[column].dtype, pd.CategoricalDtype):  # the categories' order
            levels = [str(c) for c in per_patient[column].cat.categories if str(c) in present]
        else:
            levels = sorted(present)
        levels += ["Missing"] if per_patient[column].isna().any() else []
        levels_of[column] = levels
        for g, f in groups:
            values = f[column].astype(object).where(f[column].notna(), "Missing").astype(str)
            counts = values.value_counts().reindex(levels, fill_value=0)
            for lv in levels:
                counts_of[(column, lv, g)] = int(counts[lv])
        for lv in levels:
            _count_row(sup, (column, lv), {g: counts_of[(column, lv, g)] for g in names}, names)
            for g in names:
                sup.add_percent((column, lv, g), ("n", g))
        for g in names:  # the levels (with Missing) split the column's patients
            sup.add_sum(("n", g), [(column, lv, g) for lv in levels])
    hidden = sup.solve()

    records: list[dict[str, Any]] = []
    rows: list[list[str]] = []
    sections: list[int] = []

    def record(variable: str, level: str, g: str, hide: bool, **values: Any) -> None:
        shown = {"n": None, "count": None, "percent": None, "mean": None, "sd": None}
        if not hide:
            shown |= values
        records.append(
            {"variable": variable, "level": level, "group": g, **shown, "suppressed": hide}
        )

    row = ["Patients, n"]
    for g in names:
        hide = hidden[("n", g)]
        row.append(cell_text(hide, count=n_arm[g]))
        record("patients", "", g, hide, n=n_arm[g], count=n_arm[g])
    rows.append(row)
    if has_therapists:
        row = ["Therapists, n"]
        for g, f in groups:
            k, hide = int(f[therapist].nunique()), hidden[("therapists", "", g)]
            row.append(cell_text(hide, count=k))
            record("therapists", "", g, hide, n=n_arm[g], count=k)
        rows.append(row)
    for i, (column, label, _, at_intake) in enumerate(described):
        if at_intake and not described[i - 1][3]:
            sections.append(len(rows))
            rows.append(["At intake, M (SD)"] + [""] * len(groups))
        row = [label]
        for g in names:
            n, m, sd = stats_of[(i, g)]
            hide = hidden[("mean", i, g)]
            text = f"{format_number(m)} ({format_number(sd)})"
            row.append(cell_text(hide, mean_sd=text))
            record(column, "", g, hide, n=n, mean=m, sd=sd)
        rows.append(row)
    for column, label in categorical.items():
        sections.append(len(rows))
        rows.append([f"{label}, n (%)"] + [""] * len(groups))
        for g in names:  # the CSV lists a column's levels together
            for lv in levels_of[column]:
                c, hide = counts_of[(column, lv, g)], hidden[(column, lv, g)]
                pct = 100.0 * c / n_arm[g] if n_arm[g] else None
                record(column, lv, g, hide, n=n_arm[g], count=c, percent=pct)
        for lv in levels_of[column]:
            row = [f"  {lv}"]
            for g in names:
                c, hide = counts_of[(column, lv, g)], hidden[(column, lv, g)]
                pct = 100.0 * c / n_arm[g] if n_arm[g] else None
                row.append(cell_text(hide, count=c, percent=pct))
            rows.append(row)

    headings = ["Characteristic"] + [_heading(g, n_arm[g], hidden[("n", g)]) for g in names]
    body = pd.DataFrame(rows, columns=headings)
    data = pd.DataFrame(
        records,
        columns=["variable", "level", "group", "n", "count", "percent", "mean", "sd", "suppressed"],
    )
    note = (
        "Intake = each patient's first recorded session. Percentages are of the patients in "
        "the column. " + suppression_note(min_cell, complementary=bool(sup.complementary))
    )
    return Table(
        name="table1",
        title="Sample Characteristics by Arm",
        body=body,
        data=data,
        note=note,
        sections=tuple(sections),
    )


def _pearson(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    r"""Pearson's *r* of two complete vectors and its two-sided *p*, as ``scipy.stats.pearsonr``.

    The same arithmetic as SciPy's ``pearsonr`` (each vector centred, its norm taken after
    scaling by its largest absolute deviation, *r* clipped to [-1, 1]) and the same exact
    null distribution: under independence of two normal variables :math:`(r + 1)/2` follows
    :math:`\mathrm{Beta}(n/2 - 1,\ n/2 - 1)`, so
    :math:`p = 2\,\bigl(1 - I_{(|r|+1)/2}(n/2 - 1, n/2 - 1)\bigr)`, which equals the *t*
    test :math:`t = r\sqrt{(n-2)/(1-r^2)}` on *n* − 2 df (Kendall & Stuart; SciPy's
    documentation of ``pearsonr``). Written out so that a table job need not import
    ``scipy.stats`` (about 1 CPU-s); a test checks it equals ``pearsonr`` exactly for three
    or more pairs. A constant vector (every value equal, as ``pearsonr`` tests it) or fewer
    than three pairs give NaN for both.
    """
    from scipy import special

    if len(x) < 3 or (x == x[0]).all() or (y == y[0]).all():  # as pearsonr: no correlation
        return math.nan, math.nan
    xm, ym = x - x.mean(), y - y.mean()
    xmax, ymax = np.abs(xm).max(), np.abs(ym).max()
    normxm = xmax * np.linalg.vector_norm(xm / xmax)
    normym = ymax * np.linalg.vector_norm(ym / ymax)
    r = float(np.clip(np.vecdot(xm / normxm, ym / normym), -1.0, 1.0))
    ab = len(x) / 2 - 1
    return r, float(2 * special.betaincc(ab, ab, (abs(r) + 1) / 2))


def intake_correlations(
    analysis: pd.DataFrame,
    columns: Mapping[str, str] | Sequence[str] | None = None,
    *,
    patient: str = "patient",
    session: str = "session",
    min_cell: int = 5,
) -> Table:
    r"""Correlate the alliance and outcome scores at intake (Pearson).

    Parameters
    ----------
    analysis : pandas.DataFrame
        Session-level table.
    columns : mapping or sequence, optional
        Scores to correlate (column → label); default ``alliance``, ``outcome`` and the
        alliance subscales (``wai_sr_task``, ``wai_sr_bond``, ``wai_sr_goal``) present.
    min_cell : int
        Pairs with fewer complete patients are not shown (nor, in the CSV, their n when it
        is from 1 to ``min_cell - 1``); a score's M and SD on fewer than *min_cell* patients
        and its n from 1 to ``min_cell - 1`` are "suppressed". The table has no margins, so
        no complementary suppression is needed.

    Returns
    -------
    Table
        ``body``: lower triangle of r with significance marks, then M and SD rows.
        ``data``: ``var1, var2, n, r, ci_low, ci_high, p`` per pair (Fisher-z 95% CI).

    Notes
    -----
    The 95% CI is :math:`\tanh(\operatorname{artanh} r \pm 1.96/\sqrt{n-3})`; *p* from
    :math:`t = r\sqrt{(n-2)/(1-r^2)}` on *n* − 2 df (pairwise complete patients).
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
                r, p = _pearson(pair[a].to_numpy(float), pair[b].to_numpy(float))
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
                        "n": None if 0 < n < min_cell else n,
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
    n_of = {c: int(values[c].notna().sum()) for c in names}
    few = {c: n_of[c] < min_cell for c in names}
    rows.append(["M"] + [cell_text(few[c], mean_sd=format_number(values[c].mean())) for c in names])
    rows.append(
        ["SD"] + [cell_text(few[c], mean_sd=format_number(values[c].std(ddof=1))) for c in names]
    )
    rows.append(["n"] + [cell_text(0 < n_of[c] < min_cell, count=n_of[c]) for c in names])
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
