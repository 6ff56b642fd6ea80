"""Descriptive tables: reliability, the sample by arm (Table 1), intake correlations."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
from scipy import stats

from .._checks import check_columns, check_frame
from .formatting import DEFAULT_LABELS, format_number, format_r
from .render import render_markdown
from .suppression import _check_min_cell, _count_cell, _heading, _suppress_block
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
            row.append(
                "n < " + str(min_cell) if hide else f"{format_number(m)} ({format_number(s)})"
            )
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
        _heading(g, n_arm[g], hide_arm[g], min_cell) for g, _ in groups
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
    r"""Correlate the alliance and outcome scores at intake (Pearson).

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
    rows.append(["M"] + [format_number(values[c].mean()) for c in names])
    rows.append(["SD"] + [format_number(values[c].std(ddof=1)) for c in names])
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
