"""Sudden gains and losses: hand-made series with the arithmetic written out."""

import math

import numpy as np
import pandas as pd
import pytest

from allianceflow.suddengains import (
    EVENT_COLUMNS,
    INTERVAL_COLUMNS,
    _dtype,
    check_interval,
    critical_value,
    sudden_gain_intervals,
    sudden_gains,
    sudden_gains_by_patient,
)


def long(patient, scores, sessions=None, score="bdi"):
    sessions = sessions or list(range(1, len(scores) + 1))
    return pd.DataFrame({"patient": patient, "session": sessions, score: scores})


def test_critical_values_match_suddengains_docs():
    # qt(0.975, df) for df = 4, 3, 2
    assert round(critical_value(3, 3), 3) == 2.776
    assert round(critical_value(3, 2), 3) == 3.182
    assert round(critical_value(2, 3), 3) == 3.182
    assert round(critical_value(2, 2), 3) == 4.303


def test_check_interval_package_example():
    # suddengains::check_interval(c(32, 31, 33), c(5, 6, 7), 7): a gain
    r = check_interval([32, 31, 33], [5, 6, 7], cutoff=7)
    # crit1: 33 - 5 = 28 >= 7; crit2: 28 >= 0.25 * 33 = 8.25
    # crit3: means 32 and 6, SDs 1 and 1, pooled sqrt((2*1 + 2*1)/4) = 1; 26 > 2.776 * 1
    assert r["change"] == 28.0
    assert (r["crit1"], r["crit2"], r["crit3"]) == (1.0, 1.0, 1.0)
    assert r["mean_pre"] == 32.0 and r["mean_post"] == 6.0 and r["pooled_sd"] == 1.0
    assert r["is_event"] is True


def test_check_interval_missing_values_adjust_critical_value():
    # pre (NA, 31, 33), post (5, NA, 7): n = 2 and 2, df = 2, t = 4.303
    r = check_interval([np.nan, 31, 33], [5, np.nan, 7], cutoff=None, pct=None, alpha=0.05)
    assert (r["n_pre"], r["n_post"]) == (2, 2)
    assert round(r["critical_value"], 3) == 4.303
    # means 32 and 6; SDs sqrt(2) and sqrt(2); pooled sqrt((2 + 2)/2) = sqrt(2)
    assert math.isclose(r["pooled_sd"], math.sqrt(2.0))
    assert r["crit3"] == 1.0 and math.isnan(r["crit1"]) and math.isnan(r["crit2"])
    # fixed critical value when adjust=False
    r2 = check_interval([np.nan, 31, 33], [5, np.nan, 7], cutoff=None, pct=None, adjust=False)
    assert r2["critical_value"] == 2.776


def test_gain_at_first_possible_session():
    # sessions 1..6: 20 20 | 10 10 10 10 ; the first interval checked is 2 -> 3
    df = long("a", [20, 20, 10, 10, 10, 10])
    iv = sudden_gain_intervals(df, score="bdi", cutoff=7)
    assert iv["pregain_session"].tolist() == [2, 3, 4]  # 2 .. last - 2 = 4
    first = iv.iloc[0]
    # pre window: sessions 1-2 only (n = 2, 20, 20, SD 0); post 3-5 (10, 10, 10, SD 0)
    # crit3: 20 - 10 = 10 > t(df 3) * 0 -> met; crit1 10 >= 7; crit2 10 >= 5
    assert (first.n_pre, first.n_post) == (2, 3)
    assert round(first.critical_value, 3) == 3.182
    assert bool(first.is_event)
    assert iv["is_event"].tolist() == [True, False, False]
    g = sudden_gains(df, score="bdi", cutoff=7, events=["gain"])
    assert g[
        ["patient", "pregain_session", "postgain_session", "magnitude"]
    ].to_numpy().tolist() == [["a", 2, 3, 10.0]]


def test_no_interval_from_session_1_to_2():
    # a big drop 1 -> 2 is never checked (needs two pregain scores), as identify_sg
    df = long("a", [30, 10, 10, 10, 10])
    iv = sudden_gain_intervals(df, score="bdi", cutoff=7)
    assert 1 not in iv["pregain_session"].tolist()
    assert not iv["is_event"].any()


