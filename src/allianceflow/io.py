"""All file reading and writing of the package.

Writers are atomic (write to a temporary file in the same folder, then rename), so an
interrupted run never leaves a half-written output that Snakemake would take as done, and
deterministic (sorted keys, fixed float formatting, no timestamps), so the same inputs give
the same bytes. Raw files are only ever opened for reading.
"""

from __future__ import annotations

import csv
import datetime
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "DataError",
    "read_raw",
    "read_table",
    "write_table",
    "write_json",
    "read_json",
    "write_text",
    "sha256_file",
    "package_versions",
    "atomic_path",
    "clean_for_json",
]

_DELIMITERS = ",;\t|"
_DELIMITER_NAMES = {",": "','", ";": "';'", "\t": "tab", "|": "'|'"}
_TEXT_SUFFIXES = {".csv", ".tsv", ".txt"}
_EXCEL_SUFFIXES = {".xlsx", ".xlsm"}
_STAT_SUFFIXES = {".sav", ".zsav", ".dta"}
_BOM = b"\xef\xbb\xbf"


class DataError(ValueError):
    """A raw file cannot be turned into the canonical table; the message says how to fix it.

    The message is one plain paragraph naming the file, the row and the column when they
    are known, and the fix. :func:`allianceflow.stages.run_step` prints it without a
    traceback.
    """


