"""Expected treatment response and on-track status."""

import math

import numpy as np
import pandas as pd
import pytest
from conftest import random_session_keys
from scipy import stats

from allianceflow.ontrack import (
    ON_TRACK_COLUMNS,
    ExpectedResponse,
    MultilevelExpectedResponse,
    first_off_track,
    fit_expected_response,
    on_track,
)


def test_fit_recovers_exact_coefficients():
    # Noise-free data from x_t = x0 + (2 - 0.1 (x0 - 20)) ln t, intakes 10, 20, 30, sessions 1-4.
    # Mean intake = 20 = centre, so gamma0 = 2 and gamma1 = -0.1 exactly; residuals 0.
    rows = []
    for pid, x0 in (("a", 10.0), ("b", 20.0), ("c", 30.0)):
        for s in range(1, 5):
            rows.append((pid, s, x0 + (2 - 0.1 * (x0 - 20)) * math.log(s)))
    df = pd.DataFrame(rows, columns=["patient", "session", "ors_total"])
    m = fit_expected_response(df, score="ors_total")
    assert math.isclose(m.gamma0, 2.0, abs_tol=1e-12)
    assert math.isclose(m.gamma1, -0.1, abs_tol=1e-12)
    assert m.centre == 20.0 and m.n_patients == 3 and m.n_observations == 9
    assert m.sigma < 1e-10


def test_fit_with_noise_sigma():
    # a: 10 -> 12, b: 20 -> 21, c: 15 -> 17 at session 2 (t = 2). Centre 15.
    # Columns ln2*(1,1,1) and ln2*(-5,5,0) are orthogonal: gamma0 ln2 = mean change = 5/3,
    # gamma1 ln2 = (-5*2 + 5*1 + 0*2) / 50 = -0.1. Fitted changes: 5/3 + 0.5 = 13/6 (a),
    # 5/3 - 0.5 = 7/6 (b), 5/3 (c). Residuals -1/6, -1/6, 1/3 -> RSS = 1/36+1/36+1/9 = 1/6,
    # sigma = sqrt(RSS / (3 - 2)) = sqrt(1/6).
    df = pd.DataFrame(
        {"patient": list("aabbcc"), "session": [1, 2] * 3, "ors_total": [10, 12, 20, 21, 15, 17]}
    )
    m = fit_expected_response(df, score="ors_total")
    assert math.isclose(m.gamma0 * math.log(2), 5 / 3)
    assert math.isclose(m.gamma1 * math.log(2), -0.1)
    assert math.isclose(m.sigma, math.sqrt(1 / 6))


def test_fit_intake_is_first_observed_score():
    # patient a: session 1 score missing -> intake at session 2, t = session - 1
    df = pd.DataFrame(
        {
            "patient": ["a"] * 3 + ["b"] * 2 + ["c"] * 2,
            "session": [1, 2, 3, 1, 2, 1, 2],
            "x": [np.nan, 10.0, 12.0, 20.0, 21.0, 15.0, 17.0],
        }
    )
    m = fit_expected_response(df, score="x")
    # same data as test_fit_with_noise_sigma once a's intake moves to session 2
    assert math.isclose(m.gamma0 * math.log(2), 5 / 3)


@pytest.mark.parametrize(
    "df, match",
    [
        (
            pd.DataFrame({"patient": ["a", "a"], "session": [1, 2], "x": [1.0, 2.0]}),
            "1 follow-up score",
        ),
        (
            pd.DataFrame({"patient": list("aabb"), "session": [1, 2, 1, 2], "x": [5.0, 6, 5, 7]}),
            "needs at least 3",
        ),
        (
            pd.DataFrame(
                {"patient": list("aaabbb"), "session": [1, 2, 3] * 2, "x": [5.0, 6, 7, 5, 7, 8]}
            ),
            "same intake score",
        ),
    ],
)
def test_fit_errors(df, match):
    with pytest.raises(ValueError, match=match):
        fit_expected_response(df, score="x")


def test_on_track_band_ties_and_missing():
    # gamma0 = 3 per ln t, sigma 2, tolerance 0.10 -> z = 1.281552, half-width 2.563103
    m = ExpectedResponse(gamma0=3.0, gamma1=0.0, centre=20.0, sigma=2.0)
    z = stats.norm.ppf(0.9)
    lower2 = 20 + 3 * math.log(2) - 2 * z  # 20 + 2.079442 - 2.563103 = 19.516339
    df = pd.DataFrame(
        {"patient": "a", "session": [1, 2, 3, 4], "ors": [20.0, lower2, np.nan, 10.0]}
    )
    out = on_track(df, m, score="ors", direction="higher_is_better")
    assert math.isclose(out.etr_expected.iloc[1], 20 + 3 * math.log(2))
    assert math.isclose(out.etr_lower.iloc[1], lower2)
    # session 2 exactly on the lower edge -> on track (strict <)
    assert out.track_status.tolist() == ["intake", "on_track", "missing", "not_on_track"]
    assert out.on_track.tolist()[1] is True and pd.isna(out.on_track.iloc[0])
    for col in ON_TRACK_COLUMNS:
        assert col in out.columns