def test_ties_meet_criteria_1_and_2_not_3():
    # crit1 tie: change 7 == cutoff 7 -> met. crit2 tie: 28 -> 21 is 7 = 0.25 * 28 -> met
    df = long("a", [28, 28, 28, 21, 21, 21])
    iv = sudden_gain_intervals(df, score="bdi", cutoff=7).set_index("pregain_session")
    assert iv.loc[3, "crit1"] == 1.0 and iv.loc[3, "crit2"] == 1.0
    # pooled SD 0, difference 7 > 0 -> crit3 met; the gain counts
    assert bool(iv.loc[3, "is_event"])
    # crit3 tie: pre (4, 6, 8) mean 6 SD 2; post (0, 2, 4) mean 2 SD 2; pooled SD 2.
    # With a fixed critical value of 2: 6 - 2 = 4 = 2 * 2 -> not met (strict >)
    r = check_interval(
        [4, 6, 8], [0, 2, 4], cutoff=None, pct=None, adjust=False, critical_value=2.0
    )
    assert r["mean_pre"] - r["mean_post"] == 4.0 and r["pooled_sd"] == 2.0
    assert r["crit3"] == 0.0 and r["is_event"] is False


def test_missing_sessions_rows_absent_and_nan_scores():
    # session 4 has no row, session 6 has a NaN score: grid 1..8
    df = pd.DataFrame(
        {
            "patient": "a",
            "session": [1, 2, 3, 5, 6, 7, 8],
            "bdi": [30, 31, 30, 18, np.nan, 17, 18],
        }
    )
    iv = sudden_gain_intervals(df, score="bdi", cutoff=7).set_index("pregain_session")
    # 3 -> 4: postgain missing -> crit1, crit2 NA -> not a gain
    assert math.isnan(iv.loc[3, "crit1"]) and not iv.loc[3, "is_event"]
    # 4 -> 5: pregain missing -> NA
    assert math.isnan(iv.loc[4, "crit2"]) and not iv.loc[4, "is_event"]
    # no gain anywhere: the only big drop straddles a missing session
    assert not iv["is_event"].any()


def test_missing_in_windows_pattern_and_adjusted_value():
    # sessions: 1:30 2:NA 3:29 4:15 5:16 6:NA 7:15 ; interval 3 -> 4
    df = long("a", [30, np.nan, 29, 15, 16, np.nan, 15])
    iv = sudden_gain_intervals(df, score="bdi", cutoff=7).set_index("pregain_session")
    row = iv.loc[3]
    # pre (30, NA, 29) n=2 mean 29.5 SD sqrt(0.5); post (15, 16, NA) n=2 mean 15.5 SD sqrt(0.5)
    # pooled = sqrt((0.5 + 0.5)/2) = sqrt(0.5) = 0.7071; t(df 2) = 4.303; 14 > 3.04
    assert (row.n_pre, row.n_post) == (2, 2)
    assert math.isclose(row.pooled_sd, math.sqrt(0.5))
    assert round(row.critical_value, 3) == 4.303
    assert bool(row.is_event)


def test_too_few_scores_for_crit3():
    # pre has only the pregain score: session 1 missing, 2 present; 2 -> 3
    df = long("a", [np.nan, 30, 10, 10, 10])
    iv = sudden_gain_intervals(df, score="bdi", cutoff=7).set_index("pregain_session")
    assert iv.loc[2, "n_pre"] == 1 and math.isnan(iv.loc[2, "crit3"])
    assert not iv.loc[2, "is_event"]
    # without criterion 3 the same interval is a gain
    iv2 = sudden_gain_intervals(df, score="bdi", cutoff=7, crit3=False).set_index("pregain_session")
    assert bool(iv2.loc[2, "is_event"])


def test_patient_with_one_session():
    df = pd.concat([long("a", [20]), long("b", [20, 20, 10, 10, 10])])
    g = sudden_gains(df, score="bdi", cutoff=7)
    assert g["patient"].tolist() == ["b"]
    summary = sudden_gains_by_patient(g, ["a", "b"])
    assert summary.set_index("patient").loc["a", "n_sudden_gains"] == 0
    assert summary.set_index("patient").loc["b", "first_sudden_gain_session"] == 2


