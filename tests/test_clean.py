"""Tests of allianceflow.clean: the corpus of bad inputs, the rules, flow reconciliation."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from allianceflow import io
from allianceflow.clean import EXCLUSION_COLUMNS, RULES, DataError, clean_sessions, reconcile
from allianceflow.config import flat_study, group_study, load_config, validate_config

ROOT = Path(__file__).resolve().parents[1]
BAD = ROOT / "tests" / "data" / "bad"
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"


def make_study(**settings_) -> dict:
    """Build the study block of the corpus, validated (defaults filled in) like a real config."""
    study = {
        "raw": "tests/data/bad/x.csv",
        "columns": {
            "ClientCode": "patient",
            "Clinician": "therapist",
            "SessionNo": "session",
            "SessionDate": "date",
            **{f"ORS_{k}": f"ors_{k}" for k in range(1, 5)},
        },
        "date_format": "%d/%m/%Y",
        "missing_codes": [-9, 99, "NA"],
        "instruments": {"ors": {"rci": 5}},
        "alliance": "ors_total",
        "outcome": "ors_total",
        "models": ["m"],
        **settings_,
    }
    config = {"studies": {"t": group_study(study)}, "models": {"m": {"formula": "outcome ~ 1"}}}
    return flat_study(validate_config(config, SCHEMA)["studies"]["t"])


def run(name: str, **settings_):
    study = make_study(**settings_)
    raw = io.read_raw(
        BAD / name,
        delimiter=study["delimiter"],
        encoding=study["encoding"],
        sheet=study["sheet"],
        header_rows=study["header_rows"],
        skip_rows=study["skip_rows"],
    )
    return clean_sessions(raw, study, source=name, name="t")


def test_corpus_is_reproducible(tmp_path):
    spec = importlib.util.spec_from_file_location(
        "make_bad_inputs", ROOT / "tests" / "data" / "make_bad_inputs.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    written = module.main(tmp_path)
    assert len(written) >= 25
    for path in written:
        if path.suffix != ".xlsx":  # xlsx zips carry timestamps of the zip entries
            assert path.read_bytes() == (BAD / path.name).read_bytes(), path.name


ERRORS = {
    "blank_header.csv": (
        "blank_header.csv, row 1: column 8 has no name in the header. If the header spans two "
        "rows (merged cells), set `read.header_rows: 2` for this study in config.yaml, or give "
        "every "
        "column a one-row name in the file."
    ),
    "cp1252.csv": (
        "cp1252.csv, row 7: byte 0xfc cannot be read as utf-8-sig; the file was probably saved "
        "by Windows software as cp1252 (or latin-1). Set `read.encoding: cp1252` for this study in "
        "config.yaml, or save the file as UTF-8."
    ),
    "date_of_birth_column.csv": (
        "date_of_birth_column.csv: column 'Intake' looks like it holds dates of birth (by its "
        "content; first at row 2). The input must be de-identified before the pipeline reads it. "
        "Remove the column from the export, or add 'Intake' to `studies.t.privacy.drop_columns` in "
        "config.yaml to drop it explicitly before anything is read from it."
    ),
    "decimal_comma.csv": (
        "decimal_comma.csv, row 2, column 'ORS_1': '5,0' is not a number (5 more row(s) have the "
        "same problem). Correct the value, or declare it under `read.missing_codes` if it means "
        "'missing'. The file writes decimals with a comma: set `read.decimal: ','` for this study "
        "in "
        "config.yaml. Or set `studies.t.clean.rules.not_a_number` to 'exclude' or 'missing' in "
        "config.yaml."
    ),
    "duplicate_header.csv": (
        "duplicate_header.csv, row 1: the header names column 'ORS_3' twice (columns 7 and 8). "
        "Rename one of them in the file so that every column name is unique."
    ),
    "email_column.csv": (
        "email_column.csv: column 'Contact' looks like it holds e-mail addresses (by its "
        "content; first at row 4). The input must be de-identified before the pipeline reads it. "
        "Remove the column from the export, or add 'Contact' to `studies.t.privacy.drop_columns` "
        "in "
        "config.yaml to drop it explicitly before anything is read from it."
    ),
    "empty.csv": ("empty.csv: the file is empty. Export the data again."),
    "empty_column.csv": (
        "empty_column.csv: column 'ORS_2' (mapped to 'ors_2') is empty in every one of its 6 "
        "rows; the export probably lost it. Export the data again, or remove the column from "
        "`read.columns` in config.yaml."
    ),
    "extra_field.csv": (
        "extra_field.csv, row 5: the row has 9 fields, more than the 8 columns of the header. A "
        "value probably contains the delimiter ',' without quotes, or the delimiter is wrong; "
        "quote the value or set `read.delimiter` for this study in config.yaml."
    ),
    "fake.sav": (
        "fake.sav: the file cannot be read as SPSS data (ReadstatError: Unable to read from "
        "file). It may be truncated; save it again."
    ),
    "merged_header.xlsx": (
        "merged_header.xlsx, sheet 'export', row 1: column 6 has no name in the header. If the "
        "header spans two rows (merged cells), set `read.header_rows: 2` for this study in "
        "config.yaml, or give every column a one-row name in the file."
    ),
    "mixed_dates.csv": (
        "mixed_dates.csv, row 3, column 'SessionDate': date '2024-02-08' is written as %Y-%m-%d, "
        "but the date format is %d/%m/%Y (mixed date formats). Write every date in one format in "
        "the file, or set `read.date_format` for this study in config.yaml. Or set "
        "`studies.t.clean.rules.date_invalid` to 'exclude' in config.yaml."
    ),
    "names_column.csv": (
        "names_column.csv: column 'Client' looks like it holds names (by its content; first at "
        "row 2). The input must be de-identified before the pipeline reads it. Remove the column "
        "from the export, or add 'Client' to `studies.t.privacy.drop_columns` in config.yaml to "
        "drop it "
        "explicitly before anything is read from it."
    ),
    "national_id_in_item.csv": (
        "national_id_in_item.csv: column 'ORS_3' looks like it holds national id numbers (by its "
        "content; first at row 5). The input must be de-identified before the pipeline reads it. "
        "The column is mapped to 'ors_3': correct the value in the file; if the column is free "
        "of identifiers, add it to `studies.t.privacy.privacy_exempt` in config.yaml."
    ),
    "negative_session.csv": (
        "negative_session.csv, row 6, column 'SessionNo': session number -2 is not a whole "
        "number of 1 or more. Session numbers count from 1 (1 = the first session); correct the "
        "value. Or set `studies.t.clean.rules.session_invalid` to 'exclude' in config.yaml."
    ),
    "notes_column.csv": (
        "notes_column.csv: column 'Notes' looks like it holds free-text notes (by its name). The "
        "input must be de-identified before the pipeline reads it. Remove the column from the "
        "export, or add 'Notes' to `studies.t.privacy.drop_columns` in config.yaml to drop it "
        "explicitly "
        "before anything is read from it."
    ),
    "notes_with_names.csv": (
        "notes_with_names.csv: column 'Obs' looks like it holds free-text notes (by its content; "
        "first at row 3). The input must be de-identified before the pipeline reads it. Remove "
        "the column from the export, or add 'Obs' to `studies.t.privacy.drop_columns` in "
        "config.yaml to "
        "drop it explicitly before anything is read from it."
    ),
    "old_excel.xls": (
        "old_excel.xls: files ending in '.xls' cannot be read; use .csv, .tsv, .txt, .xlsx, "
        ".sav, .dta or .parquet (save older .xls files as .xlsx)."
    ),
    "out_of_range.csv": (
        "out_of_range.csv, row 2, column 'ORS_4': ors_4 = 12.5 is outside the response range 0 "
        "to 10 of ors. Correct the value, or declare it under `read.missing_codes` if it is a code "
        "for 'missing'. Or set `studies.t.clean.rules.out_of_range` to 'exclude' or 'missing' in "
        "config.yaml."
    ),
    "phone_column.csv": (
        "phone_column.csv: column 'Tel' looks like it holds phone numbers (by its name and "
        "content; first at row 5). The input must be de-identified before the pipeline reads it. "
        "Remove the column from the export, or add 'Tel' to `studies.t.privacy.drop_columns` in "
        "config.yaml to drop it explicitly before anything is read from it."
    ),
    "phone_in_unnamed_column.csv": (
        "phone_in_unnamed_column.csv: column 'Extra' looks like it holds phone numbers (by its "
        "content; first at row 6). The input must be de-identified before the pipeline reads it. "
        "Remove the column from the export, or add 'Extra' to `studies.t.privacy.drop_columns` in "
        "config.yaml to drop it explicitly before anything is read from it."
    ),
    "postcode_column.csv": (
        "postcode_column.csv: column 'Area' looks like it holds postcodes (by its content; first "
        "at row 2). The input must be de-identified before the pipeline reads it. Remove the "
        "column from the export, or add 'Area' to `studies.t.privacy.drop_columns` in config.yaml "
        "to "
        "drop it explicitly before anything is read from it."
    ),
    "renamed_column.csv": (
        "renamed_column.csv: the config maps column 'SessionDate' to 'date', but the file has no "
        "column 'SessionDate'. Closest columns in the file: 'Session_Date', 'SessionNo'. Fix the "
        "name under `read.columns` in config.yaml."
    ),
    "session_zero.csv": (
        "session_zero.csv, row 5, column 'SessionNo': session number 0 is not a whole number of "
        "1 or more. Session numbers count from 1 (1 = the first session); correct the value. Or "
        "set `studies.t.clean.rules.session_invalid` to 'exclude' in config.yaml."
    ),
    "street_address_column.csv": (
        "street_address_column.csv: column 'Home' looks like it holds street addresses (by its "
        "content; first at row 2). The input must be de-identified before the pipeline reads it. "
        "Remove the column from the export, or add 'Home' to `studies.t.privacy.drop_columns` in "
        "config.yaml to drop it explicitly before anything is read from it."
    ),
    "text_in_items.csv": (
        "text_in_items.csv, row 4, column 'ORS_1': 'six' is not a number. Correct the value, or "
        "declare it under `read.missing_codes` if it means 'missing'. Or set "
        "`studies.t.clean.rules.not_a_number` to 'exclude' or 'missing' in config.yaml."
    ),
    "truncated.csv": (
        "truncated.csv, row 7: the row has 4 fields, fewer than the 8 columns of the header. The "
        "file may be truncated or a row was cut; export it again."
    ),
    "unclosed_quote.csv": (
        "unclosed_quote.csv, row 8: the file cannot be split into values (unexpected end of "
        "data); a quote is probably never closed, which happens when a file is truncated. Export "
        "the file again, or remove the stray quote."
    ),
    "undeclared_code.csv": (
        "undeclared_code.csv, row 7, column 'ORS_2': ors_2 = 999 is outside the response range 0 "
        "to 10 of ors. Correct the value, or declare it under `read.missing_codes` if it is a code "
        "for 'missing'. Or set `studies.t.clean.rules.out_of_range` to 'exclude' or 'missing' in "
        "config.yaml."
    ),
    "impossible_date.csv": (
        "impossible_date.csv, row 3, column 'SessionDate': date '31/02/2024' is impossible: "
        "February 2024 has 29 days. Correct the date: it is a typing error, since no such day "
        "exists. Or set "
        "`studies.t.clean.rules.date_invalid` to 'exclude' in config.yaml."
    ),
    "lowercase_postcode_column.csv": (
        "lowercase_postcode_column.csv: column 'Area' looks like it holds postcodes (by its "
        "content; first at row 2). The input must be de-identified before the pipeline reads it. "
        "Remove the column from the export, or add 'Area' to `studies.t.privacy.drop_columns` in "
        "config.yaml to drop it explicitly before anything is read from it."
    ),
    "therapist_name.csv": (
        "therapist_name.csv: column 'Clinician' looks like it holds names (by its content; first "
        "at row 4). The input must be de-identified before the pipeline reads it. The column is "
        "mapped to 'therapist': replace the values by pseudonymous codes in the export, or set "
        "`hash_ids: true` and the environment variable ALLIANCEFLOW_SALT so only keyed hashes "
        "are written."
    ),
    "title_rows.csv": (
        "title_rows.csv, row 1: the header has blank column names, and row 3 looks like the "
        "header, with 2 title row(s) above it. Set `read.skip_rows: 2` for this study in "
        "config.yaml, "
        "or delete the title rows in the file."
    ),
    "repeated_header.csv": (
        "repeated_header.csv, row 5: the row repeats the header (rows 5, 9); the export was "
        "probably made by appending files. Delete the repeated header rows in a copy of the "
        "file, or export the data again as one table."
    ),
    "title_rows_short.csv": (
        "title_rows_short.csv, row 1: the first row has 1 of the file's 8 columns, and row 3 "
        "looks like the header, with 2 title row(s) above it. Set `read.skip_rows: 2` for this "
        "study in config.yaml, or delete the title rows in the file."
    ),
}


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_bad_input_gets_its_exact_error(name):
    with pytest.raises(DataError) as caught:
        run(name)
    assert str(caught.value) == ERRORS[name]
    assert "\n" not in str(caught.value)  # one plain paragraph


def test_wrong_delimiter_declared_in_config():
    with pytest.raises(DataError) as caught:
        run("wrong_delimiter.csv", delimiter=",")
    assert str(caught.value) == (
        "wrong_delimiter.csv, row 1: the header is one column 'ClientCode;Clinician;SessionNo;"
        "SessionDate;ORS_1;ORS_2;ORS_3' when split at ',', but it contains ';'. Set "
        "`read.delimiter: ';'` for this study in config.yaml (or null to detect it)."
    )


# Exclusions, alterations and flags: (file, settings, expected rows of exclusions.csv as
# (source_row, patient, session, rule, action, column, reason), sessions kept).
LOGGED = {
    "id_spellings.csv": (
        {},
        [
            (
                3,
                "1",
                "2",
                "id_variant",
                "altered",
                "ClientCode",
                "patient id '1.0' is a spelling of '1' (case, spaces, number format or Unicode "
                "form); changed to '1'",
            ),
            (
                4,
                "1",
                "3",
                "id_variant",
                "altered",
                "ClientCode",
                "patient id '01' is a spelling of '1' (case, spaces, number format or Unicode "
                "form); changed to '1'",
            ),
            (
                5,
                "Zo\u00e9",
                "1",
                "id_variant",
                "altered",
                "ClientCode",
                "patient id 'Zoe\u0301' is a spelling of 'Zo\u00e9' (case, spaces, number format "
                "or Unicode form); changed to 'Zo\u00e9'",
            ),
        ],
        6,
    ),
    "blank_therapist.csv": (
        {},
        [
            (
                3,
                "P01",
                "2",
                "missing_therapist",
                "altered",
                "Clinician",
                "therapist is blank; filled with the patient's only therapist 'T1'",
            ),
            (
                7,
                "P03",
                "1",
                "missing_therapist",
                "excluded",
                "Clinician",
                "therapist is blank, and no other row of the patient names one",
            ),
        ],
        5,
    ),
    "future_date.csv": (
        {},
        [
            (
                3,
                "P01",
                "2",
                "session_order",
                "flagged",
                "SessionDate",
                "session 2 is dated 2550 day(s) after the next session (session 3)",
            ),
        ],
        8,
    ),
    "duplicate_identical.csv": (
        {},
        [
            (
                5,
                "P01",
                "2",
                "duplicate_identical",
                "excluded",
                "",
                "identical copy of an earlier row; the first copy is kept",
            )
        ],
        6,
    ),
    "duplicate_conflicting.csv": (
        {},
        [
            (
                6,
                "P02",
                "2",
                "duplicate_conflicting",
                "excluded",
                "",
                "same patient × session as rows 6, 7 but different values; all copies are excluded",
            ),
            (
                7,
                "P02",
                "2",
                "duplicate_conflicting",
                "excluded",
                "",
                "same patient × session as rows 6, 7 but different values; all copies are excluded",
            ),
        ],
        5,
    ),
    "missing_id.csv": (
        {},
        [(6, None, "2", "missing_id", "excluded", "", "patient id is empty")],
        5,
    ),
    "trailing_spaces_ids.csv": (
        {},
        [
            (
                3,
                "P01",
                "2",
                "id_variant",
                "altered",
                "ClientCode",
                "patient id 'P01  ' is a spelling of 'P01' (case, spaces, number format or "
                "Unicode form); changed to 'P01'",
            )
        ],
        6,
    ),
    "case_ids.csv": (
        {},
        [
            (
                4,
                "P01",
                "3",
                "id_variant",
                "altered",
                "ClientCode",
                "patient id 'p01' is a spelling of 'P01' (case, spaces, number format or Unicode "
                "form); changed to 'P01'",
            )
        ],
        6,
    ),
    "therapist_change.csv": (
        {},
        [
            (
                4,
                "P01",
                "3",
                "therapist_change",
                "flagged",
                "Clinician",
                "the patient's therapist changes (T1 → T2)",
            )
        ],
        6,
    ),
    "session_out_of_order.csv": (
        {},
        [
            (
                4,
                "P01",
                "3",
                "session_order",
                "flagged",
                "SessionDate",
                "session 3 is dated 3 day(s) before the previous session (session 2)",
            )
        ],
        6,
    ),
    "session_gap.csv": (
        {},
        [
            (
                4,
                "P01",
                "5",
                "session_gap",
                "flagged",
                "SessionNo",
                "sessions 3 to 4 missing before session 5",
            )
        ],
        6,
    ),
    "negative_session.csv": (
        {"rules": {"session_invalid": "exclude"}},
        [
            (
                6,
                "P02",
                "-2",
                "session_invalid",
                "excluded",
                "SessionNo",
                "session number -2 is not a whole number of 1 or more",
            )
        ],
        5,
    ),
    "session_zero.csv": (
        {"rules": {"session_invalid": "exclude"}},
        [
            (
                5,
                "P02",
                "0",
                "session_invalid",
                "excluded",
                "SessionNo",
                "session number 0 is not a whole number of 1 or more",
            ),
            (
                6,
                "P02",
                "2",
                "session_gap",
                "flagged",
                "SessionNo",
                "session 1 missing before session 2",
            ),
        ],
        5,
    ),
    "text_in_items.csv": (
        {"rules": {"not_a_number": "missing"}},
        [(4, "P01", "3", "not_a_number", "set_missing", "ORS_1", "'six' is not a number")],
        6,
    ),
    "out_of_range.csv": (
        {"rules": {"out_of_range": "exclude"}},
        [
            (
                2,
                "P01",
                "1",
                "out_of_range",
                "excluded",
                "ORS_4",
                "ors_4 = 12.5 is outside the response range 0 to 10 of ors",
            ),
            (
                3,
                "P01",
                "2",
                "session_gap",
                "flagged",
                "SessionNo",
                "session 1 missing before session 2",
            ),
        ],
        5,
    ),
    "undeclared_code.csv": (
        {"rules": {"out_of_range": "missing"}},
        [
            (
                7,
                "P03",
                "1",
                "out_of_range",
                "set_missing",
                "ORS_2",
                "ors_2 = 999 is outside the response range 0 to 10 of ors",
            )
        ],
        6,
    ),
    # Excluding a row can leave a gap, which the gap rule then flags.
    "mixed_dates.csv": (
        {"rules": {"date_invalid": "exclude"}},
        [
            (
                3,
                "P01",
                "2",
                "date_invalid",
                "excluded",
                "SessionDate",
                "date '2024-02-08' is written as %Y-%m-%d, but the date format is %d/%m/%Y "
                "(mixed date formats)",
            ),
            (
                4,
                "P01",
                "3",
                "session_gap",
                "flagged",
                "SessionNo",
                "session 2 missing before session 3",
            ),
        ],
        5,
    ),
    "email_column.csv": ({"drop_columns": ["Contact"]}, [], 6),
    "notes_with_names.csv": ({"drop_columns": ["Obs"]}, [], 6),
}


@pytest.mark.parametrize("name", sorted(LOGGED))
def test_bad_input_gets_its_exact_log_entry(name):
    settings_, expected, kept = LOGGED[name]
    result = run(name, **settings_)
    got = result.exclusions
    assert list(got.columns) == EXCLUSION_COLUMNS
    assert (got["source_file"] == name).all()
    rows = [
        (
            int(r.source_row),
            None if pd.isna(r.patient) else r.patient,
            str(r.session),
            r.rule,
            r.action,
            r.column,
            r.reason,
        )
        for r in got.itertuples()
    ]
    assert rows == expected
    assert len(result.sessions) == kept
    assert reconcile(result.flow) == []


def test_therapist_change_exclude_drops_the_patient():
    result = run("therapist_change.csv", rules={"therapist_change": "exclude"})
    assert result.exclusions["source_row"].tolist() == [2, 3, 4]
    assert set(result.exclusions["rule"]) == {"therapist_change"}
    assert result.flow["patients"] == {
        "read": 3,
        "kept": 2,
        "excluded": 1,
        "excluded_by_rule": {"therapist_change": 1},
        "rows_without_patient_id": 0,
    }


def test_min_sessions_excludes_short_patients():
    result = run("bom.csv", min_sessions=2)
    assert result.exclusions["reason"].tolist() == [
        "the patient has 1 session(s), fewer than min_sessions = 2"
    ]
    assert result.exclusions["patient"].tolist() == ["P03"]
    assert sorted(result.sessions["patient"].unique()) == ["P01", "P02"]
    assert result.flow["patients"]["excluded_by_rule"] == {"min_sessions": 1}


def test_bom_cp1252_and_decimal_comma_read_when_declared():
    reference = run("bom.csv").sessions
    assert reference["patient"].tolist() == ["P01", "P01", "P01", "P02", "P02", "P03"]
    assert reference["days"].tolist() == [0.0, 7.0, 14.0, 0.0, 7.0, 0.0]
    comma = run("decimal_comma.csv", decimal=",").sessions
    pd.testing.assert_frame_equal(comma, reference)
    windows = run("cp1252.csv", encoding="cp1252").sessions
    assert windows["therapist"].tolist()[-1] == "Müller"


def test_merged_header_reads_with_two_header_rows():
    result = run(
        "merged_header.xlsx",
        columns={
            "ClientCode": "patient",
            "Clinician": "therapist",
            "SessionNo": "session",
            "SessionDate": "date",
            **{f"ORS_{k}": f"ors_{k}" for k in range(1, 5)},
        },
        header_rows=2,
    )
    pd.testing.assert_frame_equal(result.sessions, run("bom.csv").sessions)


def test_rules_policy_error_names_the_switch():
    with pytest.raises(
        DataError, match=r"set `studies.t.clean.rules.duplicate_identical` to 'exclude'"
    ):
        run("duplicate_identical.csv", rules={"duplicate_identical": "error"})


def test_policy_outside_the_allowed_set_is_refused():
    study = make_study()
    study["rules"]["session_gap"] = "exclude"
    raw = io.read_raw(BAD / "session_gap.csv")
    with pytest.raises(
        DataError,
        match=(
            r"`studies.t.clean.rules.session_gap` is 'exclude'; "
            r"allowed values are 'error', 'flag', 'ignore'"
        ),
    ):
        clean_sessions(raw, study, source="session_gap.csv", name="t")


def test_every_rule_has_a_schema_entry():
    import yaml

    schema = yaml.safe_load(SCHEMA.read_text())
    rules = schema["$defs"]["study"]["properties"]["clean"]["properties"]["rules"]["properties"]
    assert set(rules) == set(RULES)
    for rule, (default, allowed) in RULES.items():
        assert rules[rule]["default"] == default
        assert set(rules[rule]["enum"]) == set(allowed)


def test_hash_ids_pseudonymises_sessions_and_exclusions():
    env = {"ALLIANCEFLOW_SALT": "s" * 32}
    study = make_study(hash_ids=True)
    raw = io.read_raw(BAD / "duplicate_identical.csv")
    result = clean_sessions(raw, study, source="x", env=env)
    assert not result.sessions["patient"].str.startswith("P0").any()
    assert result.sessions["patient"].str.fullmatch(r"[0-9a-f]{16}").all()
    from allianceflow.privacy import pseudonymise

    p01 = pseudonymise(pd.Series(["P01"]), "s" * 32).iloc[0]
    assert result.exclusions["patient"].tolist() == [p01]
    assert (result.sessions["patient"] == p01).sum() == 3
    with pytest.raises(DataError, match="environment variable ALLIANCEFLOW_SALT is not set"):
        clean_sessions(raw, study, source="x", env={})


def test_wide_format_melts_sessions():
    raw = pd.DataFrame(
        {
            "_source_row": [2, 3],
            "Client": ["A1", "B2"],
            **{f"ors{k}_s1": ["5", "6"] for k in range(1, 5)},
            **{f"ors{k}_s2": ["7", ""] for k in range(1, 5)},
        }
    )
    study = make_study(
        format="wide", columns={"Client": "patient", **{f"ors{k}": f"ors_{k}" for k in range(1, 5)}}
    )
    result = clean_sessions(raw, study, source="wide.csv")
    assert result.sessions[["patient", "session"]].values.tolist() == [
        ["A1", 1],
        ["A1", 2],
        ["B2", 1],
    ]
    assert result.sessions["ors_1"].tolist() == [5.0, 7.0, 6.0]
    assert result.flow["source_rows_read"] == 2 and result.flow["sessions"]["read"] == 3


def test_example_study_cleans_with_no_exclusions(root):
    config = load_config(root / "config.yaml")
    study = flat_study(config["studies"]["example"])
    result = clean_sessions(
        io.read_raw(root / study["raw"], delimiter=","),
        study,
        source="sessions_export.csv",
        name="example",
    )
    flow = result.flow
    assert flow["sessions"]["read"] == flow["sessions"]["kept"] == 3374
    assert flow["sessions"]["excluded"] == 0
    assert flow["sessions"]["flagged_by_rule"] == {"session_gap": 82}
    assert flow["patients"] == {
        "read": 300,
        "kept": 300,
        "excluded": 0,
        "excluded_by_rule": {},
        "rows_without_patient_id": 0,
    }
    assert flow["values"]["missing_code"] == 555
    sessions = result.sessions
    assert list(sessions.columns[:5]) == ["patient", "therapist", "session", "days", "condition"]
    assert sessions["session"].dtype == "int64" and sessions["days"].dtype == "float64"
    assert sessions["patient"].dtype == object and str(sessions["condition"].dtype) == "category"
    assert sessions.equals(sessions.sort_values(["patient", "session"]).reset_index(drop=True))


def test_raw_files_are_never_written(root, tmp_path):
    from allianceflow.stages import clean_stage

    config = load_config(root / "config.yaml")
    study = config["studies"]["example"]
    raw = root / study["read"]["raw"]
    before = io.sha256_file(raw)
    mtime = raw.stat().st_mtime_ns
    clean_stage(
        raw,
        read=study["read"],
        privacy=study["privacy"],
        clean=study["clean"],
        instruments=study["measures"]["instruments"],
        sessions=tmp_path / "s.parquet",
        exclusions=tmp_path / "e.csv",
        flow=tmp_path / "f.json",
    )
    assert io.sha256_file(raw) == before
    assert raw.stat().st_mtime_ns == mtime
    assert io.read_json(tmp_path / "f.json")["sessions"]["kept"] == 3374


# --------------------------------------------------------------------------- property test

_row = st.tuples(
    st.sampled_from(["P1", "P2", "p1", "P1 ", "P3", "", "NA"]),  # ids with variants and blanks
    st.sampled_from(["T1", "T2"]),
    st.sampled_from(["1", "2", "3", "5", "0", "-1", "", "2.5"]),  # invalid and missing sessions
    st.sampled_from(
        ["01/02/2024", "08/02/2024", "15/01/2024", "2024-02-01", "20/02/2024", ""]
    ),  # 20/02 is after the extraction
    st.sampled_from(["5", "0", "10", "11", "-9", "x", ""]),
    st.sampled_from(
        ["", "", "", "Done", "left", "Stopped"]
    ),  # endings: blank, mapped, unmapped, conflicting
)


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(_row, min_size=1, max_size=25), min_sessions=st.integers(1, 3))
def test_flow_always_reconciles(rows, min_sessions):
    raw = pd.DataFrame(
        rows, columns=["ClientCode", "Clinician", "SessionNo", "SessionDate", "ORS_1", "Discharge"]
    )
    raw.insert(0, "_source_row", np.arange(2, len(raw) + 2))
    exclude_all = {
        rule: next(p for p in ("exclude", "missing", "flag", "merge") if p in allowed)
        for rule, (_, allowed) in RULES.items()
    }
    exclude_all["not_a_number"] = "exclude"
    study = make_study(
        columns={
            "ClientCode": "patient",
            "Clinician": "therapist",
            "SessionNo": "session",
            "SessionDate": "date",
            "ORS_1": "ors_1",
            "Discharge": "ending",
        },
        rules=exclude_all,
        min_sessions=min_sessions,
        extraction_date="2024-02-10",
        labels={"ending": {"Done": "planned", "left": "unilateral"}},
    )
    try:
        result = clean_sessions(raw, study, source="h.csv")
    except DataError as error:  # only a whole-column problem may stop the stage
        assert "is empty in every one" in str(error)
        return
    flow = result.flow
    assert reconcile(flow) == []
    assert flow["sessions"]["read"] == len(raw)
    removed = result.exclusions[result.exclusions["action"] == "excluded"]
    assert sorted(removed["source_row"].tolist() + []) == sorted(
        set(removed["source_row"])
    )  # once each
    kept_rows = set(raw["_source_row"]) - set(removed["source_row"])
    assert len(kept_rows) == flow["sessions"]["kept"] == len(result.sessions)
    assert result.sessions["ors_1"].dropna().between(0, 10).all()
    assert not result.sessions.duplicated(["patient", "session"]).any()
    out = result.sessions
    assert (
        out.groupby("patient")["ending"].nunique(dropna=False) <= 1
    ).all()  # one ending per patient
    assert set(out["ending"].dropna().astype(str)) <= {
        "planned",
        "unilateral",
    }  # "Stopped" set missing
    assert (
        out["days"].isna() | (out["days"] <= out["followup_days"])
    ).all()  # nothing after the extraction


def test_true_number_of_patients_after_id_spellings():
    result = run("id_spellings.csv")
    assert result.flow["patients"]["read"] == 3
    assert sorted(result.sessions["patient"].unique()) == ["1", "P03", "Zo\u00e9"]


def test_blank_therapist_is_counted_and_filled():
    result = run("blank_therapist.csv")
    assert result.flow["sessions"]["altered_by_rule"] == {"missing_therapist": 1}
    assert result.flow["sessions"]["excluded_by_rule"] == {"missing_therapist": 1}
    assert result.flow["values"]["missing_by_column"]["therapist"] == {
        "raw_column": "Clinician",
        "read_blank": 2,
        "read_coded": 0,
        "kept_missing": 0,
    }
    assert result.sessions["therapist"].notna().all()


def test_blank_therapist_flag_keeps_the_rows_unfilled():
    result = run("blank_therapist.csv", rules={"missing_therapist": "flag"})
    assert result.exclusions["action"].tolist() == ["flagged", "flagged"]
    assert result.sessions["therapist"].isna().sum() == 2


def arm_study(**rules):
    columns = {**make_study()["columns"], "Arm": "condition"}
    return {"columns": columns, "labels": {"condition": {"FB": "feedback", "TAU": "tau"}}, **rules}


def test_arm_switch_is_analysed_by_intention_to_treat():
    result = run("arm_switch.csv", **arm_study())
    rows = result.exclusions[["source_row", "rule", "action", "reason"]].values.tolist()
    assert rows == [
        [
            4,
            "condition_change",
            "altered",
            "the patient's arm changes (feedback \u2192 tau); analysed in the first recorded arm, "
            "'feedback' (intention to treat)",
        ],
        [
            6,
            "condition_change",
            "altered",
            "arm is blank; filled with the patient's recorded arm 'tau'",
        ],
    ]
    arms = result.sessions.groupby("patient", observed=True)["condition"].agg(
        lambda c: sorted(set(c.astype(str)))
    )
    assert arms.to_dict() == {"P01": ["feedback"], "P02": ["tau"], "P03": ["feedback"]}


def test_arm_switch_exclude_and_error():
    result = run("arm_switch.csv", **arm_study(rules={"condition_change": "exclude"}))
    assert result.flow["patients"]["excluded_by_rule"] == {"condition_change": 1}
    assert reconcile(result.flow) == []
    with pytest.raises(DataError) as error:
        run("arm_switch.csv", **arm_study(rules={"condition_change": "error"}))
    assert str(error.value) == (
        "arm_switch.csv, row 4, column 'Arm': the patient's arm changes (feedback \u2192 tau). "
        "Record the arm the patient was allocated to on every row, or set the rule to 'flag' to "
        "analyse each patient in the first recorded arm (intention to treat). Or set "
        "`studies.t.clean.rules.condition_change` to 'flag' or 'exclude' in config.yaml."
    )


def test_therapist_name_passes_when_ids_are_hashed(monkeypatch):
    monkeypatch.setenv("ALLIANCEFLOW_SALT", "s" * 32)
    result = run("therapist_name.csv", hash_ids=True, rules={"therapist_change": "flag"})
    result_env = result.sessions["therapist"]
    assert "Dr Jane Smith" not in set(result_env)


@pytest.mark.parametrize(
    "name", ["id_spellings.csv", "future_date.csv", "therapist_change.csv", "case_ids.csv"]
)
def test_hashed_ids_leave_no_raw_id_or_date_in_the_outputs(name, monkeypatch):
    import re

    monkeypatch.setenv("ALLIANCEFLOW_SALT", "s" * 32)
    raw = io.read_raw(BAD / name)
    ids = set(raw["ClientCode"]) | set(raw["Clinician"])
    ids |= {v.strip() for v in ids}
    result = run(name, hash_ids=True)
    reasons = " ".join(result.exclusions["reason"])
    assert not {f"'{v}'" for v in ids if f"'{v}'" in reasons}
    assert not ids & set(result.exclusions["patient"].dropna())
    assert not ids & (set(result.sessions["patient"]) | set(result.sessions["therapist"]))
    written = result.exclusions.to_csv(index=False) + str(result.flow)
    written += result.sessions.to_csv(index=False)
    assert not re.search(r"\d{1,4}[/.-]\d{1,2}[/.-]\d{2,4}", written)
    assert result.flow["patients"]["read"] == 3


def test_hashed_ids_hide_a_date_typed_into_the_session_column(monkeypatch, tmp_path):
    import re

    monkeypatch.setenv("ALLIANCEFLOW_SALT", "s" * 32)
    export = tmp_path / "dates_in_sessions.csv"
    export.write_text(
        "ClientCode,Clinician,SessionNo,SessionDate,ORS_1,ORS_2,ORS_3,ORS_4\n"
        "P01,T1,1,01/02/2024,5,5,5,5\n"
        "P01,T1,15/03/2024,08/02/2024,5,5,5,5\n"
        "P01,T1,3,31/02/2024,5,5,5,5\n"
        "P02,T1,1,02/02/2024,4,4,4,4\n",
        encoding="utf-8",
    )
    study = make_study(hash_ids=True, rules={"not_a_number": "exclude", "date_invalid": "exclude"})
    result = clean_sessions(io.read_raw(export), study, source=export.name, name="t")
    log = result.exclusions
    assert log[["source_row", "rule", "session"]].to_dict("records") == [
        {"source_row": 3, "rule": "not_a_number", "session": ""},
        {"source_row": 4, "rule": "date_invalid", "session": "3"},
    ]
    assert log["reason"].tolist()[1] == (
        "the date is impossible: that day does not exist in its month"
    )
    written = log.to_csv(index=False) + str(result.flow)
    assert not re.search(r"\d{1,4}[/.-]\d{1,2}[/.-]\d{2,4}|February|2024", written)


def test_missing_values_are_counted_per_column():
    result = run("undeclared_code.csv", missing_codes=[-9, 99, 999, "NA"])
    counts = result.flow["values"]["missing_by_column"]["ors_2"]
    assert counts == {"raw_column": "ORS_2", "read_blank": 0, "read_coded": 1, "kept_missing": 1}
    assert result.flow["scores"]["ors"] == {
        "items": 4,
        "max_missing": 0,
        "sessions": 6,
        "sessions_without_total": 1,
        "share": 0.1667,
    }
    assert result.flow["warnings"] == [
        "ors: 1 of 6 kept sessions (16.7%) will have no ors_total, because more than 0 of its 4 "
        "items are blank or coded missing; set `max_missing` for ors under the study's "
        "`instruments` if its protocol prorates."
    ]


def test_steps_are_named_functions_that_run_alone():
    from allianceflow.clean import STEPS, CleanRun
    from allianceflow.clean.rules import out_of_order

    assert [n for n, _ in STEPS][:3] == ["drop_columns", "privacy_guard", "reshape"]
    assert out_of_order(np.array([1, 2, 2031, 4, 5])).tolist() == [0, 0, 1, 0, 0]
    study = make_study()
    raw = io.read_raw(BAD / "future_date.csv")
    run_ = CleanRun(raw, study, source="f.csv", name="t", collect=False, env={}, config="c.yaml")
    for _, step in STEPS[:4]:
        step(run_)
    assert run_.rows_read == 8 and "_session_text" in run_.frame


def test_messages_name_the_config_file_given():
    study = make_study()
    raw = io.read_raw(BAD / "renamed_column.csv")
    with pytest.raises(DataError, match=r"Fix the name under `read.columns` in study\.yaml\.$"):
        clean_sessions(raw, study, source="renamed_column.csv", config="study.yaml")


def test_the_clean_stage_names_the_config_file_it_was_given(root, tmp_path):
    from allianceflow.stages import clean_stage

    study = load_config(root / "config.yaml")["studies"]["example"]
    read = {**study["read"], "columns": {**study["read"]["columns"], "Therapist": "therapist"}}
    read["columns"].pop("Clinician")
    with pytest.raises(DataError, match=r"in site_b\.yaml\.$"):
        clean_stage(
            root / study["read"]["raw"],
            read=read,
            privacy=study["privacy"],
            clean=study["clean"],
            instruments=study["measures"]["instruments"],
            sessions=tmp_path / "s.parquet",
            exclusions=tmp_path / "e.csv",
            flow=tmp_path / "f.json",
            name="example",
            config="site_b.yaml",
        )
    assert not (tmp_path / "s.parquet").exists()


def test_no_similar_column_gets_no_suggestion():
    study = make_study(columns={**make_study()["columns"], "Therapist": "therapist"})
    study["columns"].pop("Clinician")
    raw = io.read_raw(BAD / "bom.csv")
    with pytest.raises(DataError) as error:
        clean_sessions(raw, study, source="bom.csv")
    assert "Closest" not in str(error.value)
    assert "No column of the file has a similar name" in str(error.value)


def test_outputs_follow_the_umask(tmp_path):
    import os

    old = os.umask(0o027)
    try:
        io.write_json({"a": 1}, tmp_path / "x.json")
    finally:
        os.umask(old)
    assert (tmp_path / "x.json").stat().st_mode & 0o777 == 0o640


_messy_patient = st.tuples(
    st.sampled_from(["1", "2", "3", "A7"]),  # true patient
    st.lists(st.sampled_from(["FB", "fb", "TAU", "tau ", ""]), min_size=1, max_size=4),  # arms
    st.lists(st.sampled_from(["T1", ""]), min_size=1, max_size=4),  # therapist per session
)


def _spell(patient: str, k: int) -> str:
    spellings = {
        "1": ["1", "1.0", " 1", "01"],
        "2": ["2", "2.0", "2 ", "002"],
        "3": ["3", "3", "3.00", " 3 "],
        "A7": ["A7", "a7", " A7", "A\uff17"],
    }[patient]
    return spellings[k % 4]


_MESSY_STUDY = make_study(**arm_study())


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    patients=st.lists(_messy_patient, min_size=1, max_size=4, unique_by=lambda p: p[0]),
    blanks=st.lists(st.booleans(), min_size=16, max_size=16),
    duplicate=st.booleans(),
    seed=st.integers(0, 10**6),
)
def test_messy_exports_reconcile_and_count_true_patients(patients, blanks, duplicate, seed):
    rows = []
    for patient, arms, therapists in patients:
        for k in range(max(len(arms), len(therapists))):
            rows.append(
                [
                    _spell(patient, k + seed),
                    therapists[k % len(therapists)],
                    str(k + 1),
                    f"{k + 1:02d}/02/2024",
                    *["" if blanks[(k * 4 + i) % 16] else str(i + 3) for i in range(4)],
                    arms[k % len(arms)],
                ]
            )
    if duplicate:
        rows.append(list(rows[0]))
    order = np.random.default_rng(seed).permutation(len(rows))
    raw = pd.DataFrame([rows[i] for i in order], columns=[*make_study()["columns"], "Arm"])
    raw.insert(0, "_source_row", np.arange(2, len(raw) + 2))
    try:
        result = clean_sessions(raw, _MESSY_STUDY, source="messy.csv")
    except DataError as error:  # only a column blank in every row may stop the stage
        assert "is empty in every one" in str(error)
        return
    assert reconcile(result.flow) == []
    assert result.flow["patients"]["read"] == len(patients)
    kept = result.sessions
    assert kept.groupby("patient")["condition"].nunique().le(1).all()
    arms = kept["condition"].dropna().astype(str).unique()
    assert len(arms) == len({a.casefold() for a in arms})  # one spelling per arm
    assert kept["therapist"].notna().all()


def test_spellings_of_one_arm_are_merged_and_logged():
    columns = {**make_study()["columns"], "Arm": "condition"}
    result = run("arm_spellings.csv", columns=columns)
    arms = result.sessions.groupby("patient", observed=True)["condition"].unique()
    assert {p: list(a) for p, a in arms.items()} == {
        "P01": ["Feedback"],
        "P02": ["TAU"],
        "P03": ["Feedback"],
    }
    logged = result.exclusions[result.exclusions["rule"] == "label_variant"]
    assert logged[["source_row", "action", "column", "reason"]].values.tolist() == [
        [
            3,
            "altered",
            "Arm",
            "condition label 'feedback' is a spelling of 'Feedback' (case, spaces or Unicode form)",
        ],
        [
            4,
            "altered",
            "Arm",
            "condition label 'FEEDBACK' is a spelling of 'Feedback' (case, spaces or Unicode form)",
        ],
        [
            6,
            "altered",
            "Arm",
            "condition label 'tau' is a spelling of 'TAU' (case, spaces or Unicode form)",
        ],
    ]
    assert result.flow["sessions"]["altered_by_rule"] == {"label_variant": 3}
    # A spelling the study relabels wins over the most frequent one.
    relabelled = run(
        "arm_spellings.csv", columns=columns, labels={"condition": {"tau": "usual care"}}
    )
    assert sorted(relabelled.sessions["condition"].unique()) == ["Feedback", "usual care"]
    with pytest.raises(DataError) as caught:
        run("arm_spellings.csv", columns=columns, rules={"label_variant": "error"})
    assert str(caught.value) == (
        "arm_spellings.csv, row 3, column 'Arm': condition label 'feedback' is a spelling of "
        "'Feedback' (case, spaces or Unicode form) (2 more row(s) have the same problem). "
        "Write every condition label the same way in the file, or map each spelling under "
        "`studies.t.read.labels.condition` in config.yaml. Or set "
        "`studies.t.clean.rules.label_variant` to 'merge' in config.yaml."
    )


def test_declared_labels_codes_and_terms_are_not_taken_for_identifiers():
    # Arm labels ("Usual Care"), a declared missing code ("Not Applicable") in an item, and a
    # term code of Dutch-postcode shape ("2024SP") pass the guard; the code counts as missing.
    result = run(
        "declared_labels.csv",
        columns={**make_study()["columns"], "Arm": "condition"},
        missing_codes=[-9, 99, "NA", "Not Applicable"],
        drop_columns=[],
        privacy_exempt=[],
    )
    assert result.flow["patients"]["kept"] == 3
    assert sorted(result.sessions["condition"].unique()) == [
        "Feedback Group",
        "Usual Care",
        "Waiting List",
    ]
    assert result.flow["values"]["missing_by_column"]["ors_2"]["read_coded"] == 1


def test_undeclared_missing_code_in_an_item_is_still_read_as_content():
    with pytest.raises(DataError) as caught:
        run("declared_labels.csv", columns={**make_study()["columns"], "Arm": "condition"})
    assert str(caught.value) == (
        "declared_labels.csv: column 'ORS_2' looks like it holds names (by its content; first at "
        "row 3). The input must be de-identified before the pipeline reads it. The column is "
        "mapped to 'ors_2': correct the value in the file; if it is a missing-value code (such "
        "as 'Not Applicable'), list it under `studies.t.read.missing_codes`; if the column is "
        "free of identifiers, add it to `studies.t.privacy.privacy_exempt` in config.yaml."
    )


def test_blank_item_cells_are_counted_in_the_flow():
    flow = run("blank_items.csv").flow
    assert flow["values"]["missing_by_column"]["ors_2"] == {
        "raw_column": "ORS_2",
        "read_blank": 2,
        "read_coded": 0,
        "kept_missing": 2,
    }
    assert flow["values"]["missing_by_column"]["ors_4"] == {
        "raw_column": "ORS_4",
        "read_blank": 0,
        "read_coded": 1,
        "kept_missing": 1,
    }
    assert flow["scores"]["ors"]["sessions_without_total"] == 2  # rows 3 and 6
    assert flow["values"]["missing_code"] == 1


@pytest.mark.parametrize(
    "value, fmt, reason",
    [
        ("31.02.2024", "%d.%m.%Y", "date '31.02.2024' is impossible: February 2024 has 29 days"),
        ("29/02/2023", "%d/%m/%Y", "date '29/02/2023' is impossible: February 2023 has 28 days"),
        ("2024-13-01", "%Y-%m-%d", "date '2024-13-01' is impossible: there is no month 13"),
        (
            "2024-02-08",
            "%d/%m/%Y",
            "date '2024-02-08' is written as %Y-%m-%d, but the date format is %d/%m/%Y "
            "(mixed date formats)",
        ),
        ("soon", "%d/%m/%Y", "date 'soon' does not match the date format %d/%m/%Y"),
    ],
)
def test_impossible_dates_are_called_impossible(value, fmt, reason):
    from allianceflow.clean.rules import date_problem

    assert date_problem(value, fmt) == reason


def run_text(tmp_path, text: str, **settings_):
    """Clean a small export written from *text* (a CSV with the corpus's columns)."""
    path = tmp_path / "export.csv"
    path.write_text(text, encoding="utf-8")
    study = make_study(**settings_)
    return clean_sessions(io.read_raw(path), study, source="export.csv", name="t")


HEADER = "ClientCode,Clinician,SessionNo,SessionDate,ORS_1,ORS_2,ORS_3,ORS_4,Arm\n"


def test_the_arm_of_an_excluded_first_session_is_the_intention_to_treat_arm(tmp_path):
    text = HEADER + (
        "A,T1,1,31/02/2024,5,5,5,5,FB\n"
        "A,T1,2,08/03/2024,5,5,5,5,TAU\n"
        "A,T1,3,15/03/2024,5,5,5,5,TAU\n"
        "B,T2,1,01/03/2024,5,5,5,5,TAU\n"
    )
    result = run_text(tmp_path, text, **arm_study(rules={"date_invalid": "exclude"}))
    rows = result.exclusions[["source_row", "rule", "action", "reason"]].values.tolist()
    itt = (
        "the patient's arm changes (feedback \u2192 tau); analysed in the first recorded arm, "
        "'feedback' (intention to treat; it is recorded on row 2, which is excluded)"
    )
    assert rows == [
        [
            2,
            "date_invalid",
            "excluded",
            "date '31/02/2024' is impossible: February 2024 has 29 days",
        ],
        [3, "session_gap", "flagged", "session 1 missing before session 2"],
        [3, "condition_change", "altered", itt],
        [4, "condition_change", "altered", itt],
    ]
    kept = result.sessions[["patient", "session", "condition"]].astype(str).values.tolist()
    assert kept == [["A", "2", "feedback"], ["A", "3", "feedback"], ["B", "1", "tau"]]
    excluded = run_text(
        tmp_path,
        text,
        **arm_study(rules={"date_invalid": "exclude", "condition_change": "exclude"}),
    )
    switch = (
        "the patient's arm changes (feedback \u2192 tau; it is recorded on row 2, which is "
        "excluded)"
    )
    assert excluded.exclusions[["source_row", "rule", "action", "reason"]].values.tolist()[2:] == [
        [3, "condition_change", "excluded", switch],
        [4, "condition_change", "excluded", switch],
    ]
    assert excluded.flow["patients"]["excluded_by_rule"] == {"condition_change": 1}
    assert reconcile(excluded.flow) == []


def test_the_first_arm_is_by_session_number_not_file_order(tmp_path):
    text = HEADER + ("A,T1,2,08/03/2024,5,5,5,5,TAU\nA,T1,1,01/03/2024,5,5,5,5,FB\n")
    result = run_text(tmp_path, text, **arm_study())
    assert result.exclusions[["source_row", "reason"]].values.tolist() == [
        [
            2,
            "the patient's arm changes (feedback \u2192 tau); analysed in the first recorded "
            "arm, 'feedback' (intention to treat)",
        ]
    ]
    assert result.sessions["condition"].astype(str).tolist() == ["feedback", "feedback"]


def order_export(dates: list[str]) -> str:
    return HEADER.replace(",Arm", "") + "".join(
        f"P01,T1,{s},{d},5,5,5,5\n" for s, d in enumerate(dates, start=1)
    )


@pytest.mark.parametrize(
    ("dates", "row", "reason"),
    [
        (
            ["01/03/2024", "08/03/2024", "15/03/2024", "22/03/2031", "29/03/2024"],
            5,
            "session 4 is dated 2549 day(s) after the next session (session 5)",
        ),
        (
            ["01/03/2024", "08/03/2031", "15/03/2024"],
            3,
            "session 2 is dated 2549 day(s) after the next session (session 3)",
        ),
        (
            ["01/02/2024", "08/02/2024", "05/02/2024"],
            4,
            "session 3 is dated 3 day(s) before the previous session (session 2)",
        ),
        (
            ["05/02/2024", "01/02/2024", "06/02/2024"],
            3,
            "session 2 is dated 4 day(s) before the previous session (session 1)",
        ),
    ],
)
def test_the_far_off_date_is_the_one_flagged(tmp_path, dates, row, reason):
    result = run_text(tmp_path, order_export(dates))
    assert result.exclusions[["source_row", "rule", "action", "reason"]].values.tolist() == [
        [row, "session_order", "flagged", reason]
    ]


def test_out_of_order_prefers_the_shorter_span_only_beyond_the_kept_intervals():
    from allianceflow.clean.rules import out_of_order

    assert out_of_order(np.array([1, 8, 15, 2031, 29])).tolist() == [0, 0, 0, 1, 0]
    assert out_of_order(np.array([1, 2031, 15])).tolist() == [0, 1, 0]
    # spans 7 and 4 differ by 3, less than the kept interval 4: the later session is flagged
    assert out_of_order(np.array([1, 8, 5])).tolist() == [0, 0, 1]
    assert out_of_order(np.array([5, 1, 6])).tolist() == [0, 1, 0]
    assert out_of_order(np.array([10, 1, 2, 3])).tolist() == [1, 0, 0, 0]
    assert out_of_order(np.array([], dtype="int64")).tolist() == []


@pytest.mark.parametrize("seed", range(25))
def test_duplicates_match_whole_table_comparison(seed):
    # The duplicates rule compares whole rows only among the rows of a repeated key; the
    # rows it logs must be those of comparing every row of the table with every other.
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(int(rng.integers(1, 8))):
        for s in range(1, int(rng.integers(2, 6))):
            rows.append(
                [f"P{p}", "T1", str(s), f"{s:02d}/03/2024", *map(str, rng.integers(0, 3, 4))]
            )
    for _ in range(int(rng.integers(0, 6))):  # identical copies and conflicting versions
        copy = list(rows[int(rng.integers(len(rows)))])
        if rng.random() < 0.5:
            copy[4 + int(rng.integers(4))] = str(int(rng.integers(3, 6)))
        rows.append(copy)
    order = rng.permutation(len(rows))
    raw = pd.DataFrame([rows[i] for i in order], columns=list(make_study()["columns"]))
    raw.insert(0, "_source_row", np.arange(2, len(raw) + 2))
    result = clean_sessions(raw, make_study(), source="dups.csv")
    values = raw.drop(columns="_source_row")
    identical = values.duplicated(keep="first")
    left = raw.loc[~identical]
    conflicting = left.duplicated(["ClientCode", "SessionNo"], keep=False)
    logged = result.exclusions.groupby("rule")["source_row"].apply(sorted).to_dict()
    assert logged.get("duplicate_identical", []) == sorted(raw.loc[identical, "_source_row"])
    assert logged.get("duplicate_conflicting", []) == sorted(left.loc[conflicting, "_source_row"])
    assert reconcile(result.flow) == []


_ID_VALUES = st.sampled_from(["P1", "P2", "P10", "p2", "", None, np.nan, 3, 3.0, "P1 "])
_SESSIONS = st.sampled_from([1.0, 2.0, 2.0, 3.0, 10.0, np.nan, -0.0, 0.0])


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.lists(st.tuples(_ID_VALUES, _SESSIONS, st.integers(0, 3)), max_size=30),
    presort=st.booleans(),
    categorical=st.booleans(),
)
def test_sort_rows_gives_the_stable_pandas_sort(rows, presort, categorical):
    """sort_rows equals sort_values(kind="mergesort"): ordered, missing, mixed or categorical.

    Half the tables are sorted first, so the ordered case (returned as it is) is drawn as
    often as the others; ties keep their row order (the third column tells them apart).
    """
    from allianceflow.clean.state import in_order, sort_rows

    frame = pd.DataFrame(rows, columns=["patient", "session", "row"], dtype=object)
    frame["session"] = frame["session"].astype("float64")
    frame["row"] = np.arange(len(frame))
    if presort:
        try:
            frame = frame.sort_values(["patient", "session"], kind="mergesort")
        except TypeError:  # ids pandas cannot order (a number among text): left as drawn
            pass
    if categorical:
        frame["patient"] = frame["patient"].astype(str).astype("category")
    keys = ["patient", "session"]
    try:
        expected = frame.sort_values(keys, kind="mergesort")
    except TypeError:
        with pytest.raises(TypeError):
            sort_rows(frame, keys)
        return
    got = sort_rows(frame, keys)
    pd.testing.assert_frame_equal(got, expected)
    if in_order(frame, keys):
        assert got is frame


def test_sort_rows_returns_an_ordered_export_as_it_is_and_sorts_the_others():
    """Ids in order with sessions in order are not sorted again; one swap is sorted."""
    from allianceflow.clean.state import in_order, sort_rows

    frame = pd.DataFrame(
        {
            "patient": ["A1", "A1", "A1", "B2", "B2", "C3"],
            "session": [1, 2, 2, 1, 4, 1],
            "tie": [0, 1, 2, 3, 4, 5],
        }
    )
    assert in_order(frame, ["patient", "session"])
    assert sort_rows(frame, ["patient", "session"]) is frame
    swapped = frame.iloc[[0, 1, 2, 4, 3, 5]]
    assert not in_order(swapped, ["patient", "session"])
    assert sort_rows(swapped, ["patient", "session"])["tie"].tolist() == [0, 1, 2, 3, 4, 5]
    # a missing session, or a category column, is always left to pandas
    gap = frame.assign(session=[1, 2, None, 1, 4, 1])
    assert not in_order(gap, ["patient", "session"])
    assert sort_rows(gap, ["patient", "session"])["tie"].tolist() == [0, 1, 2, 3, 4, 5]
    assert not in_order(frame.astype({"patient": "category"}), ["patient", "session"])