def test_on_track_lower_is_better_uses_upper_edge():
    # PHQ-like: expected to fall by 3 ln t; a score far above expectation is off track
    m = ExpectedResponse(gamma0=-3.0, gamma1=0.0, centre=15.0, sigma=1.0)
    df = pd.DataFrame({"patient": "a", "session": [1, 2, 3], "phq": [15.0, 10.0, 18.0]})
    out = on_track(df, m, score="phq", direction="lower_is_better", tolerance=0.05)
    # session 3 upper = 15 - 3 ln3 + 1.644854 = 13.349; 18 > 13.349 -> off; 10 < upper at 2
    assert out.track_status.tolist() == ["intake", "on_track", "not_on_track"]
    first = first_off_track(out)
    assert first.first_off_track_session.tolist() == [3] and first.n_not_on_track.tolist() == [1]


def test_one_session_patient_and_first_off_track():
    m = ExpectedResponse(gamma0=3.0, gamma1=0.0, centre=20.0, sigma=1.0)
    df = pd.DataFrame(
        {"patient": ["a", "b", "b", "b"], "session": [1, 1, 2, 3], "ors": [20.0, 20.0, 10.0, 10.0]}
    )
    out = on_track(df, m, score="ors", direction="higher_is_better")
    assert out.track_status.tolist() == ["intake", "intake", "not_on_track", "not_on_track"]
    first = first_off_track(out).set_index("patient")
    assert (
        pd.isna(first.loc["a", "first_off_track_session"]) and first.loc["a", "n_not_on_track"] == 0
    )
    assert first.loc["b", "first_off_track_session"] == 2 and first.loc["b", "n_not_on_track"] == 2


def test_from_mapping_and_validation():
    m = ExpectedResponse.from_mapping({"gamma0": 1, "gamma1": -0.1, "centre": 20, "sigma": 4})
    assert m.to_dict()["sigma"] == 4
    with pytest.raises(KeyError, match=r"missing \['sigma'\]"):
        ExpectedResponse.from_mapping({"gamma0": 1, "gamma1": -0.1, "centre": 20})
    with pytest.raises(KeyError, match="Unknown expected-response keys \\['slope'\\]"):
        ExpectedResponse.from_mapping(
            {"gamma0": 1, "gamma1": 0, "centre": 2, "sigma": 1, "slope": 3}
        )
    with pytest.raises(ValueError, match="`sigma` must be greater than 0"):
        ExpectedResponse(gamma0=1, gamma1=0, centre=2, sigma=0)
    df = pd.DataFrame({"patient": "a", "session": [1, 2], "ors": [20.0, 21.0]})
    with pytest.raises(ValueError, match="`tolerance` must be at most 0.5"):
        on_track(df, m, score="ors", direction="higher_is_better", tolerance=0.7)
    with pytest.raises(TypeError, match="`model` must be an ExpectedResponse or a Multilevel"):
        on_track(df, {"gamma0": 1}, score="ors", direction="higher_is_better")


def test_fit_on_generated_sample_recovers_model_and_band_share():
    # 2000 patients, 8 sessions, data generated from the model itself with normal
    # residuals (SD 3): the fit recovers gamma0 = 2.5, gamma1 = -0.2, sigma = 3, and the
    # band (tolerance 0.10) flags close to 10% of follow-up sessions.
    rng = np.random.default_rng(11)
    n, k = 2000, 8
    intake = rng.normal(20, 5, n)
    t = np.arange(1, k + 1)
    mean = intake[:, None] + (2.5 - 0.2 * (intake[:, None] - 20))[:, :] * np.log(t)[None, :]
    y = mean + np.where(t[None, :] > 1, rng.normal(0, 3, (n, k)), 0.0)
    df = pd.DataFrame(
        {"patient": np.repeat(np.arange(n), k), "session": np.tile(t, n), "y": y.ravel()}
    )
    m = fit_expected_response(df, score="y")
    assert abs(m.gamma0 - 2.5) < 0.1 and abs(m.gamma1 + 0.2) < 0.02 and abs(m.sigma - 3) < 0.1
    out = on_track(df, m, score="y", direction="higher_is_better", tolerance=0.10)
    share = (out.track_status == "not_on_track").mean() * k / (k - 1)
    assert 0.09 < share < 0.11


