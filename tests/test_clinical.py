"""Reliable change, clinical significance, endings and dose, the patients table."""

import math

import numpy as np
import pandas as pd
import pytest
from conftest import EXAMPLE_ORS

from allianceflow.clinical import (
    ENDING_COLUMNS,
    RC_CATEGORIES,
    RELIABLE_CHANGE_COLUMNS,
    clinical_cutoffs,
    derive_patients,
    endings_and_dose,
    reliable_change,
    reliable_change_index,
)
from allianceflow.suddengains import sudden_gains


def test_reliable_change_index_formula():
    # 1.96 * sqrt(2) * 10.5 * sqrt(1 - 0.931) = 1.96 * 1.41421 * 10.5 * 0.262679 = 7.645
    assert round(reliable_change_index(10.5, 0.931), 3) == 7.645
    # z = 1: sqrt(2) * 4 * sqrt(0.75) = 4.898979
    assert math.isclose(reliable_change_index(4.0, 0.25, z=1.0), math.sqrt(2) * 4 * math.sqrt(0.75))


@pytest.mark.parametrize(
    "args, match",
    [
        ((0.0, 0.9), "`sd` must be greater than 0"),
        ((5.0, 1.0), "`reliability` must be below 1"),
        ((5.0, 1.2), "`reliability` must be at most 1"),
        ((5.0, "0.9"), "`reliability` must be a finite number; got '0.9'"),
    ],
)
def test_reliable_change_index_validation(args, match):
    with pytest.raises(ValueError, match=match):
        reliable_change_index(*args)


def test_clinical_cutoffs_lower_is_better():
    # a = 30 - 2*8 = 14; b = 10 + 2*5 = 20; c = (8*10 + 5*30) / 13 = 230/13
    cut = clinical_cutoffs(30, 8, 10, 5, direction="lower_is_better")
    assert cut == {"a": 14.0, "b": 20.0, "c": 230 / 13}


def test_clinical_cutoffs_higher_is_better_and_partial():
    # a = 18 + 2*6 = 30; b = 32 - 2*4 = 24; c = (6*32 + 4*18)/10 = 26.4
    cut = clinical_cutoffs(18, 6, 32, 4, direction="higher_is_better")
    assert cut["a"] == 30.0 and cut["b"] == 24.0 and math.isclose(cut["c"], 26.4)
    assert clinical_cutoffs(18, 6, direction="higher_is_better") == {
        "a": 30.0,
        "b": None,
        "c": None,
    }


def _phq(rows):
    return pd.DataFrame(rows, columns=["patient", "session", "phq9_total"])


def test_reliable_change_categories_and_ties():
    df = _phq(
        [
            ("rec", 1, 18),
            (
                "rec",
                6,
                12,
            ),  # 18 -> 12: improvement 6 == RC (tie counts); 12 >= 10 still clinical -> improved
            ("rec2", 1, 16),
            ("rec2", 6, 9),  # improvement 7; 9 < 10 not clinical -> recovered
            ("tie_cut", 1, 16),
            ("tie_cut", 4, 10),  # 10 is clinical (at_or_above) -> improved
            ("det", 1, 5),
            ("det", 3, 11),  # worsening 6 == RC, 5 -> 11 crosses into the clinical range -> harmed
            ("det2", 1, 12),
            ("det2", 3, 19),  # worsening 7, clinical at both scores -> deteriorated
            ("det3", 1, 2),
            ("det3", 3, 9),  # worsening 7, functional at both scores -> deteriorated
            ("unch", 1, 14),
            ("unch", 2, 9),  # improvement 5 < 6 -> unchanged though crossed cut-off
            ("low", 1, 8),
            ("low", 5, 1),  # starts non-clinical: reliable improvement -> improved
            ("one", 1, 20),  # one session -> no category
        ]
    )
    rc = reliable_change(
        df,
        score="phq9_total",
        direction="lower_is_better",
        rci=6,
        cutoff=10,
        clinical_range="at_or_above",
    ).set_index("patient")
    assert rc.loc["rec", "rc_category"] == "improved"
    assert rc.loc["rec2", "rc_category"] == "recovered"
    assert rc.loc["tie_cut", "rc_category"] == "improved"
    assert rc.loc["det", "rc_category"] == "harmed"
    assert rc.loc["det2", "rc_category"] == "deteriorated"
    assert rc.loc["det3", "rc_category"] == "deteriorated"
    assert rc.loc["unch", "rc_category"] == "unchanged"
    assert rc.loc["low", "rc_category"] == "improved"
    assert pd.isna(rc.loc["one", "rc_category"])
    assert rc.loc["rec", "change"] == -6.0 and rc.loc["rec", "improvement"] == 6.0
    assert bool(rc.loc["det", "reliable_deterioration"])
    assert rc.loc["one", "n_observed"] == 1 and pd.isna(rc.loc["one", "reliable_improvement"])
    assert bool(rc.loc["one", "clinical_first"])  # 20 >= 10


