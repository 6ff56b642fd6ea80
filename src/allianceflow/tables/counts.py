"""Counts by arm: clinically significant change, sudden gains, alliance ruptures."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd

from .._checks import check_columns, check_frame
from .descriptive import _groups
from .formatting import format_number
from .suppression import CellSuppression, _check_min_cell, _heading, cell_text, suppression_note
from .table import Table

__all__ = ["clinical_significance_table", "sudden_gains_table", "ruptures_table"]


@dataclass(frozen=True)
class _Row:
    """One row of a by-arm count table.

    ``kind`` is ``"patients"`` (a count of patients, n (%) of the column's patients),
    ``"events"`` (a count of events, n or n (%) of the count in row ``of``) or ``"mean"``
    (M (SD) of the values *func* returns). ``n_of``: the row whose count is this mean's n
    (the mean size of the gains counted there). ``product_of``: the row whose count is
    this mean times its n (ruptures per patient × patients = ruptures). ``sum_of``: rows
    whose counts add up to this row's, in every column.
    """

    label: str
    var: str
    kind: str
    func: Callable[[pd.DataFrame], Any]
    of: str | None = None
    n_of: str | None = None
    product_of: str | None = None
    sum_of: tuple[str, ...] = ()


def _count_table(
    patients: pd.DataFrame,
    *,
    by: str | None,
    rows: list[_Row],
    min_cell: int,
    name: str,
    title: str,
    note: str,
    patient: str = "patient",
    partition: bool = False,
) -> Table:
    """Build a by-arm count table with suppression that holds (the machinery of the three below).

    Relations a reader can use, all given to :class:`CellSuppression`: in every row the
    Total column is the sum of the arms (the pooled mean for means); the Total n is the sum
    of the arms' ns; with *partition* the patient rows split each column's n; a row with
    ``sum_of`` is the sum of those rows; a percentage is of the column's n or of the count
    in row ``of``.
    """
    check_frame(patients, "patients")
    min_cell = _check_min_cell(min_cell)
    check_columns(patients, patient, name="patients")
    if by is not None and by not in patients.columns:
        by = None
    groups = _groups(patients, by)
    names = [g for g, _ in groups]
    arms = names[:-1]
    n_arm = {g: len(f) for g, f in groups}
    sup = CellSuppression(min_cell)
    for g in names:
        sup.count(("n", g), n_arm[g])
    sup.add_sum(("n", "Total"), [("n", g) for g in arms])
    computed: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:
        for g, frame in groups:
            key = (row.var, g)
            if row.kind == "mean":
                v = pd.to_numeric(row.func(frame), errors="coerce").dropna()
                m = float(v.mean()) if len(v) else None
                sd = float(v.std(ddof=1)) if len(v) > 1 else None
                computed[key] = {"n": len(v), "mean": m, "sd": sd}
                sup.mean(key, m, len(v))
            else:
                c = int(row.func(frame))
                den = n_arm[g] if row.kind == "patients" else None
                if row.of is not None:
                    den = computed[(row.of, g)]["count"]
                pct = 100.0 * c / den if den else None
                computed[key] = {"count": c, "denominator": den, "percent": pct}
                sup.count(key, c, percent=pct)
    for row in rows:
        for g in names:
            key = (row.var, g)
            sup.add_follows(("n", g), key)
            if row.kind == "patients":
                sup.add_percent(key, ("n", g))
            elif row.of is not None:
                sup.add_percent(key, (row.of, g))
            if row.n_of is not None:
                sup.add_follows((row.n_of, g), key)
                sup.add_same_n(key, (row.n_of, g))
            if row.product_of is not None:
                sup.add_product((row.product_of, g), key)
                sup.add_same_n(key, ("n", g))
            if row.sum_of:
                sup.add_sum(key, [(part, g) for part in row.sum_of])
        cells = [(row.var, g) for g in arms]
        if row.kind == "mean":
            sup.add_mean_relation((row.var, "Total"), cells)
        else:
            sup.add_sum((row.var, "Total"), cells)
    if partition:
        counted = [row.var for row in rows if row.kind == "patients"]
        for g in names:
            sup.add_sum(("n", g), [(var, g) for var in counted])
    hidden = sup.solve()
    body_rows, records = [], []
    for row in rows:
        cells = [row.label]
        for g in names:
            key, c, hide = (row.var, g), computed[(row.var, g)], hidden[(row.var, g)]
            if row.kind == "mean":
                text = f"{format_number(c['mean'])} ({format_number(c['sd'])})"
                cells.append(cell_text(hide, mean_sd=text))
                record = {"count": None, "denominator": c["n"], "percent": None}
                record |= {"mean": c["mean"], "sd": c["sd"]}
            else:
                cells.append(cell_text(hide, count=c["count"], percent=c["percent"]))
                record = {k: c[k] for k in ("count", "denominator", "percent")}
                record |= {"mean": None, "sd": None}
            if hide:
                record = dict.fromkeys(record)
            records.append({"variable": row.var, "group": g, **record, "suppressed": hide})
        body_rows.append(cells)
    headings = ["Measure"] + [_heading(g, n_arm[g], hidden[("n", g)]) for g in names]
    columns = ["variable", "group", "count", "denominator", "percent", "mean", "sd", "suppressed"]
    data = pd.DataFrame(records, columns=columns)
    note = f"{note} {suppression_note(min_cell, complementary=bool(sup.complementary))}"
    return Table(
        name=name, title=title, body=pd.DataFrame(body_rows, columns=headings), data=data, note=note
    )


def clinical_significance_table(
    patients: pd.DataFrame,
    *,
    by: str | None = "condition",
    category: str = "rc_category",
    patient: str = "patient",
    min_cell: int = 5,
) -> Table:
    """Tabulate reliable and clinically significant change (Jacobson & Truax, 1991) by arm.

    Parameters
    ----------
    patients : pandas.DataFrame
        One row per patient with *category* (values of
        :data:`allianceflow.clinical.RC_CATEGORIES`; missing when the patient has one
        observed score).
    category : str
        The column of change categories.
    by : str or None
        The arm column; None (or a column the table lacks) gives the Total only.
    patient : str
        The patient id column.
    min_cell : int, default 5
        Counts from 1 to ``min_cell - 1`` and means on fewer than *min_cell* values are
        suppressed, with complementary suppression so that none can be worked out from the
        Total column, the arms' ns or the other cells
        (:mod:`allianceflow.tables.suppression`).

    Returns
    -------
    Table
        Rows recovered, improved, unchanged, deteriorated, harmed and "not assessable", n (%)
        of the arm's patients.
    """
    from ..clinical import RC_CATEGORIES

    check_frame(patients, "patients")
    check_columns(patients, category, name="patients")
    rows = [
        _Row(
            level.capitalize(),
            level,
            "patients",
            lambda f, lv=level: (f[category].astype(object) == lv).sum(),
        )
        for level in RC_CATEGORIES
    ]
    rows.append(
        _Row(
            "Not assessable (one observed score)",
            "not_assessable",
            "patients",
            lambda f: f[category].isna().sum(),
        )
    )
    note = (
        "n (%) of the arm's patients. Recovered = reliable improvement and a move from the "
        "clinical to the functional range; improved = reliable improvement only; deteriorated = "
        "reliable deterioration only; harmed = reliable deterioration and a move from the "
        "functional into the clinical range (the clinicalsignificance R package's names and "
        "order; Jacobson & Truax, 1991), first to last observed score."
    )
    return _count_table(
        patients,
        by=by,
        rows=rows,
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
    """Tabulate sudden gains and losses (Tang & DeRubeis, 1999) by arm.

    Parameters
    ----------
    patients : pandas.DataFrame
        Patients table with ``n_sudden_gains``, ``n_sudden_gains_reversed`` and, when losses
        were searched for, ``n_sudden_losses``.
    gains : pandas.DataFrame, optional
        The events table (:func:`allianceflow.suddengains.sudden_gains`): adds the mean
        magnitude of the gains.
    by : str or None
        The arm column; None (or a column the table lacks) gives the Total only.
    patient : str
        The patient id column.
    min_cell : int, default 5
        Counts from 1 to ``min_cell - 1`` and means on fewer than *min_cell* values are
        suppressed, with complementary suppression so that none can be worked out from the
        Total column, the arms' ns or the other cells
        (:mod:`allianceflow.tables.suppression`).

    Returns
    -------
    Table
        Rows patients with a gain (n (%)), gains, gains reversed (n (% of gains)), the mean
        magnitude of the gains and, when searched for, patients with a loss and losses.
        ``data``: ``variable, group, count, denominator, percent, mean, sd, suppressed``.
    """
    check_frame(patients, "patients")
    check_columns(patients, "n_sudden_gains", "n_sudden_gains_reversed", name="patients")
    rows = [
        _Row(
            "Patients with ≥ 1 sudden gain",
            "patients_with_gain",
            "patients",
            lambda f: (f["n_sudden_gains"] > 0).sum(),
        ),
        _Row("Sudden gains", "gains", "events", lambda f: f["n_sudden_gains"].sum()),
        _Row(
            "Gains reversed, n (% of gains)",
            "gains_reversed",
            "events",
            lambda f: f["n_sudden_gains_reversed"].sum(),
            of="gains",
        ),
    ]
    if gains is not None and len(gains):
        check_columns(gains, patient, "event", "magnitude", name="gains")
        g = gains[gains["event"].astype(str) == "gain"]
        rows.append(
            _Row(
                "Magnitude of gains, M (SD)",
                "gain_magnitude",
                "mean",
                lambda f: g.loc[g[patient].isin(f[patient]), "magnitude"],
                n_of="gains",
            )
        )
    if "n_sudden_losses" in patients.columns:
        rows.append(
            _Row(
                "Patients with ≥ 1 sudden loss",
                "patients_with_loss",
                "patients",
                lambda f: (f["n_sudden_losses"] > 0).sum(),
            )
        )
        rows.append(_Row("Sudden losses", "losses", "events", lambda f: f["n_sudden_losses"].sum()))
    note = (
        "Sudden gains after Tang and DeRubeis (1999): a between-session improvement at least "
        "the reliable change value, at least 25% of the pre-gain score, and larger than the "
        "fluctuation of the surrounding sessions; reversed = more than half of the gain lost later."
    )
    return _count_table(
        patients,
        by=by,
        rows=rows,
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
    by : str or None
        The arm column; None (or a column the table lacks) gives the Total only.
    patient : str
        The patient id column.
    min_cell : int, default 5
        Counts from 1 to ``min_cell - 1`` and means on fewer than *min_cell* values are
        suppressed, with complementary suppression so that none can be worked out from the
        Total column, the arms' ns or the other cells
        (:mod:`allianceflow.tables.suppression`).

    Returns
    -------
    Table
        Rows patients with a rupture (n (%)), ruptures per patient (M (SD)), ruptures, and
        repaired, not repaired and censored ruptures (n (% of ruptures)).
        ``data``: ``variable, group, count, denominator, percent, mean, sd, suppressed``.
    """
    check_frame(patients, "patients")
    check_columns(
        patients, "n_ruptures", "n_repaired", "n_unrepaired", "n_censored", name="patients"
    )
    rows = [
        _Row(
            "Patients with ≥ 1 rupture",
            "patients_with_rupture",
            "patients",
            lambda f: (f["n_ruptures"] > 0).sum(),
        ),
        _Row(
            "Ruptures per patient, M (SD)",
            "ruptures_per_patient",
            "mean",
            lambda f: f["n_ruptures"],
            product_of="ruptures",
        ),
        _Row(
            "Ruptures",
            "ruptures",
            "events",
            lambda f: f["n_ruptures"].sum(),
            sum_of=("repaired", "unrepaired", "censored"),
        ),
    ]
    for var, label in (
        ("repaired", "Repaired"),
        ("unrepaired", "Not repaired"),
        ("censored", "Censored"),
    ):
        rows.append(
            _Row(
                f"{label}, n (% of ruptures)",
                var,
                "events",
                lambda f, v=var: f[f"n_{v}"].sum(),
                of="ruptures",
            )
        )
    if "n_coded_ruptures" in patients.columns:
        rows.append(
            _Row(
                "Coded ruptures (observer)",
                "coded",
                "events",
                lambda f: f["n_coded_ruptures"].sum(),
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
        rows=rows,
        min_cell=min_cell,
        name="ruptures",
        title="Alliance Ruptures and Repair by Arm",
        note=note,
        patient=patient,
    )
