"""Tests of allianceflow.contract: the pandera schema of the canonical table."""

import pandas as pd
import pytest

from allianceflow.contract import item_ranges, session_schema, validate_sessions
from allianceflow.io import DataError


def table(**changes):
    frame = pd.DataFrame(
        {
            "patient": pd.Series(["P1", "P1", "P2"], dtype=object),
            "session": pd.Series([1, 2, 1], dtype="int64"),
            "days": [0.0, 7.0, 0.0],
            "ors_1": [5.0, None, 10.0],
        }
    )
    for k, v in changes.items():
        frame[k] = v
    return frame


def test_ranges_pick_the_longest_instrument_id():
    assert item_ranges(
        ["wai_sr_3", "ors_1", "x"], {"wai": (0, 1), "wai_sr": (1, 5), "ors": (0, 10)}
    ) == {"wai_sr_3": (1.0, 5.0), "ors_1": (0.0, 10.0)}


def test_valid_table_passes():
    frame = table()
    assert validate_sessions(frame, ranges={"ors_1": (0, 10)}) is frame
    assert session_schema(frame.columns).unique == ["patient", "session"]


@pytest.mark.parametrize(
    "changes, fragment",
    [
        ({"ors_1": [5.0, 11.0, 1.0]}, "row 12, column 'ors_1', in_range(0, 10): 11.0"),
        (
            {"session": pd.Series([1, 0, 1], dtype="int64")},
            "column 'session', greater_than_or_equal_to(1): 0",
        ),
        ({"patient": pd.Series(["P1", "P1", " "], dtype=object)}, "id must not be empty"),
        ({"session": pd.Series([1, 1, 1], dtype="int64")}, "column 'session'"),
        ({"extra": [1, 2, 3]}, "column_in_schema"),
    ],
)
def test_contract_failures_name_row_and_column(changes, fragment):
    frame = table(**changes)
    with pytest.raises(DataError, match="breaks the data contract") as caught:
        validate_sessions(
            frame, ranges={"ors_1": (0, 10)}, source="s.csv", rows=pd.Series([11, 12, 13])
        )
    assert fragment in str(caught.value)
