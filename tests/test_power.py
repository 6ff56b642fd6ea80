"""Simulation-based power: designs, chunks, power and coverage.

Designs map to the simulator, chunks merge exactly, power rises with the sample and the
intervals cover the truth about 95% of the time.
"""

import dataclasses
import logging
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from allianceflow.power import (
    PowerDesign,
    chunk_seeds,
    design_from_model,
    designs_from_config,
    plot_power_curve,
    replication_seeds,
    run_binary_power_chunk,
    run_power_chunk,
    simulate_patients,
    summarise_power,
)
from allianceflow.simulate import EXAMPLE_DESIGN
from allianceflow.stages import power_chunk_stage, power_summary_stage

SMALL = PowerDesign(n_therapists=3, patients_per_therapist=4, sessions=6)


def test_default_design_is_the_example_study():
    study = PowerDesign(n_therapists=30, patients_per_therapist=10, sessions=16).to_study_design()
    assert study == dataclasses.replace(
        EXAMPLE_DESIGN, outcome_sd_residual=study.outcome_sd_residual
    )
    assert study.outcome_sd_residual == pytest.approx(EXAMPLE_DESIGN.outcome_sd_residual, abs=1e-12)


def test_iccs_set_the_outcome_variance_components():
    study = PowerDesign(icc_therapist=0.1, icc_patient=0.5, outcome_variance=40.0).to_study_design()
    assert study.outcome_sd_therapist**2 == pytest.approx(4.0)
    assert study.outcome_sd_patient**2 == pytest.approx(20.0)
    assert study.outcome_sd_residual**2 == pytest.approx(16.0)
    assert study.n_patients == 200 and study.n_therapists == 20


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("n_therapists", 0, "`n_therapists` must be a positive integer; got 0."),
        (
            "patients_per_therapist",
            2.5,
            "`patients_per_therapist` must be a positive integer; got 2.5.",
        ),
        ("sessions", 2, r"`sessions` must be at least 3 \(a lagged alliance needs two\); got 2."),
        ("icc_therapist", 1.0, r"`icc_therapist` must lie in \[0, 1\); got 1.0."),
        ("icc_patient", 0.95, r"`icc_therapist` \+ `icc_patient` must be below 1"),
        ("outcome_variance", 0.0, "`outcome_variance` must be positive; got 0.0."),
        ("dropout_hazard", 1.0, r"`dropout_hazard` must lie in \[0, 1\); got 1.0."),
    ],
)
def test_invalid_designs_are_refused(field, value, message):
    with pytest.raises(ValueError, match=message):
        PowerDesign(**{field: value})


def test_unknown_design_parameter_is_named():
    with pytest.raises(KeyError, match="`design` has no parameter 'n_patient'"):
        run_power_chunk({"n_patient": 10}, [1])


def test_seeds_are_reproducible_and_chunks_partition_them():
    seeds = replication_seeds(99, 10)
    assert seeds == replication_seeds(99, 10)
    assert seeds[:4] == replication_seeds(99, 4)  # more replications keep the first ones
    assert len(set(seeds)) == 10
    chunks = [chunk_seeds(99, 10, 4, c) for c in range(3)]
    assert [len(c) for c in chunks] == [4, 4, 2]
    assert sum(chunks, []) == seeds
    with pytest.raises(
        ValueError, match=r"`chunk` must lie in 0..2 for 10 replications in chunks of 4; got 3."
    ):
        chunk_seeds(99, 10, 4, 3)
    with pytest.raises(ValueError, match="`replications` must be a positive integer; got 0."):
        replication_seeds(99, 0)


