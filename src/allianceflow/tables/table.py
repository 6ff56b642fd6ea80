"""The :class:`Table`: what every published table is, whatever its format."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any

import pandas as pd

__all__ = ["Table", "TABLE_FORMATS", "LANDSCAPE_COLUMNS", "with_labels"]

#: Tables with more columns than this are printed on a landscape page (APA 7, 7.20:
#: a table too wide for a portrait page is turned, not shrunk).
LANDSCAPE_COLUMNS = 8

#: File formats :func:`allianceflow.tables.write_table_files` writes, by suffix.
TABLE_FORMATS = ("csv", "md", "html", "tex", "docx")


@dataclass(frozen=True)
class Table:
    """A table ready to publish.

    Attributes
    ----------
    name : str
        File stem and LaTeX label (``tab:<name>``).
    title : str
        The APA title (italic title case in the rendered forms).
    body : pandas.DataFrame
        What people read: strings only, column names are the column headings.
    data : pandas.DataFrame
        The numbers behind it, unrounded, tidy (written as CSV).
    note : str
        The general note printed under the table ("*Note.* ...").
    sections : tuple of int
        Row positions of *body* that are section headings (only the first cell is shown,
        spanning the row).
    number : int, optional
        The table's number in its study ("Table 3"), printed above the title (APA 7);
        None prints no number.
    landscape : bool, optional
        Print the table on a landscape page (LaTeX ``pdflscape``, Word section); None
        decides by width (more than :data:`LANDSCAPE_COLUMNS` columns).
    """

    name: str
    title: str
    body: pd.DataFrame
    data: pd.DataFrame
    note: str = ""
    sections: tuple[int, ...] = field(default_factory=tuple)
    number: int | None = None
    landscape: bool | None = None

    def __post_init__(self) -> None:
        """Check that *body* and *data* are DataFrames and *body* holds strings only."""
        if not isinstance(self.body, pd.DataFrame) or not isinstance(self.data, pd.DataFrame):
            raise TypeError("`body` and `data` must be pandas DataFrames.")
        bad = [c for c in self.body.columns if not all(isinstance(v, str) for v in self.body[c])]
        if bad:
            raise TypeError(f"`body` must hold strings only; columns {bad} do not.")
        if self.number is not None and (
            isinstance(self.number, bool) or not isinstance(self.number, int) or self.number < 1
        ):
            raise ValueError(
                f"`number` must be a whole number from 1, or None; got {self.number!r}."
            )

    @property
    def label(self) -> str:
        """The table's label, e.g. "Table 3"; empty when it has no number."""
        return f"Table {self.number}" if self.number is not None else ""

    @property
    def wide(self) -> bool:
        """Whether the table is printed landscape (see *landscape*)."""
        if self.landscape is not None:
            return bool(self.landscape)
        return len(self.body.columns) > LANDSCAPE_COLUMNS


_HEADING = re.compile(r"^(?P<group>.+?) (?P<n>\((?:n = \d+|n suppressed)\))$")
_NUMBERED = re.compile(r"^(?P<indent>\s*)(?P<number>\d+\. )?(?P<text>.+)$")


def with_labels(table: Table, labels: Any, *, number: int | None = None) -> Table:
    """The table with arm codes and variable codes in words, and its number.

    Column headings "<arm> (n = 34)" get the arm's label ("Treatment as usual (n = 26)");
    first-column cells that are a column code ("wai_sr_task", "3. wai_sr_task") or the
    generic "Alliance" and "Outcome" get the variable's label ("WAI-SR agreement on tasks",
    "ORS total"). Other cells are kept.

    Parameters
    ----------
    table : Table
    labels : allianceflow.labels.Labels or its record
    number : int, optional
        The table's number in its study.

    Examples
    --------
    >>> import pandas as pd
    >>> from allianceflow.labels import Labels
    >>> t = Table("x", "T", pd.DataFrame({"Variable": ["1. Alliance", "2. wai_sr_task"],
    ...                                   "tau (n = 26)": ["", ""]}), pd.DataFrame())
    >>> words = Labels(alliance="wai_sr_total", variables={"wai_sr_total": "WAI-SR total"},
    ...                subscales={"wai_sr_task": "WAI-SR agreement on tasks"},
    ...                levels={"condition": ["feedback", "tau"]})
    >>> out = with_labels(t, words, number=2)
    >>> out.body.columns.tolist(), out.body["Variable"].tolist(), out.label
    (['Variable', 'Treatment as usual (n = 26)'], ['1. WAI-SR total', '2. WAI-SR agreement on tasks'], 'Table 2')
    """  # noqa: E501
    from ..labels import Labels, upper_first

    words = Labels.from_dict(labels)
    arms = set(words.levels.get("condition", ())) | set(words.arms)

    def heading(text: str) -> str:
        match = _HEADING.match(str(text))
        if match and match.group("group") in arms:
            return f"{upper_first(words.arm(match.group('group')))} {match.group('n')}"
        return str(text)

    def cell(text: str) -> str:
        match = _NUMBERED.match(text)
        if not match:
            return text
        core = match.group("text")
        generic = {"Alliance": "alliance", "Outcome": "outcome"}
        if core in generic:
            new = words.variable(generic[core])
        elif "_" in core and words.variable(core) != core:
            new = words.variable(core)
        else:
            return text
        return f"{match.group('indent')}{match.group('number') or ''}{new}"

    body = table.body.rename(columns=heading)
    first = body.columns[0]
    body[first] = [cell(v) for v in body[first]]
    return replace(table, body=body, number=number if number is not None else table.number)
