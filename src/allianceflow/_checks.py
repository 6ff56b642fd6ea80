"""Argument checks of the modules that take DataFrames: one frame check, one column check.

Messages name the argument, what it holds and what is allowed; a missing column lists the
columns there are and the closest one.
"""

from __future__ import annotations

import difflib
from typing import Any

import pandas as pd

__all__ = ["check_frame", "check_columns"]


def check_frame(data: Any, name: str = "data") -> None:
    """Raise TypeError unless *data* is a DataFrame."""
    if not isinstance(data, pd.DataFrame):
        raise TypeError(f"`{name}` must be a pandas DataFrame; got {type(data).__name__}.")


def check_columns(
    data: pd.DataFrame, *columns: str, name: str = "data", what: str | None = None
) -> None:
    """Raise KeyError naming the first of *columns* missing from *data*.

    The message lists the columns *data* has and the closest match (difflib's ratio of at
    least 0.6; nothing is suggested when no column is that close). *what* says whose
    columns they are, e.g. "instrument 'ors'", and starts the message.
    """
    where = "the data" if name == "data" else f"`{name}`"
    for column in columns:
        if column not in data.columns:
            existing = [str(c) for c in data.columns]
            close = difflib.get_close_matches(str(column), existing, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            lead = f"{what}: column" if what else "Column"
            raise KeyError(
                f"{lead} {column!r} is not in {where}; columns are {', '.join(existing)}.{hint}"
            )