def _umask() -> int:
    """Return the process's file-mode creation mask (read by setting it and restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to *path*; on success rename it to *path*.

    The temporary file is created private (mode 0600, by :func:`tempfile.mkstemp`) while
    it is written; before the rename it gets the mode a plain ``open`` would give,
    ``0666`` minus the user's umask, so outputs are as readable as the user's other files.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _sniff_delimiter(sample: str) -> str:
    try:
        return csv.Sniffer().sniff(sample, delimiters=_DELIMITERS).delimiter
    except csv.Error:
        first = sample.splitlines()[0] if sample else ""
        counts = {d: first.count(d) for d in _DELIMITERS}
        return max(counts, key=counts.get) if any(counts.values()) else ","


def _decode(path: Path, encoding: str) -> str:
    data = path.read_bytes()
    if data.startswith(_BOM):
        # A UTF-8 byte-order mark settles the encoding, whatever the config says.
        data, encoding = data[len(_BOM) :], "utf-8"
    try:
        return data.decode(encoding)
    except LookupError:
        raise DataError(
            f"{path.name}: the encoding {encoding!r} is unknown. Set `read.encoding` for this "
            "study in config.yaml to utf-8-sig, cp1252 or latin-1."
        ) from None
    except UnicodeDecodeError as error:
        row = data[: error.start].count(b"\n") + 1
        byte = data[error.start : error.start + 1].hex()
        raise DataError(
            f"{path.name}, row {row}: byte 0x{byte} cannot be read as {encoding}; the file "
            "was probably saved by Windows software as cp1252 (or latin-1). Set "
            "`read.encoding: cp1252` for this study in config.yaml, or save the file as UTF-8."
        ) from None


def _title_rows(rows: list[list[str]]) -> int:
    """Return how many title rows stand above the header (0 when the first row is one).

    Title rows leave at least half of their cells blank; the header is the first of the
    first ten rows whose cells are all named, unique, none a number, and as many as the
    widest row's.
    """
    width = max((len(r) for r in rows), default=0)
    for k, row in enumerate(rows[:10]):
        cells = [str(c).strip() for c in row]
        if sum(map(bool, cells)) > width / 2:
            if len(cells) == width and all(cells) and len(set(cells)) == len(cells) and k:
                numbers = pd.to_numeric(pd.Series(cells), errors="coerce").notna()
                return 0 if numbers.any() else k
            return 0
    return 0


def _check_header(
    names: list[str],
    source: str,
    *,
    sep: str | None = None,
    row: int = 1,
    top: list[list[str]] | None = None,
) -> list[str]:
    clean = [str(n).replace("\ufeff", "").strip() for n in names]
    titles = _title_rows(top) if top else 0
    width = max((len(r) for r in top), default=0) if top else 0
    if titles and (any(n == "" for n in clean) or len(clean) < width):
        what = (
            "the header has blank column names"
            if any(n == "" for n in clean)
            else f"the first row has {len(clean)} of the file's {width} columns"
        )
        raise DataError(
            f"{source}, row {row}: {what}, and row {row + titles} "
            f"looks like the header, with {titles} title row(s) above it. Set `read.skip_rows: "
            f"{titles}` for this study in config.yaml, or delete the title rows in the file."
        )
    for position, name in enumerate(clean, start=1):
        if name == "":
            raise DataError(
                f"{source}, row {row}: column {position} has no name in the header. If the "
                "header spans two rows (merged cells), set `read.header_rows: 2` for this study in "
                "config.yaml, or give every column a one-row name in the file."
            )
    seen: dict[str, int] = {}
    for position, name in enumerate(clean, start=1):
        if name in seen:
            raise DataError(
                f"{source}, row {row}: the header names column {name!r} twice (columns "
                f"{seen[name]} and {position}). Rename one of them in the file so that every "
                "column name is unique."
            )
        seen[name] = position
    if sep is not None and len(clean) == 1:
        others = [d for d in _DELIMITERS if d != sep and d in clean[0]]
        if others:
            raise DataError(
                f"{source}, row {row}: the header is one column {clean[0][:60]!r} when split "
                f"at {_DELIMITER_NAMES[sep]}, but it contains {_DELIMITER_NAMES[others[0]]}. "
                f"Set `read.delimiter: {others[0]!r}` for this study in config.yaml (or null to "
                "detect it)."
            )
    return clean


def _check_records(text: str, sep: str, names: list[str], source: str, offset: int = 0) -> None:
    """Stream the records once: every non-blank record has as many fields as the header.

    A record that repeats the header (files appended to one another) is refused with the
    rows where it repeats, since its cells would otherwise be read as values.
    """
    width = len(names)
    first = names[0] if names else None
    reader = csv.reader(_StringIO(text), delimiter=sep, strict=True)
    record = 0
    repeats: list[int] = []
    try:
        for record, fields in enumerate(reader, start=1):
            if record == 1 or not fields or fields == [""]:
                continue
            if len(fields) == width:
                # A repeated header has the header's width; its first cell is compared
                # before the whole row is, which keeps the pass cheap on long files.
                if (
                    fields[0].replace("\ufeff", "").strip() == first
                    and [f.replace("\ufeff", "").strip() for f in fields] == names
                ):
                    repeats.append(record + offset)
                continue
            else:
                what = "fewer" if len(fields) < width else "more"
                hint = (
                    "The file may be truncated or a row was cut; export it again."
                    if what == "fewer"
                    else f"A value probably contains the delimiter {_DELIMITER_NAMES[sep]} "
                    "without quotes, or the delimiter is wrong; quote the value or set "
                    "`read.delimiter` for this study in config.yaml."
                )
                raise DataError(
                    f"{source}, row {record + offset}: the row has {len(fields)} fields, "
                    f"{what} than the {width} columns of the header. {hint}"
                )
        if repeats:
            shown = ", ".join(map(str, repeats[:5])) + (" …" if len(repeats) > 5 else "")
            where = f" (rows {shown})" if len(repeats) > 1 else ""
            raise DataError(
                f"{source}, row {repeats[0]}: the row repeats the header{where}; the "
                "export was probably made by appending files. Delete the repeated header rows "
                "in a copy of the file, or export the data again as one table."
            )
    except csv.Error as error:
        raise DataError(
            f"{source}, row {record + 1 + offset}: the file cannot be split into values "
            f"({error}); a quote is probably never closed, which happens when a file is "
            "truncated. Export the file again, or remove the stray quote."
        ) from None


#: Line breaks of :meth:`str.splitlines` other than ``\n`` and ``\r\n``.
_OTHER_BREAKS = "\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"


def _plain_records_ok(text: str, sep: str, width: int, data: bytes) -> bool:
    r"""Whether every record of *text* has the header's width, decided without :mod:`csv`.

    *data* is *text* encoded as UTF-8, and *sep* one ASCII character. Decided for files
    with no quotes, no NUL, no line break other than ``\n`` or ``\r\n`` and no line near
    the :mod:`csv` field limit: there a record is a line, and its fields are its delimiters
    plus one. True when every non-blank line after the header has ``width - 1`` delimiters (a
    blank line is skipped, as the reader skips it). ``False`` means "not shown" (quotes,
    another line break, a long line, a line of another width): the caller then streams the
    records through :mod:`csv`, which names the row.

    The delimiters of each line are counted with NumPy on the bytes, a block of lines at a
    time (0.4 s at 10^6 rows, where a count per line in Python took 0.8 s). Every line is
    checked: pandas' reader does not always stop at a line with more fields than the header
    (one that starts a block of its reading keeps the header's number of fields and drops
    the rest), so it cannot be left to find them.
    """
    if '"' in text or "\0" in text or text.count("\r") != text.count("\r\n"):
        return False
    if any(mark in text for mark in _OTHER_BREAKS):
        return False
    if len(sep) != 1 or not sep.isascii():
        return False
    raw = np.frombuffer(data, dtype=np.uint8)
    breaks = np.flatnonzero(raw == ord("\n"))
    starts = np.concatenate(([0], breaks + 1))
    stops = np.concatenate((breaks, [len(raw)]))
    lengths = stops - starts  # in bytes, which are at least the characters
    if "\r" in text:
        lengths -= (lengths > 0) & (raw[np.maximum(stops - 1, 0)] == ord("\r"))
    # (a line shorter than 2**16 bytes has fewer delimiters than 2**16: a uint16 count)
    if lengths.max() >= min(csv.field_size_limit() // 2, 1 << 16):
        return False
    code = ord(sep)
    for first in range(1, len(starts), _LINES_PER_BLOCK):  # line 0 is the header
        last = min(first + _LINES_PER_BLOCK, len(starts))
        low = int(starts[first])
        block = (raw[low : int(stops[last - 1])] == code).view(np.uint8)
        if not len(block):
            continue  # blank lines only
        # The delimiters from each line's start to the next line's start (its own line
        # break included). A blank line's count is not used; the last line's start can
        # be the block's end, where reduceat needs an index inside it.
        at = np.minimum(starts[first:last] - low, len(block) - 1)
        counts = np.add.reduceat(block, at, dtype=np.uint16)
        if np.any((lengths[first:last] > 0) & (counts != width - 1)):
            return False
    return True


#: Lines whose delimiters :func:`_plain_records_ok` counts at a time (a few MB of text).
_LINES_PER_BLOCK = 1 << 16


class _StringIO:
    """Line iterator over a string without copying it (csv.reader accepts any iterable)."""

    def __init__(self, text: str) -> None:
        self._text = text

    def __iter__(self):
        return iter(self._text.splitlines(keepends=True))


def _read_text(
    path: Path, delimiter: str | None, encoding: str, skip_rows: int = 0
) -> pd.DataFrame:
    source = path.name
    text = _decode(path, encoding)
    if skip_rows:
        lines = text.splitlines(keepends=True)
        text = "".join(lines[skip_rows:])
    if not text.strip():
        raise DataError(f"{source}: the file is empty. Export the data again.")
    sep = delimiter or _sniff_delimiter(text[: 64 * 1024])
    top = _top_records(text, sep)
    header = top[0]
    names = _check_header(header, source, sep=sep, row=skip_rows + 1, top=top)
    # The text as UTF-8 bytes: pandas' C parser reads them about 0.4 s faster at 10^6 rows
    # than a StringIO, which it encodes chunk by chunk; the values are the same.
    data = text.encode("utf-8")
    plain = _plain_records_ok(text, sep, len(names), data)
    if not plain:
        _check_records(text, sep, names, source, offset=skip_rows)
    from io import BytesIO

    frame = pd.read_csv(
        BytesIO(data),
        encoding="utf-8",
        sep=sep,
        dtype=str,
        keep_default_na=False,
        skip_blank_lines=False,
        header=0,
        names=names,
        quoting=csv.QUOTE_MINIMAL,
    )
    del data
    if plain and len(frame) and len(names):
        # The record check above did not look for repeated headers; a row whose first
        # cell is the header's first name sends the file through the full check.
        first = _per_value(frame[names[0]], lambda s: s.str.replace("\ufeff", "").str.strip())
        if first.eq(names[0]).any():
            _check_records(text, sep, names, source, offset=skip_rows)
    frame.insert(
        0, "_source_row", np.arange(2 + skip_rows, len(frame) + 2 + skip_rows, dtype="int64")
    )
    return frame


def _top_records(text: str, sep: str, count: int = 10) -> list[list[str]]:
    """The first *count* records of *text* (fewer when the file is shorter).

    The records are read from the first MiB when it holds more than *count* of them (so the
    last one taken is complete), else from the whole text.
    """
    head = text[: 1 << 20]
    if len(head) < len(text):
        lines = head.splitlines(keepends=True)[:-1]  # the last line may be cut
        try:
            top = [r for _, r in zip(range(count + 1), csv.reader(lines, delimiter=sep))]
        except csv.Error:
            top = []
        if len(top) > count:
            return top[:count]
    reader = csv.reader(_StringIO(text), delimiter=sep)
    return [r for _, r in zip(range(count), reader, strict=False)]


def _cell_text(value: Any) -> str:
    """One cell of a typed file as the text a CSV export would hold."""
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
    if isinstance(value, (np.floating,)):
        return _cell_text(float(value))
    if isinstance(value, (np.integer, int)) and not isinstance(value, bool):
        return str(int(value))
    if isinstance(value, (pd.Timestamp, datetime.datetime)):
        if pd.isna(value):
            return ""
        stamp = pd.Timestamp(value)
        return (
            stamp.strftime("%Y-%m-%d")
            if stamp == stamp.normalize()
            else stamp.strftime("%Y-%m-%d %H:%M:%S")
        )
    if isinstance(value, datetime.date):
        return value.strftime("%Y-%m-%d")
    if value is pd.NaT or (not isinstance(value, str) and pd.isna(value)):
        return ""
    return str(value)


def _typed_to_text(frame: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Turn a typed frame (Excel, SPSS, Stata, parquet) into text columns.

    Returns the text frame and the names of columns whose non-empty cells are all dates
    (written as ISO ``%Y-%m-%d``).
    """
    out = {}
    dates = []
    for name in frame.columns:
        column = frame[name]
        if isinstance(column.dtype, pd.CategoricalDtype):
            column = column.astype(object)
        values = column.tolist()
        present = [v for v in values if not _is_blank(v)]
        if present and all(isinstance(v, (datetime.date, pd.Timestamp)) for v in present):
            dates.append(str(name))
        out[name] = [_cell_text(v) for v in values]
    return pd.DataFrame(out, columns=frame.columns, dtype=object), dates