# ---------------------------------------------------------------- multilevel (Finch et al. 2001)


def _multilevel_sample(n=800, k=8, seed=5):
    """Simulate scores from the multilevel model itself.

    Intake ~ N(20, 5); change from intake
    -1 - 0.2 (x0 - 20) + (3 - 0.1 (x0 - 20)) ln t + u0 + u1 ln t + e,
    with var(u0) = 4, cov = -1, var(u1) = 1.5, sigma = 2.
    """
    rng = np.random.default_rng(seed)
    intake = rng.normal(20, 5, n)
    u = rng.multivariate_normal([0, 0], [[4.0, -1.0], [-1.0, 1.5]], n)
    t = np.arange(1, k + 1)
    lt = np.log(t)[None, :]
    c = intake[:, None] - 20
    change = -1 - 0.2 * c + (3 - 0.1 * c) * lt + u[:, [0]] + u[:, [1]] * lt
    y = intake[:, None] + np.where(t[None, :] > 1, change + rng.normal(0, 2, (n, k)), 0.0)
    return pd.DataFrame(
        {"patient": np.repeat(np.arange(n), k), "session": np.tile(t, n), "y": y.ravel()}
    )


def test_multilevel_fit_recovers_the_generating_model():
    df = _multilevel_sample()
    m = fit_expected_response(df, score="y", model="multilevel")
    assert isinstance(m, MultilevelExpectedResponse)
    assert m.n_patients == 800 and m.n_observations == 800 * 7
    # the centre is the sample's mean intake, so the level terms shift by beta1 * (20 - c)
    assert abs(m.gamma0 - (3 - 0.1 * (20 - m.centre))) < 0.15
    assert abs(m.gamma1 + 0.1) < 0.03 and abs(m.beta1 + 0.2) < 0.04
    assert abs(m.sigma - 2) < 0.05
    assert abs(m.tau00 - 4) < 0.8 and abs(m.tau01 + 1) < 0.4 and abs(m.tau11 - 1.5) < 0.25
    # the band widens as the patients' slopes fan out
    sd = m.band_sd(np.array([2.0, 8.0]))
    expected_sd = np.sqrt(
        m.tau00 + 2 * m.tau01 * np.log([2, 8]) + m.tau11 * np.log([2, 8]) ** 2 + m.sigma**2
    )
    np.testing.assert_allclose(sd, expected_sd)
    assert m.band_sd(1.0) == pytest.approx(math.sqrt(m.tau00 + m.sigma**2))


def test_multilevel_band_flags_the_nominal_share_at_every_session():
    df = _multilevel_sample()
    m = fit_expected_response(df, score="y", model="multilevel")
    out = on_track(df, m, score="y", direction="higher_is_better", tolerance=0.10)
    share = (
        out[out.session > 1]
        .groupby("session")["track_status"]
        .apply(lambda s: (s == "not_on_track").mean())
    )
    assert share.between(0.075, 0.125).all(), share
    # the fixed model, forced through the intake, misses the drop at the first follow-up
    # (beta0 = -1) and flags too many there (13.4%; multilevel at most 1.25 points off 10%)
    fixed = fit_expected_response(df, score="y", model="fixed")
    out_f = on_track(df, fixed, score="y", direction="higher_is_better", tolerance=0.10)
    share_f = (
        out_f[out_f.session > 1]
        .groupby("session")["track_status"]
        .apply(lambda s: (s == "not_on_track").mean())
    )
    assert share_f.iloc[0] > 0.125
    assert (share_f - 0.10).abs().max() > (share - 0.10).abs().max()


def test_multilevel_expected_course_and_intake():
    m = MultilevelExpectedResponse(
        beta0=-1.0, beta1=-0.2, gamma0=3.0, gamma1=-0.1, centre=20.0,
        tau00=4.0, tau01=-1.0, tau11=1.5, sigma=2.0,
    )  # fmt: skip
    # intake 25 at t = 3: 25 - 1 - 0.2*5 + (3 - 0.5) ln 3
    assert m.expected(25.0, 3.0) == pytest.approx(23 + 2.5 * math.log(3))
    assert m.expected(25.0, 1.0) == 25.0  # the intake itself
    assert m.band_sd(3.0) == pytest.approx(
        math.sqrt(4 - 2 * math.log(3) + 1.5 * math.log(3) ** 2 + 4)
    )
    assert m.to_dict()["kind"] == "multilevel"
    df = pd.DataFrame({"patient": "a", "session": [1, 3], "ors": [25.0, 15.0]})
    out = on_track(df, m, score="ors", direction="higher_is_better", tolerance=0.10)
    lower = 23 + 2.5 * math.log(3) - stats.norm.ppf(0.9) * m.band_sd(3.0)
    assert out.etr_lower.iloc[1] == pytest.approx(lower)
    assert out.track_status.tolist() == ["intake", "not_on_track"]  # 15 < 21.0


