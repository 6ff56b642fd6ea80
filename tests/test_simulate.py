"""The simulator: reproducible, sized as asked, and carrying the truth it claims."""

import dataclasses

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf

from allianceflow.derive import derive_analysis
from allianceflow.io import sha256_file
from allianceflow.simulate import (
    EXAMPLE_DESIGN,
    EXAMPLE_SEED,
    StudyDesign,
    early_ending_intercept,
    lasting_deterioration_share,
    simulate_study,
    write_example_study,
)


def test_same_seed_same_study_and_different_seed_differs():
    a = simulate_study(seed=3, n_patients=40, n_therapists=4)
    b = simulate_study(seed=3, n_patients=40, n_therapists=4)
    c = simulate_study(seed=4, n_patients=40, n_therapists=4)
    pd.testing.assert_frame_equal(a, b)
    assert not a["wai_sr_1"].equals(c["wai_sr_1"])


def test_design_sizes_ranges_and_dropout():
    df = simulate_study(seed=11, n_patients=120, n_therapists=12, max_sessions=10)
    assert df["patient"].nunique() == 120
    assert df["therapist"].nunique() == 12
    # every therapist sees 10 patients (120 spread evenly over 12)
    assert df.groupby("therapist")["patient"].nunique().eq(10).all()
    per_patient = df.groupby("patient")["session"].max()
    assert per_patient.max() <= 10 and per_patient.min() >= 1
    assert per_patient.nunique() > 3  # dropout makes treatment lengths unequal
    wai = df.filter(regex=r"^wai_sr_\d+$").stack()
    ors = df.filter(regex=r"^ors_\d+$").stack()
    assert set(wai.unique()) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    assert ors.between(0, 10).all()
    assert np.allclose(ors * 10, np.round(ors * 10))  # recorded to 0.1
    assert df.groupby("patient")["session"].min().eq(1).all()
    assert df.groupby("patient")["days"].min().eq(0).all()


