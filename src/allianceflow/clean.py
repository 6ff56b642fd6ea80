"""Turn a raw session export into the canonical session table.

Every row read is either kept or excluded with a reason: the exclusions table names the
source file, the source row (the line a spreadsheet shows), the rule and the reason, and
the flow counts reconcile ``rows_read == rows_kept + rows_excluded``.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "CleanResult",
    "DataError",
    "clean_sessions",
    "map_columns",
    "EXCLUSION_COLUMNS",
    "ID_COLUMNS",
]

#: Canonical id and design columns; every other mapped column must be ``<instrument>_<item>``.
ID_COLUMNS = ("patient", "therapist", "session", "date", "days", "condition", "informant", "rupture")
_REQUIRED = ("patient", "session")
#: Columns of ``exclusions.csv``.
EXCLUSION_COLUMNS = ["source_file", "source_row", "patient", "session", "rule", "reason"]
_ITEM = re.compile(r"^[a-z][a-z0-9]*(?:_[a-z0-9]+)*_\d+$")


class DataError(ValueError):
    """A raw file cannot be turned into the canonical table; the message says how to fix it."""


@dataclass
class CleanResult:
    """What :func:`clean_sessions` returns."""

    sessions: pd.DataFrame
    exclusions: pd.DataFrame
    flow: dict[str, Any] = field(default_factory=dict)


def _closest(name: str, candidates) -> str:
    matches = difflib.get_close_matches(name, list(candidates), n=3, cutoff=0.3)
    return ", ".join(repr(m) for m in matches) if matches else "none similar"


def map_columns(raw: pd.DataFrame, columns: dict[str, str], *, source: str) -> pd.DataFrame:
    """Rename raw columns to canonical names and keep only the mapped ones.

    Raises
    ------
    DataError
        When a mapped raw column is not in the file (the message lists the file's closest
        columns), a canonical name is neither an id column nor ``<instrument>_<item>``, or
        a required canonical column (patient, session) is not mapped.
    """
    present = [c for c in raw.columns if c != "_source_row"]
    for raw_name, canonical in columns.items():
        if raw_name not in raw.columns:
            raise DataError(
                f"{source}: the config maps column {raw_name!r} to {canonical!r}, but the file "
                f"has no column {raw_name!r}. Closest columns in the file: "
                f"{_closest(raw_name, present)}. Fix the name under `columns` in config.yaml."
            )
        if canonical not in ID_COLUMNS and not _ITEM.match(canonical):
            raise DataError(
                f"{source}: column {raw_name!r} is mapped to {canonical!r}, which is neither a "
                f"canonical column ({', '.join(ID_COLUMNS)}) nor an item name such as 'ors_1'."
            )
    mapped = set(columns.values())
    for required in _REQUIRED:
        if required not in mapped:
            raise DataError(
                f"{source}: no column is mapped to {required!r}. Closest columns in the file: "
                f"{_closest(required, present)}. Add `<raw name>: {required}` under `columns`."
            )
    out = raw[["_source_row", *columns]].rename(columns=columns)
    return out


def _to_number(values: pd.Series, column: str, source: str, rows: pd.Series) -> pd.Series:
    text = values.str.strip()
    numbers = pd.to_numeric(text.replace("", np.nan), errors="coerce").astype("float64")
    bad = (numbers.isna() & text.ne("") & text.notna()).fillna(False).astype(bool)
    if bad.any():
        first = bad.idxmax()
        raise DataError(
            f"{source}, row {rows[first]}, column {column!r}: {values[first]!r} is not a number. "
            f"Correct the value, or declare it under `missing_codes` if it means 'missing'."
        )
    return numbers


def clean_sessions(raw: pd.DataFrame, study: dict[str, Any], *, source: str) -> CleanResult:
    """Clean one raw export (as read by :func:`allianceflow.io.read_raw`).

    Parameters
    ----------
    raw : pandas.DataFrame
        Text columns plus ``_source_row``.
    study : dict
        The study's block of the validated config (``columns``, ``missing_codes``,
        ``labels``, ``date_format``).
    source : str
        The file name, used in exclusions and messages.

    Returns
    -------
    CleanResult
        ``sessions``: the canonical table sorted by patient and session, with ``days``
        since the patient's first session (calendar dates are dropped); ``exclusions``:
        one row per excluded source row; ``flow``: counts that reconcile.

    Notes
    -----
    Rules, in order: declared missing codes become missing; rows without a patient id or
    session number are excluded (``missing_id``); identical duplicate rows keep their first
    copy (``duplicate_identical``); rows that share patient, session and informant but
    differ elsewhere are all excluded (``duplicate_conflicting``).
    """
    frame = map_columns(raw, study["columns"], source=source)
    rows = frame["_source_row"]
    codes = {str(c).strip() for c in study.get("missing_codes", [])}
    value_cols = [c for c in frame.columns if c != "_source_row"]
    for col in value_cols:
        text = frame[col].astype("string").str.strip()
        frame[col] = text.mask(text.isin(codes) | text.eq(""), other=pd.NA)

    items = [c for c in value_cols if c not in ID_COLUMNS]
    for col in items + ["session"]:
        frame[col] = _to_number(frame[col].astype("string").fillna(""), col, source, rows)
    for col, mapping in study.get("labels", {}).items():
        if col in frame:
            frame[col] = frame[col].map(lambda v, m=mapping: m.get(v, v) if pd.notna(v) else v)

    excluded: list[pd.DataFrame] = []

    def exclude(mask: pd.Series, rule: str, reason: str) -> None:
        nonlocal frame
        if mask.any():
            part = frame.loc[mask]
            excluded.append(
                pd.DataFrame(
                    {
                        "source_file": source,
                        "source_row": part["_source_row"].to_numpy(),
                        "patient": part["patient"].astype("string").to_numpy(),
                        "session": part["session"].to_numpy(),
                        "rule": rule,
                        "reason": reason,
                    }
                )
            )
            frame = frame.loc[~mask]

    exclude(frame["patient"].isna() | frame["session"].isna(), "missing_id", "patient id or session number is empty")
    keys = ["patient", "session"] + (["informant"] if "informant" in frame else [])
    content = [c for c in frame.columns if c != "_source_row"]
    exclude(frame.duplicated(content, keep="first"), "duplicate_identical", "identical copy of an earlier row; the first copy is kept")
    exclude(frame.duplicated(keys, keep=False), "duplicate_conflicting", "same patient, session and informant as another row with different values; all copies excluded")

    frame = frame.copy()
    frame["session"] = frame["session"].astype("int64")
    if "date" in frame:
        dates = pd.to_datetime(frame["date"], format=study.get("date_format", "%Y-%m-%d"), errors="coerce")
        bad = dates.isna() & frame["date"].notna()
        if bad.any():
            first = bad.idxmax()
            raise DataError(
                f"{source}, row {frame.loc[first, '_source_row']}, column 'date': "
                f"{frame.loc[first, 'date']!r} does not match the date format "
                f"{study.get('date_format')!r}. Set `date_format` for this study in config.yaml."
            )
        first_date = dates.groupby(frame["patient"]).transform("min")
        frame["days"] = (dates - first_date).dt.days.astype(float)
        frame = frame.drop(columns="date")
    for col in ("patient", "therapist"):
        if col in frame:
            frame[col] = frame[col].astype("string").astype(object)
    for col in ("condition", "informant", "rupture"):
        if col in frame:
            frame[col] = frame[col].astype("category")
    frame = frame.sort_values(keys, kind="mergesort").reset_index(drop=True)

    exclusions = (
        pd.concat(excluded, ignore_index=True)
        if excluded
        else pd.DataFrame({c: pd.Series(dtype=object) for c in EXCLUSION_COLUMNS})
    )
    exclusions = exclusions.sort_values(["source_row", "rule"], kind="mergesort").reset_index(drop=True)
    by_rule = exclusions["rule"].value_counts().sort_index().to_dict()
    patients_read = raw_patients = frame["patient"].nunique() + len(
        set(exclusions["patient"].dropna()) - set(frame["patient"])
    )
    flow = {
        "source_file": source,
        "sessions": {
            "read": int(len(raw)),
            "kept": int(len(frame)),
            "excluded": int(len(exclusions)),
            "excluded_by_rule": {k: int(v) for k, v in by_rule.items()},
        },
        "patients": {
            "read": int(patients_read),
            "kept": int(frame["patient"].nunique()),
            "excluded": int(raw_patients - frame["patient"].nunique()),
        },
    }
    sessions = frame.drop(columns="_source_row")
    return CleanResult(sessions=sessions, exclusions=exclusions, flow=flow)