def test_reliable_change_uses_first_and_last_observed():
    # session 1 missing, session 5 missing, unsorted rows: first observed 2 (30),
    # last observed 4 (22)
    df = pd.DataFrame(
        {
            "patient": "a",
            "session": [4, 1, 2, 5, 3],
            "ors_total": [22.0, np.nan, 15.0, np.nan, 18.0],
        }
    )
    rc = reliable_change(
        df,
        score="ors_total",
        direction="higher_is_better",
        rci=5,
        cutoff=25,
        clinical_range="below",
    )
    row = rc.iloc[0]
    assert (row.first_session, row.last_session, row.score_first, row.score_last) == (
        2,
        4,
        15.0,
        22.0,
    )
    # 22 - 15 = 7 >= 5; 15 < 25 clinical, 22 < 25 still clinical -> improved
    assert row.rc_category == "improved"
    assert list(rc.columns) == RELIABLE_CHANGE_COLUMNS


def test_reliable_change_cutoff_below_tie_is_not_clinical():
    # ORS: clinical below 25; 25 exactly is not clinical -> recovered
    df = pd.DataFrame({"patient": "a", "session": [1, 2], "ors_total": [19.0, 25.0]})
    rc = reliable_change(
        df,
        score="ors_total",
        direction="higher_is_better",
        rci=5,
        cutoff=25,
        clinical_range="below",
    )
    assert rc.rc_category.tolist() == ["recovered"]
    assert rc.clinical_last.tolist() == [False]


def test_categories_have_the_names_and_order_of_clinicalsignificance():
    # cs_combined's summary: Recovered, Improved, Unchanged, Deteriorated, Harmed
    assert RC_CATEGORIES == ("recovered", "improved", "unchanged", "deteriorated", "harmed")


def test_harmed_when_higher_is_better_and_the_tie_at_the_cutoff():
    # ORS: clinical below 25. 31 -> 24 worsens by 7 >= 5 into the clinical range -> harmed;
    # 30 -> 25 worsens by 5 but 25 is not clinical -> deteriorated
    df = pd.DataFrame(
        {
            "patient": ["a", "a", "b", "b"],
            "session": [1, 2, 1, 2],
            "ors_total": [31.0, 24.0, 30.0, 25.0],
        }
    )
    rc = reliable_change(
        df,
        score="ors_total",
        direction="higher_is_better",
        rci=5,
        cutoff=25,
        clinical_range="below",
    )
    assert rc.rc_category.tolist() == ["harmed", "deteriorated"]
    assert list(rc.rc_category.cat.categories) == list(RC_CATEGORIES)


def test_without_cutoff_nobody_is_harmed():
    df = _phq([("a", 1, 2), ("a", 2, 20)])
    rc = reliable_change(df, score="phq9_total", direction="lower_is_better", rci=6)
    assert rc.rc_category.tolist() == ["deteriorated"]


def test_reliable_change_without_cutoff_nobody_recovers():
    df = _phq([("a", 1, 20), ("a", 2, 5)])
    rc = reliable_change(df, score="phq9_total", direction="lower_is_better", rci=6)
    assert rc.rc_category.tolist() == ["improved"]
    assert rc.clinical_first.isna().all()


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"direction": "down", "rci": 6}, ValueError, "`direction` must be"),
        ({"direction": "lower_is_better", "rci": 0}, ValueError, "`rci` must be greater than 0"),
        (
            {"direction": "lower_is_better", "rci": 6, "cutoff": 10},
            ValueError,
            "`clinical_range` must be 'below' or 'at_or_above'; got None",
        ),
        (
            {"direction": "lower_is_better", "rci": 6, "score": "phq_total"},
            KeyError,
            "Did you mean 'phq9_total'",
        ),
    ],
)
def test_reliable_change_validation(kwargs, error, match):
    df = _phq([("a", 1, 20), ("a", 2, 5)])
    kwargs = {"score": "phq9_total", **kwargs}
    with pytest.raises(error, match=match):
        reliable_change(df, **kwargs)


