"""The :class:`Table`: what every published table is, whatever its format."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

__all__ = ["Table", "TABLE_FORMATS"]

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
    """

    name: str
    title: str
    body: pd.DataFrame
    data: pd.DataFrame
    note: str = ""
    sections: tuple[int, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        """Check that *body* and *data* are DataFrames and *body* holds strings only."""
        if not isinstance(self.body, pd.DataFrame) or not isinstance(self.data, pd.DataFrame):
            raise TypeError("`body` and `data` must be pandas DataFrames.")
        bad = [c for c in self.body.columns if not all(isinstance(v, str) for v in self.body[c])]
        if bad:
            raise TypeError(f"`body` must hold strings only; columns {bad} do not.")
