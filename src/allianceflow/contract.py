"""The data contract of the canonical session table, as a pandera schema.

The clean stage validates its output against :func:`session_schema` before anything is
written; the score stage may validate its input the same way. The schema fixes the types
of the canonical table (DESIGN.md), the response range of every item column whose
instrument is known, session numbers from 1, non-empty ids and one row per patient ×
session × informant.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING

import pandas as pd

from .io import DataError, _per_value

# pandera is imported where a schema is built or checked, so that a job which only reads
# ENDING_TYPES (derive, the table and figure jobs) does not import it (~0.35 CPU-s).
if TYPE_CHECKING:
    import pandera.pandas as pa

__all__ = ["session_schema", "validate_sessions", "item_ranges", "ITEM_PATTERN"]

#: Recorded ending types (the same as :data:`allianceflow.clean.ENDING_TYPES`).
ENDING_TYPES = ("planned", "unilateral", "dropout", "ongoing")

#: Item columns are ``<instrument>_<item number>``.
ITEM_PATTERN = re.compile(r"^(?P<instrument>[a-z][a-z0-9]*(?:_[a-z0-9]+)*)_(?P<item>\d+)$")


def _id_check() -> pa.Check:
    """The check of an id column: no empty (or all-blank) id."""
    import pandera.pandas as pa

    return pa.Check(
        lambda s: _per_value(s, lambda u: u.astype(str).str.strip().str.len() > 0),
        element_wise=False,
        error="id must not be empty",
    )


def item_ranges(
    columns, instruments: Mapping[str, tuple[float, float]]
) -> dict[str, tuple[float, float]]:
    """Response range of each item column in *columns* whose instrument is in *instruments*.

    Parameters
    ----------
    columns : iterable of str
        Column names; those matching ``<instrument>_<n>`` are looked up.
    instruments : mapping
        Instrument id → ``(response_min, response_max)``. The longest matching id wins, so
        ``wai_sr_3`` belongs to ``wai_sr`` even when an instrument ``wai`` exists.

    Returns
    -------
    dict
        Item column → ``(min, max)``.
    """
    out = {}
    ids = sorted(instruments, key=len, reverse=True)
    for column in columns:
        for ident in ids:
            rest = column[len(ident) + 1 :] if column.startswith(ident + "_") else ""
            if rest.isdigit():
                out[column] = tuple(float(v) for v in instruments[ident])
                break
    return out


def session_schema(
    columns,
    *,
    ranges: Mapping[str, tuple[float, float]] | None = None,
) -> pa.DataFrameSchema:
    """Build the pandera schema of a canonical session table with these *columns*.

    Parameters
    ----------
    columns : iterable of str
        The table's columns; optional canonical columns (therapist, system, role, days,
        condition, informant, rupture, ending, followup_days) get their rule only when
        present, item columns (``<instrument>_<n>``) are float64.
    ranges : mapping, optional
        Item column → ``(min, max)`` response range (see :func:`item_ranges`), or
        ``(min, max, code)`` for an instrument with a "does not apply" code (allowed too).

    Returns
    -------
    pandera.DataFrameSchema
        Strict (no other columns), checking: ``patient`` non-empty text; ``therapist``
        text; ``system`` (couple or family id) non-empty text; ``role`` category;
        ``session`` int64 ≥ 1; ``days`` float64 ≥ 0; ``condition``, ``informant``,
        ``rupture``, ``modality`` (session: in person, video, telephone) and patient-level
        ``moderator_<name>`` categories; ``ending`` a category of planned, unilateral, dropout,
        ongoing; ``followup_days`` float64 ≥ 0; items float64 within their range (missing
        allowed); one
        row per patient × session (× informant).
    """
    columns = list(columns)
    ranges = dict(ranges or {})
    import pandera.pandas as pa

    nonempty = _id_check()
    spec: dict[str, pa.Column] = {
        "patient": pa.Column(object, checks=nonempty, nullable=False),
        "session": pa.Column("int64", pa.Check.ge(1), nullable=False),
    }
    if "therapist" in columns:
        spec["therapist"] = pa.Column(object, nullable=True)
    if "system" in columns:  # couple or family id: every client belongs to one
        spec["system"] = pa.Column(object, checks=nonempty, nullable=False)
    if "days" in columns:
        spec["days"] = pa.Column("float64", pa.Check.ge(0), nullable=True)
    for name in ("condition", "informant", "rupture", "modality", "role"):
        if name in columns:
            spec[name] = pa.Column("category", nullable=True)
    for name in columns:
        if name.startswith("moderator_") and not ITEM_PATTERN.match(name):
            # a patient-level moderator (constant within patient, checked by the clean stage)
            spec[name] = pa.Column("category", nullable=True)
    if "ending" in columns:
        spec["ending"] = pa.Column("category", pa.Check.isin(ENDING_TYPES), nullable=True)
    if "followup_days" in columns:
        spec["followup_days"] = pa.Column("float64", pa.Check.ge(0), nullable=True)
    for column in columns:
        if column in spec or not ITEM_PATTERN.match(column):
            continue
        checks = []
        if column in ranges:
            low, high, *code = ranges[column]
            if code and code[0] is not None:
                na = float(code[0])
                checks.append(
                    pa.Check(
                        lambda s, lo=low, hi=high, na=na: s.between(lo, hi) | s.eq(na) | s.isna(),
                        error=f"in_range({low:g}, {high:g}) or the 'does not apply' code {na:g}",
                    )
                )
            else:
                checks.append(pa.Check.in_range(low, high))
        spec[column] = pa.Column("float64", checks=checks, nullable=True)
    keys = ["patient", "session"] + (["informant"] if "informant" in columns else [])
    return pa.DataFrameSchema(spec, strict=True, unique=keys, name="canonical session table")


def validate_sessions(
    sessions: pd.DataFrame,
    *,
    ranges: Mapping[str, tuple[float, float]] | None = None,
    source: str = "sessions",
    rows: pd.Series | None = None,
) -> pd.DataFrame:
    """Validate *sessions* against :func:`session_schema`; return it unchanged.

    Parameters
    ----------
    sessions : pandas.DataFrame
        The canonical table.
    ranges : mapping, optional
        Item column → ``(min, max)``.
    source : str
        Name used in the message.
    rows : pandas.Series, optional
        Source row of each table row (same index), to name rows in the message.

    Raises
    ------
    DataError
        One paragraph listing up to five failures (column, check, row, value) and the
        number of others.
    """
    import pandera.pandas as pa

    schema = session_schema(sessions.columns, ranges=ranges)
    try:
        # ``inplace``: the schema coerces nothing, so the table is read, not copied first.
        schema.validate(sessions, lazy=True, inplace=True)
    except pa.errors.SchemaErrors as errors:
        cases = errors.failure_cases
        parts = []
        for _, case in cases.head(5).iterrows():
            where = ""
            index = case.get("index")
            if (
                rows is not None
                and index is not None
                and not pd.isna(index)
                and index in rows.index
            ):
                where = f"row {int(rows.loc[index])}, "
            column = case.get("column")
            column = f"column {column!r}, " if column is not None and not pd.isna(column) else ""
            parts.append(f"{where}{column}{case['check']}: {case['failure_case']!r}")
        more = f" and {len(cases) - 5} more" if len(cases) > 5 else ""
        raise DataError(
            f"{source}: the cleaned table breaks the data contract: {'; '.join(parts)}{more}. "
            "Correct these values in the file, or set the matching rule in config.yaml to "
            "exclude them."
        ) from None
    return sessions