def _is_blank(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, str):
        return value == ""
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _read_excel(
    path: Path, sheet: str | int | None, header_rows: int, skip_rows: int = 0
) -> pd.DataFrame:
    source = path.name
    try:
        book = pd.ExcelFile(path, engine="openpyxl")
    except Exception as error:  # zip or xml damage: a truncated or renamed file
        raise DataError(
            f"{source}: the file cannot be opened as an Excel workbook ({type(error).__name__}: "
            f"{error}). It may be truncated or not really .xlsx; save it again from Excel."
        ) from None
    if sheet is None:
        sheet = book.sheet_names[0]
    if sheet not in book.sheet_names and not (
        isinstance(sheet, int) and 0 <= sheet < len(book.sheet_names)
    ):
        raise DataError(
            f"{source}: the workbook has no sheet {sheet!r}; its sheets are "
            f"{', '.join(repr(s) for s in book.sheet_names)}. Set `read.sheet` for this study in "
            "config.yaml."
        )
    grid = book.parse(sheet_name=sheet, header=None, dtype=object)
    grid = grid.iloc[skip_rows:].reset_index(drop=True)
    if len(grid) < header_rows:
        raise DataError(f"{source}, sheet {sheet!r}: the sheet is empty. Export the data again.")
    top = [_cell_text(v) for v in grid.iloc[0].tolist()]
    if header_rows == 2:
        # A merged cell of the first row spans the columns to its right until the next name.
        second = [_cell_text(v) for v in grid.iloc[1].tolist()]
        filled, current = [], ""
        for value in top:
            current = value.strip() or current
            filled.append(current)
        names = [
            "_".join(p for p in (a.strip(), b.strip()) if p) if b.strip() else a
            for a, b in zip(filled, second, strict=True)
        ]
        names = [n if top[i].strip() or second[i].strip() else "" for i, n in enumerate(names)]
    else:
        names = top
    top = (
        [[_cell_text(v) for v in grid.iloc[i].tolist()] for i in range(min(10, len(grid)))]
        if header_rows == 1
        else None
    )
    names = _check_header(names, f"{source}, sheet {sheet!r}", row=skip_rows + header_rows, top=top)
    body = grid.iloc[header_rows:].reset_index(drop=True)
    body.columns = names
    frame, dates = _typed_to_text(body)
    first = skip_rows + header_rows + 1
    frame.insert(0, "_source_row", np.arange(first, first + len(frame), dtype="int64"))
    frame.attrs["date_columns"] = dates
    return frame


