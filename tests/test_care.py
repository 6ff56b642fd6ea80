"""The CARE Measure file and the "does not apply" rule, against hand-computed scores."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from allianceflow.instruments import load_instrument, validate_definition
from allianceflow.score import score_columns, score_sessions

# One consultation rated 5, 4, 3, 5, 4, 3, 5, 4, 3, 5 on the ten items: sum 41.
ANSWERS = [5, 4, 3, 5, 4, 3, 5, 4, 3, 5]
NA = 9  # the file's "does not apply" code


def _row(na_items=(), blank_items=()):
    values = list(ANSWERS)
    for i in na_items:
        values[i - 1] = NA
    for i in blank_items:
        values[i - 1] = np.nan
    return values


def _frame(rows):
    data = pd.DataFrame(rows, columns=[f"care_{i}" for i in range(1, 11)], dtype=float)
    data.insert(0, "patient", [f"p{i}" for i in range(len(rows))])
    data.insert(1, "session", 1)
    return data


def test_care_file_numbers():
    care = load_instrument("care")
    assert care.n_items == 10
    assert (care.response_min, care.response_max) == (1.0, 5.0)
    assert care.not_applicable == 9.0
    assert care.max_missing == 2
    assert care.total_rule == "sum"
    assert care.direction == "higher_is_better"
    assert care.reverse == ()
    assert care.cutoff is None and care.rci is None
    assert care.unconfirmed == ()
    assert care.definition["construct"] == "empathy"


def test_care_score_columns_count_not_applicable():
    assert score_columns("care") == [
        "care_total",
        "care_n_items",
        "care_prorated",
        "care_n_not_applicable",
    ]


def test_not_applicable_rule_against_hand_computed_scores():
    data = _frame(
        [
            _row(),  # complete: 41
            _row(na_items=[10]),  # 9 answered sum 36 -> 36 * 10 / 9 = 40
            _row(na_items=[9, 10]),  # 8 answered sum 33 -> 33 * 10 / 8 = 41.25
            _row(na_items=[8, 9, 10]),  # 3 > 2: not scored
            _row(na_items=[9], blank_items=[10]),  # one NA + one blank: 41.25
            _row(na_items=[1], blank_items=[2, 3]),  # 3 missing in all: not scored
        ]
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scored = score_sessions(data, ["care"])
    assert np.allclose(
        scored["care_total"].to_numpy(), [41.0, 40.0, 41.25, np.nan, 41.25, np.nan], equal_nan=True
    )
    assert scored["care_n_not_applicable"].tolist() == [0, 1, 2, 3, 1, 1]
    assert scored["care_n_items"].tolist() == [10, 9, 8, 7, 8, 7]
    assert scored["care_prorated"].tolist() == [False, True, True, False, True, False]
    assert [str(w.message) for w in caught] == [
        "care: 2 row(s) answered some but not enough items (at most 2 may be missing); "
        "their care_total is NaN."
    ]


def test_study_can_override_the_not_applicable_code():
    data = _frame([[5, 4, 3, 5, 4, 3, 5, 4, 3, 0]])
    scored = score_sessions(data, {"care": {"not_applicable": 0}})
    assert scored["care_total"].iloc[0] == pytest.approx(40.0)
    assert scored["care_n_not_applicable"].iloc[0] == 1


def test_code_inside_range_is_refused():
    with pytest.raises(ValueError, match=r"`response.not_applicable` must lie outside"):
        load_instrument("care", overrides={"not_applicable": 3})


def test_value_neither_answer_nor_code_is_out_of_range():
    data = _frame([[5, 4, 3, 5, 4, 3, 5, 4, 3, 7]])
    with pytest.raises(ValueError, match=r"Column 'care_10' \(instrument 'care'\) has value 7"):
        score_sessions(data, ["care"])


def test_instrument_without_code_still_refuses_nine():
    data = pd.DataFrame({f"phq9_{i}": [9.0] for i in range(1, 10)})
    with pytest.raises(ValueError, match=r"has value 9 at row 0; allowed range is 0 to 3"):
        score_sessions(data, ["phq9"])


def test_schema_refuses_unknown_source_for_not_applicable():
    raw = load_instrument("care").definition
    bad = {**raw, "response": {**raw["response"], "not_applicable_source": "nowhere"}}
    with pytest.raises(ValueError, match=r"`response.not_applicable.source` is 'nowhere'"):
        validate_definition(bad)


def test_clean_keeps_the_code_and_the_study_scores_it(tmp_path):
    """A CARE export through the clean stage: 9 is kept (not out of range), 7 is refused."""
    from pathlib import Path

    from allianceflow import io
    from allianceflow.clean import DataError, clean_sessions
    from allianceflow.config import flat_study, group_study, validate_config

    def clean(last_item_of_p2):
        lines = ["id,sess," + ",".join(f"C{i}" for i in range(1, 11)) + ",O1,O2,O3,O4"]
        lines.append("P1,1," + ",".join(map(str, ANSWERS)) + ",5,5,5,5")
        lines.append("P2,1," + ",".join(map(str, _row(na_items=[9])[:9])) + f",{last_item_of_p2}")
        lines[-1] += ",4,4,4,4"
        path = tmp_path / "care.csv"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        study = {
            "raw": str(path),
            "columns": {
                "id": "patient",
                "sess": "session",
                **{f"C{i}": f"care_{i}" for i in range(1, 11)},
                **{f"O{i}": f"ors_{i}" for i in range(1, 5)},
            },
            "instruments": {"care": None, "ors": {"rci": 5}},
            "alliance": "care_total",
            "outcome": "ors_total",
            "models": ["m"],
        }
        config = {"studies": {"t": group_study(study)}, "models": {"m": {"formula": "outcome ~ 1"}}}
        schema = Path(__file__).parents[1] / "workflow/schemas/config.schema.yaml"
        study = flat_study(validate_config(config, schema)["studies"]["t"])
        raw = io.read_raw(path, delimiter=",", encoding=study["encoding"])
        return clean_sessions(raw, study, source="care.csv", name="t"), study

    cleaned, study = clean(9)
    assert cleaned.sessions["care_9"].tolist() == [3.0, 9.0]
    scored = score_sessions(cleaned.sessions, study["instruments"])
    # P2: items 9 and 10 "does not apply"; 8 answered sum 33 -> 41.25
    assert scored["care_total"].tolist() == [41.0, 41.25]
    assert scored["care_n_not_applicable"].tolist() == [0, 2]
    with pytest.raises(DataError, match=r"care_10 = 7 is outside the response range 1 to 5"):
        clean(7)


def test_an_empathy_score_can_be_the_relationship_predictor():
    """`alliance: care_total` picks the CARE total as the predictor of the derive stage."""
    from allianceflow.simulate import simulate_study
    from allianceflow.stages import derive_study

    sim = simulate_study(seed=5, n_therapists=3, n_patients=15, max_sessions=5)
    # ten 1-5 items standing in for CARE answers, one "does not apply" on the first row
    care = sim[[f"wai_sr_{i}" for i in range(1, 11)]].set_axis(
        [f"care_{i}" for i in range(1, 11)], axis=1
    )
    data = pd.concat([sim.drop(columns=sim.filter(like="wai_sr_").columns), care], axis=1)
    data.loc[0, "care_1"] = 9.0
    instruments = {"care": None, "ors": {"rci": 5}}
    scored = score_sessions(data, instruments)
    measures = {"instruments": instruments, "alliance": "care_total", "outcome": "ors_total"}
    derived = derive_study(scored, {"measures": measures, "derive": {}})
    analysis = derived.analysis
    assert analysis["alliance"].equals(analysis["care_total"])
    assert scored.loc[0, "care_n_not_applicable"] == 1
    first = analysis.set_index(["patient", "session"]).loc[(sim.loc[0, "patient"], 1)]
    answered = data.loc[0, [f"care_{i}" for i in range(2, 11)]].astype(float)
    assert first["alliance"] == pytest.approx(answered.sum() * 10 / answered.notna().sum())
