"""Small and degenerate studies end in a result with its warning, or in a plain message.

The exports are in tests/data/bad/ (written by tests/data/make_bad_inputs.py); they go
through the clean and score stages as a researcher's would, then through ``fit_model``.
"""

import pytest
from test_clean import run

from allianceflow.models import fit_model
from allianceflow.models.design import ModelError
from allianceflow.score import score_sessions

FORMULA = "ors_total ~ session + (1 | therapist) + (1 | patient)"


@pytest.fixture(scope="module")
def one_therapist():
    return score_sessions(run("one_therapist.csv").sessions, {"ors": {"rci": 5}})


def test_a_single_therapist_gets_no_variance_and_a_warning(one_therapist):
    assert one_therapist["therapist"].nunique() == 1 and one_therapist["patient"].nunique() == 8
    fit = fit_model(one_therapist, FORMULA, name="one_therapist")
    record = fit.to_dict()
    warning = (
        "the grouping factor 'therapist' has 1 level in the rows used, fewer than "
        "min_levels = 5: its variance cannot be estimated reliably (with one level not at "
        "all), so its random intercept was left out of the model and no variance or ICC is "
        "reported for it."
    )
    assert warning in record["convergence"]["warnings"]
    assert [d["group"] for d in record["dropped_random_terms"]] == ["therapist"]
    assert {row["group"] for row in record["random"]} == {"patient"}
    assert "therapist" not in (record["icc"] or {})
    assert warning in fit.summary().replace("\n", " ").replace("  ", " ")
    assert record["n_groups"] == {"patient": 8}


def test_one_level_is_refused_even_at_lme4s_threshold(one_therapist):
    # min_levels=2 is lme4's own rule: one level is refused, never fitted as a variance
    with pytest.raises(ModelError, match="'therapist' has 1"):
        fit_model(one_therapist, "ors_total ~ session + (1 | therapist)", min_levels=2)


def test_three_patients_are_too_few_for_any_random_effect():
    scored = score_sessions(run("bom.csv").sessions, {"ors": {"rci": 5}})
    with pytest.raises(ModelError) as error:
        fit_model(scored, FORMULA)
    assert str(error.value) == (
        f"`formula` {FORMULA!r}: every grouping factor has fewer than min_levels = 5 levels "
        "in the 6 complete rows ('therapist' has 2; 'patient' has 3), so no random effect can "
        "be estimated. Fit the study with more units, lower `min_levels` (at least 2), or use "
        "an ordinary regression."
    )
    assert "\n" not in str(error.value)


def test_the_model_spec_min_levels_reaches_the_fit(tmp_path, one_therapist):
    """``stages.fit_stage`` uses the spec's ``min_levels``, by default the schema's 5."""
    from pathlib import Path

    import yaml

    from allianceflow import io, stages

    schema = yaml.safe_load(
        (Path(__file__).resolve().parents[1] / "workflow/schemas/config.schema.yaml").read_text()
    )
    assert schema["$defs"]["model"]["properties"]["min_levels"]["default"] == 5
    assert stages.MODEL_MIN_LEVELS == 5
    io.write_table(one_therapist, tmp_path / "analysis.parquet")
    spec = {"formula": "ors_total ~ session + (1 | patient)"}
    out = {"json": tmp_path / "m.json", "txt": tmp_path / "m.txt"}
    stages.fit_stage(tmp_path / "analysis.parquet", spec, name="m", **out)
    assert io.read_json(out["json"])["n_groups"] == {"patient": 8}
    # eight patients are fewer than nine: the patient term goes, and with it every random effect
    with pytest.raises(ModelError, match="'patient' has 8"):
        stages.fit_stage(tmp_path / "analysis.parquet", {**spec, "min_levels": 9}, name="m", **out)


def test_the_comparison_uses_the_spec_min_levels(tmp_path, three_level_data):
    """The LRT refits keep a random term the spec's ``min_levels`` keeps (here 3 therapists)."""
    from allianceflow import io, stages

    data = three_level_data[three_level_data["therapist"].isin(["T00", "T01", "T02"])]
    io.write_table(data, tmp_path / "analysis.parquet")
    base = "outcome ~ alliance_within_lag + session"
    models = {
        "without": {"formula": f"{base} + (1 | pid)", "min_levels": 3},
        "with": {"formula": f"{base} + (1 | pid) + (1 | therapist)", "min_levels": 3},
    }
    out = {"json": tmp_path / "lrt.json", "txt": tmp_path / "lrt.txt"}
    stages.comparison_stage(tmp_path / "analysis.parquet", models, **out)
    assert io.read_json(out["json"])["df"] == 1
    # at the default of 5 the therapist term is left out, and the test says why it cannot run
    models["with"].pop("min_levels")
    with pytest.raises(ModelError, match=r"cannot be compared by LRT: after leaving out"):
        stages.comparison_stage(tmp_path / "analysis.parquet", models, **out)
