"""Power for the binary presets and the moderator, as the pipeline runs it.

Power, bias and coverage of tiny designs whose answer is known (a huge effect: power 1;
no effect: rejections near α), the config's power block (schema and cross-key checks), a
real Snakemake run of the power rules, and a moderated model where a formula is needed
without its data (pooling, planning from a fitted study, the trajectory figure).
"""

import copy
import json
import math
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml

from allianceflow.config import ConfigError, validate_config
from allianceflow.power import (
    PowerDesign,
    check_power_config,
    design_from_model,
    power_markdown,
    replication_seeds,
    run_analysis_chunk,
    summarise_power,
)

SCHEMA = "workflow/schemas/config.schema.yaml"


def _within_mc_error(share, expected, n):
    """|share − expected| is at most 3 Monte Carlo SEs of a share *expected* of *n*."""
    return abs(share - expected) <= 3 * math.sqrt(expected * (1 - expected) / n)


def _summary(analysis, design, n, **settings):
    rows = run_analysis_chunk(analysis, design, replication_seeds(19, n), label="tiny", **settings)
    return rows, summarise_power(rows)


# --------------------------------------------------------------------------- binary presets


@pytest.mark.slow
def test_a_huge_dropout_effect_has_power_one_and_its_intervals_cover():
    # early alliance on early ending: log odds -4 per WAI-SR item-mean point, 80 patients
    design = PowerDesign(
        n_therapists=5,
        patients_per_therapist=16,
        sessions=8,
        dropout_alliance_effect=-4.0,
        dropout_hazard=0.1,
    )
    rows, summary = _summary("dropout", design, 6)
    s = summary.iloc[0]
    assert (s["analysis"], s["term"], s["truth"]) == ("dropout", "early_alliance", -4.0)
    assert (s["effect"], s["units"]) == (
        "early alliance on early ending",
        "log odds ratio per WAI-SR item-mean point",
    )
    assert s["test"] == "Wald z (Laplace GLMM, as glmer)"
    assert (s["replications"], s["converged"]) == (6, 6)
    assert (s["power"], s["power_mcse"]) == (1.0, 0.0)  # every replication p < .05
    assert _within_mc_error(s["coverage"], 0.95, 6)
    assert s["coverage_mcse"] == pytest.approx(math.sqrt(s["coverage"] * (1 - s["coverage"]) / 6))
    assert (rows["n_obs"] == 80).all()  # one row per patient


@pytest.mark.slow
def test_no_deterioration_effect_rejects_at_about_alpha():
    # no feedback effect on deterioration episodes: reliable deterioration has no arm
    # difference, so the true log odds ratio of the measured outcome is exactly 0
    design = PowerDesign(
        n_therapists=5,
        patients_per_therapist=16,
        sessions=8,
        feedback_deterioration_effect=0.0,
        deterioration_share=0.3,
    )
    rows, summary = _summary("deterioration", design, 20, rci=5.0)
    s = summary.iloc[0]
    assert (s["term"], s["truth"], s["replications"]) == ("feedback", 0.0, 20)
    assert s["failure_rate"] == 0.0
    assert _within_mc_error(s["power"], 0.05, 20)  # rejection rate: alpha within 3 MC SEs
    assert s["power_mcse"] == pytest.approx(math.sqrt(s["power"] * (1 - s["power"]) / 20))
    assert _within_mc_error(s["coverage"], 0.95, 20)
    # unbiased under the null: the mean estimate is within 3 SEs of its mean from 0
    assert abs(s["bias"]) <= 3 * s["empirical_se"] / math.sqrt(20)


# --------------------------------------------------------------------------- the moderator

SMALL = PowerDesign(n_therapists=4, patients_per_therapist=8, sessions=8)


@pytest.mark.slow
def test_a_huge_moderation_has_power_one_and_its_intervals_cover():
    # video sessions: within-patient effect -6 instead of 2, a slope difference of -8
    modality = {"shares": {"in_person": 0.5, "video": 0.5}, "within_effect": {"video": -6.0}}
    rows, summary = _summary("moderation", SMALL, 6, modality=modality)
    s = summary.iloc[0]
    assert (s["analysis"], s["term"], s["truth"]) == (
        "moderation",
        "alliance_within_lag:modality_video",
        -8.0,
    )
    assert s["effect"] == "within-patient alliance effect, video minus in person sessions"
    assert s["units"] == "ORS points per WAI-SR item-mean point (difference of slopes)"
    assert s["test"] == "Wald z (containment df)"
    assert (s["power"], s["power_mcse"], s["converged"]) == (1.0, 0.0, 6)
    assert _within_mc_error(s["coverage"], 0.95, 6)
    assert abs(s["bias"]) <= 3 * s["empirical_se"] / math.sqrt(6) + 0.1 * 8