def test_designs_from_config_vary_one_parameter():
    designs = designs_from_config(
        {
            "design": {"n_therapists": 5, "sessions": 8},
            "vary": {"parameter": "patients_per_therapist", "values": [4, 8]},
        }
    )
    assert list(designs) == ["patients_per_therapist-4", "patients_per_therapist-8"]
    assert designs["patients_per_therapist-8"].n_patients == 40
    assert designs["patients_per_therapist-4"].sessions == 8
    assert list(designs_from_config({"design": {}})) == ["design"]
    with pytest.raises(KeyError, match="`power.vary.parameter` must be one of"):
        designs_from_config({"vary": {"parameter": "patients", "values": [1]}})


def test_design_from_a_fitted_model_rescales_to_item_means():
    result = {
        "fixed": [
            {"term": "alliance_within_lag", "estimate": 0.2},
            {"term": "alliance_between", "estimate": 0.3},
        ],
        "icc": {"therapist": 0.05, "patient": 0.55},
        "residual_variance": 12.0,
    }
    design = design_from_model(
        result, base={"n_therapists": 8, "within_effect": 9.0, "feedback_effect": 0.3}
    )
    assert design.within_effect == pytest.approx(2.4)  # the model wins over base
    assert design.feedback_effect == 0.3  # the model has no feedback term: base supplies it
    assert design_from_model(result, within_effect=1.0).within_effect == 1.0  # overrides win
    assert design.between_effect == pytest.approx(3.6)
    assert (design.icc_therapist, design.icc_patient) == (0.05, 0.55)
    assert design.outcome_variance == pytest.approx(30.0)
    assert design.n_therapists == 8


def test_varied_parameter_wins_over_the_fitted_model(tmp_path):
    import json

    result = {
        "fixed": [{"term": "alliance_within_lag", "estimate": 0.1}],
        "icc": {"therapist": 0.05, "patient": 0.55},
        "residual_variance": 12.0,
    }
    fitted = tmp_path / "model.json"
    fitted.write_text(json.dumps(result))
    base = {"n_therapists": 2, "patients_per_therapist": 3, "sessions": 4, "feedback_effect": 0.3}
    truths = {}
    for param, value in (("within_effect", 1.0), ("within_effect", 3.0), ("icc_patient", 0.3)):
        out = tmp_path / f"{param}-{value}.csv"
        power_chunk_stage(
            design={**base, param: value},
            seeds=[1],
            label="d",
            fitted=fitted,
            vary=param,
            output=out,
        )
        truths[(param, value)] = (
            pd.read_csv(out).set_index("term").loc["alliance_within_lag", "truth"]
        )
    # the varied effect is simulated and scored as the truth, not the model's 0.1 * 12 = 1.2
    assert truths[("within_effect", 1.0)] == 1.0 and truths[("within_effect", 3.0)] == 3.0
    assert truths[("icc_patient", 0.3)] == pytest.approx(1.2)  # not varied: the model supplies it
    # the same through design_from_model: overrides win, base does not
    assert design_from_model(result, base={"within_effect": 3.0}).within_effect == pytest.approx(
        1.2
    )
    plan = design_from_model(result, base=base, icc_patient=0.3, outcome_variance=50.0)
    assert (plan.icc_patient, plan.outcome_variance, plan.icc_therapist) == (0.3, 50.0, 0.05)
    with pytest.raises(
        KeyError, match="`vary` must name a parameter given in `design`; got 'icc_patient'"
    ):
        power_chunk_stage(
            design=base,
            seeds=[1],
            label="d",
            fitted=fitted,
            vary="icc_patient",
            output=tmp_path / "x.csv",
        )