def test_reversal_rule_strict_and_from_n_plus_2():
    # 20 21 20 | 10 (postgain) 11 ... magnitude 10, reversal value 10 + 5 = 15
    base = [20, 21, 20, 10, 11, 10]
    g = sudden_gains(long("a", base + [15]), score="bdi", cutoff=7, events=["gain"])
    assert g.reversal_value.tolist() == [15.0]
    assert g.reversed.tolist() == [False]  # 15 is not > 15
    g = sudden_gains(long("a", base + [15.5]), score="bdi", cutoff=7, events=["gain"])
    assert g.reversed.tolist() == [True]
    # total change first -> last = 20 - 15.5 = 4.5; proportion 10 / 4.5
    assert math.isclose(g.change_proportion.iloc[0], 10 / 4.5)


def test_higher_is_better_gain_mirrors():
    # ORS-like: 10 11 10 | 22 21 22 ; change +12 >= 5 and >= 0.25 * 10
    df = long("a", [10, 11, 10, 22, 21, 22], score="ors")
    g = sudden_gains(df, score="ors", direction="higher_is_better", cutoff=5)
    assert g[["event", "pregain_session", "magnitude"]].to_numpy().tolist() == [["gain", 3, 12.0]]
    # reversal value 22 - 6 = 16
    assert g.reversal_value.tolist() == [16.0]


def test_sudden_loss_lower_is_better():
    # BDI 10 11 10 | 20 21 20 : worsening 10 >= 7 and >= 0.25 * 10 = 2.5
    df = long("a", [10, 11, 10, 20, 21, 20, 14])
    g = sudden_gains(df, score="bdi", cutoff=7)
    assert g[["event", "pregain_session", "magnitude"]].to_numpy().tolist() == [["loss", 3, 10.0]]
    # reversal value 20 - 5 = 15; session 7 = 14 < 15 -> reversed
    assert g.reversal_value.tolist() == [15.0] and g.reversed.tolist() == [True]


def test_loss_crit2_applies_25_percent():
    # worsening 8 from 40: 8 < 0.25 * 40 = 10 -> no loss even though 8 >= 7
    df = long("a", [40, 40, 40, 48, 48, 48])
    assert sudden_gains(df, score="bdi", cutoff=7).empty


def test_empty_output_has_columns():
    g = sudden_gains(long("a", [5, 5, 5, 5, 5]), score="bdi", cutoff=7)
    assert list(g.columns) == EVENT_COLUMNS and g.empty
    iv = sudden_gain_intervals(long("a", [5, 5]), score="bdi", cutoff=7)
    assert list(iv.columns) == INTERVAL_COLUMNS and iv.empty


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"cutoff": None, "pct": None, "crit3": False}, ValueError, "At least one criterion"),
        ({"cutoff": -1}, ValueError, "`cutoff` must be at least 0"),
        (
            {"cutoff": 7, "direction": "up"},
            ValueError,
            "`direction` must be 'higher_is_better' or 'lower_is_better'; got 'up'",
        ),
        ({"cutoff": 7, "event": "win"}, ValueError, "`event` must be 'gain' or 'loss'; got 'win'"),
        ({"cutoff": 7, "alpha": 0}, ValueError, "`alpha` must be greater than 0"),
        ({"cutoff": 7, "crit3": "yes"}, TypeError, "`crit3` must be True or False"),
        ({"cutoff": 7, "score": "bdii"}, KeyError, "Did you mean 'bdi'"),
    ],
)
def test_validation(kwargs, error, match):
    df = long("a", [20, 20, 10, 10, 10])
    kwargs = {"score": "bdi", **kwargs}
    with pytest.raises(error, match=match):
        sudden_gain_intervals(df, **kwargs)


def test_duplicate_sessions_refused():
    df = long("a", [20, 20, 10], sessions=[1, 2, 2])
    with pytest.raises(ValueError, match="more than one row for patient 'a' at session 2"):
        sudden_gains(df, score="bdi", cutoff=7)


