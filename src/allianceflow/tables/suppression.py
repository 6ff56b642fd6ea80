r"""Small-cell suppression that holds: primary suppression, then complementary suppression.

A published table must not let a reader learn a small count of patients, nor a statistic
computed on few patients, whether it is printed or worked out from the other cells.
:class:`CellSuppression` holds a table's cells, the linear relations among them that a
reader can use, and decides which cells to hide.

The rule
--------
1. **Primary suppression.** A count from 1 to ``min_cell - 1`` is hidden, and so is a
   mean (with its SD and its n) computed on fewer than ``min_cell`` values. Zeros are
   shown: a zero is not a small cell under the rule.
2. **Cells that belong to a hidden cell.** A cell whose percentage is taken of a hidden
   count is hidden (the percentage and its numerator would give the denominator back); the
   cells of a column whose n is hidden are hidden; a mean that belongs to a hidden count
   (the mean size of a hidden number of sudden gains, the ruptures per patient whose sum
   is hidden) is hidden.
3. **Complementary (secondary) suppression.** In every relation "total = sum of parts"
   (a row of arms and its Total, a column of categories and the column's n, the arms' ns
   and the total n, ruptures and their repaired, unrepaired and censored parts) and every
   relation "total mean × N = Σ arm mean × arm n, N = Σ arm n", one hidden cell could be
   worked out by subtraction. Whenever exactly one cell of a relation with a non-zero
   value is hidden, the smallest shown non-zero part is hidden too, or the total when no
   part is left (Hundepool et al., 2012, ch. 4 and 5; Office for National Statistics,
   2006). Steps 2 and 3 repeat until nothing changes.
4. **Audit.** Two hidden cells per relation can still be recovered by combining
   relations (in a two-way table a hidden cell on no cycle of hidden cells is
   determined). The audit writes every relation as a linear equation in the hidden
   values, the shown values being known; a hidden value :math:`x_u` is determined exactly
   when the unit vector :math:`e_u` lies in the row space of the equations' matrix
   :math:`A`, that is when every vector of the null space of :math:`A` has a zero
   :math:`u`-th coordinate. A product of two hidden values (a hidden mean times its hidden
   n, a hidden percentage times its hidden denominator) enters as an unknown of its own.
   For the first determined cell, the smallest shown non-zero cell of an equation it
   appears in is hidden, and steps 2 to 4 repeat.

Every hidden cell is printed "suppressed" and written as empty with ``suppressed`` true in
the CSV. One mark for all: printing the small counts as "< 5" and their complements as
"suppressed" would tell the reader that the first lies in 1 to 4 and the second is at
least 5, bounds that can pin both down (two hidden cells adding up to 6 would be 1 and 5).

What it guarantees, and what not: no hidden non-zero count and no hidden mean (nor its n)
can be computed exactly from the published cells through the published relations. It
does not guarantee a width for the interval a reader can still bound a hidden value in
(the protection levels of optimal cell suppression by linear programming, Hundepool et
al., 2012, ch. 4), and it uses only the relations a table states: therapist counts are
sub-additive when arms share therapists and are treated as additive, which only hides
more.

References
----------
Hundepool, A., Domingo-Ferrer, J., Franconi, L., Giessing, S., Schulte Nordholt, E.,
Spicer, K., & de Wolf, P.-P. (2012). *Statistical disclosure control*. Wiley (ch. 4,
Magnitude tabular data: cell suppression and its audit; ch. 5, Frequency tables).
https://doi.org/10.1002/9781118348239
Office for National Statistics. (2006). *Review of the dissemination of health statistics:
Confidentiality guidance*. ONS.

Examples
--------
Two arms of 3 and 40 patients: the arm of 3 is hidden, and so is the arm of 40, or the
Total would give the 3 back.

>>> s = CellSuppression(min_cell=5)
>>> s.count("a", 3); s.count("b", 40); s.count("total", 43)
>>> s.add_sum("total", ["a", "b"])
>>> hidden = s.solve()
>>> sorted(k for k, h in hidden.items() if h), sorted(s.complementary)
(['a', 'b'], ['b'])
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["CellSuppression", "cell_text", "suppression_note"]

Key = Hashable


def _check_min_cell(min_cell: Any) -> int:
    if isinstance(min_cell, bool) or not isinstance(min_cell, (int, np.integer)) or min_cell < 1:
        raise ValueError(f"`min_cell` must be a whole number of at least 1; got {min_cell!r}.")
    return int(min_cell)


@dataclass
class _Unit:
    """One printed cell: a count (``value``) or a mean (``mean`` on ``n`` values)."""

    kind: str
    value: float
    mean: float | None = None
    percent: float | None = None


@dataclass
class CellSuppression:
    r"""A table's cells, the relations among them, and which cells to hide.

    Add the cells with :meth:`count` and :meth:`mean`, the relations a reader can use with
    :meth:`add_sum`, :meth:`add_mean_relation`, :meth:`add_percent` and
    :meth:`add_product`, :meth:`add_same_n`, the cells to hide with another one with
    :meth:`add_follows`, then
    call :meth:`solve`. The rule, its audit and its sources are in the module docstring
    (:mod:`allianceflow.tables.suppression`).

    Parameters
    ----------
    min_cell : int
        Smallest count shown; counts from 1 to ``min_cell - 1`` and means on fewer than
        ``min_cell`` values are hidden.

    Attributes
    ----------
    primary, complementary : set
        After :meth:`solve`: the keys hidden by the small-cell rule and those hidden so
        that they cannot be recovered (steps 2 to 4 of the rule).
    """

    min_cell: int
    primary: set = field(default_factory=set)
    complementary: set = field(default_factory=set)
    _units: dict[Key, _Unit] = field(default_factory=dict)
    _sums: list[tuple[Key, tuple[Key, ...]]] = field(default_factory=list)
    _equations: list[list[tuple[float, tuple[Key, str], tuple[Key, str] | None]]] = field(
        default_factory=list
    )
    _follows: list[tuple[Key, Key]] = field(default_factory=list)
    _hidden: dict[Key, bool] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Check *min_cell*."""
        self.min_cell = _check_min_cell(self.min_cell)

    # ------------------------------------------------------------------ cells

    def _add(self, key: Key, unit: _Unit) -> None:
        if key in self._units:
            raise ValueError(f"cell {key!r} was added twice.")
        self._units[key] = unit

    def count(self, key: Key, value: float, *, percent: float | None = None) -> None:
        """Add a count cell (patients, therapists or events), optionally with its percent."""
        self._add(key, _Unit("count", float(value), percent=percent))

    def mean(self, key: Key, mean: float | None, n: int) -> None:
        """Add a mean cell (printed with its SD) computed on *n* values."""
        self._add(key, _Unit("mean", float(n), mean=None if mean is None else float(mean)))

    # ------------------------------------------------------------------ relations

    def add_sum(self, total: Key, parts: Sequence[Key]) -> None:
        """State that count *total* is the sum of counts *parts*."""
        self._check_keys(total, *parts)
        if parts:
            self._sums.append((total, tuple(parts)))
            self._equations.append(
                [(1.0, (total, "v"), None)] + [(-1.0, (p, "v"), None) for p in parts]
            )

    def add_mean_relation(self, total: Key, parts: Sequence[Key]) -> None:
        """State that mean *total* pools the means *parts* (N·M = Σ n·m, N = Σ n)."""
        self._check_keys(total, *parts)
        if parts:
            self._sums.append((total, tuple(parts)))
            self._equations.append(
                [(1.0, (total, "m"), (total, "v"))] + [(-1.0, (p, "m"), (p, "v")) for p in parts]
            )
            self._equations.append(
                [(1.0, (total, "v"), None)] + [(-1.0, (p, "v"), None) for p in parts]
            )

    def add_percent(self, cell: Key, denominator: Key) -> None:
        """State that count *cell* prints a percentage of count *denominator*.

        A hidden denominator hides the cell: its count and percentage would give the
        denominator back.
        """
        self._check_keys(cell, denominator)
        self._follows.append((denominator, cell))
        if self._units[cell].percent is not None:
            self._equations.append(
                [(1.0, (cell, "v"), None), (-0.01, (cell, "p"), (denominator, "v"))]
            )

    def add_product(self, count: Key, mean: Key) -> None:
        """State that count *count* is mean *mean* times its n (e.g. ruptures per patient).

        Each is hidden with the other.
        """
        self._check_keys(count, mean)
        self._follows += [(count, mean), (mean, count)]
        self._equations.append([(1.0, (mean, "m"), (mean, "v")), (-1.0, (count, "v"), None)])

    def add_same_n(self, mean: Key, count: Key) -> None:
        """State that mean *mean* is taken over *count* values.

        The n of the mean size of the gains is the number of gains; every patient has a
        number of sessions.
        """
        self._check_keys(mean, count)
        self._equations.append([(1.0, (mean, "v"), None), (-1.0, (count, "v"), None)])

    def add_follows(self, leader: Key, follower: Key) -> None:
        """Hide *follower* whenever *leader* is hidden (e.g. the cells of a hidden arm)."""
        self._check_keys(leader, follower)
        self._follows.append((leader, follower))

    def _check_keys(self, *keys: Key) -> None:
        missing = [k for k in keys if k not in self._units]
        if missing:
            raise KeyError(f"cells {missing} were not added; add them with count() or mean().")

    # ------------------------------------------------------------------ solving

    def _size(self, key: Key) -> float:
        return self._units[key].value

    def _is_primary(self, key: Key) -> bool:
        unit = self._units[key]
        if unit.kind == "count":
            return 0 < unit.value < self.min_cell
        return unit.value < self.min_cell

    def _hide(self, key: Key) -> bool:
        if self._hidden[key]:
            return False
        self._hidden[key] = True
        self.complementary.add(key)
        return True

    def _propagate(self) -> bool:
        changed = False
        again = True
        while again:
            again = False
            for leader, follower in self._follows:
                if self._hidden[leader] and self._hide(follower):
                    again = changed = True
        return changed

    def _smallest_shown(self, keys: Iterable[Key]) -> Key | None:
        order = {k: i for i, k in enumerate(self._units)}
        shown = [k for k in keys if not self._hidden[k] and self._size(k) > 0]
        return min(shown, key=lambda k: (self._size(k), order[k])) if shown else None

    def _complement_sums(self) -> bool:
        changed = False
        for total, parts in self._sums:
            cells = (total, *parts)
            if sum(self._hidden[c] and self._size(c) > 0 for c in cells) != 1:
                continue
            pick = self._smallest_shown(parts)
            if pick is None and not self._hidden[total]:
                pick = total
            if pick is not None:
                changed = self._hide(pick) or changed
        return changed

    def recoverable(self) -> list[Key]:
        """Hidden cells with a non-zero value that the shown cells determine exactly.

        Returns
        -------
        list
            Keys in the order the cells were added; empty when the pattern holds.
        """
        hidden = self._hidden
        variables: dict[Any, int] = {}
        rows: list[dict[int, float]] = []

        def var(name: Any) -> int:
            return variables.setdefault(name, len(variables))

        def value(q: tuple[Key, str]) -> float:
            unit = self._units[q[0]]
            got = {"v": unit.value, "m": unit.mean, "p": unit.percent}[q[1]]
            return 0.0 if got is None else got

        for equation in self._equations:
            row: dict[int, float] = {}
            for coef, a, b in equation:
                if b is None:
                    if hidden[a[0]]:
                        j = var(a)
                        row[j] = row.get(j, 0.0) + coef
                    continue
                ha, hb = hidden[a[0]], hidden[b[0]]
                if ha and hb:
                    j = var(("product", a, b))
                    row[j] = row.get(j, 0.0) + coef
                elif ha:
                    j = var(a)
                    row[j] = row.get(j, 0.0) + coef * value(b)
                elif hb:
                    j = var(b)
                    row[j] = row.get(j, 0.0) + coef * value(a)
            if any(abs(c) > 0 for c in row.values()):
                rows.append(row)
        if not rows:
            return []
        matrix = np.zeros((len(rows), len(variables)))
        for i, row in enumerate(rows):
            for j, c in row.items():
                matrix[i, j] = c
        # scale each equation, then the null space from the SVD
        matrix /= np.abs(matrix).max(axis=1, keepdims=True)
        _, singular, vt = np.linalg.svd(matrix)
        tol = max(matrix.shape) * np.finfo(float).eps * 1e4 * (singular[0] if len(singular) else 1)
        rank = int((singular > tol).sum())
        null = vt[rank:].T  # variables x nullity
        determined = {
            name for name, j in variables.items() if not null.size or np.abs(null[j]).max() < 1e-7
        }
        out = []
        for key, unit in self._units.items():
            if not hidden[key] or unit.value <= 0:
                continue
            if (key, "v") in determined or (key, "m") in determined:
                out.append(key)
        return out

    def _equations_of(self, key: Key) -> list[set[Key]]:
        cells = []
        for equation in self._equations:
            keys = {a[0] for _, a, _ in equation} | {b[0] for _, _, b in equation if b}
            if key in keys:
                cells.append(keys)
        return cells

    def solve(self) -> dict[Key, bool]:
        """Decide which cells to hide (the rule of the module docstring).

        Returns
        -------
        dict
            Cell key → hidden, in the order the cells were added.
        """
        self._hidden = {k: self._is_primary(k) for k in self._units}
        self.primary = {k for k, h in self._hidden.items() if h}
        self.complementary = set()
        while True:
            while self._propagate() | self._complement_sums():
                pass
            leaks = self.recoverable()
            if not leaks:
                return dict(self._hidden)
            pick = None
            for keys in self._equations_of(leaks[0]):
                candidate = self._smallest_shown(keys)
                if candidate is not None and (
                    pick is None or self._size(candidate) < self._size(pick)
                ):
                    pick = candidate
            if pick is None:  # every cell it shares an equation with is zero or hidden
                shown = [k for k in self._units if not self._hidden[k]]
                if not shown:
                    raise RuntimeError("complementary suppression found no cell left to hide.")
                pick = min(shown, key=self._size)
            self._hide(pick)