def test_a_chunk_has_one_row_per_seed_and_term_with_consistent_flags():
    rows = run_power_chunk(SMALL, [11, 12], label="tiny")
    assert list(rows.columns) == [
        "analysis",
        "design",
        "seed",
        "term",
        "effect",
        "units",
        "truth",
        "estimate",
        "se",
        "ci_low",
        "ci_high",
        "p",
        "test",
        "alpha",
        "significant",
        "covered",
        "converged",
        "n_obs",
        "n_patients",
        "error",
    ]
    assert set(rows["analysis"]) == {"alliance_outcome"}
    assert list(rows["effect"][:2]) == ["within-patient alliance effect", "feedback × session"]
    assert list(rows["units"][:2]) == [
        "ORS points per WAI-SR item-mean point",
        "ORS points per session",
    ]
    assert set(rows["test"]) == {"Wald z (containment df)"}
    assert list(rows["seed"]) == [11, 11, 12, 12]
    assert list(rows["term"]) == ["alliance_within_lag", "session:feedback"] * 2
    assert list(rows["truth"]) == [2.0, 0.15, 2.0, 0.15]
    assert (rows["n_patients"] == 12).all()
    ok = rows[rows["error"] == ""]
    assert (ok["covered"] == ((ok["ci_low"] <= ok["truth"]) & (ok["truth"] <= ok["ci_high"]))).all()
    assert (ok["significant"] == (ok["p"] < 0.05)).all()
    np.testing.assert_allclose(
        ok["ci_high"] - ok["estimate"], 1.959963984540054 * ok["se"], rtol=1e-6
    )


def test_chunks_merge_to_the_same_result_as_one_run(tmp_path):
    seeds = replication_seeds(5, 4)
    whole = run_power_chunk(SMALL, seeds, label="d")
    parts = [
        run_power_chunk(SMALL, seeds[:3], label="d"),
        run_power_chunk(SMALL, seeds[3:], label="d"),
    ]
    pd.testing.assert_frame_equal(pd.concat(parts, ignore_index=True), whole)
    pd.testing.assert_frame_equal(summarise_power(parts), summarise_power(whole))
    summary = summarise_power(parts)
    assert list(summary["replications"]) == [4, 4]
    # through files, as the Snakemake jobs do
    paths = []
    for i, chunk in enumerate([seeds[:2], seeds[2:]]):
        paths.append(tmp_path / f"{i}.csv")
        power_chunk_stage(
            design=dataclasses.asdict(SMALL), seeds=chunk, label="d", output=paths[-1]
        )
    power_summary_stage(
        paths,
        designs={"d": dataclasses.asdict(SMALL)},
        csv=tmp_path / "p.csv",
        md=tmp_path / "p.md",
    )
    merged = pd.read_csv(tmp_path / "p.csv")
    assert list(merged["replications"]) == [4, 4]
    np.testing.assert_allclose(merged["mean_estimate"], summary["mean_estimate"], rtol=1e-9)
    np.testing.assert_allclose(merged["power"], summary["power"])
    assert list(merged["patients_per_therapist"]) == [4, 4]
    assert "| d " in (tmp_path / "p.md").read_text()
    with pytest.raises(ValueError, match="appears twice for design 'd'.*was a chunk merged twice"):
        summarise_power(parts + parts[:1])


def test_summary_formulas_on_hand_made_rows():
    rows = pd.DataFrame(
        {
            "design": "x",
            "seed": [1, 2, 3, 4],
            "term": "alliance_within_lag",
            "truth": 2.0,
            "estimate": [1.0, 2.0, 3.0, 9.0],
            "se": [0.5, 0.5, 0.5, 0.5],
            "p": [0.01, 0.2, 0.03, None],
            "significant": [True, False, True, False],
            "covered": [False, True, False, False],
            "converged": [True, True, True, False],
            "n_patients": 10,
        }
    )
    s = summarise_power(rows).iloc[0]
    assert (s["replications"], s["converged"]) == (4, 3)
    assert s["failure_rate"] == pytest.approx(0.25)
    assert s["mean_estimate"] == pytest.approx(2.0) and s["bias"] == pytest.approx(0.0)
    assert s["empirical_se"] == pytest.approx(1.0)
    # power over all 4 replications (the non-converged one counts as not significant) ...
    assert s["power"] == pytest.approx(2 / 4) and s["power_mcse"] == pytest.approx(
        math.sqrt(0.5 * 0.5 / 4)
    )
    # ... and over the 3 converged ones, kept under its own name
    assert s["power_converged"] == pytest.approx(2 / 3)
    assert s["power_converged_mcse"] == pytest.approx(math.sqrt(2 / 9 / 3))
    assert s["coverage"] == pytest.approx(1 / 3)


