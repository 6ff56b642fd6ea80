"""Tests for allianceflow.score: hand-computed scores, proration, reliability."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from allianceflow.score import (
    RELIABILITY_COLUMNS,
    cronbach_alpha,
    omega_total,
    reliability,
    score_columns,
    score_sessions,
)

NAN = np.nan


def frame(prefix: str, rows: list[list[float]], **extra) -> pd.DataFrame:
    """Item table with columns <prefix>_1..k plus patient/session ids."""
    k = len(rows[0])
    d = pd.DataFrame(rows, columns=[f"{prefix}_{i}" for i in range(1, k + 1)], dtype=float)
    d.insert(0, "session", range(1, len(rows) + 1))
    d.insert(0, "patient", "p1")
    for key, value in extra.items():
        d[key] = value
    return d


# --------------------------------------------------------------------------- scoring


def test_wai_sr_hand_computed():
    # items 1..12 = 5 4 3 2 1 5 4 3 2 1 5 4
    # task  = items 1, 2, 10, 12 = 5 + 4 + 1 + 4 = 14
    # bond  = items 3, 5, 7, 9   = 3 + 1 + 4 + 2 = 10
    # goal  = items 4, 6, 8, 11  = 2 + 5 + 3 + 5 = 15
    # total = 14 + 10 + 15 = 39
    d = frame("wai_sr", [[5, 4, 3, 2, 1, 5, 4, 3, 2, 1, 5, 4]])
    s = score_sessions(d, ["wai_sr"])
    assert s.loc[0, ["wai_sr_total", "wai_sr_task", "wai_sr_bond", "wai_sr_goal"]].tolist() == [
        39,
        14,
        10,
        15,
    ]
    assert s.loc[0, "wai_sr_n_items"] == 12
    assert not s.loc[0, "wai_sr_prorated"]
    assert list(s.columns[-6:]) == score_columns("wai_sr")
    assert s["wai_sr_n_items"].dtype == np.int64
    assert s["wai_sr_prorated"].dtype == bool


def test_core10_reverse_keying():
    # items 2 and 3 are reverse-keyed: x' = 0 + 4 - x.
    # raw 0 4 4 1 1 1 1 1 1 1 -> keyed 0 0 0 1 1 1 1 1 1 1 -> total 7
    # raw 4 0 0 4 4 4 4 4 4 4 -> keyed 4 4 4 4 4 4 4 4 4 4 -> total 40
    d = frame("core10", [[0, 4, 4, 1, 1, 1, 1, 1, 1, 1], [4, 0, 0, 4, 4, 4, 4, 4, 4, 4]])
    assert score_sessions(d, "core10")["core10_total"].tolist() == [7.0, 40.0]


def test_oq45_reverse_keying_and_subscales():
    # All raw answers 0: only the 9 reverse-keyed items score 4 (= 0 + 4 - 0).
    # SD holds reversed items 13, 24, 31 -> 12; IR holds 1, 20, 37, 43 -> 16;
    # SR holds 12, 21 -> 8; total = 9 * 4 = 36 = 12 + 16 + 8.
    d = frame("oq45", [[0] * 45])
    s = score_sessions(d, ["oq45"]).iloc[0]
    assert (s["oq45_total"], s["oq45_sd"], s["oq45_ir"], s["oq45_sr"]) == (36, 12, 16, 8)


def test_ors_total_of_visual_analogue_marks():
    # 7.5 + 6.2 + 3.1 + 5.0 = 21.8
    d = frame("ors", [[7.5, 6.2, 3.1, 5.0]])
    assert score_sessions(d, ["ors"]).loc[0, "ors_total"] == pytest.approx(21.8, abs=1e-12)


def test_proration_exactly_at_threshold_and_one_below():
    # CORE-10 allows one missing item.
    # Row 0, item 5 missing (1 missing = the limit): 9 keyed items are
    #   2 + (4-1) + (4-1) + 2 + . + 2 + 2 + 2 + 2 + 2 = 20 -> 20 / 9 * 10 = 22.222...
    # Row 1, items 5 and 6 missing (2 missing, one more than allowed) -> NaN.
    d = frame(
        "core10",
        [
            [2, 1, 1, 2, NAN, 2, 2, 2, 2, 2],
            [2, 1, 1, 2, NAN, NAN, 2, 2, 2, 2],
        ],
    )
    with pytest.warns(
        UserWarning,
        match=r"core10: 1 row\(s\) answered some but not enough items \(at most 1 may be missing\)",
    ):
        s = score_sessions(d, ["core10"])
    assert s.loc[0, "core10_total"] == pytest.approx(200 / 9, rel=1e-12)
    assert bool(s.loc[0, "core10_prorated"]) is True
    assert s.loc[0, "core10_n_items"] == 9
    assert np.isnan(s.loc[1, "core10_total"])
    assert bool(s.loc[1, "core10_prorated"]) is False
    assert s.loc[1, "core10_n_items"] == 8


def test_prorate_false_scores_only_complete_rows():
    d = frame("core10", [[2, 1, 1, 2, NAN, 2, 2, 2, 2, 2]])
    with pytest.warns(UserWarning, match="core10: 1 row"):
        s = score_sessions(d, ["core10"], prorate=False)
    assert np.isnan(s.loc[0, "core10_total"])


def test_not_administered_rows_are_nan_without_warning():
    d = frame("phq9", [[NAN] * 9, [1] * 9])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = score_sessions(d, ["phq9"])
    assert np.isnan(s.loc[0, "phq9_total"])
    assert s.loc[0, "phq9_n_items"] == 0
    assert bool(s.loc[0, "phq9_prorated"]) is False
    assert s.loc[1, "phq9_total"] == 9


def test_oq45_rounded_subscale_mean_imputation():
    # Override: one missing item allowed. Raw answers: every item 1, except
    # SR items 4 = 2 and 14 = 2, and SR item 28 missing.
    # Reverse-keyed SR items 12 and 21 score 4 - 1 = 3.
    # Answered SR items (4, 12, 14, 21, 32, 38, 39, 44) = 2 + 3 + 2 + 3 + 1 + 1 + 1 + 1 = 14
    # mean 14 / 8 = 1.75 -> rounded 2 imputed for item 28 -> SR = 16.
    # SD: 22 forward items * 1 + reversed 13, 24, 31 * 3 = 22 + 9 = 31.
    # IR: 7 forward items * 1 + reversed 1, 20, 37, 43 * 3 = 7 + 12 = 19.
    # total = 31 + 19 + 16 = 66.
    items = [1.0] * 45
    items[4 - 1] = 2
    items[14 - 1] = 2
    items[28 - 1] = NAN
    d = frame("oq45", [items])
    s = score_sessions(d, {"oq45": {"max_missing": 1, "subscale_max_missing": 1}}).iloc[0]
    assert (s["oq45_sd"], s["oq45_ir"], s["oq45_sr"], s["oq45_total"]) == (31, 19, 16, 66)
    assert bool(s["oq45_prorated"]) is True
    # by default (no proration confirmed) the same row is missing
    with pytest.warns(UserWarning, match="oq45: 1 row"):
        default = score_sessions(d, ["oq45"]).iloc[0]
    assert np.isnan(default["oq45_total"]) and np.isnan(default["oq45_sr"])
    assert default["oq45_sd"] == 31  # complete subscales still score


STUDY = {
    "id": "hope",
    "name": "Study hope scale",
    "construct": "other",
    "informant": ["patient", "therapist"],
    "items": 4,
    "response": {"min": 1, "max": 7},
    "reverse": [2],
    "subscales": {"agency": {"items": [1, 2]}, "pathways": {"items": [3, 4]}},
    "total": "mean",
    "direction": "higher_is_better",
    "proration": {"max_missing": 1, "subscale_max_missing": 0},
    "sources": {"pilot": "Our pilot study (2025)."},
}


def test_config_defined_instrument_mean_rule_and_informants():
    # item 2 reversed: x' = 1 + 7 - x.
    # row 0 (patient):   6, 8-3=5, 4, 7 -> total mean 22/4 = 5.5; agency (6+5)/2 = 5.5; pathways 5.5
    # row 1 (therapist): 2, 8-6=2, NaN, 5 -> total mean (2+2+5)/3 = 3.0 (prorated, 1 missing);
    #                    agency 2.0; pathways NaN (subscale_max_missing = 0)
    d = frame("hope", [[6, 3, 4, 7], [2, 6, NAN, 5]], informant=["patient", "therapist"])
    s = score_sessions(d, [STUDY])
    assert s["hope_total"].tolist() == [5.5, 3.0]
    assert s["hope_agency"].tolist() == [5.5, 2.0]
    assert s.loc[0, "hope_pathways"] == 5.5 and np.isnan(s.loc[1, "hope_pathways"])
    assert s["hope_prorated"].tolist() == [False, True]
    assert s["informant"].tolist() == ["patient", "therapist"]


def test_mapping_of_definitions_and_overrides_and_several_instruments():
    d = pd.concat(
        [
            frame("hope", [[6, 3, 4, 7]]),
            frame("core10", [[1] * 10]).drop(columns=["patient", "session"]),
        ],
        axis=1,
    )
    s = score_sessions(d, {"hope": STUDY, "core10": {"cutoff": 12}})
    # core10: keyed 1, 3, 3, 1 x 7 = 1 + 3 + 3 + 7 = 14
    assert s.loc[0, "core10_total"] == 14
    assert s.loc[0, "hope_total"] == 5.5
    original = d.copy()
    score_sessions(d, ["core10"])
    pd.testing.assert_frame_equal(d, original)  # input not modified


def test_integer_and_nullable_columns():
    d = frame("gad7", [[1, 2, 3, 0, 1, 2, 3]]).astype({f"gad7_{i}": "Int64" for i in range(1, 8)})
    assert score_sessions(d, ["gad7"]).loc[0, "gad7_total"] == 12  # 1+2+3+0+1+2+3


# --------------------------------------------------------------------------- scoring errors


def test_missing_item_column_lists_closest():
    d = frame("ors", [[1, 2, 3, 4]]).rename(columns={"ors_4": "ors4"})
    with pytest.raises(
        KeyError,
        match=(
            r"instrument 'ors': column 'ors_4' is not in the data; columns are .*"
            r"Did you mean 'ors4'"
        ),
    ):
        score_sessions(d, ["ors"])


def test_out_of_range_value_names_column_and_row():
    d = frame("phq9", [[0] * 9, [0, 0, 4, 0, 0, 0, 0, 0, 0]])
    with pytest.raises(
        ValueError,
        match=(
            r"Column 'phq9_3' \(instrument 'phq9'\) has value 4 at row 1; "
            r"allowed range is 0 to 3"
        ),
    ):
        score_sessions(d, ["phq9"])


def test_non_numeric_items_refused():
    d = frame("ors", [[1, 2, 3, 4]])
    d["ors_2"] = ["high"]
    with pytest.raises(
        TypeError, match=r"Column 'ors_2' of instrument 'ors' must be numeric; got dtype object"
    ):
        score_sessions(d, ["ors"])


def test_scoring_twice_is_refused():
    s = score_sessions(frame("ors", [[1, 2, 3, 4]]), ["ors"])
    with pytest.raises(
        ValueError,
        match=r"already has score column\(s\) \['ors_total', 'ors_n_items', 'ors_prorated'\]",
    ):
        score_sessions(s, ["ors"])


@pytest.mark.parametrize(
    "instruments,error,message",
    [
        ([], ValueError, r"`instruments` is empty"),
        (["ors", "ors"], ValueError, r"`instruments` names \['ors'\] more than once"),
        ({"hope": {**STUDY, "id": "other"}}, ValueError, r"the key and the id must agree"),
        ({"ors": 5}, ValueError, r"`instruments\['ors'\]` must be None, an override mapping"),
        (5, ValueError, r"`instruments` must be an id, a list"),
        (["nope"], KeyError, r"'nope' is not a built-in instrument"),
    ],
)
def test_bad_instruments_argument(instruments, error, message):
    with pytest.raises(error, match=message):
        score_sessions(frame("ors", [[1, 2, 3, 4]]), instruments)


def test_data_must_be_a_dataframe():
    with pytest.raises(TypeError, match=r"`data` must be a pandas DataFrame; got dict"):
        score_sessions({"ors_1": [1]}, ["ors"])


# --------------------------------------------------------------------------- reliability

QUIZ = {
    "id": "quiz",
    "name": "pingouin example items",
    "construct": "other",
    "informant": ["any"],
    "items": 11,
    "response": {"min": 0, "max": 1},
    "total": "sum",
    "direction": "higher_is_better",
    "proration": {"max_missing": 0},
    "sources": {"pingouin": "pingouin datasets"},
}


def test_alpha_matches_pingouin_documented_example_listwise():
    pg = pytest.importorskip("pingouin")
    wide = pg.read_dataset("cronbach_wide_missing")  # bundled with pingouin, offline
    d = wide.copy()
    d.columns = [f"quiz_{i}" for i in range(1, 12)]
    d.insert(0, "session", 1)
    d.insert(0, "patient", [f"s{i}" for i in range(len(d))])
    out = reliability(d, [QUIZ], occasion="first", n_boot=0)
    row = out.iloc[0]
    # pingouin.cronbach_alpha docstring: nan_policy='listwise' -> (0.801695, [0.581, 0.933]).
    assert row["alpha"] == pytest.approx(0.801695, abs=1e-6)
    assert row["n"] == 9 and row["k"] == 11  # 12 respondents, 3 with a missing answer
    # pingouin's documented CI uses n = 12 (rows counted before the listwise drop); we
    # drop first, so Feldt's CI uses the 9 complete cases:
    # 1 - (1 - a) * F.isf(.025, 8, 80) = 0.533, 1 - (1 - a) * F.isf(.975, 8, 80) = 0.947
    assert (row["alpha_ci_low"], row["alpha_ci_high"]) == (0.533, 0.947)
    assert np.isnan(row["omega_ci_low"])  # n_boot=0 skips the bootstrap


def test_alpha_matches_pingouin_documented_example_long_format():
    pg = pytest.importorskip("pingouin")
    long = pg.read_dataset("cronbach_alpha")  # 15 subjects x 10 items, scores 1-7
    wide = long.pivot(index="Subj", columns="Items", values="Scores")
    wide = wide[[f"Q{i}" for i in range(1, 11)]]
    wide.columns = [f"lik_{i}" for i in range(1, 11)]
    d = wide.reset_index().rename(columns={"Subj": "patient"}).assign(session=1)
    lik = {**QUIZ, "id": "lik", "items": 10, "response": {"min": 1, "max": 7}}
    row = reliability(d, [lik], occasion="first", n_boot=0).iloc[0]
    # pingouin docstring: (0.5917188485995826, array([0.195, 0.84 ]))
    assert row["alpha"] == pytest.approx(0.5917188485995826, abs=1e-12)
    assert (row["alpha_ci_low"], row["alpha_ci_high"]) == (0.195, 0.84)


def _exact_cov_data(cov: np.ndarray, n: int = 200, seed: int = 0) -> pd.DataFrame:
    """Simulate data whose sample covariance (ddof=1) equals `cov` exactly."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, cov.shape[0]))
    z -= z.mean(axis=0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T
    x = z @ np.linalg.cholesky(cov).T
    return pd.DataFrame(x, columns=[f"i{j}" for j in range(cov.shape[0])])


def test_omega_recovers_population_value_of_a_congeneric_model():
    lam = np.array([0.4, 0.6, 0.8, 1.0])
    psi = np.array([0.5, 0.6, 0.3, 0.4])
    cov = np.outer(lam, lam) + np.diag(psi)
    # omega = (sum lambda)^2 / ((sum lambda)^2 + sum psi) = 2.8^2 / (7.84 + 1.8) = 7.84 / 9.64
    assert omega_total(_exact_cov_data(cov)) == pytest.approx(7.84 / 9.64, abs=1e-6)


def test_omega_equals_alpha_for_tau_equivalent_items():
    pg = pytest.importorskip("pingouin")
    lam = np.full(5, 0.7)
    psi = np.array([0.3, 0.5, 0.7, 0.4, 0.6])
    data = _exact_cov_data(np.outer(lam, lam) + np.diag(psi))
    # omega = 3.5^2 / (12.25 + 2.5) = 12.25 / 14.75; alpha is equal under tau-equivalence
    alpha, _ = pg.cronbach_alpha(data=data)
    assert omega_total(data) == pytest.approx(alpha, abs=1e-6)
    assert omega_total(data) == pytest.approx(12.25 / 14.75, abs=1e-6)


def test_omega_needs_two_items_and_three_rows():
    with pytest.raises(
        ValueError, match=r"at least 2 columns and 3 complete rows; got 1 column\(s\) and 3"
    ):
        omega_total(pd.DataFrame({"a": [1.0, 2.0, 3.0]}))


def _simulated_sessions(n_patients=60, n_sessions=3, seed=5) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        trait = rng.normal()
        for s in range(1, n_sessions + 1):
            state = trait + rng.normal(scale=0.5)
            row = {
                "patient": f"p{p}",
                "session": s,
                "informant": "patient" if s % 2 else "therapist",
            }
            for j in range(1, 13):
                row[f"wai_sr_{j}"] = float(
                    np.clip(np.round(3 + state + rng.normal(scale=0.7)), 1, 5)
                )
            rows.append(row)
    return pd.DataFrame(rows)


def test_reliability_table_shape_and_notes():
    d = _simulated_sessions()
    out = reliability(d, ["wai_sr"], n_boot=50, seed=3)
    assert list(out.columns) == RELIABILITY_COLUMNS
    assert out[["scale", "occasion"]].apply(tuple, axis=1).tolist() == [
        ("total", "first"),
        ("task", "first"),
        ("bond", "first"),
        ("goal", "first"),
        ("total", "pooled"),
        ("task", "pooled"),
        ("bond", "pooled"),
        ("goal", "pooled"),
    ]
    assert out.loc[out.occasion == "first", "n"].tolist() == [60] * 4
    assert out.loc[out.occasion == "pooled", "n"].tolist() == [180] * 4
    assert out["k"].tolist() == [12, 4, 4, 4] * 2
    assert out.loc[4, "note"].startswith(
        "pooled over sessions: rows within a patient are not independent"
    )
    assert out["note"].str.contains("informants pooled").all()
    for _, r in out.iterrows():
        assert r.alpha_ci_low < r.alpha < r.alpha_ci_high
        assert r.omega_ci_low <= r.omega <= r.omega_ci_high
        assert 0.5 < r.omega < 1


def test_reliability_is_reproducible_with_a_seed():
    d = _simulated_sessions()
    a = reliability(d, ["wai_sr"], occasion="pooled", n_boot=30, seed=11)
    b = reliability(d, ["wai_sr"], occasion="pooled", n_boot=30, seed=11)
    c = reliability(d, ["wai_sr"], occasion="pooled", n_boot=30, seed=12)
    pd.testing.assert_frame_equal(a, b)
    assert not a["omega_ci_low"].equals(c["omega_ci_low"])


def test_reliability_by_informant():
    d = _simulated_sessions()
    out = reliability(d, ["wai_sr"], occasion="first", by=["informant"], n_boot=0)
    assert list(out.columns) == ["informant", *RELIABILITY_COLUMNS]
    assert out["informant"].tolist() == ["patient"] * 4 + ["therapist"] * 4
    # first therapist-rated session is session 2 for every patient
    assert out.loc[out.informant == "therapist", "n"].tolist() == [60] * 4
    assert not out["note"].str.contains("informants pooled").any()


def test_reliability_applies_reverse_keying():
    # CORE-10 items 2 and 3 are reverse-keyed: raw answers run opposite to the others,
    # so after keying all ten items agree and alpha is high.
    rng = np.random.default_rng(0)
    f = rng.normal(size=100)
    raw = np.clip(np.round(2 + f[:, None] + rng.normal(scale=0.5, size=(100, 10))), 0, 4)
    raw[:, 1:3] = 4 - raw[:, 1:3]
    d = pd.DataFrame(raw, columns=[f"core10_{i}" for i in range(1, 11)])
    d.insert(0, "session", 1)
    d.insert(0, "patient", [f"p{i}" for i in range(100)])
    row = reliability(d, ["core10"], occasion="first", n_boot=0).iloc[0]
    assert row["alpha"] > 0.9


def test_reliability_too_few_cases():
    d = frame("ors", [[1, 2, 3, 4], [2, 3, 4, 5]])
    d["patient"] = ["a", "b"]
    row = reliability(d, ["ors"], occasion="first", n_boot=0).iloc[0]
    assert row["n"] == 2 and np.isnan(row["alpha"])
    assert "too few items or complete cases" in row["note"]


@pytest.mark.parametrize(
    "kwargs,error,message",
    [
        (
            {"occasion": "last"},
            ValueError,
            r"`occasion` must be 'first' or 'pooled' \(or both\); got 'last'",
        ),
        ({"ci": 95}, ValueError, r"`ci` must lie between 0 and 1; got 95"),
        ({"n_boot": -1}, ValueError, r"`n_boot` must be a non-negative integer; got -1"),
        ({"patient": "client"}, KeyError, r"reliability: column 'client' is not in the data"),
        (
            {"by": ["site"]},
            KeyError,
            # nothing is close to 'site', so nothing is suggested
            r"reliability: column 'site' is not in the data; columns are patient, .*wai_sr_12\.\W$",
        ),
    ],
)
def test_reliability_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        reliability(_simulated_sessions(n_patients=5), ["wai_sr"], **kwargs)


# ---------------------------------------------------------------- psych's alpha

# psych 2.2.9: x <- pingouin's cronbach_wide_missing (12 respondents x 11 items, 3 incomplete);
# a <- psych::alpha(x, use = "pairwise" | "complete.obs"):
# a$total$raw_alpha, a$total$std.alpha, a$feldt$lower.ci, a$feldt$upper.ci
PSYCH_ALPHA = {
    "pairwise": (0.732660835214447, 0.730149341317616, 0.435310448544826, 0.909362910164429),
    # psych's Feldt CI counts all 12 rows even with use = "complete.obs"; on the 9 complete
    # rows alone (psych::alpha(x[complete.cases(x), ])) it is 0.533003199913274, 0.947207967339016
    "listwise": (0.801694915254237, 0.794475054570006, 0.533003199913274, 0.947207967339016),
}


def _wide_missing():
    pg = pytest.importorskip("pingouin")
    return pg.read_dataset("cronbach_wide_missing")  # bundled with pingouin, offline


@pytest.mark.parametrize("missing", ["pairwise", "listwise"])
def test_cronbach_alpha_matches_psych_with_missing_answers(missing):
    res = cronbach_alpha(_wide_missing(), missing=missing)
    raw, std, lo, hi = PSYCH_ALPHA[missing]
    assert res["alpha"] == pytest.approx(raw, abs=1e-12)
    assert res["std_alpha"] == pytest.approx(std, abs=1e-12)
    assert (res["alpha_ci_low"], res["alpha_ci_high"]) == (round(lo, 3), round(hi, 3))
    assert res["n"] == {"pairwise": 12, "listwise": 9}[missing]


def test_standardised_alpha_is_the_alpha_of_z_scored_items():
    x = _wide_missing().dropna()
    z = (x - x.mean()) / x.std()
    assert cronbach_alpha(x)["std_alpha"] == pytest.approx(cronbach_alpha(z)["alpha"], abs=1e-12)
    k, rbar = x.shape[1], (x.corr().to_numpy().sum() - x.shape[1]) / (x.shape[1] * (x.shape[1] - 1))
    assert cronbach_alpha(x)["std_alpha"] == pytest.approx(k * rbar / (1 + (k - 1) * rbar))


def test_reliability_reports_pairwise_alpha_on_request():
    d = _wide_missing()
    d.columns = [f"quiz_{i}" for i in range(1, 12)]
    d.insert(0, "session", 1)
    d.insert(0, "patient", [f"s{i}" for i in range(len(d))])
    listwise = reliability(d, [QUIZ], occasion="first", n_boot=0).iloc[0]
    pairwise = reliability(d, [QUIZ], occasion="first", n_boot=0, alpha_missing="pairwise").iloc[0]
    assert listwise["std_alpha"] == pytest.approx(PSYCH_ALPHA["listwise"][1], abs=1e-12)
    assert pairwise["alpha"] == pytest.approx(PSYCH_ALPHA["pairwise"][0], abs=1e-12)
    assert pairwise["std_alpha"] == pytest.approx(PSYCH_ALPHA["pairwise"][1], abs=1e-12)
    assert pairwise["n"] == 9  # omega still uses the complete cases
    assert "alpha from pairwise item covariances of 12 rows" in pairwise["note"]
    assert pairwise["omega"] == pytest.approx(listwise["omega"])


def test_the_reliability_stage_passes_alpha_missing(tmp_path):
    """``measures.alpha_missing`` reaches the table the pipeline writes."""
    from allianceflow import io, stages

    d = _wide_missing()
    d.columns = [f"quiz_{i}" for i in range(1, 12)]
    d.insert(0, "session", 1)
    d.insert(0, "patient", [f"s{i}" for i in range(len(d))])
    io.write_table(d, tmp_path / "sessions.parquet")
    alphas = {}
    for missing in ("listwise", "pairwise"):
        csv = tmp_path / f"{missing}.csv"
        stages.reliability_stage(
            tmp_path / "sessions.parquet",
            instruments=[QUIZ],
            seed=1,
            n_boot=0,
            alpha_missing=missing,
            csv=csv,
            md=tmp_path / f"{missing}.md",
        )
        table = pd.read_csv(csv)
        alphas[missing] = table.loc[table["occasion"] == "first", "alpha"].iloc[0]
    assert alphas["listwise"] == pytest.approx(PSYCH_ALPHA["listwise"][0], abs=1e-9)
    assert alphas["pairwise"] == pytest.approx(PSYCH_ALPHA["pairwise"][0], abs=1e-9)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"missing": "all"}, ValueError, "`missing` must be 'listwise' or 'pairwise'; got 'all'."),
        ({"ci": 1.0}, ValueError, "`ci` must lie between 0 and 1; got 1.0."),
    ],
)
def test_cronbach_alpha_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        cronbach_alpha(pd.DataFrame({"a": [1.0, 2.0], "b": [2.0, 1.0]}), **kwargs)


