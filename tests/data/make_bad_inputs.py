"""Write the corpus of bad raw inputs in tests/data/bad/ (hand-made; no real data).

Run from the project folder: ``python tests/data/make_bad_inputs.py``. The files are
small variations of one tiny export of three made-up patients; tests/test_clean.py
asserts the exact error or exclusion each one gets. The output is byte-identical on
every run.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent / "bad"
HEADER = ["ClientCode", "Clinician", "SessionNo", "SessionDate", "ORS_1", "ORS_2", "ORS_3", "ORS_4"]
ROWS = [
    ["P01", "T1", "1", "01/02/2024", "5.0", "5.5", "6.0", "4.0"],
    ["P01", "T1", "2", "08/02/2024", "5.5", "6.0", "6.5", "5.0"],
    ["P01", "T1", "3", "15/02/2024", "6.0", "6.5", "7.0", "5.5"],
    ["P02", "T2", "1", "03/02/2024", "3.0", "4.0", "2.5", "3.5"],
    ["P02", "T2", "2", "10/02/2024", "3.5", "4.5", "3.0", "4.0"],
    ["P03", "T1", "1", "05/02/2024", "7.0", "7.5", "8.0", "6.5"],
]


def text(header=HEADER, rows=ROWS, sep=",") -> str:
    return "".join(sep.join(r) + "\n" for r in [header, *rows])


def edit(row: int, column: str, value: str, rows=ROWS) -> list[list[str]]:
    """Copy *rows* with one cell replaced (row is 0-based among data rows)."""
    out = [list(r) for r in rows]
    out[row][HEADER.index(column)] = value
    return out


def with_column(name: str, values: list[str]) -> str:
    return text([*HEADER, name], [[*r, v] for r, v in zip(ROWS, values, strict=True)])


def csv_files() -> dict[str, bytes]:
    good = text()
    files = {
        "truncated.csv": good[: good.rindex("\n", 0, len(good) - 1) + 12].encode(),
        "wrong_delimiter.csv": text(sep=";").encode(),
        "empty_column.csv": text(rows=[r[:5] + [""] + r[6:] for r in ROWS]).encode(),
        "text_in_items.csv": text(rows=edit(2, "ORS_1", "six")).encode(),
        "duplicate_header.csv": text([*HEADER[:-1], "ORS_3"]).encode(),
        "blank_header.csv": text([*HEADER[:-1], ""]).encode(),
        "bom.csv": b"\xef\xbb\xbf" + good.encode(),
        "mixed_dates.csv": text(rows=edit(1, "SessionDate", "2024-02-08")).encode(),
        "negative_session.csv": text(rows=edit(4, "SessionNo", "-2")).encode(),
        "session_zero.csv": text(rows=edit(3, "SessionNo", "0")).encode(),
        "trailing_spaces_ids.csv": text(rows=edit(1, "ClientCode", "P01  ")).encode(),
        "case_ids.csv": text(rows=edit(2, "ClientCode", "p01")).encode(),
        "email_column.csv": with_column(
            "Contact", ["", "", "anna.devries@example.org", "", "", ""]
        ).encode(),
        "notes_with_names.csv": with_column(
            "Obs",
            [
                "",
                "Talked about the weekend with her sister Maria Jansen at length",
                "",
                "Felt better after the walk; spoke about work and her manager Peter Smit",
                "",
                "",
            ],
        ).encode(),
        "notes_column.csv": with_column("Notes", ["ok", "", "", "", "", ""]).encode(),
        "phone_column.csv": with_column("Tel", ["", "", "", "+31 6 1234 5678", "", ""]).encode(),
        "phone_in_unnamed_column.csv": with_column(
            "Extra", ["", "", "", "", "020-123 4567", ""]
        ).encode(),
        "national_id_in_item.csv": text(rows=edit(3, "ORS_3", "123-45-6789")).encode(),
        "postcode_column.csv": with_column(
            "Area", ["1012 AB", "1012 AB", "1012 AB", "3511 LX", "3511 LX", "9711 CV"]
        ).encode(),
        "street_address_column.csv": with_column(
            "Home", ["12 Baker Street", "12 Baker Street", "12 Baker Street", "", "", ""]
        ).encode(),
        "date_of_birth_column.csv": with_column(
            "Intake", ["14/03/1975"] * 3 + ["02/11/1988"] * 2 + ["30/06/1969"]
        ).encode(),
        "names_column.csv": with_column(
            "Client", ["Anna de Vries"] * 3 + ["Peter Smit"] * 2 + ["Maria Jansen"]
        ).encode(),
        "cp1252.csv": text(rows=edit(5, "Clinician", "Müller")).encode("cp1252"),
        "decimal_comma.csv": text(
            rows=[[v.replace(".", ",") for v in r] for r in ROWS], sep=";"
        ).encode(),
        "duplicate_identical.csv": text(rows=[*ROWS[:3], ROWS[1], *ROWS[3:]]).encode(),
        "duplicate_conflicting.csv": text(
            rows=[*ROWS[:5], edit(4, "ORS_1", "9.0")[4], ROWS[5]]
        ).encode(),
        "out_of_range.csv": text(rows=edit(0, "ORS_4", "12.5")).encode(),
        "missing_id.csv": text(rows=edit(4, "ClientCode", "")).encode(),
        "therapist_change.csv": text(rows=edit(2, "Clinician", "T2")).encode(),
        "session_out_of_order.csv": text(rows=edit(2, "SessionDate", "05/02/2024")).encode(),
        "session_gap.csv": text(rows=edit(2, "SessionNo", "5")).encode(),
        "unclosed_quote.csv": (good + 'P04,T2,1,"06/02/2024,5.0,5.0,5.0,5.0\n').encode(),
        "extra_field.csv": text(rows=edit(3, "ORS_4", "3.5,7")).encode(),
        "empty.csv": b"",
        "renamed_column.csv": text([*HEADER[:3], "Session_Date", *HEADER[4:]]).encode(),
        "undeclared_code.csv": text(rows=edit(5, "ORS_2", "999")).encode(),
        "fake.sav": b"$FL2@(#) IBM SPSS STATISTICS 64-bit Linux 28.0.0.0\x00\x00\x00",
        "old_excel.xls": b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 24,
        # Spellings of one id: a number exported as 1.0, a leading zero, a decomposed accent.
        "id_spellings.csv": text(
            rows=[
                ["1", "T1", *ROWS[0][2:]],
                ["1.0", "T1", *ROWS[1][2:]],
                ["01", "T1", *ROWS[2][2:]],
                ["Zoe\u0301", "T2", *ROWS[3][2:]],
                ["Zo\u00e9", "T2", *ROWS[4][2:]],
                ["P03", "T1", *ROWS[5][2:]],
            ]
        ).encode(),
        "arm_switch.csv": text(
            [*HEADER, "Arm"],
            [[*r, a] for r, a in zip(ROWS, ["FB", "FB", "TAU", "TAU", "", "FB"], strict=True)],
        ).encode(),
        "blank_therapist.csv": text(
            rows=edit(5, "Clinician", "", rows=edit(1, "Clinician", ""))
        ).encode(),
        "impossible_date.csv": text(rows=edit(1, "SessionDate", "31/02/2024")).encode(),
        "future_date.csv": text(
            rows=[
                ROWS[0],
                edit(1, "SessionDate", "08/02/2031")[1],
                ROWS[2],
                ["P01", "T1", "4", "22/02/2024", "6.0", "6.5", "7.0", "5.5"],
                ["P01", "T1", "5", "29/02/2024", "6.0", "6.5", "7.0", "5.5"],
                *ROWS[3:],
            ]
        ).encode(),
        "lowercase_postcode_column.csv": with_column(
            "Area", ["sw1a1aa", "sw1a1aa", "sw1a1aa", "1012ab", "1012ab", "k1a0b1"]
        ).encode(),
        "therapist_name.csv": text(rows=edit(2, "Clinician", "Dr Jane Smith")).encode(),
        "blank_items.csv": text(
            rows=edit(4, "ORS_2", "", rows=edit(1, "ORS_2", "", rows=edit(1, "ORS_4", "NA")))
        ).encode(),
        "title_rows.csv": (
            "Session export,,,,,,,\nPrinted by the ROM system,,,,,,,\n" + good
        ).encode(),
        "title_rows_short.csv": ("Session export\nPrinted by the ROM system\n" + good).encode(),
        "repeated_header.csv": text(rows=[*ROWS[:3], HEADER, *ROWS[3:], HEADER]).encode(),
        "arm_spellings.csv": with_column(
            "Arm", ["Feedback", "feedback", "FEEDBACK ", "TAU", "tau", "Feedback"]
        ).encode(),
        # not identifiers: arm labels, a declared missing code in an item, a term code
        "declared_labels.csv": text(
            [*HEADER, "Arm", "Term"],
            [
                [*r, arm, term]
                for r, arm, term in zip(
                    edit(1, "ORS_2", "Not Applicable"),
                    ["Usual Care"] * 3 + ["Feedback Group"] * 2 + ["Waiting List"],
                    ["2024SP", "2024SP", "2024SP", "2024FA", "2024FA", "2025SP"],
                    strict=True,
                )
            ],
        ).encode(),
        # model-level classes: a study with a single therapist, and one too small to fit
        "one_therapist.csv": text(rows=ONE_THERAPIST).encode(),
        # couples: two couples of two clients each (see COUPLE_ROWS)
        **couple_files(),
    }
    return files


#: Header and rows of a tiny couples export: couple C1 (P01 partner A, P02 partner B) with
#: T1 and couple C2 (P03 A, P04 B) with T2, two sessions each.
COUPLE_HEADER = ["ClientCode", "Clinician", "Couple", "Partner", "SessionNo", "SessionDate"]
COUPLE_HEADER += [f"ORS_{k}" for k in range(1, 5)]
COUPLE_ROWS = [
    [p, t, c, r, str(s), f"{d + 7 * (s - 1):02d}/02/2024", *[f"{4 + s + i / 2:.1f}"] * 4]
    for p, t, c, r, d, i in [
        ("P01", "T1", "C1", "A", 1, 0),
        ("P02", "T1", "C1", "B", 1, 1),
        ("P03", "T2", "C2", "A", 2, 2),
        ("P04", "T2", "C2", "B", 2, 3),
    ]
    for s in (1, 2)
]


def couple_edit(rows: list[list[str]], row: int, column: str, value: str) -> list[list[str]]:
    """Copy *rows* with one cell replaced (row is 0-based among data rows)."""
    out = [list(r) for r in rows]
    out[row][COUPLE_HEADER.index(column)] = value
    return out


def couple_files() -> dict[str, bytes]:
    """The couples corpus: one problem per file, for the clean stage's system rules."""

    def couples(rows) -> bytes:
        return text(COUPLE_HEADER, rows).encode()

    both_p02 = couple_edit(couple_edit(COUPLE_ROWS, 2, "Clinician", "T3"), 3, "Clinician", "T3")
    same_role = couple_edit(couple_edit(COUPLE_ROWS, 2, "Partner", "A"), 3, "Partner", "A")
    alone = [*COUPLE_ROWS, ["P04", "T2", "C2", "B", "3", "16/02/2024", *["7.0"] * 4]]
    return {
        "couple_good.csv": couples(COUPLE_ROWS),
        "couple_two_systems.csv": couples(couple_edit(COUPLE_ROWS, 3, "Couple", "C2")),
        "couple_two_therapists.csv": couples(both_p02),
        "couple_role_change.csv": couples(couple_edit(COUPLE_ROWS, 1, "Partner", "B")),
        "couple_same_role.csv": couples(same_role),
        "couple_single_client.csv": couples(COUPLE_ROWS[:6]),
        "couple_session_alone.csv": couples(alone),
        "couple_blank_system.csv": couples(couple_edit(COUPLE_ROWS, 1, "Couple", "")),
        "couple_blank_role.csv": couples(couple_edit(COUPLE_ROWS, 7, "Partner", "")),
        "couple_other_roles.csv": couples(
            couple_edit(couple_edit(COUPLE_ROWS, 6, "Partner", "C"), 7, "Partner", "C")
        ),
        # a role column and no couple column: the roles cannot be checked
        "couple_role_without_system.csv": text(
            [c for c in COUPLE_HEADER if c != "Couple"],
            [
                [v for c, v in zip(COUPLE_HEADER, r, strict=True) if c != "Couple"]
                for r in COUPLE_ROWS
            ],
        ).encode(),
    }