def test_a_failed_fit_counts_against_power(tmp_path):
    # the row shape run_power_chunk writes when a fit raises: no estimate, p or flags
    rows = pd.DataFrame(
        {
            "design": "x",
            "seed": [1, 2, 3, 4, 5],
            "term": "session:feedback",
            "truth": 0.15,
            "estimate": [0.2, 0.3, 0.25, 0.1, np.nan],
            "se": [0.05] * 4 + [np.nan],
            "ci_low": [0.1, 0.2, 0.15, 0.0, np.nan],
            "ci_high": [0.3, 0.4, 0.35, 0.2, np.nan],
            "p": [0.001, 0.001, 0.001, 0.04, np.nan],
            "significant": [True, True, True, True, np.nan],
            "covered": [True, False, True, True, np.nan],
            "converged": [True, True, True, True, False],
            "n_obs": [60] * 4 + [np.nan],
            "n_patients": 12,
            "error": ["", "", "", "", "Singular matrix"],
        }
    )
    s = summarise_power(rows).iloc[0]
    assert s["power"] == pytest.approx(4 / 5)  # not 1.0: the failed replication is not a success
    assert s["power_converged"] == pytest.approx(1.0)
    assert s["failure_rate"] == pytest.approx(0.2)
    assert s["coverage"] == pytest.approx(3 / 4)
    # through a CSV as the pipeline writes it, and into the Markdown table
    rows.to_csv(tmp_path / "c.csv", index=False)
    power_summary_stage(
        [tmp_path / "c.csv"], designs={}, csv=tmp_path / "p.csv", md=tmp_path / "p.md"
    )
    merged = pd.read_csv(tmp_path / "p.csv").iloc[0]
    assert (merged["power"], merged["power_converged"], merged["failure_rate"]) == pytest.approx(
        (0.8, 1.0, 0.2)
    )
    md = (tmp_path / "p.md").read_text()
    header, _, row = [
        [c.strip() for c in line.strip("|").split("|")] for line in md.splitlines()[2:5]
    ]
    shown = dict(zip(header, row))
    assert (
        shown["Converged"],
        shown["Failed (%)"],
        shown["Power"],
        shown["Power (converged)"],
    ) == ("4/5", "20.0", "0.80 (0.18)", "1.00 (0.00)")


@pytest.mark.slow
def test_power_rises_with_the_number_of_patients():
    seeds = replication_seeds(2026, 20)
    small = run_power_chunk(
        PowerDesign(n_therapists=4, patients_per_therapist=4, sessions=8, within_effect=1.5),
        seeds,
        label="small",
    )
    large = run_power_chunk(
        PowerDesign(n_therapists=12, patients_per_therapist=8, sessions=8, within_effect=1.5),
        seeds,
        label="large",
    )
    summary = summarise_power([small, large]).set_index(["design", "term"])
    p_small = summary.loc[("small", "alliance_within_lag"), "power"]
    p_large = summary.loc[("large", "alliance_within_lag"), "power"]
    assert p_large > p_small + 0.2, (p_small, p_large)
    # the simulated power agrees with the Wald approximation from the model SEs,
    # Φ(|β|/SE − 1.96) + Φ(−|β|/SE − 1.96), within 3 Monte Carlo SEs of 20 replications
    # (about .75 here; 60 replications gave .67 with either patient-slope structure)
    row = summary.loc[("large", "alliance_within_lag")]
    z = abs(row["truth"]) / row["mean_se"]
    approx = stats.norm.cdf(z - 1.96) + stats.norm.cdf(-z - 1.96)
    assert abs(p_large - approx) < 3 * math.sqrt(approx * (1 - approx) / 20), (p_large, approx)
    se_small = summary.loc[("small", "alliance_within_lag"), "empirical_se"]
    se_large = summary.loc[("large", "alliance_within_lag"), "empirical_se"]
    assert se_large < se_small  # more patients, more precise