def test_one_arm_per_patient_and_both_arms_present():
    df = simulate_study(seed=5, n_patients=60, n_therapists=6)
    assert df.groupby("patient")["condition"].nunique().eq(1).all()
    assert set(df["condition"]) == {"feedback", "tau"}


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("n_patients", 0, "`n_patients` must be a positive integer; got 0."),
        ("dropout_hazard", 1.5, r"`dropout_hazard` must lie in \[0, 1\]; got 1.5."),
        ("slope_intercept_corr", 1.0, r"`slope_intercept_corr` must lie in \(-1, 1\); got 1.0."),
        ("early_sessions", 0, "`early_sessions` must be a positive integer; got 0."),
        ("deterioration_share", -0.1, r"`deterioration_share` must lie in \[0, 1\]; got -0.1."),
        ("deterioration_drop", -1.0, "`deterioration_drop` must be at least 0; got -1.0."),
        (
            "feedback_deterioration_effect",
            0.5,
            r"`feedback_deterioration_effect` must be at most 0 \(feedback repairs episodes, "
            r"it never causes them\); got 0.5.",
        ),
    ],
)
def test_invalid_design_is_refused(field, value, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(EXAMPLE_DESIGN, **{field: value})


def test_fewer_patients_than_therapists_is_refused():
    with pytest.raises(
        ValueError, match=r"`n_patients` \(3\) must be at least `n_therapists` \(5\)"
    ):
        StudyDesign(n_patients=3, n_therapists=5)


def test_true_effects_are_recovered_by_the_correct_model():
    """Fitting the generating model to a large simulated study recovers gamma_W and gamma_B.

    Without random slopes the random-intercept model below is the generating model, so its
    95% intervals should hold the truth (with slopes left unmodelled, the between-patient
    interval is too narrow: 87% coverage in 30 replications at the example's size).
    """
    df = simulate_study(
        seed=21,
        n_patients=600,
        n_therapists=40,
        max_sessions=12,
        outcome_sd_slope=0.0,
        alliance_sd_slope=0.0,
    )
    df["wai"] = df.filter(regex=r"^wai_sr_\d+$").mean(axis=1)  # prorated item mean
    df["ors"] = df.filter(regex=r"^ors_\d+$").mean(axis=1) * 4
    data = derive_analysis(df, alliance="wai", outcome="ors").dropna(subset=["alliance_within_lag"])
    fit = smf.mixedlm(
        "outcome ~ alliance_within_lag + alliance_between + session",
        data,
        groups="therapist",
        vc_formula={"patient": "0 + C(patient)"},
    ).fit(method="lbfgs")
    ci = fit.conf_int()
    for term, truth in [("alliance_within_lag", 2.0), ("alliance_between", 4.0)]:
        assert ci.loc[term, 0] < truth < ci.loc[term, 1], (term, fit.params[term])
    assert abs(fit.params["alliance_within_lag"] - 2.0) < 0.4
    assert abs(fit.params["alliance_between"] - 4.0) < 1.0


def test_embedded_example_is_exactly_what_the_simulator_writes(tmp_path, root):
    written = write_example_study(tmp_path, seed=EXAMPLE_SEED)
    assert sha256_file(written) == sha256_file(root / "data/raw/example/sessions_export.csv")
    assert (tmp_path / "README.md").read_text() == (root / "data/raw/example/README.md").read_text()


def test_example_export_looks_like_a_clinic_export(root):
    raw = pd.read_csv(root / "data/raw/example/sessions_export.csv", dtype=str)
    assert list(raw.columns[:5]) == ["ClientCode", "Clinician", "Arm", "SessionNo", "SessionDate"]
    assert set(raw["Arm"]) == {"ROM feedback", "TAU"}
    assert raw["SessionDate"].str.fullmatch(r"\d\d/\d\d/20\d\d").all()
    assert (raw == "-9").to_numpy().sum() > 0  # blank items carry the export's missing code
    assert raw["ClientCode"].nunique() == 300 and raw["Clinician"].nunique() == 30


def test_binary_truths_by_hand():
    # 1 - (1 - 0.06)^(16 - 3) early enders at the mean early alliance
    p = 1 - 0.94**13
    assert early_ending_intercept(EXAMPLE_DESIGN) == pytest.approx(np.log(p / (1 - p)), rel=1e-12)
    # expit(logit(0.15) - 1.2)
    eta = np.log(0.15 / 0.85) - 1.2
    assert lasting_deterioration_share(EXAMPLE_DESIGN, feedback=True) == pytest.approx(
        1 / (1 + np.exp(-eta)), rel=1e-12
    )
    assert lasting_deterioration_share(EXAMPLE_DESIGN, feedback=False) == 0.15
    none = dataclasses.replace(EXAMPLE_DESIGN, dropout_hazard=0.0)
    assert early_ending_intercept(none) == -np.inf


def test_early_enders_attend_the_early_sessions_and_completers_all():
    df = simulate_study(seed=12, n_patients=200, n_therapists=10, p_unrecorded=0.0)
    last = df.groupby("patient").agg(n=("session", "max"), ending=("ending", "first"))
    early = last["ending"] != "planned"
    assert last.loc[early, "n"].between(EXAMPLE_DESIGN.early_sessions, 15).all()
    assert last.loc[~early, "n"].eq(16).all()
    # no early endings at all without a hazard
    none = simulate_study(seed=12, n_patients=50, n_therapists=5, dropout_hazard=0.0)
    assert none["ending"].eq("planned").all()


def test_feedback_repairs_episodes_but_never_adds_one():
    df = simulate_study(seed=13, n_patients=4000, n_therapists=40)
    p = df.groupby("patient").agg(
        arm=("condition", "first"),
        episode=("true_episode", "first"),
        lasting=("true_lasting_episode", "first"),
    )
    tau = p[p.arm == "tau"]
    assert (tau.episode == tau.lasting).all()  # no repair without feedback
    assert not (p.lasting & ~p.episode).any()
    fb = p[p.arm == "feedback"]
    assert 0.02 < fb.lasting.mean() < 0.08  # truth 0.0505


def test_without_the_new_mechanisms_the_former_example_is_drawn_again(tmp_path):
    """Without the new mechanisms the simulator draws the former example byte for byte.

    That is early_sessions=1, no alliance effect on endings and no episodes; the hash is the
    former example CSV's as committed.
    """
    legacy = dataclasses.replace(
        EXAMPLE_DESIGN, early_sessions=1, dropout_alliance_effect=0.0, deterioration_share=0.0
    )
    written = write_example_study(tmp_path, design=legacy, seed=EXAMPLE_SEED)
    assert sha256_file(written) == (
        "be1d8e39005383e4ecc7f53c16795658aabd21e2e2eb328fd5d575faf7e2306b"
    )


# ------------------------------------------------- the committed examples and their truths


#: The deterioration models' truths: log odds ratios of *measured* reliable deterioration
#: (feedback vs TAU, given the baseline ORS), by Monte Carlo over 20,000 simulated patients
#: (benchmarks/results/example_truths.txt, Monte Carlo SE 0.05 and 0.06), as the example
#: README states them. The lasting-episode truth (-1.2) is not what these models estimate:
#: over 100 replications the all-patients model's mean is -0.88 (bias +0.32, 8 Monte Carlo SEs).
MEASURED_DETERIORATION = {"deterioration": -0.8837, "deterioration_not_on_track": -1.0135}


def _fit_truths(root):
    """Fit every model that has a simulator truth to the committed example studies.

    Returns ``{truth name: (estimate, ci_low, ci_high, truth)}``, per point of the alliance
    total score the pipeline uses (WAI-SR: sum of 12 items; SRS: sum of 4), with the
    configured models and fit settings (Kenward-Roger df for linear models).
    """
    import warnings

    from allianceflow.config import load_config
    from allianceflow.models import fit_model
    from allianceflow.models.moderation import fit_moderated
    from allianceflow.models.presets import preset_family, preset_rows
    from allianceflow.simulate import EXAMPLE2_DESIGN, EXAMPLE2_MODALITY
    from allianceflow.stages import MODEL_DDF, MODEL_MIN_LEVELS, model_formula, prepare_study

    config = load_config(root / "config.yaml")
    models = config["models"]
    linear = {"reml": True, "ddf": MODEL_DDF, "min_levels": MODEL_MIN_LEVELS}
    d, d2 = EXAMPLE_DESIGN, EXAMPLE2_DESIGN
    out = {}

    def keep(name, record, term, truth):
        row = next(r for r in record["fixed"] if r["term"] == term)
        out[name] = (row["estimate"], row["ci_low"], row["ci_high"], truth)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        one = prepare_study(config["studies"]["example"], root=root, name="example")
        two = prepare_study(config["studies"]["example2"], root=root, name="example2")
        rec = fit_model(one.analysis, models["alliance_outcome"]["formula"], **linear).to_dict()
        keep("example within", rec, "alliance_within_lag", d.within_effect / 12)
        keep("example between", rec, "alliance_between", d.between_effect / 12)
        for name, term, truth in (
            ("dropout", "early_alliance", d.dropout_alliance_effect / 12),
            ("deterioration", "feedback", MEASURED_DETERIORATION["deterioration"]),
            (
                "deterioration_not_on_track",
                "feedback",
                MEASURED_DETERIORATION["deterioration_not_on_track"],
            ),
        ):
            spec, data = models[name], one.patients
            for column, value in preset_rows(spec["preset"], **spec.get("options", {})).items():
                data = data[data[column] == value]
            fit = fit_model(
                data,
                model_formula(spec),
                family=preset_family(spec["preset"]),
                min_levels=MODEL_MIN_LEVELS,
            )
            keep(name, fit.to_dict(), term, truth)
        rec = fit_model(two.analysis, models["alliance_outcome"]["formula"], **linear).to_dict()
        effect = {
            lv: EXAMPLE2_MODALITY["within_effect"].get(lv, d2.within_effect)
            for lv in EXAMPLE2_MODALITY["shares"]
        }
        mixed = sum(s * effect[lv] for lv, s in EXAMPLE2_MODALITY["shares"].items())
        keep("example2 within (mixed over modalities)", rec, "alliance_within_lag", mixed / 4)
        keep("example2 between", rec, "alliance_between", d2.between_effect / 4)
        spec = models["alliance_outcome_modality"]
        _, mod = fit_moderated(two.analysis, spec["preset"], spec["options"], **linear)
        for row in mod["simple_slopes"]:
            out[f"example2 slope {row['level']}"] = (
                row["slope"],
                row["ci_low"],
                row["ci_high"],
                effect[row["level"]] / 4,
            )
        keep(
            "example2 video - in person",
            mod,
            "alliance_within_lag:modality_video",
            (effect["video"] - effect["in_person"]) / 4,
        )
    return out


@pytest.fixture(scope="module")
def example_truths(root):
    return _fit_truths(root)


#: The truth the configured seed's draw misses (see the example README and
#: benchmarks/results/example_truths.txt for the coverage over 100 replications).
MISSED = {"example within"}


@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    [
        "example between",
        "dropout",
        "deterioration",
        "deterioration_not_on_track",
        "example2 within (mixed over modalities)",
        "example2 between",
        "example2 slope in_person",
        "example2 slope video",
        "example2 slope telephone",
        "example2 video - in person",
    ],
)
def test_committed_examples_recover_the_simulator_truths(example_truths, name):
    estimate, low, high, truth = example_truths[name]
    assert low < truth < high, (name, estimate, low, high, truth)


def test_the_readme_states_the_deterioration_models_truths(root):
    readme = (root / "data/raw/example/README.md").read_text()
    for name, truth in MEASURED_DETERIORATION.items():
        assert f"**{truth:.2f}** ".replace("-", "−") in readme, name


@pytest.mark.slow
def test_the_within_effect_draw_of_the_first_example_misses_as_its_readme_says(
    example_truths, root
):
    """The configured seed's within-patient estimate lies below its truth's interval.

    A 95% interval misses 1 time in 20; over 100 replications of the design the model's
    interval covers the truth at its nominal rate (benchmarks/example_truths.py), so the
    miss is the draw's, and the README states it rather than a reseeded file hiding it.
    """
    estimate, low, high, truth = example_truths["example within"]
    assert truth == pytest.approx(2.0 / 12)
    assert high < truth
    assert estimate * 12 == pytest.approx(1.2825, abs=5e-5)
    readme = (root / "data/raw/example/README.md").read_text()
    assert f"{estimate * 12:.2f} [{low * 12:.2f}, {high * 12:.2f}]" in readme