def _read_statistics(path: Path) -> pd.DataFrame:
    import pyreadstat

    reader = pyreadstat.read_dta if path.suffix.lower() == ".dta" else pyreadstat.read_sav
    try:
        typed, _meta = reader(str(path), apply_value_formats=True, formats_as_category=True)
    except Exception as error:
        raise DataError(
            f"{path.name}: the file cannot be read as "
            f"{'Stata' if path.suffix.lower() == '.dta' else 'SPSS'} "
            f"data ({type(error).__name__}: {error}). It may be truncated; save it again."
        ) from None
    _check_header(list(typed.columns), path.name)
    frame, dates = _typed_to_text(typed)
    frame.insert(0, "_source_row", np.arange(1, len(frame) + 1, dtype="int64"))
    frame.attrs["date_columns"] = dates
    return frame


def _per_value(series: pd.Series, func) -> pd.Series:
    """``func(series)`` for an element-wise *func*, computed once per distinct value.

    *func* maps a Series to a Series (or a DataFrame of several results) on the same index.

    Raw exports repeat few values (item responses, ids, dates) many times, so string
    operations on the distinct values and a take by their codes replace a Python call per
    row. Columns that are not all text (or all missing) go through *func* directly, so
    values that compare equal but print differently (``1``, ``1.0``, ``True``) are never
    merged.
    """
    if len(series) == 0 or pd.api.types.infer_dtype(series, skipna=True) != "string":
        return func(series)
    codes, uniques = pd.factorize(series)
    na = codes < 0
    if na.all():
        return func(series)
    result = func(pd.Series(uniques, dtype=object))
    if isinstance(result, pd.DataFrame):
        if na.any():
            return func(series)
        return pd.DataFrame(
            {c: result[c].to_numpy()[codes] for c in result.columns}, index=series.index
        )
    mapped = result.to_numpy()
    if na.any():
        if mapped.dtype != object:
            return func(series)
        values = mapped[np.where(na, 0, codes)]
        values[na] = _per_missing_kind(series.to_numpy(dtype=object)[na], func)
    else:
        values = mapped[codes]
    return pd.Series(values, index=series.index, name=series.name)