def test_cronbach_alpha_needs_two_items_and_rows():
    with pytest.raises(ValueError, match=r"at least 2 items and 2 usable rows; got 1 items and 3"):
        cronbach_alpha(pd.DataFrame({"a": [1.0, 2.0, 3.0]}))


PSYCH_SCRIPT = r"""
suppressMessages(library(psych))
x <- read.csv(commandArgs(trailingOnly = TRUE)[1])
for (u in c("pairwise", "complete.obs")) {
  a <- suppressWarnings(psych::alpha(x, use = u, warnings = FALSE))
  cat(u, sprintf("%.15g", c(a$total$raw_alpha, a$total$std.alpha)), "\n")
}
"""


@pytest.mark.r
def test_cronbach_alpha_matches_psych_computed_live(tmp_path):
    from rscript import parse_lines, require_r, run_r

    require_r("psych")
    x = _wide_missing()
    x.to_csv(tmp_path / "x.csv", index=False)
    out = parse_lines(run_r(PSYCH_SCRIPT, tmp_path, tmp_path / "x.csv"))
    for missing, use in (("pairwise", "pairwise"), ("listwise", "complete.obs")):
        raw, std = (float(v) for v in out[use])
        res = cronbach_alpha(x, missing=missing)
        assert res["alpha"] == pytest.approx(raw, abs=1e-12)
        assert res["std_alpha"] == pytest.approx(std, abs=1e-12)