@pytest.mark.slow
def test_no_moderation_rejects_at_about_alpha():
    modality = {"shares": {"in_person": 0.5, "video": 0.5}, "within_effect": {}}
    _, summary = _summary("moderation", SMALL, 20, modality=modality)
    s = summary.iloc[0]
    assert (s["truth"], s["replications"], s["converged"]) == (0.0, 20, 20)
    assert _within_mc_error(s["power"], 0.05, 20)
    assert _within_mc_error(s["coverage"], 0.95, 20)
    assert abs(s["bias"]) <= 3 * s["empirical_se"] / math.sqrt(20)


def test_a_separated_replication_counts_as_failed_not_as_a_failed_job():
    # 30 patients in 3 therapists: in this replication the outcome is separated by the
    # predictors, so the GLMM has no finite estimate; the chunk keeps going and the row
    # says why
    rows = run_analysis_chunk(
        "deterioration", {"n_therapists": 3, "sessions": 6}, [86683157], label="design"
    )
    assert len(rows) == 1 and rows["term"].iloc[0] == "feedback"
    assert not rows["converged"].iloc[0]
    assert rows["error"].iloc[0] == (
        "`formula` 'deteriorated ~ feedback + outcome_baseline + (1 | therapist)': the "
        "binomial likelihood of these 30 rows has no finite maximum in the fixed effects (a "
        "direction of the fixed effects classifies every row without error; Konis 2007). This "
        "is complete or quasi-complete separation: a predictor, or a combination of "
        "predictors, predicts the outcome perfectly in part of the data. Cross-tabulate the "
        "outcome with each predictor, then drop or merge the predictor (or categories) at "
        "fault."
    )
    s = summarise_power(rows).iloc[0]
    assert (s["power"], s["failure_rate"], s["converged"]) == (0.0, 1.0, 0)


def test_the_moderation_analysis_can_use_the_pipelines_kenward_roger_test():
    modality = {"shares": {"in_person": 0.5, "video": 0.5}, "within_effect": {"video": 0.0}}
    design = PowerDesign(n_therapists=3, patients_per_therapist=4, sessions=6)
    kr = run_analysis_chunk("moderation", design, [5], modality=modality, ddf="kenward-roger")
    z = run_analysis_chunk("moderation", design, [5], modality=modality)
    assert kr["test"].tolist() == ["t on Kenward–Roger df"]
    assert z["test"].tolist() == ["Wald z (containment df)"]
    assert kr["estimate"].iloc[0] == pytest.approx(z["estimate"].iloc[0], rel=1e-9)
    # the t interval on finite df is wider than the z interval
    assert (kr["ci_high"] - kr["ci_low"]).iloc[0] > (z["ci_high"] - z["ci_low"]).iloc[0]
    md = power_markdown(summarise_power(pd.concat([kr.assign(design="kr"), z])))
    assert "Kenward–Roger df by default (`models.<name>.ddf`)" in md
    assert re.search(r"\| t on Kenward–Roger df +\|", md)
    assert re.search(r"\| Wald z \(containment df\) +\|", md)


@pytest.mark.parametrize(
    "analysis, settings, error, message",
    [
        (
            "attendance",
            {},
            ValueError,
            "`analysis` must be one of 'alliance_outcome', 'deterioration', 'dropout', "
            "'moderation'; got 'attendance'.",
        ),
        (
            "moderation",
            {},
            ValueError,
            r"`modality` must be given for the 'moderation' analysis \(config "
            r"`power.moderation`",
        ),
        (
            "alliance_outcome",
            {"ddf": "z"},
            ValueError,
            "`ddf` must be 'containment', 'satterthwaite' or 'kenward-roger'; got 'z'.",
        ),
        ("dropout", {"alpha": 1.5}, ValueError, r"`alpha` must lie in \(0, 1\); got 1.5."),
    ],
)
def test_a_chunk_refuses_bad_settings(analysis, settings, error, message):
    with pytest.raises(error, match=message):
        run_analysis_chunk(analysis, PowerDesign(), [1], **settings)


