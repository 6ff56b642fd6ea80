"""The last step of the clean stage: the canonical table, its contract and the flow counts."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ..contract import ITEM_PATTERN, validate_sessions
from ..privacy import pseudonymise
from .state import ENDING_TYPES, ID_COLUMNS, CleanResult, CleanRun, sort_rows

__all__ = ["finish", "flow_counts", "score_losses", "reconcile"]


def finish(run: CleanRun) -> None:
    """Days since the first session, keyed hashes, types, the data contract and the flow."""
    # The last step: it works on the run's own table instead of a copy (at 10^6 rows a
    # copy is several hundred megabytes).
    f = run.frame
    f["session"] = f["session"].astype("int64")
    if run.has_dates:
        first = f.groupby("patient")["date"].transform("min")
        f["days"] = (f["date"] - first).dt.days.astype("float64")
        if run.extraction is not None:
            f["followup_days"] = (run.extraction - first.dt.normalize()).dt.days.astype("float64")
        del f["date"]
    elif "days" in f:
        f["days"] = f["days"].astype("float64")
    if "followup_days" in f:
        f["followup_days"] = f["followup_days"].astype("float64")
    exclusions = run.exclusions()
    patient_rule = run.patient_rule
    if run.salt is not None:
        for col in run.id_cols:
            f[col] = pseudonymise(f[col], run.salt)
        exclusions["patient"] = pseudonymise(exclusions["patient"], run.salt)
        patient_rule = dict(
            zip(
                pseudonymise(pd.Series(list(patient_rule), dtype=object), run.salt),
                patient_rule.values(),
                strict=True,
            )
        )
    for col in run.id_cols:
        f[col] = f[col].astype(object)
    for col in ("condition", "informant", "rupture", "modality", "role"):
        if col in f:
            f[col] = f[col].astype("category")
    for col in [c for c in f if c.startswith("moderator_")]:
        f[col] = f[col].astype("category")
    if "ending" in f:
        f["ending"] = pd.Categorical(f["ending"], categories=list(ENDING_TYPES))
    # Sorted by the keys alone, then the kept columns taken once in that order.
    order = sort_rows(f[run.keys], run.keys).index
    rows = f["_source_row"].loc[order]
    value_cols = run.value_cols
    kept = [c for c in f.columns if c in value_cols or c in ("days", "followup_days")]
    kept = [c for c in ID_COLUMNS if c in kept] + [c for c in kept if c not in ID_COLUMNS]
    sessions = f.loc[order, kept]
    validate_sessions(sessions, ranges=run.ranges, source=run.source, rows=rows)
    sessions.index = pd.RangeIndex(len(sessions))
    flow = flow_counts(run, sessions, exclusions, patient_rule)
    if "system" in sessions:
        from .systems import system_flow

        system_rule = run.system_rule
        if run.salt is not None:
            system_rule = dict(
                zip(
                    pseudonymise(pd.Series(list(system_rule), dtype=object), run.salt),
                    system_rule.values(),
                    strict=True,
                )
            )
        flow["systems"] = system_flow(
            sessions, run.systems_read, system_rule, run.study.get("distinguishable", "auto")
        )
    run.result = CleanResult(sessions=sessions, exclusions=exclusions, flow=flow)


def score_losses(
    sessions: pd.DataFrame, instruments: dict[str, tuple[float, float, int]], max_missing
) -> dict[str, dict[str, Any]]:
    """Kept sessions whose instrument total will be missing because of missing items.

    A session that answered at least one item of an instrument but left more than the
    instrument's ``max_missing`` unanswered gets no total in the score stage (unmapped
    items count as unanswered); this counts them per instrument, before scoring, so the
    loss is stated in ``flow.json`` and not only in a log warning.

    Returns
    -------
    dict
        Instrument id → ``items``, ``max_missing``, ``sessions`` (kept sessions with any
        item answered), ``sessions_without_total`` and their ``share``.
    """
    out = {}
    for ident, (_low, _high, n_items) in sorted(instruments.items()):
        cols = [
            c
            for c in sessions.columns
            if (m := ITEM_PATTERN.match(c)) and m["instrument"] == ident and c not in ID_COLUMNS
        ]
        if not cols:
            continue
        answered = sessions[cols].notna().sum(axis=1)
        administered = answered > 0
        lost = administered & (n_items - answered > max_missing[ident])
        n = int(administered.sum())
        out[ident] = {
            "items": int(n_items),
            "max_missing": int(max_missing[ident]),
            "sessions": n,
            "sessions_without_total": int(lost.sum()),
            "share": float(np.round(lost.sum() / n, 4)) if n else 0.0,
        }
    return out


def flow_counts(
    run: CleanRun, sessions: pd.DataFrame, exclusions: pd.DataFrame, patient_rule: dict
) -> dict[str, Any]:
    """Count rows and patients read, kept and excluded by rule, and values missing by column."""
    removed = exclusions[exclusions["action"].isin(["excluded", "error"])]
    actions = {}
    for action in ("flagged", "altered", "set_missing"):
        part = exclusions[exclusions["action"] == action]
        actions[action] = {k: int(v) for k, v in part["rule"].value_counts().sort_index().items()}
    kept_patients = set(sessions["patient"])
    read_patients = kept_patients | set(removed["patient"].dropna())
    gone = read_patients - kept_patients
    by_rule = (
        pd.Series([patient_rule.get(p, "unknown") for p in gone], dtype=object)
        .value_counts()
        .sort_index()
    )
    by_column = {}
    for col, counts in run.missing_by_column.items():
        shown = "days" if col == "date" else col  # dates become days since the first session
        kept = int(sessions[shown].isna().sum()) if shown in sessions else 0
        by_column[col] = {**counts, "kept_missing": kept}
    scores = score_losses(sessions, run.instruments, run.max_missing)
    warnings = [
        f"{ident}: {s['sessions_without_total']} of {s['sessions']} kept sessions "
        f"({100 * s['share']:.1f}%) will have no {ident}_total, because more than "
        f"{s['max_missing']} of its {s['items']} items are blank or coded missing; set "
        f"`max_missing` for {ident} under the study's `instruments` if its protocol prorates."
        for ident, s in scores.items()
        if s["sessions_without_total"]
    ]
    flow = {
        "source_file": run.source,
        "format": "wide" if run.wide else "long",
        "source_rows_read": int(run.source_rows),
        "sessions": {
            "read": int(run.rows_read),
            "kept": int(len(sessions)),
            "excluded": int(len(removed)),
            "excluded_by_rule": {
                k: int(v) for k, v in removed["rule"].value_counts().sort_index().items()
            },
            "flagged_by_rule": actions["flagged"],
            "altered_by_rule": actions["altered"],
        },
        "patients": {
            "read": len(read_patients),
            "kept": len(kept_patients),
            "excluded": len(gone),
            "excluded_by_rule": {k: int(v) for k, v in by_rule.items()},
            "rows_without_patient_id": int(removed["patient"].isna().sum()),
        },
        "values": {
            "missing_code": int(sum(run.missing_counts.values())),
            "set_missing_by_rule": actions["set_missing"],
            "missing_by_column": by_column,
        },
        "scores": scores,
        "warnings": warnings,
    }
    return flow


def reconcile(flow: dict[str, Any]) -> list[str]:
    """List the ways *flow* fails to reconcile; an empty list when it does.

    Checks, at session and at patient level (and at system level when the study has
    systems), ``read == kept + excluded`` and that the per-rule counts sum to ``excluded``.
    """
    problems = []
    for level in ("sessions", "patients", "systems"):
        if level not in flow:  # systems: only when a column is mapped to 'system'
            continue
        block = flow[level]
        if block["read"] != block["kept"] + block["excluded"]:
            problems.append(
                f"{level}: read {block['read']} != kept {block['kept']} + excluded "
                f"{block['excluded']}"
            )
        total = sum(block["excluded_by_rule"].values())
        if total != block["excluded"]:
            problems.append(f"{level}: excluded_by_rule sums to {total}, not {block['excluded']}")
    return problems
