"""Alliance ruptures: detection, repair, coded ruptures."""

import numpy as np
import pandas as pd
import pytest
from conftest import random_session_keys

from allianceflow.ruptures import RUPTURE_COLUMNS, coded_ruptures, detect_ruptures, rupture_summary


def series(values, sessions=None, patient="a"):
    sessions = sessions or list(range(1, len(values) + 1))
    return pd.DataFrame({"patient": patient, "session": sessions, "alliance": values})


def test_fixed_threshold_tie_and_repair():
    # drops: s2 5.0-4.0 = 1.0 (tie with threshold 1.0 -> rupture); s3 rises; s4 back to 5.0
    out = detect_ruptures(series([5.0, 4.0, 4.5, 5.0, 4.2]), method="fixed", threshold=1.0)
    assert out.alliance_drop.tolist()[1:] == pytest.approx([1.0, -0.5, -0.5, 0.8])
    assert out.rupture_detected.tolist() == [pd.NA, True, False, False, False]
    # repaired at session 4 (5.0 >= pre-rupture 5.0: a tie counts)
    assert out.rupture_repair.tolist()[1] == "repaired"
    assert out.rupture_repair_session.tolist()[1] == 4
    for col in RUPTURE_COLUMNS:
        assert col in out.columns


def test_unrepaired_and_censored():
    # a: drop at 2 (5 -> 3), sessions 3-5 stay below 5 -> unrepaired (window 3..5 fully observed)
    # b: drop at 2, only session 3 after -> window not fully observed -> censored
    df = pd.concat([series([5.0, 3.0, 4.0, 4.5, 4.9]), series([5.0, 3.0, 4.0], patient="b")])
    out = detect_ruptures(df, method="fixed", threshold=1.5, repair_within=3)
    rep = out.loc[out.rupture_detected.fillna(False).astype(bool)]
    assert rep[["patient", "session", "rupture_repair"]].to_numpy().tolist() == [
        ["a", 2, "unrepaired"],
        ["b", 2, "censored"],
    ]
    summary = rupture_summary(out).set_index("patient")
    assert summary.loc["a"].tolist() == [1, 0, 1, 0]
    assert summary.loc["b"].tolist() == [1, 0, 0, 1]


def test_repair_after_window_does_not_count():
    # drop at 2; return to 5 only at session 6 > 2 + 3 -> unrepaired
    out = detect_ruptures(
        series([5.0, 3.0, 3.5, 4.0, 4.0, 5.0]), method="fixed", threshold=1.5, repair_within=3
    )
    assert out.rupture_repair.tolist()[1] == "unrepaired"
    assert pd.isna(out.rupture_repair_session.iloc[1])


def test_patient_sd_method():
    # values 4, 4, 2, 4: mean 3.5, SD = sqrt(((.5^2)*3 + 1.5^2)/3) = sqrt(1) = 1.0
    # threshold 1.5 * 1.0 = 1.5; drop at 3 = 2.0 >= 1.5 -> rupture; repaired at 4
    out = detect_ruptures(series([4.0, 4.0, 2.0, 4.0]), method="patient_sd", threshold=1.5)
    assert out.rupture_threshold.tolist() == pytest.approx([1.5] * 4)
    assert out.rupture_detected.tolist() == [pd.NA, False, True, False]
    assert out.rupture_repair.tolist()[2] == "repaired"


def test_missing_sessions_respect_gaps():
    # session 3 missing: drop at 4 is measured from session 3 -> none by default
    df = series([5.0, 5.0, 3.0], sessions=[1, 2, 4])
    out = detect_ruptures(df, method="fixed", threshold=1.0)
    assert pd.isna(out.rupture_detected.iloc[2])
    out2 = detect_ruptures(df, method="fixed", threshold=1.0, across_gaps=True)
    # previous recorded session 2: 5 - 3 = 2 -> rupture; no later sessions -> censored
    assert out2.rupture_detected.tolist() == [pd.NA, False, True]
    assert out2.rupture_repair.tolist()[2] == "censored"


def test_nan_alliance_score_and_one_session_patient():
    df = pd.concat([series([5.0, np.nan, 3.0]), series([4.0], patient="b")])
    out = detect_ruptures(df, method="patient_sd", threshold=1.0)
    # a: s2 NaN -> no drop; s3 previous (s2) NaN -> no drop. b: one value -> SD NaN
    assert out.rupture_detected.isna().all()
    assert rupture_summary(out).n_ruptures.tolist() == [0, 0]


def test_rows_keep_input_order():
    df = series([5.0, 3.0, 5.0]).iloc[[2, 0, 1]]
    out = detect_ruptures(df, method="fixed", threshold=1.0)
    assert out.index.tolist() == [2, 0, 1]
    assert out.rupture_detected.tolist() == [False, pd.NA, True]


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"method": "sd"}, ValueError, "`method` must be 'patient_sd' or 'fixed'; got 'sd'"),
        ({"threshold": 0}, ValueError, "`threshold` must be greater than 0"),
        (
            {"repair_within": 0},
            ValueError,
            "`repair_within` must be an integer of at least 1; got 0",
        ),
        ({"across_gaps": "no"}, TypeError, "`across_gaps` must be True or False"),
        ({"alliance": "aliance"}, KeyError, "Did you mean 'alliance'"),
    ],
)
def test_validation(kwargs, error, match):
    with pytest.raises(error, match=match):
        detect_ruptures(series([5.0, 4.0]), **kwargs)


def test_coded_ruptures():
    df = pd.DataFrame(
        {
            "patient": ["a", "a", "a", "b", "b"],
            "rupture": ["none", "withdrawal", "confrontation", None, "withdrawal"],
        }
    )
    out = coded_ruptures(df).set_index("patient")
    assert out.loc["a"].tolist() == [1, 1, 2, 3]
    assert out.loc["b"].tolist() == [0, 1, 1, 1]
    df.loc[0, "rupture"] = "silence"
    with pytest.raises(
        ValueError,
        match=(
            "Column 'rupture' has value 'silence'; allowed: 'none', 'confrontation', 'withdrawal'"
        ),
    ):
        coded_ruptures(df)


@pytest.mark.parametrize("seed", range(30))
@pytest.mark.parametrize("method", ["patient_sd", "fixed"])
def test_sorted_table_gives_the_ruptures_of_a_shuffled_copy(seed, method):
    # A table sorted by patient and session takes the previous session from the row
    # before; a shuffled copy is sorted and matched on the keys. Same columns, same values.
    rng = np.random.default_rng(seed)
    data = random_session_keys(rng, text_ids=bool(seed % 2))
    data["alliance"] = np.where(
        rng.random(len(data)) < 0.15, np.nan, rng.integers(30, 60, len(data)).astype(float)
    )
    data = data.sort_values(["patient", "session"], kind="mergesort").reset_index(drop=True)
    shuffled = data.sample(frac=1.0, random_state=seed)
    threshold = 1.0 if method == "patient_sd" else 5.0
    got = detect_ruptures(data, method=method, threshold=threshold, repair_within=2)
    want = detect_ruptures(shuffled, method=method, threshold=threshold, repair_within=2)
    pd.testing.assert_frame_equal(got, want.loc[data.index], check_exact=True)
    assert got["rupture_detected"].fillna(False).any() or len(data) < 10
