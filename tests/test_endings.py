"""Endings from a researcher's export to the patients table.

The canonical ``ending`` and ``followup_days`` columns of the clean stage, the study's
``extraction_date``, the config checks, and the derive stage using them (recorded or
inferred from a gap).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from allianceflow import stages
from allianceflow.clean import DataError, clean_sessions, reconcile
from allianceflow.config import ConfigError, flat_study, group_study, load_config, validate_config
from allianceflow.contract import validate_sessions
from allianceflow.derive import derive_tables
from allianceflow.simulate import (
    EXAMPLE2_DESIGN,
    EXAMPLE2_EXTRACTION_DATE,
    EXAMPLE2_SEED,
    EXAMPLE_FILE_DESIGN,
    EXAMPLE_SEED,
    simulate_study,
)

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
COLUMNS = {
    "Client": "patient",
    "Sess": "session",
    "Date": "date",
    "Item": "ors_1",
    "Discharge": "ending",
}


def make_study(columns=None, **settings) -> dict:
    study = {
        "raw": "x.csv",
        "columns": dict(COLUMNS if columns is None else columns),
        "date_format": "%Y-%m-%d",
        "instruments": {"ors": {"rci": 5}},
        "alliance": "ors_total",
        "outcome": "ors_total",
        "models": ["m"],
        **settings,
    }
    config = {"studies": {"t": group_study(study)}, "models": {"m": {"formula": "outcome ~ 1"}}}
    return flat_study(validate_config(config, SCHEMA)["studies"]["t"])


def clean(rows, columns=None, **settings):
    names = list((COLUMNS if columns is None else columns).keys())
    raw = pd.DataFrame(rows, columns=names, dtype=object)
    raw.insert(0, "_source_row", np.arange(2, len(raw) + 2))
    return clean_sessions(raw, make_study(columns, **settings), source="x.csv", name="t")


ROWS = [
    # patient, session, date, item, discharge (on the last row only, as a discharge form)
    ("a", "1", "2025-01-06", "5", ""),
    ("a", "2", "2025-01-13", "6", ""),
    ("a", "3", "2025-01-27", "7", "Done"),
    ("b", "1", "2025-02-03", "4", ""),
    ("b", "2", "2025-02-10", "4", "left"),
    ("c", "1", "2025-03-03", "6", ""),
]
LABELS = {"ending": {"Done": "planned", "left": "Unilateral"}}


# --------------------------------------------------------------------------- clean


def test_ending_recorded_on_one_row_applies_to_the_whole_patient():
    out = clean(ROWS, labels=LABELS).sessions
    # labels first ("left" -> "Unilateral"), then case folding to the canonical type
    assert out["ending"].astype(object).where(out["ending"].notna(), None).tolist() == [
        "planned",
        "planned",
        "planned",
        "unilateral",
        "unilateral",
        None,
    ]
    assert list(out["ending"].cat.categories) == ["planned", "unilateral", "dropout", "ongoing"]
    assert list(out.columns) == ["patient", "session", "days", "ending", "ors_1"]


def test_an_ending_on_a_row_that_a_rule_excludes_still_counts_for_the_patient():
    rows = [list(r) for r in ROWS]
    rows[2][3] = "12"  # the row carrying a's ending has an ORS item above 10
    result = clean(rows, labels=LABELS, rules={"out_of_range": "exclude"})
    assert result.exclusions[["source_row", "rule", "action"]].values.tolist() == [
        [4, "out_of_range", "excluded"]
    ]
    a = result.sessions[result.sessions["patient"] == "a"]
    assert a["session"].tolist() == [1, 2]
    assert a["ending"].astype(str).tolist() == ["planned", "planned"]


def test_an_unmapped_ending_label_names_the_row_and_the_fix():
    with pytest.raises(DataError) as error:
        clean(ROWS, labels={"ending": {"Done": "planned"}})
    assert str(error.value) == (
        "x.csv, row 6, column 'Discharge': ending 'left' is not one of planned, unilateral, "
        "dropout, "
        "ongoing. Map each of the export's ending labels to one of these types under "
        "`studies.t.read.labels.ending` in config.yaml (here `'left': <type>`); leave the cell "
        "blank "
        "when "
        "the ending is not recorded. Or set `studies.t.clean.rules.ending_invalid` to 'missing' in "
        "config.yaml."
    )


def test_an_unmapped_ending_set_missing_is_logged_and_the_rows_kept():
    result = clean(
        ROWS, labels={"ending": {"Done": "planned"}}, rules={"ending_invalid": "missing"}
    )
    log = result.exclusions
    assert log[["source_row", "rule", "action", "column"]].values.tolist() == [
        [6, "ending_invalid", "set_missing", "Discharge"]
    ]
    out = result.sessions.set_index(["patient", "session"])
    assert pd.isna(out.loc[("b", 2), "ending"]) and pd.isna(out.loc[("b", 1), "ending"])
    assert result.flow["sessions"]["kept"] == 6 and reconcile(result.flow) == []


def test_two_endings_for_one_patient_stop_or_exclude_the_patient():
    rows = [list(r) for r in ROWS]
    rows[0][4] = "left"  # patient a: "left" at session 1, "Done" at session 3
    with pytest.raises(DataError) as error:
        clean(rows, labels=LABELS)
    assert str(error.value) == (
        "x.csv, row 4, column 'Discharge': the patient's ending differs between rows (unilateral, "
        "planned); it is one value per patient. Record one ending per patient (on any or all of "
        "the patient's rows). Or set `studies.t.clean.rules.ending_conflict` to 'exclude' in "
        "config.yaml."
    )
    result = clean(rows, labels=LABELS, rules={"ending_conflict": "exclude"})
    assert sorted(result.sessions["patient"].unique()) == ["b", "c"]
    assert result.exclusions["source_row"].tolist() == [2, 3, 4]
    assert result.flow["patients"]["excluded_by_rule"] == {"ending_conflict": 1}
    assert reconcile(result.flow) == []


def test_extraction_date_gives_followup_days_from_the_first_session():
    out = clean(ROWS, labels=LABELS, extraction_date="2025-03-31").sessions
    # a starts 2025-01-06: 84 days; b 2025-02-03: 56 days; c 2025-03-03: 28 days
    assert out.groupby("patient")["followup_days"].unique().map(list).to_dict() == {
        "a": [84.0],
        "b": [56.0],
        "c": [28.0],
    }
    assert out["followup_days"].dtype == "float64"
    assert list(out.columns) == ["patient", "session", "days", "ending", "followup_days", "ors_1"]


def test_a_session_after_the_extraction_date():
    with pytest.raises(DataError) as error:
        clean(ROWS, labels=LABELS, extraction_date="2025-02-28")
    assert str(error.value) == (
        "x.csv, row 7, column 'Date': the session is dated 3 day(s) after the extraction date. "
        "Check the date, or set `studies.t.read.extraction_date` to the day the data were "
        "exported. Or set `studies.t.clean.rules.after_extraction` to 'exclude' in config.yaml."
    )
    result = clean(
        ROWS, labels=LABELS, extraction_date="2025-02-28", rules={"after_extraction": "exclude"}
    )
    assert result.sessions["patient"].unique().tolist() == ["a", "b"]
    assert result.flow["sessions"]["excluded_by_rule"] == {"after_extraction": 1}


def test_clean_itself_refuses_an_extraction_date_it_cannot_use():
    # validate_config stops these first (tested below); clean_sessions also guards in-memory use
    def unvalidated(columns, rows, **extra):
        study = {**make_study(), "columns": dict(columns), **extra}
        raw = pd.DataFrame(rows, columns=list(columns), dtype=object)
        raw.insert(0, "_source_row", np.arange(2, len(raw) + 2))
        return clean_sessions(raw, study, source="x.csv", name="t")

    columns = {"Client": "patient", "Sess": "session", "Item": "ors_1"}
    with pytest.raises(DataError) as error:
        unvalidated(columns, [r[:2] + (r[3],) for r in ROWS], extraction_date="2025-03-31")
    assert str(error.value).startswith(
        "x.csv: `studies.t.read.extraction_date` is set, but no column is mapped to 'date', so the "
        "follow-up time cannot be computed."
    )
    with pytest.raises(DataError) as error:
        unvalidated({**COLUMNS, "FU": "followup_days"}, [r + ("90",) for r in ROWS])
    assert str(error.value) == (
        "x.csv: column 'FU' is mapped to 'followup_days', but the sessions are dated, and with "
        "dates "
        "the follow-up time must come from the extraction day (days are counted from each "
        "patient's "
        "first kept session). Remove the mapping and set `studies.t.read.extraction_date` to the "
        "day "
        "the "
        "data were exported."
    )
    with pytest.raises(
        DataError,
        match=(
            r"^config.yaml: `studies.t.read.extraction_date` is '2025-02-30', "
            r"which is not a day of the calendar"
        ),
    ):
        unvalidated(COLUMNS, ROWS, extraction_date="2025-02-30", labels=LABELS)


def test_a_session_on_the_extraction_day_is_before_the_extraction():
    rows = [("a", "1", "2025-03-31 16:30", "5", "")]
    study_rows = clean(rows, date_format="%Y-%m-%d %H:%M", extraction_date="2025-03-31").sessions
    assert study_rows["followup_days"].tolist() == [0.0]


def test_mapped_followup_days_without_dates():
    columns = {
        "Client": "patient",
        "Sess": "session",
        "Day": "days",
        "Item": "ors_1",
        "FU": "followup_days",
    }
    rows = [("a", "1", "0", "5", "100"), ("a", "2", "7", "6", ""), ("b", "1", "0", "5", "10")]
    out = clean(rows, columns=columns).sessions
    assert out["followup_days"].tolist() == [100.0, 100.0, 10.0]
    rows[2] = ("b", "1", "0", "5", "-3")
    with pytest.raises(DataError) as error:
        clean(rows, columns=columns)
    assert str(error.value) == (
        "x.csv, row 4, column 'FU': the follow-up time is -3 days, so the extraction would "
        "precede the "
        "first session. Check the patient's follow-up time (days from the first session to the "
        "extraction) and day counts. Or set `studies.t.clean.rules.after_extraction` to 'exclude' "
        "in "
        "config.yaml."
    )
    rows = [("a", "1", "0", "5", "5"), ("a", "2", "7", "6", "")]
    with pytest.raises(DataError) as error:
        clean(rows, columns=columns)
    assert str(error.value).startswith(
        "x.csv, row 3, column 'Day': the session is on day 7, after the follow-up time of 5 days."
    )


def test_the_contract_refuses_an_ending_outside_the_types():
    frame = pd.DataFrame({"patient": ["a"], "session": [1], "ending": pd.Categorical(["finished"])})
    with pytest.raises(DataError, match=r"column 'ending', isin\(.*'finished'"):
        validate_sessions(frame)


def test_wide_exports_carry_the_ending_to_every_session():
    raw = pd.DataFrame(
        {
            "_source_row": [2, 3],
            "Client": ["a", "b"],
            "Discharge": ["Done", ""],
            "Item_s1": ["5", "4"],
            "Item_s2": ["6", ""],
        }
    )
    study = make_study(
        {"Client": "patient", "Discharge": "ending", "Item": "ors_1"}, format="wide", labels=LABELS
    )
    out = clean_sessions(raw, study, source="w.csv", name="t").sessions
    assert out[["patient", "session"]].values.tolist() == [["a", 1], ["a", 2], ["b", 1]]
    assert out["ending"].astype(object).tolist()[:2] == ["planned", "planned"]
    assert pd.isna(out["ending"].iloc[2])


# --------------------------------------------------------------------------- config


def _config(**study):
    base = {
        "raw": "x.csv",
        "columns": dict(COLUMNS),
        "instruments": {"ors": {"rci": 5}},
        "alliance": "ors_total",
        "outcome": "ors_total",
        "models": ["m"],
        **study,
    }
    return {"studies": {"t": group_study(base)}, "models": {"m": {"formula": "outcome ~ 1"}}}


def test_gap_inference_without_a_followup_time_is_a_config_error():
    with pytest.raises(ConfigError) as error:
        validate_config(_config(derive={"endings": {"gap_days": 56}}), SCHEMA)
    assert str(error.value) == (
        "config.yaml: `studies.t.derive.endings.gap_days` infers endings from the time between a "
        "patient's last session and the data extraction, so the study needs that time: set "
        "`studies.t.read.extraction_date` (the day of the export, YYYY-MM-DD) with dated "
        "sessions, or, "
        "for an export without dates, map columns to 'days' and 'followup_days' under "
        "`studies.t.read.columns`."
    )
    # a follow-up column alone is not enough without the days of the sessions
    undated = {"Client": "patient", "Sess": "session", "Item": "ors_1", "FU": "followup_days"}
    with pytest.raises(ConfigError, match=r"gap_days` infers endings"):
        validate_config(_config(columns=undated, derive={"endings": {"gap_days": 56}}), SCHEMA)
    validate_config(
        _config(columns={**undated, "Day": "days"}, derive={"endings": {"gap_days": 56}}), SCHEMA
    )
    with pytest.raises(
        ConfigError, match=r"`studies.t.derive.endings.planned_sessions` only applies"
    ):
        validate_config(_config(derive={"endings": {"planned_sessions": 12}}), SCHEMA)
    with pytest.raises(
        ConfigError,
        match=(
            r"`studies.t.read.extraction_date` is '31/03/2025', which is not of the form this "
            r"key needs. The day the data were exported, YYYY-MM-DD"
        ),
    ):
        validate_config(_config(extraction_date="31/03/2025"), SCHEMA)


@pytest.mark.parametrize(
    "study, message",
    [
        (
            {"extraction_date": "2025-02-30"},
            "config.yaml: `studies.t.read.extraction_date` is '2025-02-30', which is not a day of "
            "the calendar; "
            "write the day the data were exported as YYYY-MM-DD, e.g. '2025-09-01'.",
        ),
        (
            {
                "extraction_date": "2025-03-31",
                "columns": {"Client": "patient", "Sess": "session", "Item": "ors_1"},
            },
            "config.yaml: `studies.t.read.extraction_date` is set, but no column is mapped to "
            "'date' under "
            "`studies.t.read.columns`, so the follow-up time cannot be computed. Map the session "
            "dates to 'date', "
            "or map a column of days from each patient's first session to the extraction to "
            "'followup_days' "
            "and remove `extraction_date`.",
        ),
        (
            {"columns": {**COLUMNS, "FU": "followup_days"}},
            "config.yaml: `studies.t.read.columns` maps a column to 'followup_days', but the "
            "sessions are dated (a "
            "column is mapped to 'date'), and with dates the follow-up time comes from the day of "
            "the export. "
            "Remove that mapping and set `studies.t.read.extraction_date`.",
        ),
        (
            {"labels": {"ending": {"Done": "complete"}}},
            "config.yaml: `studies.t.read.labels.ending` maps 'Done' to 'complete'; an ending "
            "must be one of "
            "planned, unilateral, dropout, ongoing.",
        ),
        (
            {"derive": {"endings": {"labels": {"Done": "planned"}}}},
            "config.yaml: `studies.t.derive.endings.labels` is no longer a setting. Map the "
            "export's "
            "ending column to 'ending' under `studies.t.read.columns` and its labels under "
            "`studies.t.read.labels.ending`; for endings inferred from a gap, give the day of the "
            "export as `studies.t.read.extraction_date`.",
        ),
    ],
)
def test_endings_config_mistakes_stop_before_any_job(study, message):
    with pytest.raises(ConfigError) as error:
        validate_config(_config(**study), SCHEMA)
    assert str(error.value) == message


def test_an_unquoted_yaml_date_is_read_as_the_day(tmp_path):
    text = (ROOT / "config.yaml").read_text(encoding="utf-8")
    quoted = 'extraction_date: "2025-08-15"'
    assert quoted in text
    path = tmp_path / "config.yaml"
    path.write_text(text.replace(quoted, "extraction_date: 2025-08-15"), encoding="utf-8")
    (tmp_path / "workflow" / "schemas").mkdir(parents=True)
    (tmp_path / "workflow" / "schemas" / "config.schema.yaml").write_bytes(SCHEMA.read_bytes())
    assert load_config(path)["studies"]["example2"]["read"]["extraction_date"] == "2025-08-15"


# --------------------------------------------------------------------------- derive


def _scored():
    sessions = clean(ROWS, labels=LABELS, extraction_date="2025-03-31").sessions
    return sessions.assign(ors_total=sessions["ors_1"] * 4)


def test_derive_uses_the_recorded_ending_and_infers_the_rest():
    settings = {
        "on_track": {"enabled": False},
        "sudden_gains": {"enabled": False},
        "ruptures": {"enabled": False},
        "endings": {"gap_days": 28},
    }
    derived = derive_tables(
        _scored(),
        alliance="ors_total",
        outcome="ors_total",
        direction="higher_is_better",
        rci=5.0,
        settings=settings,
    )
    p = derived.patients.set_index("patient")
    # a, b recorded; c: first and only session 2025-03-03, extraction 28 days later
    # = gap_days -> ended
    assert p["ending"].astype(str).to_dict() == {"a": "planned", "b": "unilateral", "c": "ended"}
    assert p["ending_source"].astype(str).to_dict() == {
        "a": "recorded",
        "b": "recorded",
        "c": "inferred",
    }
    # the analysis table carries the same ending on every row, the inferred one included
    assert derived.analysis.groupby("patient")["ending"].agg(
        lambda s: set(s.astype(str))
    ).to_dict() == {"a": {"planned"}, "b": {"unilateral"}, "c": {"ended"}}

    def ending_of_c(**endings):
        settings["endings"] = endings
        p = derive_tables(
            _scored(),
            alliance="ors_total",
            outcome="ors_total",
            direction="higher_is_better",
            rci=5.0,
            settings=settings,
        ).patients.set_index("patient")
        assert p.loc["a", "ending"] == "planned"  # recorded endings never change
        return p.loc["c", "ending"]

    # c's last (and only) session is session 1: a dose rule of 1 session -> planned, of 2 -> dropout
    assert ending_of_c(gap_days=28, planned_sessions=1) == "planned"
    assert ending_of_c(gap_days=28, planned_sessions=2) == "dropout"
    assert (
        ending_of_c(gap_days=29, planned_sessions=1) == "ongoing"
    )  # 28 < 29 days since the last session


def test_derive_without_a_followup_time_says_what_to_set():
    settings = {"endings": {"gap_days": 28}, "on_track": {"enabled": False}}
    scored = _scored().drop(columns="followup_days")
    with pytest.raises(
        ValueError, match=r"set the study's `extraction_date` \(with session dates\)"
    ):
        derive_tables(
            scored,
            alliance="ors_total",
            outcome="ors_total",
            direction="higher_is_better",
            rci=5.0,
            settings=settings,
        )


# --------------------------------------------------------------------------- the examples


def test_simulated_endings_follow_attendance():
    sim = simulate_study(seed=3, n_therapists=10, n_patients=4000, max_sessions=8, p_unrecorded=0.0)
    per = sim.groupby("patient").agg(
        ending=("ending", "first"), last=("session", "max"), kinds=("ending", "nunique")
    )
    assert (per["kinds"] == 1).all()
    # planned exactly when the patient attended every planned session
    assert ((per["ending"] == "planned") == (per["last"] == 8)).all()
    early = per[per["ending"] != "planned"]
    share = (early["ending"] == "unilateral").mean()
    assert abs(share - 0.4) < 3 * np.sqrt(0.4 * 0.6 / len(early))
    # the endings' own random stream leaves every other value as it was
    other = simulate_study(
        seed=3,
        n_therapists=10,
        n_patients=4000,
        max_sessions=8,
        p_unrecorded=0.0,
        unilateral_share=0.9,
    )
    pd.testing.assert_frame_equal(sim.drop(columns="ending"), other.drop(columns="ending"))


def test_example_endings_reach_the_patients_table_as_simulated():
    config = load_config(ROOT / "config.yaml")
    prepared = stages.prepare_study(config["studies"]["example"], root=ROOT, name="example")
    truth = simulate_study(EXAMPLE_FILE_DESIGN, seed=EXAMPLE_SEED)
    truth = truth.groupby("patient")["ending"].first()
    got = prepared.patients.set_index("patient")
    assert got["ending"].astype(str).to_dict() == truth.to_dict()
    assert set(got["ending_source"].astype(str)) == {"recorded"}
    assert set(truth) == {"planned", "unilateral", "dropout"}


def test_example2_endings_inferred_from_the_extraction_date():
    config = load_config(ROOT / "config.yaml")
    study = config["studies"]["example2"]
    assert study["read"]["extraction_date"] == EXAMPLE2_EXTRACTION_DATE
    gap, planned = (
        study["derive"]["endings"]["gap_days"],
        study["derive"]["endings"]["planned_sessions"],
    )
    prepared = stages.prepare_study(study, root=ROOT, name="example2")
    sessions = prepared.sessions
    followup = sessions.groupby("patient")["followup_days"].first()
    got = prepared.patients.set_index("patient")
    since = followup - got["last_days"]
    expected = np.where(
        since < gap, "ongoing", np.where(got["last_session"] >= planned, "planned", "dropout")
    )
    assert got["ending"].astype(str).tolist() == expected.tolist()
    assert set(got["ending_source"].astype(str)) == {"inferred"}
    # Against the simulation's truth (the export does not carry it): every inferred planned
    # ending is a true planned one, and every ended patient the simulation ended early is a dropout.
    truth = (
        simulate_study(EXAMPLE2_DESIGN, seed=EXAMPLE2_SEED, instruments="srs+phq9")
        .groupby("patient")["ending"]
        .first()
    )
    truth.index = truth.index.str.replace("P", "C-", regex=False)
    ended = got["ending"].astype(str) != "ongoing"
    assert (truth[got.index[got["ending"].astype(str) == "planned"]] == "planned").all()
    assert (
        got.loc[ended & truth.reindex(got.index).ne("planned"), "ending"].astype(str) == "dropout"
    ).all()
    assert set(got["ending"].astype(str)) == {"planned", "dropout", "ongoing"}


def test_table1_counts_the_inferred_endings_not_the_recorded_column():
    from allianceflow.tables import table1

    settings = {
        "on_track": {"enabled": False},
        "sudden_gains": {"enabled": False},
        "ruptures": {"enabled": False},
        "endings": {"gap_days": 28},
    }
    derived = derive_tables(
        _scored(),
        alliance="ors_total",
        outcome="ors_total",
        direction="higher_is_better",
        rci=5.0,
        settings=settings,
    )
    t = table1(
        derived.analysis,
        patients=derived.patients,
        categorical={"ending": "Ending"},
        therapist=None,
        by=None,
        continuous={},
        min_cell=1,
    )
    body = t.body.set_index("Characteristic")
    levels = [i for i in body.index if i.startswith("  ")]
    assert levels == ["  planned", "  unilateral", "  ended"]  # c's inferred ending, not "Missing"
    assert body.loc["  ended", "Total (n = 3)"] == "1 (33.3)"


# --------------------------------------------------------------------------- other layouts


def test_endings_with_hashed_ids():
    salt = {"ALLIANCEFLOW_SALT": "a-test-salt-of-32-characters-xyz"}
    rows = [list(r) for r in ROWS]
    rows[0][4] = "left"  # a conflict for patient a, excluded
    raw = pd.DataFrame(rows, columns=list(COLUMNS), dtype=object)
    raw.insert(0, "_source_row", np.arange(2, len(raw) + 2))
    study = make_study(labels=LABELS, hash_ids=True, rules={"ending_conflict": "exclude"})
    result = clean_sessions(raw, study, source="x.csv", name="t", env=salt)
    out = result.sessions
    assert out["patient"].nunique() == 2 and not out["patient"].isin(["a", "b", "c"]).any()
    assert sorted(out.groupby("patient")["ending"].first().astype(str)) == ["nan", "unilateral"]
    logged = result.exclusions["patient"].unique()
    assert (
        len(logged) == 1
        and logged[0] not in ("a", "b", "c")
        and logged[0] not in set(out["patient"])
    )
    assert (
        result.flow["patients"]["excluded_by_rule"] == {"ending_conflict": 1}
        and reconcile(result.flow) == []
    )


def test_endings_with_several_informants_per_session():
    columns = {**COLUMNS, "Rater": "informant"}
    rows = [
        ("a", "1", "2025-01-06", "5", "", "patient"),
        ("a", "1", "2025-01-06", "6", "", "therapist"),
        ("a", "2", "2025-01-13", "6", "", "patient"),
        ("a", "2", "2025-01-13", "7", "Done", "therapist"),
    ]
    out = clean(rows, columns=columns, labels=LABELS, extraction_date="2025-02-03").sessions
    assert len(out) == 4
    assert set(out["ending"].astype(str)) == {"planned"} and set(out["followup_days"]) == {28.0}


def test_an_export_without_any_recorded_ending_yet():
    rows = [r[:4] + ("",) for r in ROWS]
    out = clean(rows, labels=LABELS).sessions
    assert out["ending"].isna().all() and list(out["ending"].cat.categories) == [
        "planned",
        "unilateral",
        "dropout",
        "ongoing",
    ]
    derived = derive_tables(
        out.assign(ors_total=out["ors_1"] * 4),
        alliance="ors_total",
        outcome="ors_total",
        direction="higher_is_better",
        rci=5.0,
        settings={"on_track": {"enabled": False}},
    )
    assert set(derived.patients["ending"].astype(str)) == {"unknown"}
    assert set(derived.patients["ending_source"].astype(str)) == {"none"}
