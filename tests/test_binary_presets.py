"""Binary and count presets: formulas and families, effect sizes by hand, truths recovered."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from allianceflow.clinical import derive_patients, patient_outcomes, reliable_change
from allianceflow.effects import (
    BENCHMARKS,
    arm_contrasts,
    hedges_g,
    newcombe_difference,
    nnt_interval,
    wilson_interval,
)
from allianceflow.models import fit_model
from allianceflow.models.presets import (
    PATIENT_PRESETS,
    preset_family,
    preset_formula,
    preset_level,
    preset_rows,
)
from allianceflow.simulate import EXAMPLE_DESIGN, simulate_study
from allianceflow.stages import patient_fit_stage
from allianceflow.tables import binary_effects_table, ratio_table

# --------------------------------------------------------------------------- presets


@pytest.mark.parametrize(
    "name, options, formula, family",
    [
        (
            "deterioration",
            {},
            "deteriorated ~ feedback + outcome_baseline + (1 | therapist)",
            "binomial",
        ),
        (
            "deterioration",
            {"by_track": True},
            "deteriorated ~ feedback * off_track + outcome_baseline + (1 | therapist)",
            "binomial",
        ),
        (
            "improvement",
            {"by_track": True},
            "improved ~ feedback * off_track + outcome_baseline + (1 | therapist)",
            "binomial",
        ),
        (
            "improvement",
            {"subgroup": "not_on_track"},
            "improved ~ feedback + outcome_baseline + (1 | therapist)",
            "binomial",
        ),
        (
            "dropout",
            {},
            "dropout ~ early_alliance + outcome_baseline + (1 | therapist)",
            "binomial",
        ),
        ("attendance", {}, "sessions_attended ~ early_alliance + (1 | therapist)", "poisson"),
        ("attendance", {"therapist": False}, "sessions_attended ~ early_alliance", "poisson"),
        (
            "dropout",
            {"covariates": ["C(condition)"]},
            "dropout ~ early_alliance + outcome_baseline + C(condition) + (1 | therapist)",
            "binomial",
        ),
    ],
)
def test_patient_presets_write_their_formula_and_know_family_and_level(
    name, options, formula, family
):
    assert preset_formula(name, **options) == formula
    assert preset_family(name) == family
    assert preset_level(name) == "patient"


def test_session_presets_stay_gaussian_and_session_level():
    assert set(PATIENT_PRESETS) == {"deterioration", "improvement", "dropout", "attendance"}
    assert (preset_family("feedback"), preset_level("feedback")) == ("gaussian", "session")


def test_subgroup_option_selects_rows():
    assert preset_rows("deterioration", subgroup="not_on_track") == {"off_track": 1.0}
    assert preset_rows("improvement", subgroup="on_track") == {"off_track": 0.0}
    assert preset_rows("deterioration") == {}
    assert preset_rows("growth") == {}


@pytest.mark.parametrize(
    "name, options, error, message",
    [
        (
            "dropout",
            {"time": "session"},
            ValueError,
            r"preset 'dropout' has no option 'time'; options are "
            r"\['covariates', 'random', 'therapist'\].",
        ),
        (
            "deterioration",
            {"subgroup": "flagged"},
            ValueError,
            r"`subgroup` must be None, 'not_on_track' or 'on_track'; got 'flagged'.",
        ),
        (
            "improvement",
            {"by_track": True, "subgroup": "on_track"},
            ValueError,
            r"`by_track` models arm × off_track in all patients and `subgroup` keeps one "
            r"subgroup; use one of them, got by_track=True and subgroup='on_track'.",
        ),
        (
            "attendance",
            {"therapist": "yes"},
            ValueError,
            r"`therapist` must be True or False; got 'yes'.",
        ),
    ],
)
def test_bad_preset_options_are_refused(name, options, error, message):
    with pytest.raises(error, match=message):
        preset_formula(name, **options)


def test_unknown_preset_name_is_refused_by_level_and_family():
    with pytest.raises(ValueError, match=r"`name` must be one of .*'attendance'; got 'drop'."):
        preset_family("drop")


# --------------------------------------------------------------------------- effect sizes


def test_wilson_interval_matches_r_prop_test():
    # R 4: prop.test(8, 40, correct = FALSE)$conf.int = 0.1049998973 0.3475730635
    p, lo, hi = wilson_interval(8, 40)
    assert p == 0.2
    assert lo == pytest.approx(0.1049998973, abs=1e-10)
    assert hi == pytest.approx(0.3475730635, abs=1e-10)


def test_wilson_interval_by_hand_at_zero_events():
    # x = 0: L = 0 and U = z^2 / (n + z^2)
    z = 1.959963984540054
    assert wilson_interval(0, 20) == pytest.approx((0.0, 0.0, z * z / (20 + z * z)))


@pytest.mark.parametrize("n", [1, 3, 7, 19, 40, 91, 101, 154])
def test_wilson_limits_are_exact_at_the_edges(n):
    # rounding must not put a limit on the wrong side of the estimate (a figure's error
    # bars cannot be negative)
    assert wilson_interval(0, n)[:2] == (0.0, 0.0)
    assert wilson_interval(n, n)[::2] == (1.0, 1.0)


@pytest.mark.parametrize(
    "counts, expected",
    [
        # Newcombe (1998), Statistics in Medicine 17, 873-890, Table II, method 10
        ((56, 70, 48, 80), (0.2, 0.0524, 0.3339)),
        ((9, 10, 3, 10), (0.6, 0.1705, 0.8090)),
    ],
)
def test_newcombe_interval_reproduces_the_published_examples(counts, expected):
    d, lo, hi = newcombe_difference(*counts)
    assert d == pytest.approx(expected[0], abs=1e-12)
    assert round(lo, 4) == expected[1]
    assert round(hi, 4) == expected[2]


def test_nnt_interval_by_hand():
    r = nnt_interval(0.2, 0.05, 0.25)  # 1/0.2 = 5; 1/0.25 = 4; 1/0.05 = 20
    assert (r["nnt"], r["nnt_low"], r["nnt_high"], r["kind"]) == (5.0, 4.0, 20.0, "NNTB")
    assert r["text"] == "NNTB 5.0 (4.0 to 20.0)"
    harm = nnt_interval(-0.1, -0.2, -0.05)
    assert (harm["kind"], harm["nnt"], harm["nnt_low"], harm["nnt_high"]) == (
        "NNTH",
        10.0,
        5.0,
        20.0,
    )


def test_nnt_interval_through_infinity_when_the_difference_may_be_zero():
    r = nnt_interval(0.05, -0.04, 0.125)
    assert r["crosses_zero"] and math.isnan(r["nnt_low"])
    assert r["text"] == "NNTB 20.0 (NNTB 8.0 to ∞ to NNTH 25.0)"


def test_nnt_interval_refuses_a_difference_outside_its_interval():
    with pytest.raises(ValueError, match=r"`difference` \(0.3\) must lie between `low` \(0.1\)"):
        nnt_interval(0.3, 0.1, 0.2)


def test_hedges_g_by_hand():
    # means 4.5 and 2.5, pooled SD sqrt(5/3), J = 1 - 3/23
    g, lo, hi = hedges_g([3.0, 4.0, 5.0, 6.0], [1.0, 2.0, 3.0, 4.0])
    d = 2.0 / math.sqrt(5.0 / 3.0)
    expected = (1 - 3 / 23) * d
    se = math.sqrt(8 / 16 + expected**2 / 16)
    assert g == pytest.approx(expected, rel=1e-12)
    assert (lo, hi) == pytest.approx(
        (expected - 1.959963984540054 * se, expected + 1.959963984540054 * se)
    )


@pytest.mark.parametrize(
    "args, message",
    [
        ((5, 4), r"`successes` \(5\) must not exceed `n` \(4\)."),
        ((1.5, 4), r"`successes` must be a count \(an integer of at least 0\); got 1.5."),
        ((-1, 4), r"`successes` must be a count \(an integer of at least 0\); got -1."),
    ],
)
def test_wilson_interval_validates_counts(args, message):
    with pytest.raises(ValueError, match=message):
        wilson_interval(*args)


def _patients() -> pd.DataFrame:
    """Twenty patients: feedback 2/10 deteriorated (both off track), tau 5/10 (all off track)."""
    rows = []
    for arm, n_det in (("feedback", 2), ("tau", 5)):
        for i in range(10):
            rows.append(
                {
                    "patient": f"{arm}{i}",
                    "condition": arm,
                    "deteriorated": float(i < n_det),
                    "improved": float(i >= 6),
                    "off_track": float(i < 6),
                    "score_last": float(20 + i + (3 if arm == "feedback" else 0)),
                }
            )
    return pd.DataFrame(rows)


def test_arm_contrasts_count_rates_and_sign_the_success_rate_difference():
    out = arm_contrasts(_patients()).set_index(["outcome", "subgroup"])
    det = out.loc[("deteriorated", "all")]
    assert (det.events_treated, det.n_treated, det.events_control, det.n_control) == (2, 10, 5, 10)
    assert det.risk_difference == pytest.approx(-0.3)
    assert det.success_rate_difference == pytest.approx(0.3)  # fewer deteriorations is better
    d, lo, hi = newcombe_difference(2, 10, 5, 10)
    assert (det.rd_low, det.rd_high) == (lo, hi)
    assert (det.srd_low, det.srd_high) == (-hi, -lo)
    assert det.nnt == pytest.approx(1 / 0.3)
    off = out.loc[("deteriorated", "not_on_track")]
    assert (off.events_treated, off.n_treated, off.events_control, off.n_control) == (2, 6, 5, 6)
    on = out.loc[("deteriorated", "on_track")]
    assert (on.events_treated, on.events_control, on.risk_difference) == (0, 0, 0.0)
    assert out.loc[("improved", "all")].success_rate_difference == 0.0
    # end-of-treatment g: feedback 3 points higher in every position
    g = hedges_g(_patients().score_last[:10], _patients().score_last[10:])
    assert det.hedges_g == pytest.approx(g[0])


def test_arm_contrasts_refuse_an_unknown_arm():
    with pytest.raises(ValueError, match=r"`treated` must be a level of column 'condition' "):
        arm_contrasts(_patients(), treated="rom")


def test_binary_effects_table_sets_benchmarks_beside_the_study():
    table = binary_effects_table(arm_contrasts(_patients()), BENCHMARKS)
    first = table.body.iloc[0].tolist()
    assert first[:3] == ["Reliable deterioration, all patients", "2/10 (20.0%)", "5/10 (50.0%)"]
    assert first[3].startswith("30.0% [")
    rows = table.body.iloc[:, 0].tolist()
    assert rows[table.sections[0]] == "Published benchmarks"
    bench = table.body.iloc[table.sections[0] + 1 :]
    assert bench.iloc[0, 3] == "≈ 8%" and bench.iloc[0, 5] == "0.15"
    assert bench.iloc[1, 3] == "≈ 20–29%" and bench.iloc[1, 5] == "0.36–0.53"
    assert bench.iloc[2, 5] == "d = 0.55"


def test_ratio_table_exponentiates_estimate_and_interval():
    result = {
        "name": "attendance",
        "family": "poisson",
        "n_obs": 10,
        "fixed": [
            {
                "term": "x",
                "estimate": math.log(2),
                "se": 0.1,
                "ci_low": 0.0,
                "ci_high": 1.0,
                "p": 0.2,
            }
        ],
    }
    t = ratio_table(result)
    assert t.body.columns.tolist()[3] == "IRR"
    assert t.body.iloc[0].tolist()[3:5] == ["2.00", "[1.00, 2.72]"]
    assert t.data.loc[0, "ratio"] == pytest.approx(2.0)
    with pytest.raises(ValueError, match=r"`result` must be a binomial or poisson model; got "):
        ratio_table({**result, "family": "gaussian"})


# --------------------------------------------------------------------------- patient outcomes


def test_patient_outcomes_by_hand():
    analysis = pd.DataFrame(
        {
            "patient": ["a"] * 4 + ["b"] * 2,
            "session": [1, 2, 3, 4, 2, 5],
            "alliance": [40.0, 44.0, np.nan, 60.0, 30.0, 50.0],
            "outcome": [10.0, 12.0, 14.0, 20.0, 20.0, 12.0],
            "condition": ["feedback"] * 4 + ["tau"] * 2,
            "ending": ["planned"] * 4 + ["unilateral"] * 2,
            "days": [0.0, 7, 14, 21, 0, 21],
        }
    )
    patients = derive_patients(
        analysis, direction="higher_is_better", rci=5, ending="ending", days="days"
    )
    out = patient_outcomes(patients, analysis).set_index("patient")
    # a: sessions 1-3 hold 40, 44 and a missing score -> mean 42 of 2 scores
    assert out.loc["a", ["early_alliance", "early_alliance_n"]].tolist() == [42.0, 2.0]
    # b starts at session 2: sessions 2-4 -> only session 2
    assert out.loc["b", ["early_alliance", "early_alliance_n"]].tolist() == [30.0, 1.0]
    assert out.loc["a", ["improved", "deteriorated", "dropout", "feedback"]].tolist() == [
        1.0,
        0.0,
        0.0,
        1.0,
    ]
    assert out.loc["b", ["improved", "deteriorated", "dropout", "feedback"]].tolist() == [
        0.0,
        1.0,
        1.0,
        0.0,
    ]
    assert out["sessions_attended"].tolist() == [4.0, 5.0]
    assert out["outcome_baseline"].tolist() == [10.0, 20.0]
    assert out["off_track"].isna().all()  # no on-track status derived


@pytest.mark.parametrize(
    "value, error, message",
    [
        (0, ValueError, r"`early_sessions` must be at least 1; got 0."),
        (2.5, TypeError, r"`early_sessions` must be an integer; got 2.5."),
    ],
)
def test_patient_outcomes_validates_early_sessions(value, error, message):
    analysis = pd.DataFrame({"patient": ["a"], "session": [1], "alliance": [1.0], "outcome": [1.0]})
    patients = derive_patients(analysis, direction="higher_is_better", rci=5, days=None)
    with pytest.raises(error, match=message):
        patient_outcomes(patients, analysis, early_sessions=value)


# --------------------------------------------------------------------------- truths recovered


def _fixed(result: dict, term: str) -> dict:
    return next(r for r in result["fixed"] if r["term"] == term)


def test_feedback_effect_on_deterioration_is_recovered():
    """The GLMM's 95% CI holds the true log odds ratio of feedback on deterioration.

    1200 patients with little session noise and no early endings, so that reliable
    deterioration is the lasting episode.
    """
    df = simulate_study(
        seed=7,
        n_patients=1200,
        n_therapists=60,
        max_sessions=12,
        dropout_hazard=0.0,
        outcome_sd_residual=1.0,
        outcome_sd_slope=0.05,
        ors_item_noise=0.3,
        p_item_missing=0.0,
    )
    df["ors"] = df.filter(regex=r"^ors_\d+$").sum(axis=1)
    rc = reliable_change(df, score="ors", direction="higher_is_better", rci=5.0)
    p = (
        df.groupby("patient")
        .agg(therapist=("therapist", "first"), condition=("condition", "first"))
        .reset_index()
        .merge(rc, on="patient")
    )
    p["deteriorated"] = p["reliable_deterioration"].astype(float)
    p["feedback"] = (p["condition"] == "feedback").astype(float)
    result = fit_model(p, "deteriorated ~ feedback + (1 | therapist)", family="binomial").to_dict()
    row = _fixed(result, "feedback")
    truth = EXAMPLE_DESIGN.feedback_deterioration_effect
    assert row["ci_low"] < truth < row["ci_high"], row
    assert row["ci_high"] < 0  # and feedback is seen to help


def test_alliance_effect_on_dropout_is_recovered():
    """The GLMM's 95% CI holds the true effect of the early alliance on early ending.

    1200 patients of the example design; the early alliance is the mean WAI-SR item mean of
    sessions 1-3.
    """
    d = simulate_study(seed=8, n_patients=1200, n_therapists=60)
    d["wai"] = d.filter(regex=r"^wai_sr_\d+$").mean(axis=1)
    early = d[d["session"] <= EXAMPLE_DESIGN.early_sessions].groupby("patient")["wai"].mean()
    p = d.groupby("patient").agg(therapist=("therapist", "first"), ending=("ending", "first"))
    p["early_alliance"] = early
    p["dropout"] = (p["ending"] != "planned").astype(float)
    result = fit_model(
        p.reset_index(), "dropout ~ early_alliance + (1 | therapist)", family="binomial"
    ).to_dict()
    row = _fixed(result, "early_alliance")
    truth = EXAMPLE_DESIGN.dropout_alliance_effect
    assert row["ci_low"] < truth < row["ci_high"], row


def test_patient_fit_stage_fits_the_preset_family_to_the_patients_table(tmp_path):
    d = simulate_study(seed=9, n_patients=200, n_therapists=20, max_sessions=8)
    d["alliance"] = d.filter(regex=r"^wai_sr_\d+$").mean(axis=1)
    d["outcome"] = d.filter(regex=r"^ors_\d+$").sum(axis=1, min_count=4)
    patients = patient_outcomes(
        derive_patients(d, direction="higher_is_better", rci=5, ending="ending"), d
    )
    path = tmp_path / "patients.parquet"
    patients.to_parquet(path)
    out = tmp_path / "attendance.json"
    patient_fit_stage(
        path, {"preset": "attendance"}, name="attendance", json=out, txt=tmp_path / "a.txt"
    )
    result = json.loads(out.read_text())
    assert result["family"] == "poisson"
    assert result["n_obs"] == 200
    assert [r["term"] for r in result["fixed"]] == ["Intercept", "early_alliance"]
    with pytest.raises(ValueError, match=r"model 'attendance': the 'attendance' preset is fitted"):
        patient_fit_stage(
            None, {"preset": "attendance"}, name="attendance", json=out, txt=tmp_path / "a.txt"
        )
