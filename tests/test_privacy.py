"""Tests of allianceflow.privacy: identifiers planted in any column are caught."""

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from allianceflow import io
from allianceflow.config import load_config
from allianceflow.privacy import SALT_ENV, check_privacy, find_identifiers, get_salt, pseudonymise

PLANTS = {
    "e-mail addresses": "j.smith@example.com",
    "phone numbers": "+44 20 7946 0958",
    "national id numbers": "123-45-6789",
    "postcodes": "SW1A 1AA",
    "street addresses": "221B Baker Street",
}


@pytest.fixture(scope="module")
def example(root):
    config = load_config(root / "config.yaml")
    study = config["studies"]["example"]
    return io.read_raw(root / study["read"]["raw"]), study


def test_example_export_is_clean(example):
    raw, study = example
    assert find_identifiers(raw, date_columns=["SessionDate"]) == []


@settings(deadline=None)
@given(data=st.data())
def test_identifier_planted_in_any_column_is_caught(example, data):
    raw, study = example
    column = data.draw(st.sampled_from(list(raw.columns[1:])))
    kind = data.draw(st.sampled_from(sorted(PLANTS)))
    row = data.draw(st.integers(0, len(raw) - 1))
    planted = raw.copy()
    planted.loc[row, column] = PLANTS[kind]
    findings = find_identifiers(planted, date_columns=["SessionDate"])
    assert [(f.column, f.kind, f.row) for f in findings] == [(column, kind, row + 2)]


@pytest.mark.parametrize(
    "column, values, kind",
    [
        ("E-mail", ["x"], "e-mail addresses"),
        ("PatientName", ["x"], "names"),
        ("DOB", ["x"], "dates of birth"),
        ("zip_code", ["x"], "postcodes"),
        ("Comments", ["x"], "free-text notes"),
        ("BSN", ["x"], "national id numbers"),
        ("c", ["Anna Smit", "Jan de Vries", "Piet Bakker"], "names"),
        ("c", ["5", "Anna Smit", "4"], "names"),
        ("c", ["12/03/1961", "01/01/1970"], "dates of birth"),
        ("c", ["0612345678"], "phone numbers"),
        ("c", ["943 476 5919"], "national id numbers"),
        ("c", ["Hoofdstraat 12"], "street addresses"),
        ("c", ["Pt calm today and spoke about her new job", ""], "free-text notes"),
        ("c", ["sw1a 1aa"], "postcodes"),
        ("c", ["sw1a1aa", "ec1a1bb", ""], "postcodes"),
        ("c", ["1012ab", "3511lx"], "postcodes"),
        ("c", ["k1a0b1", "m5v3l9"], "postcodes"),
        ("c", ["Dr Jane Smith", "Prof. Anna de Vries", "Smith, J."], "names"),
    ],
)
def test_detection_by_name_and_content(column, values, kind):
    frame = pd.DataFrame({"_source_row": range(2, 2 + len(values)), column: values})
    found = find_identifiers(frame, this_year=2026)
    assert [f.kind for f in found] == [kind]


@pytest.mark.parametrize(
    "values",
    [
        ["ROM feedback", "TAU"],
        ["2.8", "10.0", "-9"],
        ["P001", "T03"],
        ["21/02/2023"],
        ["Group Therapy", "Individual"],
        ["P12AB", "P01", "P02", "P03"],  # one code of postcode shape among ordinary ones
        ["2024SP", "2024SP", "2025SP"],  # terms: the four digits are years
        ["2024FA", "2025SU", "2024 SA"],  # letters no Dutch postcode uses
    ],
)
def test_ordinary_values_pass(values):
    frame = pd.DataFrame({"_source_row": range(2, 2 + len(values)), "c": values})
    assert find_identifiers(frame, date_columns=[], this_year=2026) == []


def test_check_privacy_message_for_mapped_id_column():
    frame = pd.DataFrame({"_source_row": [2, 3], "Client": ["a@b.org", "P2"]})
    with pytest.raises(io.DataError) as caught:
        check_privacy(frame, source="s.csv", mapped={"Client": "patient"})
    assert str(caught.value) == (
        "s.csv: column 'Client' looks like it holds e-mail addresses (by its content; first at "
        "row 2). The input must be de-identified before the pipeline reads it. The column is "
        "mapped to 'patient': replace the values by pseudonymous codes in the export."
    )


def test_record_numbers_pass_when_ids_are_hashed():
    frame = pd.DataFrame({"_source_row": [2], "Client": ["100234567"]})
    with pytest.raises(io.DataError, match="set `hash_ids: true`"):
        check_privacy(frame, source="s.csv", mapped={"Client": "patient"})
    check_privacy(frame, source="s.csv", mapped={"Client": "patient"}, hash_ids=True)