# --------------------------------------------------------------------------- omega bootstrap

FIVE = {
    "id": "five",
    "name": "five congeneric items",
    "construct": "other",
    "informant": ["any"],
    "items": 5,
    "response": {"min": -100, "max": 100},
    "total": "sum",
    "direction": "higher_is_better",
    "proration": {"max_missing": 0},
    "sources": {"test": "simulated"},
}


def _clustered_items(n_patients=50, n_sessions=3, seed=21) -> pd.DataFrame:
    """Five congeneric items, three sessions per patient who share a trait."""
    rng = np.random.default_rng(seed)
    loadings = np.array([1.0, 0.9, 0.8, 0.7, 0.6])
    trait = np.repeat(rng.normal(size=n_patients), n_sessions)
    factor = trait + rng.normal(scale=0.6, size=trait.size)
    x = factor[:, None] * loadings + rng.normal(scale=0.7, size=(trait.size, 5))
    d = pd.DataFrame(x, columns=[f"five_{j}" for j in range(1, 6)])
    d.insert(0, "session", np.tile(np.arange(1, n_sessions + 1), n_patients))
    d.insert(0, "patient", [f"p{i:02d}" for i in np.repeat(np.arange(n_patients), n_sessions)])
    return d


def _resamples(n_patients: int, n_boot: int, seed: int) -> list[np.ndarray]:
    """The patients each bootstrap replicate draws, as reliability() draws them."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, n_patients, size=n_patients) for _ in range(n_boot)]


def test_batched_omega_bootstrap_equals_refitting_each_replicate():
    from allianceflow.score import _bootstrap_omega, _omega_from_cov

    d = _clustered_items()
    x = d.filter(like="five_").to_numpy()
    groups = d["patient"].to_numpy()
    start = _omega_from_cov(np.cov(x, rowvar=False))[1]
    lo, hi, used = _bootstrap_omega(x, groups, 200, np.random.default_rng(3), start, 0.95)
    # the definition: stack every row of each drawn patient, np.cov, one BFGS fit each
    members = [np.flatnonzero(groups == g) for g in pd.unique(groups)]
    stats = [
        _omega_from_cov(np.cov(x[np.concatenate([members[i] for i in pick])], rowvar=False), start)[
            0
        ]
        for pick in _resamples(len(members), 200, 3)
    ]
    assert used == 200
    assert (lo, hi) == pytest.approx(tuple(np.quantile(stats, [0.025, 0.975])), abs=1e-8)


def test_omega_bootstrap_logs_its_progress(caplog):
    d = _clustered_items()
    with caplog.at_level("INFO", logger="allianceflow"):
        reliability(d, [FIVE], occasion="pooled", n_boot=100, seed=1)
    assert "omega five total (pooled): 100 of 100 bootstrap replicates (50 patients, 150 rows" in (
        caplog.text
    )


FACTANAL_SCRIPT = r"""
args <- commandArgs(trailingOnly = TRUE)
x <- as.matrix(read.csv(args[1]))
patient <- read.csv(args[2])$patient
picks <- as.matrix(read.csv(args[3]))
members <- split(seq_len(nrow(x)), factor(patient, levels = unique(patient)))
omega <- function(S) {
  f <- factanal(covmat = S, factors = 1, n.obs = 100)
  lam <- f$loadings[, 1] * sqrt(diag(S))
  psi <- f$uniquenesses * diag(S)
  sum(lam)^2 / (sum(lam)^2 + sum(psi))
}
stats <- apply(picks, 1, function(p) omega(cov(x[unlist(members[p + 1]), ])))
cat("omega", sprintf("%.10f", omega(cov(x))), "\n")
cat("ci", sprintf("%.10f", quantile(stats, c(0.025, 0.975), type = 7)), "\n")
"""


@pytest.mark.r
def test_omega_and_its_bootstrap_interval_match_r_factanal_on_the_same_resamples(tmp_path):
    from rscript import parse_lines, require_r, run_r

    require_r("stats")
    d = _clustered_items()
    d.filter(like="five_").to_csv(tmp_path / "x.csv", index=False)
    d[["patient"]].to_csv(tmp_path / "patient.csv", index=False)
    pd.DataFrame(np.array(_resamples(50, 200, 8))).to_csv(tmp_path / "picks.csv", index=False)
    out = parse_lines(
        run_r(
            FACTANAL_SCRIPT,
            tmp_path,
            *(tmp_path / f for f in ("x.csv", "patient.csv", "picks.csv")),
        )
    )
    row = reliability(d, [FIVE], occasion="pooled", n_boot=200, seed=8).iloc[0]
    # factanal's L-BFGS-B stops earlier than our BFGS and Fisher scoring: 1e-5 apart
    assert row["omega"] == pytest.approx(float(out["omega"][0]), abs=1e-5)
    assert row["omega_ci_low"] == pytest.approx(float(out["ci"][0]), abs=1e-5)
    assert row["omega_ci_high"] == pytest.approx(float(out["ci"][1]), abs=1e-5)
    assert row["note"].startswith("pooled over sessions")