def _distinct(series: pd.Series) -> tuple[np.ndarray, pd.Series] | None:
    """Codes and distinct values of an all-text column with no missing value, else None.

    ``series`` equals ``distinct[codes]``, so an element-wise computation on ``distinct``
    taken by ``codes`` is the computation on every row (see :func:`_per_value`).
    """
    if len(series) == 0 or pd.api.types.infer_dtype(series, skipna=True) != "string":
        return None
    codes, uniques = pd.factorize(series)
    if (codes < 0).any():
        return None
    return codes, pd.Series(uniques, dtype=object)


def _per_missing_kind(missing: np.ndarray, func) -> np.ndarray:
    """``func`` of missing values (None, NaN, NA, NaT), computed once per kind of missing value.

    Missing values of one type behave alike under an element-wise *func*, so one of each
    type stands for all of them (an export with an ``ending`` on its last rows only has
    hundreds of thousands of blanks).
    """
    kinds, types = pd.factorize(np.frompyfunc(type, 1, 1)(missing))
    first = np.zeros(len(types), dtype=np.intp)
    first[kinds[::-1]] = np.arange(len(kinds) - 1, -1, -1)
    done = func(pd.Series(missing[first], dtype=object)).to_numpy()
    return done[kinds]


def _stripped(series: pd.Series) -> pd.Series:
    """``series.astype(str).str.strip()``, once per distinct value."""
    return _per_value(series, lambda s: s.astype(str).str.strip())