def _sessions():
    return pd.DataFrame(
        {
            "patient": ["a", "a", "a", "b", "b", "c"],
            "session": [1, 2, 4, 1, 2, 1],
            "days": [0.0, 7.0, 35.0, 0.0, 14.0, 0.0],
            "followup": [95.0, 95.0, 95.0, 73.0, 73.0, 20.0],
            "ending": [None, None, None, "Agreed", "Agreed", None],
        }
    )


def test_endings_and_dose_inferred_and_recorded():
    out = endings_and_dose(
        _sessions(), ending="ending", followup="followup", gap_days=60, labels={"Agreed": "planned"}
    ).set_index("patient")
    # a: 3 recorded sessions, last session number 4, weeks 35/7 = 5, longest gap 35 - 7 = 28
    assert out.loc["a", "n_sessions"] == 3 and out.loc["a", "last_session"] == 4
    assert out.loc["a", "weeks"] == 5.0 and out.loc["a", "longest_gap_days"] == 28.0
    # a: 95 - 35 = 60 days without a session, tie with gap_days = 60 -> ended
    # (inferred; no dose rule)
    assert out.loc["a", "ending"] == "ended" and out.loc["a", "ending_source"] == "inferred"
    # b: recorded "Agreed" -> planned
    assert out.loc["b", "ending"] == "planned" and out.loc["b", "ending_source"] == "recorded"
    # c: one session, 20 - 0 = 20 < 60 -> ongoing; weeks 0; no gap
    assert out.loc["c", "ending"] == "ongoing" and out.loc["c", "weeks"] == 0.0
    assert math.isnan(out.loc["c", "longest_gap_days"])
    assert list(out.reset_index().columns) == ENDING_COLUMNS


def test_endings_unknown_without_information():
    out = endings_and_dose(_sessions())
    assert out.ending.tolist() == ["unknown"] * 3
    assert out.ending_source.tolist() == ["none"] * 3


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"ending": "ending"}, "Column 'ending' has ending 'Agreed' .*map it with `labels`"),
        ({"gap_days": 30}, "`gap_days` needs `followup`"),
        ({"gap_days": 0, "followup": "followup"}, "`gap_days` must be greater than 0"),
    ],
)
def test_endings_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        endings_and_dose(_sessions(), **kwargs)


def test_endings_must_be_constant_within_patient():
    df = _sessions()
    df.loc[0, "ending"] = "planned"
    df.loc[1, "ending"] = "dropout"
    with pytest.raises(ValueError, match="constant within patient; patient 'a'"):
        endings_and_dose(df, ending="ending", labels={"Agreed": "planned"})


def test_derive_patients_gathers_everything():
    df = pd.DataFrame(
        {
            "patient": ["b"] * 6 + ["a"],
            "therapist": ["T1"] * 6 + ["T2"],
            "session": [1, 2, 3, 4, 5, 6, 1],
            "days": [0.0, 7, 14, 21, 28, 35, 0.0],
            "outcome": [20.0, 21, 20, 10, 9, 10, 15.0],
        }
    )
    gains = sudden_gains(df, score="outcome", cutoff=6)
    p = derive_patients(
        df,
        direction="lower_is_better",
        rci=6,
        cutoff=10,
        clinical_range="at_or_above",
        sudden_gains=gains,
    )
    assert p["patient"].tolist() == ["a", "b"]  # sorted
    b = p.set_index("patient").loc["b"]
    # 20 -> 10: improvement 10 >= 6; 20 clinical, 10 clinical (at_or_above) -> improved
    assert b.rc_category == "improved" and b.therapist == "T1"
    assert b.n_sudden_gains == 1 and b.first_sudden_gain_session == 3
    assert b.weeks == 5.0
    a = p.set_index("patient").loc["a"]
    assert a.n_sessions == 1 and pd.isna(a.rc_category) and a.n_sudden_gains == 0