def test_both_models_on_the_example_study():
    # The embedded example study (linear growth in sessions, correlated patient slopes):
    # both bands flag about the nominal 10% of follow-up sessions; the multilevel band,
    # whose width follows the spread of the patients' courses, comes closer to it
    # (fixed 290 of 2488 = 11.7%, multilevel 247 of 2488 = 9.9%).
    from allianceflow.score import score_sessions
    from allianceflow.simulate import EXAMPLE_SEED, simulate_study

    # the example as the simulator drew it before early endings depended on the alliance
    legacy = {"early_sessions": 1, "dropout_alliance_effect": 0.0, "deterioration_share": 0.0}
    with pytest.warns(UserWarning, match="ors: 119 row"):
        d = score_sessions(simulate_study(seed=EXAMPLE_SEED, **legacy), ["ors"])
    shares = {}
    for kind in ("fixed", "multilevel"):
        m = fit_expected_response(d, score="ors_total", model=kind)
        out = on_track(d, m, score="ors_total", direction="higher_is_better")
        counts = out.track_status.value_counts()
        shares[kind] = counts["not_on_track"] / (counts["not_on_track"] + counts["on_track"])
        assert counts["on_track"] + counts["not_on_track"] == 2488
    assert shares["fixed"] == pytest.approx(290 / 2488)
    assert shares["multilevel"] == pytest.approx(247 / 2488)
    assert abs(shares["multilevel"] - 0.10) < abs(shares["fixed"] - 0.10)


def test_bad_model_kind_is_refused():
    df = pd.DataFrame({"patient": list("aabbcc"), "session": [1, 2] * 3, "x": [1.0, 2, 3, 5, 4, 6]})
    with pytest.raises(ValueError, match="`model` must be"):
        fit_expected_response(df, score="x", model="hlm")
    with pytest.raises(ValueError, match="`tau00` must be"):
        MultilevelExpectedResponse(
            beta0=0, beta1=0, gamma0=0, gamma1=0, centre=0, tau00=-1, tau01=0, tau11=0, sigma=1
        )


def test_derive_settings_choose_the_multilevel_model():
    from allianceflow.derive import derive_tables

    scored = _multilevel_sample(n=200, k=6).rename(columns={"y": "ors_total"})
    scored["wai_sr_total"] = 50.0 + (scored["session"] % 3)
    args = dict(alliance="wai_sr_total", outcome="ors_total", direction="higher_is_better")
    fixed = derive_tables(scored, rci=5.0, **args)
    multi = derive_tables(scored, rci=5.0, settings={"on_track": {"model": "multilevel"}}, **args)
    assert "tau11" not in fixed.expected_response
    assert multi.expected_response["kind"] == "multilevel"
    direct = fit_expected_response(scored, score="ors_total", model="multilevel")
    assert multi.expected_response["gamma0"] == pytest.approx(direct.gamma0, rel=1e-6)


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("direction", ["higher_is_better", "lower_is_better"])
def test_sorted_table_gives_the_status_of_a_shuffled_copy(seed, direction):
    # A table sorted by patient and session finds each intake without sorting and builds
    # the status from codes; a shuffled copy is sorted first. Same columns, same values.
    rng = np.random.default_rng(seed)
    data = random_session_keys(rng, text_ids=bool(seed % 2))
    data["outcome"] = np.where(rng.random(len(data)) < 0.2, np.nan, rng.normal(20, 6, len(data)))
    data = data.sort_values(["patient", "session"], kind="mergesort").reset_index(drop=True)
    shuffled = data.sample(frac=1.0, random_state=seed)
    model = ExpectedResponse(gamma0=2.0, gamma1=-0.1, centre=20.0, sigma=4.0)
    got = on_track(data, model, direction=direction)
    want = on_track(shuffled, model, direction=direction)
    pd.testing.assert_frame_equal(got, want.loc[data.index], check_exact=True)
    assert set(got["track_status"].astype(str)) >= {"intake"}