def test_the_power_curve_speaks_in_words():
    from allianceflow.power import plot_power_curve

    rows = []
    for n, p in ((5, 0.3), (10, 0.6)):
        rows.append(
            {
                "analysis": "alliance_outcome",
                "term": "alliance_within_lag",
                "effect": "within-patient alliance effect",
                "units": "ORS points per WAI-SR item-mean point",
                "truth": 2.0,
                "alpha": 0.05,
                "patients_per_therapist": n,
                "power": p,
                "power_mcse": 0.05,
            }
        )
        for level in ("telephone", "video"):
            rows.append(
                {
                    **rows[0],
                    "analysis": "moderation",
                    "term": f"alliance_within_lag:modality_{level}",
                    "effect": f"within-patient alliance effect, {level} minus in person sessions",
                    "truth": -1.5 if level == "video" else float(n),  # varies: no size shown
                    "patients_per_therapist": n,
                    "power": p / 2,
                }
            )
    fig = plot_power_curve(pd.DataFrame(rows), x="patients_per_therapist")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "within-patient alliance effect (2 ORS points per WAI-SR item-mean point)",
        "within-patient alliance effect, telephone minus in person sessions",
        "within-patient alliance effect, video minus in person sessions "
        "(-1.5 ORS points per WAI-SR item-mean point)",
    ]
    assert ax.get_xlabel() == "patients per therapist"
    assert ax.get_ylabel() == "power (p < .05)"


# --------------------------------------------------------------------------- the config


@pytest.fixture
def config(root):
    return yaml.safe_load((root / "config.yaml").read_text())


@pytest.fixture
def schema(root):
    return yaml.safe_load((root / SCHEMA).read_text())


def test_the_power_block_fills_its_defaults(config, schema):
    power = validate_config(config, schema)["power"]
    assert power["enabled"] is False  # the example pipeline's budget: power is opt-in
    assert power["analyses"] == ["alliance_outcome"]
    assert (power["ddf"], power["rci"]) == ("containment", 5.0)
    assert power["moderation"] == {
        "shares": {"in_person": 0.6, "video": 0.3, "telephone": 0.1},
        "within_effect": {"video": -0.4},
    }
    asked = copy.deepcopy(config)
    asked["power"].update(
        enabled=True,
        analyses=["deterioration", "dropout", "moderation"],
        design={"early_sessions": 2, "feedback_deterioration_effect": -0.8},
    )
    power = validate_config(asked, schema)["power"]
    designs = check_power_config(power)
    assert list(designs) == ["patients_per_therapist-5", "patients_per_therapist-10"] + [
        "patients_per_therapist-20"
    ]
    assert designs["patients_per_therapist-5"].feedback_deterioration_effect == -0.8


@pytest.mark.parametrize(
    "key, value, message",
    [
        (
            "analyses",
            ["attendance"],
            "`power.analyses.0` is 'attendance'; allowed values are 'alliance_outcome', "
            "'deterioration', 'dropout', 'moderation'.",
        ),
        ("analyses", [], r"`power.analyses`: \[\] should be non-empty."),
        (
            "analyses",
            ["dropout", "dropout"],
            r"`power.analyses`: \['dropout', 'dropout'\] has non-unique elements.",
        ),
        (
            "ddf",
            "z",
            "`power.ddf` is 'z'; allowed values are 'containment', 'satterthwaite', "
            "'kenward-roger'.",
        ),
        ("rci", 0, "`power.rci`: 0 is less than or equal to the minimum of 0."),
        (
            "moderation",
            {"shares": {"in_person": 1.0}},
            r"`power.moderation.shares`: \{'in_person': 1.0\} does not have enough properties.",
        ),
        (
            "moderation",
            {"levels": ["a", "b"]},
            r"`power.moderation`: Additional properties are not allowed \('levels' was "
            r"unexpected\). Allowed keys are shares, within_effect.",
        ),
        (
            "design",
            {"deterioration_share": 1.5},
            "`power.design.deterioration_share`: 1.5 is greater than the maximum of 1.",
        ),
    ],
)
def test_the_schema_refuses_a_bad_power_block(config, schema, key, value, message):
    bad = copy.deepcopy(config)
    bad["power"][key] = value
    with pytest.raises(ConfigError, match="^config.yaml: " + message + "$"):
        validate_config(bad, schema)