#: Eight patients of one therapist, three or four sessions each, with a slow rise in ORS.
ONE_THERAPIST = [
    [f"P{p:02d}", "T1", str(s), f"{1 + 7 * (s - 1) + p:02d}/03/2024", *items]
    for p in range(1, 9)
    for s in range(1, 4 + p % 2)
    for items in [[f"{(2 + p % 5 + 0.5 * s + 0.3 * ((p * s) % 3)):.1f}"] * 4]
]


def merged_header_xlsx(path: Path) -> None:
    """Write a sheet whose two-row header has ORS merged over four columns, numbers below."""
    from openpyxl import Workbook

    book = Workbook()
    sheet = book.active
    sheet.title = "export"
    sheet.append(["ClientCode", "Clinician", "SessionNo", "SessionDate", "ORS", None, None, None])
    sheet.append([None, None, None, None, "1", "2", "3", "4"])
    sheet.merge_cells("E1:H1")
    for r in ROWS:
        sheet.append([r[0], r[1], int(r[2]), r[3], *(float(v) for v in r[4:])])
    book.properties.creator = "allianceflow tests"
    from datetime import datetime

    book.properties.created = book.properties.modified = datetime(2024, 1, 1)
    book.save(path)


def main(folder: Path = HERE) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, data in csv_files().items():
        (folder / name).write_bytes(data)
        written.append(folder / name)
    merged_header_xlsx(folder / "merged_header.xlsx")
    written.append(folder / "merged_header.xlsx")
    return written


if __name__ == "__main__":
    paths = main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)
    print(f"wrote {len(paths)} files to {paths[0].parent}")