@pytest.mark.slow
def test_intervals_cover_the_truth_about_95_percent_of_the_time():
    rows = run_power_chunk(
        PowerDesign(n_therapists=6, patients_per_therapist=6, sessions=8),
        replication_seeds(7, 40),
        label="c",
    )
    summary = summarise_power(rows).set_index("term")
    for term in ("alliance_within_lag", "session:feedback"):
        s = summary.loc[term]
        assert s["converged"] >= 36
        # 40 replications: a 95% interval covers with SD ~3.5%; 0.85 is about 3 SD below
        assert 0.85 <= s["coverage"] <= 1.0, (term, s["coverage"])
        assert abs(s["bias"]) < 3 * s["empirical_se"] / math.sqrt(s["converged"]) + 0.1 * abs(
            s["truth"]
        )


def test_power_curve_draws_one_line_per_effect():
    summary = pd.DataFrame(
        {
            "term": [
                "alliance_within_lag",
                "alliance_within_lag",
                "session:feedback",
                "session:feedback",
            ],
            "n_patients": [50, 100, 50, 100],
            "power": [0.5, 0.8, 0.1, 0.2],
            "power_mcse": [0.05, 0.04, 0.03, 0.04],
        }
    )
    fig = plot_power_curve(summary)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "within-patient alliance effect",
        "feedback × session",
    ]
    with pytest.raises(KeyError, match="`x` must be a column of `summary`; got 'sessions'"):
        plot_power_curve(summary, x="sessions")


# --------------------------------------------------------------------------- binary presets


def test_binary_power_rows_carry_the_glmm_term_and_its_truth(caplog):
    design = PowerDesign(n_therapists=10, patients_per_therapist=10, sessions=10)
    seeds = replication_seeds(3, 2)
    with caplog.at_level(logging.INFO, logger="allianceflow"):
        rows = run_binary_power_chunk(design, seeds, preset="dropout", label="small")
    assert rows["term"].tolist() == ["early_alliance", "early_alliance"]
    assert rows["truth"].tolist() == [EXAMPLE_DESIGN.dropout_alliance_effect] * 2
    assert rows["n_obs"].tolist() == [100, 100]  # one row per patient
    ok = rows["converged"]
    assert (rows.loc[ok, "covered"] == (rows.ci_low <= -1.0) & (rows.ci_high >= -1.0))[ok].all()
    # the progress display: one logged line per replication
    assert [r.getMessage() for r in caplog.records if r.name == "allianceflow"] == [
        f"power small: replication 1 of 2 (seed {seeds[0]})",
        f"power small: replication 2 of 2 (seed {seeds[1]})",
    ]
    summary = summarise_power(rows)
    assert summary.loc[0, "replications"] == 2 and summary.loc[0, "term"] == "early_alliance"


def test_simulated_patients_carry_the_binary_outcomes():
    design = PowerDesign(n_therapists=5, patients_per_therapist=8, sessions=8)
    patients = simulate_patients(design, seed=4)
    assert len(patients) == 40
    assert set(patients["dropout"].dropna().unique()) <= {0.0, 1.0}
    assert patients["early_alliance_n"].between(1, 3).all()
    assert patients["early_alliance"].between(1, 5).all()  # WAI-SR item mean


def test_binary_power_refuses_an_unknown_preset():
    with pytest.raises(
        ValueError, match=r"`preset` must be 'deterioration' or 'dropout'; got 'attendance'."
    ):
        run_binary_power_chunk(PowerDesign(), [1], preset="attendance")
