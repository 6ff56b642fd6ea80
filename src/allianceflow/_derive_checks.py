"""Argument checks shared by the derive-stage modules.

The modules are derive, clinical, ontrack, suddengains and ruptures. Private: messages name
the argument, what was received and what is allowed. The frame and column checks are the
package's one pair in :mod:`allianceflow._checks`, re-exported here.
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