def read_raw(
    path: str | Path,
    *,
    delimiter: str | None = None,
    encoding: str = "utf-8-sig",
    sheet: str | int | None = None,
    header_rows: int = 1,
    skip_rows: int = 0,
    config: str = "config.yaml",
) -> pd.DataFrame:
    """Read a raw export as text columns, keeping every row and the raw values.

    Every value is read as a string with no automatic NA detection, so the clean stage
    decides what is missing (declared missing codes) and what is malformed. The file is
    only opened for reading.

    Parameters
    ----------
    path : path
        ``.csv``/``.tsv``/``.txt`` (delimiter ``,`` ``;`` tab or ``|``), Excel ``.xlsx``,
        SPSS ``.sav``/``.zsav``, Stata ``.dta`` or ``.parquet``.
    delimiter : str, optional
        The CSV delimiter; detected from the first 64 KiB when omitted.
    encoding : str
        Text encoding of a CSV file; the default ``utf-8-sig`` reads UTF-8 with or without
        a BOM; ``cp1252`` or ``latin-1`` for files saved by older Windows software. A file
        that starts with a UTF-8 BOM is read as UTF-8 whatever *encoding* says.
    sheet : str or int, optional
        Excel sheet name (or 0-based position); the first sheet when omitted.
    header_rows : {1, 2}
        Excel only: rows the header spans. With 2, a merged cell of the first row names
        the columns below it and the second row's names are appended after ``_``
        (``WAI-SR`` over ``1``, ``2`` → ``WAI-SR_1``, ``WAI-SR_2``).
    skip_rows : int
        CSV and Excel: title rows above the header, skipped; source rows still count them,
        so row numbers in messages are the ones a spreadsheet shows. A header with blank
        names under title rows gets a message suggesting the number.
    config : str
        The name of the configuration file that messages name when they point to a setting.

    Returns
    -------
    pandas.DataFrame
        The file's columns as strings (column names stripped of spaces and BOM), plus
        ``_source_row``: for CSV and Excel the row number a spreadsheet shows (the header
        is row 1); for SPSS, Stata and parquet the 1-based case number. Blank lines are
        dropped. ``frame.attrs["date_columns"]`` names the columns that held typed dates
        (Excel, SPSS, Stata, parquet), written as ``%Y-%m-%d``. Value labels of SPSS and
        Stata files replace the codes (``1`` → ``"patient"``).

    Raises
    ------
    DataError
        When the file cannot be read: unknown suffix, wrong encoding, empty file, a header
        with a blank or repeated name, a row with too few or too many fields (truncated
        file, unquoted delimiter), an unclosed quote, a missing Excel sheet.
    """
    try:
        return _read_raw(path, delimiter, encoding, sheet, header_rows, skip_rows)
    except DataError as error:
        if config == "config.yaml":
            raise
        # The readers' messages point to settings "in config.yaml"; name the file given.
        raise DataError(str(error).replace("config.yaml", config)) from None


def _read_raw(
    path: str | Path,
    delimiter: str | None,
    encoding: str,
    sheet: str | int | None,
    header_rows: int,
    skip_rows: int,
) -> pd.DataFrame:
    path = Path(path)
    suffix = path.suffix.lower()
    if header_rows not in (1, 2):
        raise ValueError(f"`header_rows` must be 1 or 2; got {header_rows!r}.")
    if isinstance(skip_rows, bool) or not isinstance(skip_rows, int) or skip_rows < 0:
        raise ValueError(f"`skip_rows` must be a whole number of 0 or more; got {skip_rows!r}.")
    if not path.exists():
        raise DataError(
            f"{path}: the file does not exist. Check `raw` for this study in config.yaml."
        )
    if suffix == ".parquet":
        frame, dates = _typed_to_text(pd.read_parquet(path))
        frame.columns = _check_header(list(frame.columns), path.name)
        frame.insert(0, "_source_row", np.arange(1, len(frame) + 1, dtype="int64"))
        frame.attrs["date_columns"] = dates
    elif suffix in _TEXT_SUFFIXES:
        if delimiter is not None and (len(delimiter) != 1 or delimiter not in _DELIMITERS):
            raise ValueError(f"`delimiter` must be ',', ';', tab or '|'; got {delimiter!r}.")
        frame = _read_text(path, delimiter, encoding, skip_rows)
        frame.attrs["date_columns"] = []
    elif suffix in _EXCEL_SUFFIXES:
        frame = _read_excel(path, sheet, header_rows, skip_rows)
    elif suffix in _STAT_SUFFIXES:
        frame = _read_statistics(path)
    else:
        raise DataError(
            f"{path.name}: files ending in {suffix!r} cannot be read; use .csv, .tsv, .txt, "
            ".xlsx, .sav, .dta or .parquet (save older .xls files as .xlsx)."
        )
    blank = _blank_rows(frame)
    if not blank.any():
        return frame
    attrs = dict(frame.attrs)
    frame = frame.loc[~blank].reset_index(drop=True)
    frame.attrs.update(attrs)
    return frame