@pytest.mark.parametrize(
    "power, message",
    [
        (
            {
                "analyses": ["moderation"],
                "moderation": {"shares": {"in_person": 0.5, "video": 0.4}},
            },
            r"config.yaml: `power.moderation.shares` is \{'in_person': 0.5, 'video': 0.4\}; the "
            r"moderation analysis needs two or more session modalities \(the reference first\) "
            r"with shares that sum to 1, e.g. \{in_person: 0.6, video: 0.4\}.",
        ),
        (
            {
                "analyses": ["moderation"],
                "moderation": {
                    "shares": {"in_person": 0.5, "video": 0.5},
                    "within_effect": {"phone": 1},
                },
            },
            r"config.yaml: `power.moderation.within_effect` names \['phone'\], which "
            r"`power.moderation.shares` does not list \(\['in_person', 'video'\]\); give effects "
            r"only for listed modalities \(a modality left out has `power.design.within_effect`\).",
        ),
        (
            {"design": {"sessions": 3, "early_sessions": 3}},
            r"config.yaml: `power.design` is not a valid design: `early_sessions` must be a whole "
            r"number from 1 to `sessions` - 1 \(2\); got 3.",
        ),
    ],
)
def test_cross_key_checks_of_the_power_block(power, message):
    with pytest.raises(ConfigError, match="^" + message + "$"):
        check_power_config(power)


# --------------------------------------------------------------------------- Snakemake


def _snakemake(workdir, *args):
    run = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "1", *args],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return run.stdout + run.stderr


