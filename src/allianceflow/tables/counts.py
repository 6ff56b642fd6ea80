"""Counts by arm: clinically significant change, sudden gains, alliance ruptures."""

from __future__ import annotations

from typing import Any

import pandas as pd

from .._checks import check_columns, check_frame
from .descriptive import _groups
from .formatting import format_number
from .suppression import _check_min_cell, _count_cell, _heading, _suppress_block
from .table import Table

__all__ = ["clinical_significance_table", "sudden_gains_table", "ruptures_table"]


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
    """Build a by-arm count table (the shared machinery of the three below).

    *partition*: the patient rows split each arm, so a column's hidden cells need a second
    hidden cell too.

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
                row.append(
                    f"n < {min_cell}" if hide else f"{format_number(m)} ({format_number(s)})"
                )
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
    headings = ["Measure"] + [_heading(g, n_arm[g], hide_arm[g], min_cell) for g, _ in groups]
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
    from ..clinical import RC_CATEGORIES

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
    """Tabulate detected alliance ruptures and their repair by arm.

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