def _blank_rows(frame: pd.DataFrame) -> np.ndarray:
    """Rows whose every cell (``_source_row`` aside) is ``""``, column by column.

    The same as ``frame.drop(columns="_source_row").eq("").all(axis=1)``; after the first
    column only the rows still blank are compared.
    """
    blank = np.zeros(len(frame), dtype=bool)
    candidates = None
    for column in frame.columns:
        if column == "_source_row":
            continue
        if candidates is None:
            candidates = np.flatnonzero(frame[column].eq("").to_numpy(dtype=bool))
        else:
            values = frame[column].to_numpy(dtype=object)[candidates]
            candidates = candidates[pd.Series(values, dtype=object).eq("").to_numpy(dtype=bool)]
        if len(candidates) == 0:
            return blank
    if candidates is not None:
        blank[candidates] = True
    return blank


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a processed table (parquet or CSV)."""
    path = Path(path)
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    return pd.read_csv(path)


def write_table(frame: pd.DataFrame, path: str | Path) -> None:
    r"""Write *frame* atomically as parquet or CSV, chosen by the suffix of *path*.

    Parquet is written without pandas' index and with pyarrow's default compression; CSV
    with ``\n`` line endings and floats to 10 significant digits, so reruns give the same bytes.
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        if path.suffix == ".parquet":
            frame.to_parquet(tmp, index=False, engine="pyarrow")
        elif path.suffix == ".csv":
            frame.to_csv(tmp, index=False, lineterminator="\n", float_format="%.10g")
        else:
            raise ValueError(f"`path` must end in .parquet or .csv; got {path.name!r}.")


def clean_for_json(value: Any, digits: int = 10) -> Any:
    """Turn numpy/pandas scalars into plain Python values.

    Floats are rounded to *digits*
    significant digits, NaN and infinities to ``None``.
    """
    if isinstance(value, dict):
        return {str(k): clean_for_json(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_for_json(v, digits) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return float(f"{value:.{digits}g}")
    return value


def write_json(data: Any, path: str | Path) -> None:
    """Write *data* as indented JSON with sorted keys, atomically."""
    text = json.dumps(clean_for_json(data), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    write_text(text, path)


def read_json(path: str | Path) -> Any:
    """Read a JSON file."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_text(text: str, path: str | Path) -> None:
    r"""Write *text* as UTF-8 with ``\n`` line endings, atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)


def sha256_file(path: str | Path) -> str:
    """Return the hex SHA-256 of a file's bytes (read in 1 MiB blocks, read-only)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def source_fingerprint(root: str | Path | None = None) -> str:
    """SHA-256 of the package's own files: its code, instrument definitions and style.

    The workflow passes it to every rule as a parameter, so Snakemake rebuilds results
    when the code that made them changes (an upgrade, a local fix) and not otherwise; the
    manifest records it next to the package versions.

    Parameters
    ----------
    root : path, optional
        The package folder; default the installed ``allianceflow``.

    Returns
    -------
    str
        64 hexadecimal digits, over each file's path relative to *root* and its bytes, in
        sorted path order (``.py``, ``.yaml``, ``.yml``, ``.json`` and ``matplotlibrc``;
        caches and hidden folders such as ``.ipynb_checkpoints`` are skipped), so it is the
        same on any machine with the same files (a checkout that turns line endings into
        CRLF has other bytes, as it does for the data; ``.gitattributes`` keeps LF).
    """
    root = Path(root) if root is not None else Path(__file__).resolve().parent
    digest = hashlib.sha256()
    files = sorted(
        p
        for p in root.rglob("*")
        if p.is_file()
        and not any(
            part == "__pycache__" or part.startswith(".") for part in p.relative_to(root).parts
        )
        and (p.suffix in {".py", ".yaml", ".yml", ".json"} or p.name == "matplotlibrc")
    )
    if not any(p.name == "__init__.py" for p in files):
        raise FileNotFoundError(
            f"No package files under {root} to fingerprint (is allianceflow installed from a zip?)."
        )
    for path in files:
        digest.update(path.relative_to(root).as_posix().encode("utf-8") + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def package_versions(
    names=(
        "allianceflow",
        "numpy",
        "scipy",
        "pandas",
        "pyarrow",
        "statsmodels",
        "pingouin",
        "pandera",
        "matplotlib",
        "snakemake",
    ),
) -> dict[str, str]:
    """Installed versions of the packages that shape the results."""
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions
