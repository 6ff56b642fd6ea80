"""Moderators of the alliance-outcome link: columns, formulas, simple slopes, recovery."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from allianceflow.models import preset_formula
from allianceflow.models.moderation import (
    ModeratorInfo,
    fit_moderated,
    moderation_notes,
    moderator_variables,
    simple_slopes,
)
from allianceflow.score import score_sessions
from allianceflow.simulate import simulate_study

TRUTH = {"in_person": 2.0, "video": 0.5, "telephone": 1.0}


def test_preset_writes_split_and_interactions_for_a_session_level_moderator():
    formula = preset_formula(
        "alliance_outcome",
        therapist=False,
        moderator="modality",
        moderator_levels=["in_person", "video"],
        moderator_within=True,
    )
    assert formula == (
        "outcome ~ alliance_within_lag + alliance_between + session + modality_video_within"
        " + modality_video_between + alliance_within_lag:modality_video"
        " + alliance_within_lag:modality_video_between + alliance_between:modality_video_between"
        " + (1 + session | patient)"
    )


def test_components_and_informants_presets_take_a_moderator():
    comp = preset_formula(
        "alliance_components", components=["bond"], therapist=False, moderator="age"
    )
    assert comp == (
        "outcome ~ alliance_bond_within_lag + alliance_bond_between + session + age_c"
        " + alliance_bond_within_lag:age_c + alliance_bond_between:age_c + (1 + session | patient)"
    )
    inf = preset_formula("informants", informants=["patient"], therapist=False, moderator="age")
    assert "alliance_rater_patient_within_lag:age_c" in inf
    assert "alliance_rater_patient_between:age_c" in inf


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"moderator": 3}, r"`moderator` must be a column name; got 3\."),
        (
            {"moderator": "m", "moderator_levels": ["a"]},
            r"`moderator_levels` must list at least two levels \(the reference first\); "
            r"got \['a'\]\.",
        ),
        (
            {"moderator": "m", "moderator_within": "yes"},
            r"`moderator_within` must be False or True; got 'yes'\.",
        ),
    ],
)
def test_bad_moderator_options_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        preset_formula("alliance_outcome", **options)


def test_growth_has_no_moderator_option():
    with pytest.raises(ValueError, match=r"preset 'growth' has no option 'moderator'"):
        preset_formula("growth", moderator="modality")


def test_moderator_variables_hand_computed():
    d = pd.DataFrame(
        {
            "patient": ["a", "a", "a", "b", "b"],
            "score": [1.0, 2.0, 3.0, 6.0, 6.0],
        }
    )
    out, info = moderator_variables(d, "score")
    # patient means 2 and 6, grand mean 4; session SD of [1, 2, 3, 6, 6]
    assert info.kind == "continuous" and info.within and info.n_patients_varying == 1
    assert info.mean == 4.0
    assert info.sd == pytest.approx(np.std([1, 2, 3, 6, 6], ddof=1))
    assert out["score_c"].tolist() == [-3.0, -2.0, -1.0, 2.0, 2.0]
    assert out["score_c_within"].tolist() == [-1.0, 0.0, 1.0, 0.0, 0.0]
    assert out["score_c_between"].tolist() == [-2.0, -2.0, -2.0, 2.0, 2.0]


def test_patient_level_moderator_is_not_split_and_within_false_is_checked():
    d = pd.DataFrame({"patient": ["a", "a", "b"], "group": ["x", "x", "y"]})
    out, info = moderator_variables(d, "group")
    assert (info.within, info.levels, info.counts) == (False, ("x", "y"), {"x": 2, "y": 1})
    assert "group_y_within" not in out
    varying = pd.DataFrame({"patient": ["a", "a"], "group": ["x", "y"]})
    with pytest.raises(ValueError, match=r"`within` is False but moderator 'group' varies"):
        moderator_variables(varying, "group", within=False)
    with pytest.raises(ValueError, match=r"not among `moderator_levels` \['x', 'z'\]"):
        moderator_variables(d, "group", levels=["x", "z"])


def test_simple_slopes_match_the_hand_formula():
    record = {
        "fixed": [
            {"term": "aw", "estimate": 2.0},
            {"term": "aw:m_c", "estimate": -0.5},
        ],
        "vcov_fixed": {"terms": ["aw", "aw:m_c"], "matrix": [[0.04, -0.01], [-0.01, 0.09]]},
    }
    info = ModeratorInfo("m", "continuous", None, False, mean=10.0, sd=2.0)
    out = simple_slopes(record, info)
    assert out["level"].tolist() == ["-1 SD", "mean", "+1 SD"]
    assert out["value"].tolist() == [8.0, 10.0, 12.0]
    assert out["slope"].tolist() == pytest.approx([3.0, 2.0, 1.0])
    # Var = .04 + 4 * .09 + 2 * (+-2) * (-.01): .44 at -1 SD, .04 at the mean, .36 at +1 SD
    assert out["se"].tolist() == pytest.approx([math.sqrt(0.44), 0.2, math.sqrt(0.36)])
    assert out.loc[1, "ci_low"] == pytest.approx(2.0 - 1.959963985 * 0.2)


def test_notes_state_both_cautions():
    info = ModeratorInfo("modality", "categorical", ("a", "b"), True, n_patients_varying=4)
    notes = moderation_notes(info)
    assert notes[0].startswith("Tests of interactions have low power")
    assert "varies within 4 patient(s)" in notes[1]
    assert "Enders & Tofighi 2007; Hoffman & Stawski 2009" in notes[1]


def test_simulated_moderation_by_modality_is_recovered():
    """Simulated weaker within-patient link in video and telephone sessions, recovered.

    A moderately sized study (300 patients of 30 therapists, up to 12 sessions); the
    moderated preset with random intercepts is the generating model, so each level's 95%
    interval should hold its true within-patient effect.
    """
    df = simulate_study(
        seed=2205,
        n_patients=300,
        n_therapists=30,
        max_sessions=12,
        outcome_sd_slope=0.0,
        alliance_sd_slope=0.0,
        modality={
            "shares": {"in_person": 0.5, "video": 0.3, "telephone": 0.2},
            "within_effect": {"video": TRUTH["video"], "telephone": TRUTH["telephone"]},
        },
    )
    scored = score_sessions(df, {"wai_sr": {"max_missing": 1}, "ors": None})
    from allianceflow.derive import derive_analysis

    data = derive_analysis(scored, alliance="wai_sr_total", outcome="ors_total")
    data["alliance_within_lag"] = data["alliance_within_lag"] / 12  # item-mean points
    data["alliance_between"] = data["alliance_between"] / 12
    result, record = fit_moderated(
        data,
        "alliance_outcome",
        {"moderator": "modality", "random": "(1 | therapist) + (1 | patient)"},
        ddf="containment",
    )
    assert record["moderation"]["levels"] == ["in_person", "video", "telephone"]
    assert record["moderation"]["within"] is True
    slopes = {
        row["level"]: row for row in record["simple_slopes"] if row["term"] == "alliance_within_lag"
    }
    assert list(slopes) == ["in_person", "video", "telephone"]
    for level, truth in TRUTH.items():
        assert slopes[level]["ci_low"] < truth < slopes[level]["ci_high"], (level, slopes[level])
    # the video interaction is the difference of the two slopes
    fixed = {r["term"]: r["estimate"] for r in record["fixed"]}
    assert fixed["alliance_within_lag:modality_video"] == pytest.approx(
        slopes["video"]["slope"] - slopes["in_person"]["slope"]
    )
    assert any("low power" in note for note in record["notes"])


def _clean(tmp_path, referral_b=("GP", "GP")):
    from allianceflow import io
    from allianceflow.clean import clean_sessions
    from allianceflow.config import flat_study, group_study, validate_config

    rows = [
        ("P1", "T1", 1, "In person", "self", [5, 6, 7, 8]),
        ("P1", "T1", 2, "Video", "", [6, 6, 7, 8]),
        ("P2", "T1", 1, "Phone", referral_b[0], [4, 4, 4, 4]),
        ("P2", "T1", 2, "In person", referral_b[1], [5, 5, 5, 5]),
    ]
    lines = ["ClientCode,Clinician,SessionNo,Mode,Referral,ORS_1,ORS_2,ORS_3,ORS_4"]
    for p, t, s, mode, ref, ors in rows:
        lines.append(",".join([p, t, str(s), mode, ref, *map(str, ors)]))
    path = tmp_path / "x.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    study = {
        "raw": str(path),
        "columns": {
            "ClientCode": "patient",
            "Clinician": "therapist",
            "SessionNo": "session",
            "Mode": "modality",
            "Referral": "moderator_referral",
            **{f"ORS_{k}": f"ors_{k}" for k in range(1, 5)},
        },
        "labels": {"modality": {"In person": "in_person", "Video": "video", "Phone": "telephone"}},
        "instruments": {"ors": {"rci": 5}},
        "alliance": "ors_total",
        "outcome": "ors_total",
        "models": ["m"],
    }
    config = {"studies": {"t": group_study(study)}, "models": {"m": {"formula": "outcome ~ 1"}}}
    schema = __import__("pathlib").Path(__file__).parents[1] / "workflow/schemas/config.schema.yaml"
    study = flat_study(validate_config(config, schema)["studies"]["t"])
    raw = io.read_raw(path, delimiter=",", encoding=study["encoding"])
    return clean_sessions(raw, study, source="x.csv", name="t")


def test_clean_maps_modality_and_a_patient_level_moderator(tmp_path):
    sessions = _clean(tmp_path).sessions
    assert sessions["modality"].dtype == "category"
    assert sessions["modality"].astype(str).tolist() == [
        "in_person",
        "video",
        "telephone",
        "in_person",
    ]
    # the patient-level value recorded on one row applies to all of the patient's rows
    assert sessions["moderator_referral"].astype(str).tolist() == ["self", "self", "GP", "GP"]


def test_patient_level_moderator_that_differs_within_a_patient_is_an_error(tmp_path):
    from allianceflow.clean import DataError

    with pytest.raises(DataError, match=r"moderator_referral differs between rows \(GP, self\)"):
        _clean(tmp_path, referral_b=("GP", "self"))


RECORD = {
    "name": "ao_mod",
    "ddf": "kenward-roger",
    "fixed": [
        {"term": "aw", "estimate": -1.0, "df": 500.0},
        {"term": "aw:modality_video", "estimate": 0.6, "df": 300.0},
    ],
    "vcov_fixed": {
        "terms": ["aw", "aw:modality_video"],
        "matrix": [[0.01, -0.01], [-0.01, 0.04]],
    },
}
INFO = ModeratorInfo("modality", "categorical", ("in_person", "video"), True, n_patients_varying=9)


def test_simple_slopes_of_a_categorical_moderator_use_t_on_the_smallest_df():
    out = simple_slopes(RECORD, INFO)
    assert out["level"].tolist() == ["in_person", "video"]
    assert out["slope"].tolist() == pytest.approx([-1.0, -0.4])
    # video: Var = .01 + .04 - 2 * .01 = .03
    assert out["se"].tolist() == pytest.approx([0.1, math.sqrt(0.03)])
    assert out["df"].tolist() == [500.0, 300.0]
    from scipy import stats

    assert out.loc[1, "ci_high"] == pytest.approx(-0.4 + stats.t.ppf(0.975, 300) * 0.03**0.5)


def test_simple_slopes_table_and_figure_use_words():
    from allianceflow.figures import plot_simple_slopes
    from allianceflow.tables import simple_slopes_table

    rows = simple_slopes(RECORD, INFO).to_dict(orient="records")
    record = {**RECORD, "simple_slopes": rows, "moderation": INFO.to_dict()}
    table = simple_slopes_table(record, labels={"aw": "Alliance, within patient"})
    assert table.title == "Alliance–Outcome Slopes by Session Modality"
    assert table.body.columns.tolist() == [
        "Alliance term",
        "Session modality",
        "Slope",
        "95% CI",
        "*p*",
    ]
    assert table.body["Session modality"].tolist() == ["In person", "Video"]
    assert table.body["Slope"].tolist() == ["−1.00", "−0.40"]
    assert "low power" in table.note
    fig = plot_simple_slopes(record, labels={"aw": "Alliance, within patient"})
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["In person", "Video"]
    assert ax.get_xlabel() == "Session modality"
    assert ax.get_title() == "Alliance, within patient"
    with pytest.raises(ValueError, match=r"`result` 'x' has no simple slopes"):
        plot_simple_slopes({"name": "x"})


def test_moderated_models_are_those_with_a_moderator_option():
    from allianceflow.stages import moderated_models

    models = {
        "a": {"preset": "alliance_outcome", "options": {"moderator": "modality"}},
        "b": {"preset": "alliance_outcome"},
        "c": {"formula": "outcome ~ 1"},
    }
    assert moderated_models({"models": ["a", "b", "c"]}, models) == ["a"]


def test_power_simulation_takes_the_modality_moderator():
    from allianceflow.power import run_moderation_power_chunk, summarise_power

    modality = {
        "shares": {"in_person": 0.5, "video": 0.5},
        "within_effect": {"video": 0.5},
    }
    design = {"n_therapists": 6, "patients_per_therapist": 8, "sessions": 8}
    chunk = run_moderation_power_chunk(design, [11, 12], modality=modality, label="small")
    assert chunk["term"].tolist() == ["alliance_within_lag:modality_video"] * 2
    # truth: the video effect minus the in-person (design's) 2.0
    assert chunk["truth"].tolist() == [-1.5, -1.5]
    ok = chunk["converged"]
    assert (
        chunk.loc[ok, "covered"]
        == (chunk.loc[ok, "ci_low"] <= -1.5) & (-1.5 <= chunk.loc[ok, "ci_high"])
    ).all()
    summary = summarise_power(chunk)
    assert summary[["design", "replications", "truth"]].values.tolist() == [["small", 2, -1.5]]
    with pytest.raises(ValueError, match=r"`modality` must be a mapping with `shares`; got 3\."):
        run_moderation_power_chunk(design, [1], modality=3)


def test_a_moderated_model_can_be_compared_by_likelihood_ratio(tmp_path):
    import json

    from allianceflow import io
    from allianceflow.derive import derive_analysis
    from allianceflow.stages import comparison_stage

    df = simulate_study(
        seed=7,
        n_patients=60,
        n_therapists=6,
        max_sessions=8,
        modality={"shares": {"in_person": 0.5, "video": 0.5}},
    )
    scored = score_sessions(df, {"wai_sr": {"max_missing": 1}, "ors": {"max_missing": 1}})
    io.write_table(
        derive_analysis(scored, alliance="wai_sr_total", outcome="ors_total"),
        tmp_path / "analysis.parquet",
    )
    options = {"random": "(1 | patient)"}
    comparison_stage(
        tmp_path / "analysis.parquet",
        {
            "ao": {"preset": "alliance_outcome", "options": options},
            "ao_mod": {
                "preset": "alliance_outcome",
                "options": {**options, "moderator": "modality"},
            },
        },
        json=tmp_path / "lrt.json",
        txt=tmp_path / "lrt.txt",
    )
    lrt = json.loads((tmp_path / "lrt.json").read_text())
    # the moderator's within and between parts and its three interactions
    assert lrt["df"] == 5