@pytest.mark.e2e
@pytest.mark.slow
def test_the_power_rules_run_every_analysis_and_rerun_only_what_changed(tmp_path, copy_project):
    workdir = copy_project(tmp_path / "project", small=True)
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    config["power"].update(
        enabled=True,
        analyses=["alliance_outcome", "deterioration", "dropout", "moderation"],
        design={"n_therapists": 3, "sessions": 6},
        vary=None,
        replications=2,
        chunk_size=2,
        moderation={"shares": {"in_person": 0.5, "video": 0.5}, "within_effect": {"video": 0.5}},
    )
    (workdir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    target = "results/power/figures/power_curve.png"
    plan = _snakemake(workdir, target, "--dry-run")
    # one job per analysis x design x chunk (4 x 1 x 1), the summary and the curve
    assert re.search(r"\nsimulate_power_chunk +4\n", plan) and re.search(r"\ntotal +6\n", plan)
    _snakemake(workdir, target)
    summary = pd.read_csv(workdir / "results/power/tables/power.csv")
    assert summary[["analysis", "term"]].values.tolist() == [
        ["alliance_outcome", "alliance_within_lag"],
        ["alliance_outcome", "session:feedback"],
        ["deterioration", "feedback"],
        ["dropout", "early_alliance"],
        ["moderation", "alliance_within_lag:modality_video"],
    ]
    assert (summary["replications"] == 2).all() and (summary["n_patients"] == 30).all()
    assert summary["truth"].tolist() == [2.0, 0.15, -1.2, -1.0, -1.5]
    md = (workdir / "results/power/tables/power.md").read_text()
    assert re.search(
        r"\| early alliance on early ending +\| log odds ratio per WAI-SR item-mean", md
    )
    assert "Kenward–Roger df by default" in md and "Wald z on the Laplace likelihood" in md
    log = (workdir / "logs/power/moderation/design/simulate_power_chunk_0.log").read_text()
    assert "power design: replication 1 of 2 (seed " in log
    assert "power design: replication 2 of 2 (seed " in log
    assert (workdir / "results/power/figures/power_curve.svg").stat().st_size > 0
    # each chunk gets only its analysis's settings: a new rci reruns only deterioration
    config["power"]["rci"] = 6.0
    (workdir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    plan = _snakemake(workdir, target, "--dry-run", "--rerun-triggers", "params")
    assert re.findall(r"output: (results/power/chunks/\S+)", plan) == [
        "results/power/chunks/deterioration/design/0.csv"
    ]


# --------------------------------------------------------------------------- moderated models


MODALITY = {"shares": {"in_person": 0.5, "video": 0.5}, "within_effect": {"video": 0.5}}
MODERATED = {"preset": "alliance_outcome", "options": {"moderator": "modality"}}


def _moderated_study(seed):
    from allianceflow.power import simulate_power_data

    design = PowerDesign(n_therapists=3, patients_per_therapist=6, sessions=6)
    return simulate_power_data(design, seed=seed, modality=MODALITY)


def test_a_moderated_model_has_no_formula_without_its_data():
    from allianceflow.stages import model_formula, one_stage_spec

    # before: preset_formula without levels wrote a continuous, patient-level moderator
    # (modality_c, no within/between split), a formula for columns that do not exist
    with pytest.raises(
        ValueError,
        match=r"is moderated by 'modality', and its formula depends on the data \(the "
        r"moderator's levels and whether it varies within patients\); build it with "
        r"allianceflow.models.moderation.moderated_formula\(data, preset, options\).",
    ):
        model_formula(MODERATED)
    assert one_stage_spec(MODERATED) == {"formula": None, "moderation": MODERATED}
    plain = {"preset": "alliance_outcome"}
    assert one_stage_spec(plain) == {"formula": model_formula(plain), "moderation": None}


@pytest.mark.slow
def test_a_moderated_pool_model_gets_its_moderated_formula_and_says_what_it_pools(tmp_path):
    from allianceflow.models.moderation import fit_moderated
    from allianceflow.stages import one_stage_spec, pool_stage

    tables = {"a": _moderated_study(1), "b": _moderated_study(2)}
    paths = {}
    for name, table in tables.items():
        _, record = fit_moderated(table, "alliance_outcome", {"moderator": "modality"})
        paths[name] = tmp_path / f"{name}.json"
        paths[name].write_text(json.dumps(record))
        table.to_csv(tmp_path / f"{name}.csv", index=False)
    out = {
        "meta_json": tmp_path / "meta.json",
        "table_csv": tmp_path / "meta.csv",
        "table_md": tmp_path / "meta.md",
        "one_stage_json": tmp_path / "one.json",
        "comparison_csv": tmp_path / "cmp.csv",
    }
    pool_stage(
        models=paths,
        analyses={n: tmp_path / f"{n}.csv" for n in tables},
        directions={},
        **one_stage_spec(MODERATED),
        method="dl",
        hksj=False,
        **out,
    )
    one = json.loads(out["one_stage_json"].read_text())
    terms = [row["term"] for row in one["fixed"]]
    assert "alliance_within_lag:modality_video" in terms  # the session-level split ...
    assert "modality_video_within" in terms and "modality_video_between" in terms
    assert not any("modality_c" in t for t in terms)  # ... not a continuous moderator
    assert one["moderation"]["levels"] == ["in_person", "video"]
    assert one["formula"].endswith("+ (1 | study)")
    title = out["table_md"].read_text().splitlines()[2].lower()  # APA title case
    assert title.endswith("alliance–outcome association at the reference modality (in person)*")
    # studies whose reference levels differ pool different slopes: refused
    record = json.loads(paths["b"].read_text())
    record["moderation"]["levels"] = ["video", "in_person"]
    paths["b"].write_text(json.dumps(record))
    with pytest.raises(ValueError, match="differ between the studies"):
        pool_stage(
            models=paths,
            analyses={},
            directions={},
            **one_stage_spec(MODERATED),
            one_stage=False,
            **out,
        )


def test_planning_from_a_moderated_pool_model_is_refused_before_any_job():
    spec = {"preset": "alliance_outcome", "options": {"moderator": "modality"}}
    with pytest.raises(
        ConfigError,
        match=r"^config.yaml: `power.from_study` plans from the fitted `pool.model` "
        r"\('ao_modality'\), which is moderated by 'modality'",
    ):
        check_power_config({"from_study": "example"}, pool_model=("ao_modality", spec))
    assert list(check_power_config({"from_study": None}, pool_model=("m", spec))) == ["design"]


def test_planning_from_a_moderated_model_is_refused():
    result = {
        "fixed": [{"term": "alliance_within_lag", "estimate": 0.2}],
        "icc": {"therapist": 0.05, "patient": 0.5},
        "residual_variance": 10.0,
        "moderation": {"moderator": "modality", "levels": ["in_person", "video"]},
    }
    with pytest.raises(
        ValueError,
        match=r"`result` is a moderated model \(moderator 'modality'\): its alliance_within_lag "
        r"is the slope at the moderator's reference level",
    ):
        design_from_model(result)


def test_a_moderated_trajectory_model_draws_the_mean_at_the_moderators_mean(tmp_path):
    from allianceflow.figures import model_implied_mean
    from allianceflow.models.moderation import fit_moderated
    from allianceflow.stages import trajectories_figure_stage

    data = _moderated_study(3)
    _, record = fit_moderated(data, "alliance_outcome", {"moderator": "modality"})
    grid = pd.DataFrame({"session": np.arange(1.0, 7.0)})
    fixed = {row["term"]: row["estimate"] for row in record["fixed"]}
    # the moderator's within and between parts are centred: 0 is a patient at the mean
    # share of video sessions, so the line is intercept + slope x session
    np.testing.assert_allclose(
        model_implied_mean(record, grid)["mean"],
        fixed["Intercept"] + fixed["session"] * grid["session"],
        rtol=1e-12,
    )
    model = tmp_path / "m.json"
    model.write_text(json.dumps(record))
    data.to_csv(tmp_path / "a.csv", index=False)
    outputs = [tmp_path / "t.png"]
    trajectories_figure_stage(analysis=tmp_path / "a.csv", model=model, outputs=outputs)
    assert outputs[0].stat().st_size > 0