def _events_one_by_one(data, *, direction, events, **criteria):
    """sudden_gains the long way: the full interval table per event, then a loop per event."""
    frames = []
    for ev in events:
        iv = sudden_gain_intervals(data, direction=direction, event=ev, **criteria)
        found = iv.loc[iv["is_event"]].copy()
        sign = (1.0 if direction == "higher_is_better" else -1.0) * (1.0 if ev == "gain" else -1.0)
        found["magnitude"] = found["change"]
        found["reversal_value"] = found["postgain_score"] - sign * found["magnitude"] / 2.0
        reversed_, total = [], []
        for p, n, r in zip(found["patient"], found["pregain_session"], found["reversal_value"]):
            rows = data[data["patient"] == p].sort_values("session")
            later = rows.loc[rows["session"] >= n + 2, "outcome"].dropna().to_numpy()
            reversed_.append(bool(np.any(sign * (later - r) < 0)))
            observed = rows["outcome"].dropna().to_numpy()
            total.append(sign * (observed[-1] - observed[0]))
        found["reversed"] = np.array(reversed_, dtype=bool)
        found["total_change"] = np.array(total, dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):
            found["change_proportion"] = np.where(
                found["total_change"] != 0, found["magnitude"] / found["total_change"], np.nan
            )
        frames.append(found)
    if all(len(f) == 0 for f in frames):
        return pd.DataFrame({c: pd.Series(dtype=_dtype(c)) for c in EVENT_COLUMNS})
    out = pd.concat([f for f in frames if len(f)], ignore_index=True)
    out = out.sort_values(["patient", "event", "pregain_session"], kind="mergesort")
    return out.reset_index(drop=True)[EVENT_COLUMNS]


@pytest.mark.parametrize("seed", range(40))
def test_sudden_gains_equals_interval_table_event_by_event(seed):
    # sudden_gains evaluates both events on one wide table and keeps only the events; the
    # rows and every value must be those of the full interval table, event by event.
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 40))
    frames = []
    for _ in range(n):
        k = int(rng.integers(1, 17))
        sessions = np.sort(rng.choice(np.arange(1, 21), size=k, replace=False))
        walk = 20 + np.cumsum(rng.normal(0, 4, size=k)).round(0)
        walk[rng.random(k) < 0.15] = np.nan
        ids = f"p{rng.integers(0, 10**6)}" if seed % 2 else int(rng.integers(0, 10**6))
        frames.append(pd.DataFrame({"patient": ids, "session": sessions, "outcome": walk}))
    data = pd.concat(frames, ignore_index=True).drop_duplicates(["patient", "session"])
    data = data.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    criteria = {
        "score": "outcome",
        "cutoff": [None, 5.0, 0.0][seed % 3],
        "pct": [0.25, None][seed % 2],
        "crit3": bool(seed % 5) or [None, 5.0, 0.0][seed % 3] is None,
        "adjust": bool(seed % 4),
        "critical_value": 3.0,
        "alpha": 0.05 if seed % 3 else 0.1,
    }
    direction = ["lower_is_better", "higher_is_better"][seed % 2]
    events = [["gain", "loss"], ["loss"], ["gain"]][seed % 3]
    got = sudden_gains(data, direction=direction, events=events, **criteria)
    want = _events_one_by_one(data, direction=direction, events=events, **criteria)
    pd.testing.assert_frame_equal(got, want, check_exact=True)


@pytest.mark.parametrize("seed", range(10))
def test_window_means_and_variances_are_numpys_bit_for_bit(seed):
    # The criteria share one pass for the window means and variances; the values must be
    # exactly numpy's nanmean and nanvar(ddof=1), NaN included (0, 1 or 2 missing of 3).
    from allianceflow.suddengains import _nan_mean_var

    rng = np.random.default_rng(seed)
    values = rng.normal(20, 7, size=(500, 13, 3)).round(int(seed % 3))
    values[rng.random(values.shape) < 0.3] = np.nan
    mean, var = _nan_mean_var(values)
    with np.errstate(invalid="ignore", divide="ignore"), pytest.warns(RuntimeWarning):
        want_mean = np.nanmean(values, axis=-1)
        want_var = np.nanvar(values, axis=-1, ddof=1)
    np.testing.assert_array_equal(mean, want_mean)
    np.testing.assert_array_equal(var, want_var)
    assert np.isnan(var).any() and not np.isnan(var).all()
