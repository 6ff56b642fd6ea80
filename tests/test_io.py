"""Tests of allianceflow.io readers: every format gives the same text table."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from allianceflow import io

ROWS = pd.DataFrame(
    {
        "ClientCode": ["P01", "P01", "P02"],
        "SessionNo": [1, 2, 1],
        "SessionDate": pd.to_datetime(["2024-02-01", "2024-02-08", "2024-02-03"]),
        "ORS_1": [5.0, 5.5, 3.0],
    }
)
EXPECTED = [
    ["P01", "1", "2024-02-01", "5"],
    ["P01", "2", "2024-02-08", "5.5"],
    ["P02", "1", "2024-02-03", "3"],
]


@pytest.mark.parametrize("sep", [",", ";", "\t", "|"])
def test_csv_delimiters_are_detected(tmp_path, sep):
    path = tmp_path / "x.csv"
    path.write_text(f"a{sep}b\n1{sep}2\n\n3{sep}4\n", encoding="utf-8")
    frame = io.read_raw(path)
    assert frame.values.tolist() == [
        [2, "1", "2"],
        [4, "3", "4"],
    ]  # blank line 3 dropped, rows kept


def test_statistics_and_parquet_formats_agree(tmp_path):
    import pyreadstat

    paths = {
        "sav": tmp_path / "x.sav",
        "dta": tmp_path / "x.dta",
        "parquet": tmp_path / "x.parquet",
    }
    pyreadstat.write_sav(ROWS, paths["sav"])
    pyreadstat.write_dta(ROWS, paths["dta"])
    ROWS.to_parquet(paths["parquet"])
    for kind, path in paths.items():
        frame = io.read_raw(path)
        assert frame["_source_row"].tolist() == [1, 2, 3], kind
        assert frame.drop(columns="_source_row").values.tolist() == EXPECTED, kind
        assert frame.attrs["date_columns"] == ["SessionDate"], kind


def test_spss_value_labels_become_text(tmp_path):
    import pyreadstat

    frame = pd.DataFrame({"id": ["A", "B"], "informant": [1.0, 2.0]})
    pyreadstat.write_sav(
        frame,
        tmp_path / "l.sav",
        variable_value_labels={"informant": {1.0: "patient", 2.0: "therapist"}},
    )
    assert io.read_raw(tmp_path / "l.sav")["informant"].tolist() == ["patient", "therapist"]


def test_excel_sheet_and_rows(tmp_path):
    path = tmp_path / "x.xlsx"
    with pd.ExcelWriter(path) as writer:
        pd.DataFrame({"a": [1]}).to_excel(writer, sheet_name="other", index=False)
        ROWS.to_excel(writer, sheet_name="export", index=False)
    frame = io.read_raw(path, sheet="export")
    assert frame["_source_row"].tolist() == [2, 3, 4]
    assert frame.drop(columns="_source_row").values.tolist() == EXPECTED
    with pytest.raises(
        io.DataError,
        match=r"x.xlsx: the workbook has no sheet 'sessions'; its sheets are 'other', 'export'",
    ):
        io.read_raw(path, sheet="sessions")


def test_column_names_lose_spaces_and_bom(tmp_path):
    path = tmp_path / "x.csv"
    path.write_bytes(b"\xef\xbb\xbf ClientCode ,b\nP1,2\n")
    assert list(io.read_raw(path, encoding="cp1252").columns) == ["_source_row", "ClientCode", "b"]


def test_read_raw_never_writes(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("a,b\n1,2\n")
    path.chmod(0o444)
    before = io.sha256_file(path)
    io.read_raw(path)
    assert io.sha256_file(path) == before


def test_missing_file():
    with pytest.raises(io.DataError, match="nope.csv: the file does not exist"):
        io.read_raw(Path("nope.csv"))


def test_writers_still_deterministic(tmp_path):
    io.write_json({"b": 1.123456789012, "a": float("nan")}, tmp_path / "x.json")
    assert (tmp_path / "x.json").read_text() == '{\n  "a": null,\n  "b": 1.123456789\n}\n'


def test_title_rows_above_an_excel_header_get_skip_rows(tmp_path):
    path = tmp_path / "x.xlsx"
    with pd.ExcelWriter(path) as writer:
        pd.DataFrame([["Session export"], ["Printed 2024"]]).to_excel(
            writer, sheet_name="export", index=False, header=False
        )
        ROWS.to_excel(writer, sheet_name="export", index=False, startrow=2)
    with pytest.raises(io.DataError) as caught:
        io.read_raw(path)
    assert str(caught.value) == (
        "x.xlsx, sheet 'export', row 1: the header has blank column names, and row 3 looks like "
        "the header, with 2 title row(s) above it. Set `read.skip_rows: 2` for this study in "
        "config.yaml, or delete the title rows in the file."
    )
    frame = io.read_raw(path, skip_rows=2)
    assert frame["_source_row"].tolist() == [4, 5, 6]  # the rows a spreadsheet shows
    assert frame.drop(columns="_source_row").values.tolist() == EXPECTED


def test_skip_rows_in_a_csv_keeps_spreadsheet_row_numbers(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("Export,,\nClientCode,SessionNo,ORS_1\nP01,1,5\nP01,2,x,9\n", encoding="utf-8")
    with pytest.raises(io.DataError, match=r"^x.csv, row 4: the row has 4 fields"):
        io.read_raw(path, skip_rows=1)
    with pytest.raises(
        ValueError, match=r"`skip_rows` must be a whole number of 0 or more; got -1"
    ):
        io.read_raw(path, skip_rows=-1)


def test_messages_name_the_config_file_given(tmp_path):
    path = tmp_path / "x.csv"
    path.write_bytes("ClientCode,Sessie\nP01,1\nM\xfcller,2\n".encode("cp1252"))
    with pytest.raises(io.DataError) as caught:
        io.read_raw(path, config="site_b.yaml")
    assert str(caught.value) == (
        "x.csv, row 3: byte 0xfc cannot be read as utf-8-sig; the file was probably saved by "
        "Windows software as cp1252 (or latin-1). Set `read.encoding: cp1252` for this study in "
        "site_b.yaml, or save the file as UTF-8."
    )


# Files without quotes have their record widths counted per line; files with quotes are
# streamed through the csv module. Both must give the same messages, with either line end.
WIDTH_CASES = [
    (
        "a,b,c\n1,2,3\n4,5\n6,7,8\n",
        "x.csv, row 3: the row has 2 fields, fewer than the 3 columns of the header.",
    ),
    (
        "a,b,c\n1,2,3\n\n4,5,6,7\n",
        "x.csv, row 4: the row has 4 fields, more than the 3 columns of the header.",
    ),
    (
        "a,b,c\n1,2,3\na, b ,c\n4,5,6\na,b,c\n",
        "x.csv, row 3: the row repeats the header (rows 3, 5); the export was probably made",
    ),
]


@pytest.mark.parametrize("ending", ["\n", "\r\n"])
@pytest.mark.parametrize("quoted", [False, True])
@pytest.mark.parametrize("text, message", WIDTH_CASES)
def test_row_width_messages_with_and_without_quotes(tmp_path, text, message, ending, quoted):
    if quoted:
        text = text.replace("1,2,3", '"1",2,3')
    path = tmp_path / "x.csv"
    path.write_bytes(text.replace("\n", ending).encode("utf-8"))
    with pytest.raises(io.DataError) as caught:
        io.read_raw(path, delimiter=",")
    assert str(caught.value).startswith(message)


@pytest.mark.parametrize("ending", ["\n", "\r\n"])
def test_blank_lines_and_cells_count_like_the_csv_module(tmp_path, ending):
    # A blank line is skipped; a line of blank cells is a row of the header's width.
    path = tmp_path / "x.csv"
    path.write_bytes(ending.join(["a,b", "1,2", "", ",", "3,4", ""]).encode("utf-8"))
    frame = io.read_raw(path, delimiter=",")
    assert frame.values.tolist() == [[2, "1", "2"], [5, "3", "4"]]


def test_per_value_keeps_each_kind_of_missing_value():
    # None and NaN print differently; each missing kind is computed once, not merged.
    series = pd.Series(["x ", None, float("nan"), "x", None], dtype=object)
    out = io._per_value(series, lambda s: s.astype(str).str.strip())
    assert out.tolist() == ["x", "None", "nan", "x", "None"]


_CELLS = st.sampled_from(["1", "22", "", " ", "x y", "é", "ClientCode", "b"])


def _widths_ok_line_by_line(text: str, sep: str, width: int) -> bool:
    """The per-line rule: every non-blank line after the header has width - 1 delimiters."""
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    return all(line.count(sep) == width - 1 for line in lines[1:] if line)


@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    widths=st.lists(st.integers(0, 5), min_size=1, max_size=12),
    cells=st.data(),
    crlf=st.booleans(),
    final_break=st.booleans(),
    block=st.integers(1, 5),
)
def test_unquoted_files_read_as_the_record_by_record_check_reads_them(
    tmp_path_factory, monkeypatch, widths, cells, crlf, final_break, block
):
    """Plain files (no quotes) read the same with and without the per-record check.

    A plain file skips the csv module's record check when every line holds the header's
    delimiters, counted a block of lines at a time (here 1 to 5 lines, so that lines on
    either side of a block's edge are drawn). Rows of the wrong width (0 is a blank line),
    rows that make up for one another, trailing delimiters, a repeated header and blank
    lines must give the frame, or the exact message, of the full check; and the count
    must agree with a count line by line.
    """
    header = ["ClientCode", "b", "c"]
    lines = [",".join(header)]
    for width in widths:
        lines.append(",".join(cells.draw(st.lists(_CELLS, min_size=width, max_size=width))))
    newline = "\r\n" if crlf else "\n"
    text = newline.join(lines) + (newline if final_break else "")
    path = tmp_path_factory.mktemp("plain") / "export.csv"
    path.write_bytes(text.encode("utf-8"))

    def outcome():
        try:
            return io.read_raw(path, delimiter=",")
        except io.DataError as error:
            return str(error)

    with monkeypatch.context() as patch:  # undone before the next drawn file
        patch.setattr(io, "_LINES_PER_BLOCK", block)
        fast = outcome()
        counted = io._plain_records_ok(text, ",", 3, text.encode("utf-8"))
    assert counted == _widths_ok_line_by_line(text, ",", 3)
    with monkeypatch.context() as patch:
        patch.setattr(io, "_plain_records_ok", lambda *args: False)
        full = outcome()
    assert isinstance(fast, str) == isinstance(full, str), (fast, full)
    if isinstance(full, str):
        assert fast == full
    else:
        pd.testing.assert_frame_equal(fast, full)


def test_a_long_row_where_pandas_starts_a_block_is_named(tmp_path):
    """A too-long row that starts one of pandas' reading blocks is named, not cut.

    pandas keeps the first fields of such a row: with 2,048 columns its C reader reads 256
    rows at a time, and a row one field too long at the start of the second block, with a
    short last row making the file's total of delimiters right, was read without an error
    when only that total was checked. Every row's delimiters are counted, so it is named.
    """
    width = 2048
    header = ",".join(f"c{i}" for i in range(width))
    good = ",".join(["1"] * width)
    rows = [good] * 300
    rows[256] = good + ",9"
    rows[-1] = ",".join(["1"] * (width - 1))
    path = tmp_path / "wide.csv"
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    with pytest.raises(io.DataError) as caught:
        io.read_raw(path, delimiter=",")
    assert str(caught.value).startswith(
        "wide.csv, row 258: the row has 2049 fields, more than the 2048 columns of the header."
    )


@pytest.mark.parametrize("delimiter", [",;", "", "\t|"])
def test_a_delimiter_of_two_characters_or_none_is_refused(tmp_path, delimiter):
    path = tmp_path / "x.csv"
    path.write_text("a,b\n1,2\n", encoding="utf-8")
    with pytest.raises(ValueError) as caught:
        io.read_raw(path, delimiter=delimiter)
    assert str(caught.value) == f"`delimiter` must be ',', ';', tab or '|'; got {delimiter!r}."
