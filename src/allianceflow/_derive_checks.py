"""Argument checks shared by the derive-stage modules.

The modules are derive, clinical, ontrack, suddengains and ruptures. Private: messages name
the argument, what was received and what is allowed. The frame and column checks are the
package's one pair in :mod:`allianceflow._checks`, re-exported here. Also the shared
helpers of those modules (:func:`sorted_view`, :func:`neighbour_rows`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from ._checks import check_columns as check_columns
from ._checks import check_frame as check_frame

__all__: list[str] = []

DIRECTIONS = ("higher_is_better", "lower_is_better")
CLINICAL_RANGES = ("below", "at_or_above")


def check_choice(value: Any, allowed: Sequence[str], name: str) -> str:
    if value not in allowed:
        quoted = [repr(a) for a in allowed]
        listed = ", ".join(quoted[:-1]) + f" or {quoted[-1]}" if len(quoted) > 1 else quoted[0]
        raise ValueError(f"`{name}` must be {listed}; got {value!r}.")
    return value


def check_number(
    value: Any,
    name: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    strict_minimum: bool = False,
    allow_none: bool = False,
) -> float | None:
    if value is None and allow_none:
        return None
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if not ok or not math.isfinite(float(value)):
        raise ValueError(f"`{name}` must be a finite number; got {value!r}.")
    value = float(value)
    if minimum is not None:
        if strict_minimum and value <= minimum:
            raise ValueError(f"`{name}` must be greater than {minimum:g}; got {value:g}.")
        if not strict_minimum and value < minimum:
            raise ValueError(f"`{name}` must be at least {minimum:g}; got {value:g}.")
    if maximum is not None and value > maximum:
        raise ValueError(f"`{name}` must be at most {maximum:g}; got {value:g}.")
    return value


def check_int(value: Any, name: str, *, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"`{name}` must be an integer of at least {minimum}; got {value!r}.")
    return int(value)


def check_sessions(data: pd.DataFrame, patient: str, session: str, name: str = "data") -> None:
    """Session numbers must be integers >= 1 and unique within patient."""
    values = data[session]
    if values.isna().any():
        raise ValueError(f"Column {session!r} of `{name}` has missing session numbers.")
    numeric = pd.to_numeric(values, errors="coerce")
    if numeric.isna().any() or (numeric != np.round(numeric)).any() or (numeric < 1).any():
        bad = values[numeric.isna() | (numeric != np.round(numeric)) | (numeric < 1)].iloc[0]
        raise ValueError(
            f"Column {session!r} of `{name}` must hold whole session numbers >= 1; "
            f"got {str(bad)!r}."
        )
    if sorted_by_patient(data, patient=patient, session=session) is not None:
        return  # sorted with sessions strictly increasing within patient: no repeats
    dup = data.duplicated([patient, session])
    if dup.any():
        row = data.loc[dup].iloc[0]
        raise ValueError(
            f"`{name}` has more than one row for patient {str(row[patient])!r} at session "
            f"{int(row[session])}; derive one informant at a time (filter `informant` first)."
        )


def sorted_view(data: pd.DataFrame, patient: str, session: str) -> pd.DataFrame:
    return data.sort_values([patient, session], kind="mergesort")


def unique_in(values: Iterable) -> list:
    seen: list = []
    for v in values:
        if v not in seen:
            seen.append(v)
    return seen


def sorted_by_patient(data: pd.DataFrame, *, patient: str, session: str) -> np.ndarray | None:
    """Whether each row has the previous row's patient, if the rows are sorted; else None.

    Not None only when the rows are sorted by patient and then session, with one row per
    patient and session: ids of one comparable type and none missing, whole session
    numbers strictly increasing within a patient (as the analysis table is). A stable sort
    by patient and session would then leave the rows as they are.
    """
    ids = data[patient].to_numpy()
    sessions = data[session].to_numpy()
    if len(ids) < 2 or sessions.dtype.kind not in "iu":
        return None
    try:
        # A missing id fails too: NaN compares false with everything, and None or pd.NA
        # cannot be ordered against an id (TypeError) or give no truth value.
        same = ids[1:] == ids[:-1]
        later = ids[1:] > ids[:-1]
        ordered = bool(np.all(later | (same & (np.diff(sessions) > 0))))
    except (TypeError, ValueError):  # ids of mixed types, or missing
        return None
    return np.asarray(same, dtype=bool) if ordered else None


def neighbour_rows(
    out: pd.DataFrame, *, patient: str, session: str, lag: int, across_gaps: bool
) -> np.ndarray | None:
    """Position of the row a lag of ``lag`` (+1 or -1) takes its value from, -1 for none.

    None unless the rows are sorted by patient and session with one row per patient and
    session (ids of one comparable type, none missing, whole session numbers), where the
    caller merges on the keys instead. Sorted so, the previous session of a patient is the
    row before: with ``across_gaps`` whatever its number, else only when it is ``s - 1``.
    """
    same = sorted_by_patient(out, patient=patient, session=session)
    if same is None:
        return None
    ids = out[patient].to_numpy()
    step = np.diff(out[session].to_numpy())
    follows = same if across_gaps else same & (step == 1)
    neighbour = np.full(len(ids), -1, dtype=np.intp)
    if lag == 1:
        neighbour[1:][follows] = np.flatnonzero(follows)
    else:
        neighbour[:-1][follows] = np.flatnonzero(follows) + 1
    return neighbour
