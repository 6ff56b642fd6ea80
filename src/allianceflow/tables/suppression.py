"""Small-cell suppression of the published tables."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

__all__: list[str] = []


def _check_min_cell(min_cell: Any) -> int:
    if isinstance(min_cell, bool) or not isinstance(min_cell, (int, np.integer)) or min_cell < 1:
        raise ValueError(f"`min_cell` must be a whole number of at least 1; got {min_cell!r}.")
    return int(min_cell)


def _suppress_block(counts: pd.Series, min_cell: int, total_shown: bool = True) -> pd.Series:
    """Choose the cells of one block of counts to hide.

    Primary (1 ≤ n < min_cell) and, when a single cell is hidden and the total is shown,
    the next smallest non-zero cell.
    """
    hide = (counts > 0) & (counts < min_cell)
    if total_shown and int(hide.sum()) == 1:
        others = counts[~hide & (counts > 0)]
        if len(others):
            hide[others.sort_values(kind="mergesort").index[0]] = True
    return hide


def _count_cell(count: float, percent: float | None, hidden: bool, min_cell: int) -> str:
    if hidden:
        return f"< {min_cell}" if 0 < count < min_cell else "suppressed"
    if percent is None or pd.isna(percent):
        return f"{int(count)}"
    return f"{int(count)} ({percent:.1f})"


def _heading(group: str, n: int, hidden: bool, min_cell: int) -> str:
    """Column heading with the column's n: "= n", "< min_cell" or "suppressed"."""
    if not hidden:
        return f"{group} (n = {n})"
    return f"{group} (n < {min_cell})" if n < min_cell else f"{group} (n suppressed)"