def test_planned_sessions_turn_an_inferred_ending_after_the_full_dose_into_planned():
    # a: last session number 4, 60 days without a session (= gap_days, so ended);
    # b: recorded; c: one session, 20 days since it (< 60, ongoing whatever the dose)
    out = endings_and_dose(
        _sessions(),
        ending="ending",
        followup="followup",
        gap_days=60,
        planned_sessions=4,
        labels={"Agreed": "dropout"},
    ).set_index("patient")
    assert out["ending"].astype(str).to_dict() == {"a": "planned", "b": "dropout", "c": "ongoing"}
    assert out["ending_source"].astype(str).to_dict() == {
        "a": "inferred",
        "b": "recorded",
        "c": "inferred",
    }
    # without the recorded ending: a's last session 4 < 5 -> dropout; b: 73 - 14 = 59 days < 60
    out = endings_and_dose(_sessions(), followup="followup", gap_days=60, planned_sessions=5)
    assert out["ending"].astype(str).tolist() == ["dropout", "ongoing", "ongoing"]
    with pytest.raises(
        ValueError,
        match=(
            "^`planned_sessions` only applies to endings inferred from a gap; set `gap_days` too.$"
        ),
    ):
        endings_and_dose(_sessions(), followup="followup", planned_sessions=5)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_patients_table_by_integer_codes_equals_the_table_by_ids(seed, monkeypatch):
    """derive_patients groups by integer codes of the ids; the table is the one by ids.

    Simulated studies whose ids are random text, their rows shuffled (so that the ids first
    appear in another order than they sort in), with endings, on-track status, ruptures
    and sudden gains; compared with the same steps run on the ids themselves, exactly. An
    error still names the patient by its own id.
    """
    import numpy as np

    from allianceflow import clinical
    from allianceflow.derive import derive_tables
    from allianceflow.score import score_sessions
    from allianceflow.simulate import simulate_study

    rng = np.random.default_rng(seed)
    sessions = simulate_study(seed=seed, n_therapists=5, n_patients=60)
    names = {p: f"{rng.choice(list('kqxbz'))}{rng.integers(10**6)}" for p in sessions.patient}
    sessions["patient"] = sessions["patient"].map(names)
    with pytest.warns(UserWarning):  # rows with too few items are reported
        scored = score_sessions(sessions, ["wai_sr", "ors"])
    derived = derive_tables(
        scored,
        alliance="wai_sr_total",
        outcome="ors_total",
        **EXAMPLE_ORS,
    )
    # rows in any order: the ids first appear in another order than they sort in
    analysis = derived.analysis.iloc[rng.permutation(len(derived.analysis))]
    gains = derived.sudden_gains
    assert list(pd.unique(analysis["patient"])) != sorted(set(names.values()))
    assert len(gains) and analysis["on_track"].notna().any() and analysis["ending"].notna().any()
    settings = dict(
        outcome="outcome",
        patient="patient",
        session="session",
        days="days",
        carry=("therapist", "condition"),
        direction="higher_is_better",
        rci=5.0,
        cutoff=25.0,
        clinical_range="below",
        ending="ending",
        followup=None,
        gap_days=None,
        planned_sessions=None,
        ending_labels={},
    )
    by_ids = clinical._patients_table(analysis, sudden_gains=gains, **settings)
    built = []  # the table derive_patients builds: by codes, once (no fallback to the ids)
    real = clinical._patients_table
    monkeypatch.setattr(
        clinical,
        "_patients_table",
        lambda frame, **kw: built.append(frame["patient"].dtype) or real(frame, **kw),
    )
    by_codes = clinical.derive_patients(analysis, sudden_gains=gains, **settings)
    assert built == [np.dtype(np.intp)]
    monkeypatch.setattr(clinical, "_patients_table", real)
    pd.testing.assert_frame_equal(by_codes, by_ids, check_exact=True)
    assert by_codes["patient"].tolist() == sorted(set(names.values()))
    twice = pd.concat([analysis, analysis.iloc[[5]]], ignore_index=True)
    patient = analysis["patient"].iloc[5]
    with pytest.raises(ValueError, match=f"more than one row for patient '{patient}' at session"):
        clinical.derive_patients(twice, sudden_gains=gains, **settings)


def test_only_text_ids_without_a_missing_one_are_coded():
    """Ids mixing text and numbers, or with a missing id, are grouped by the ids themselves.

    factorize would order the mixed ids (numbers first) where sorting the ids raises, and a
    missing id has no code.
    """
    from allianceflow import clinical

    assert clinical._patient_codes(pd.Series(["b", "b", 1, "a"], dtype=object), None) is None
    assert clinical._patient_codes(pd.Series(["b", None, "a"], dtype=object), None) is None
    assert clinical._patient_codes(pd.Series([3, 1, 2]), None) is None
    codes, ids, _ = clinical._patient_codes(pd.Series(["b", "c", "a", "b"]), None)
    assert codes.tolist() == [1, 2, 0, 1] and ids.tolist() == ["a", "b", "c"]
    gains = pd.DataFrame({"patient": ["c", "x"]})
    assert clinical._patient_codes(pd.Series(["b", "c", "a"]), gains) is None