def cell_text(
    hidden: bool,
    *,
    count: float | None = None,
    percent: float | None = None,
    mean_sd: str | None = None,
) -> str:
    """Print a count (``count``, ``percent``) or a mean (``mean_sd``), or "suppressed".

    Every hidden cell prints the same mark. Printing small counts as "< 5" and their
    complements as "suppressed" would tell the reader that the first lies in 1–4 and the
    second is at least 5, and those bounds can pin both down: hidden cells adding up to 6
    would have to be 1 and 5.

    >>> cell_text(True, count=3), cell_text(False, count=12, percent=40.0)
    ('suppressed', '12 (40.0)')
    >>> cell_text(False, mean_sd="9.19 (2.76)"), cell_text(False, count=7)
    ('9.19 (2.76)', '7')
    """
    if hidden:
        return "suppressed"
    if mean_sd is not None:
        return mean_sd
    if percent is None:
        return f"{int(count or 0)}"
    return f"{int(count or 0)} ({percent:.1f})"


def suppression_note(min_cell: int, *, complementary: bool) -> str:
    """Write the sentence on suppression that ends the note of every table of counts."""
    text = (
        f"Counts from 1 to {min_cell - 1} and statistics on fewer than {min_cell} values are "
        'suppressed ("suppressed").'
    )
    if complementary:
        text = (
            f"Counts from 1 to {min_cell - 1}, statistics on fewer than {min_cell} values and, "
            "by complementary suppression, the cells from which they could be worked out "
            'through the totals or the other cells are suppressed ("suppressed"; Hundepool '
            "et al., 2012)."
        )
    return text


def _heading(group: str, n: int, hidden: bool) -> str:
    """Column heading with the column's n, or "n suppressed"."""
    return f"{group} (n suppressed)" if hidden else f"{group} (n = {n})"