def test_salt_and_pseudonyms():
    hashed = pseudonymise(pd.Series(["P001", "P002", None]), "a" * 16)
    assert hashed[:2].tolist() == ["0a988d4d850f1f20", "9f0dd855169c96b0"] and pd.isna(hashed[2])
    with pytest.raises(io.DataError, match=f"{SALT_ENV} has only 5 characters"):
        get_salt({SALT_ENV: "short"})
    assert get_salt({SALT_ENV: "x" * 20}) == "x" * 20
    with pytest.raises(
        ValueError, match="`salt` must be a string of at least 16 characters; got 3"
    ):
        pseudonymise(pd.Series(["a"]), "abc")


@pytest.mark.parametrize("name", ["Dr Jane Smith", "Smith, J.", "Mr. Peter Smit", "J. de Vries"])
def test_one_name_in_a_mapped_id_column_is_refused(name):
    frame = pd.DataFrame({"_source_row": [2, 3, 4], "Clin": ["T1", name, "T2"]})
    with pytest.raises(io.DataError) as caught:
        check_privacy(frame, source="s.csv", mapped={"Clin": "therapist"})
    assert str(caught.value) == (
        "s.csv: column 'Clin' looks like it holds names (by its content; first at row 3). The "
        "input must be de-identified before the pipeline reads it. The column is mapped to "
        "'therapist': replace the values by pseudonymous codes in the export, or set "
        "`hash_ids: true` and the environment variable ALLIANCEFLOW_SALT so only keyed hashes "
        "are written."
    )
    check_privacy(frame, source="s.csv", mapped={"Clin": "therapist"}, hash_ids=True)
    assert find_identifiers(frame) == []  # unmapped, one name among codes is not enough


@pytest.mark.parametrize(
    "ids",
    [
        ["JANE SMITH", "T02", "T03"],
        ["jane smith", "T02", "T03"],
        ["J Smith", "T02", "T03"],
        ["Smith, Jane", "T02", "T03"],
        ["Jane S.", "T02", "T03"],
        ["Anna", "Peter", "Maria", "T04"],  # first names alone
    ],
)
def test_names_in_an_id_column_are_caught_in_any_case(ids):
    frame = pd.DataFrame(
        {"_source_row": range(2, 2 + len(ids)), "Clin": ids, "ORS_1": ["5"] * len(ids)}
    )
    found = find_identifiers(frame, id_columns=["Clin"])
    assert [(f.column, f.kind, f.row) for f in found] == [("Clin", "names", 2)]


@pytest.mark.parametrize("ids", [["T01", "T02", "T03"], ["K01", "K12"], ["C-001", "C-002"]])
def test_coded_ids_are_not_names(ids):
    frame = pd.DataFrame({"_source_row": range(2, 2 + len(ids)), "Clin": ids})
    assert find_identifiers(frame, id_columns=["Clin"]) == []


@pytest.mark.parametrize("values", [["1012 AB"], ["3511 LX", "P01"], ["1012ab", "3511lx"]])
def test_dutch_postcodes_are_caught(values):
    frame = pd.DataFrame({"_source_row": range(2, 2 + len(values)), "c": values})
    assert [f.kind for f in find_identifiers(frame, this_year=2026)] == ["postcodes"]


def test_arm_labels_in_a_category_column_are_not_names():
    arms = ["Usual Care", "Feedback Group", "Waiting List", "Usual Care"]
    frame = pd.DataFrame({"_source_row": range(2, 6), "Arm": arms})
    assert [f.kind for f in find_identifiers(frame, this_year=2026)] == ["names"]
    assert find_identifiers(frame, this_year=2026, category_columns=["Arm"]) == []
    frame["Arm"] = ["Usual Care", "j.smith@example.com", "Waiting List", "Usual Care"]
    found = find_identifiers(frame, this_year=2026, category_columns=["Arm"])
    assert [(f.kind, f.row) for f in found] == [("e-mail addresses", 3)]


def test_declared_values_are_not_content():
    frame = pd.DataFrame({"_source_row": range(2, 6), "Q1": ["3", "Not Applicable", "2", "1"]})
    assert [f.kind for f in find_identifiers(frame, this_year=2026)] == ["names"]
    assert find_identifiers(frame, this_year=2026, declared={"*": ["Not Applicable"]}) == []
    assert find_identifiers(frame, this_year=2026, declared={"Q1": [" Not Applicable "]}) == []
