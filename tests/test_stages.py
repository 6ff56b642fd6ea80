"""The stage layer's registry of study figures and the settings each stage receives."""

import pytest

from allianceflow import stages
from allianceflow.config import load_config


@pytest.fixture(scope="module")
def studies(root):
    return load_config(root / "config.yaml")["studies"]


def test_every_figure_has_a_rule_and_a_caption(root):
    rules = (root / "workflow" / "rules" / "figures.smk").read_text(encoding="utf-8")
    for name in stages.FIGURES:
        assert f"rule plot_{name}:" in rules
        assert f'figure="{name}",' in rules and f'get_figure_settings("{name}")' in rules
    captions = {p.stem for p in (root / "workflow" / "report").glob("*.rst")}
    assert {"within_between", "trajectories", "forest", "caterpillar", "flow"} <= captions


def test_figure_settings_are_only_what_each_figure_reads(studies):
    from allianceflow.labels import Labels

    example = studies["example"]
    labels = Labels.from_config(example).to_dict()
    assert labels["arms"]["tau"] == "treatment as usual"
    assert stages.figure_settings("caterpillar", example) == {
        "caterpillar_group": "therapist",
        "labels": labels,
    }
    assert stages.figure_settings("forest", example) == {"labels": labels}
    assert stages.figure_settings("feedback", example) == {"min_cell": 5, "labels": labels}
    assert stages.figure_settings("trajectories", example) == {
        "patient_lines": True,
        "min_cell": 5,
        "labels": labels,
    }
    # the study sets the ORS reliable change value (5); the cut-off (25) is the ORS file's
    assert stages.figure_settings("reliable_change", example) == {
        "rci": 5.0,
        "cutoff": 25.0,
        "direction": "higher_is_better",
        "labels": labels,
    }
    settings = stages.figure_settings("reliable_change", studies["example2"])
    assert {k: settings[k] for k in ("rci", "cutoff", "direction")} == {
        "rci": 6.0,
        "cutoff": 10.0,
        "direction": "lower_is_better",
    }
    assert settings["labels"]["variables"]["phq9_total"] == "PHQ-9 total"


def test_a_study_has_the_figures_whose_variables_and_columns_it_has(studies):
    every = list(stages.FIGURES)
    forests = [f"forest_{m}" for m in studies["example"]["models"]]
    couples = ["couple_trajectories", "split_outcome"]  # studies with a `system` column only
    individual = [f for f in every[3:] if f not in couples]
    assert stages.study_figures(studies["example"]) == every[:2] + forests + individual
    example3 = stages.study_figures(studies["example3"])
    assert example3[-2:] == couples and "feedback" not in example3 and "ruptures" not in example3
    study = {
        **studies["example2"],
        "derive": {
            **studies["example2"]["derive"],
            "on_track": {"enabled": False},
            "ruptures": {"enabled": False},
        },
        "report": {"figures": {"caterpillar_group": "site"}},
    }
    assert stages.study_figures(study) == [
        "within_between",
        "trajectories",
        *[f"forest_{m}" for m in studies["example2"]["models"]],
        "flow",
        "sudden_gains",
        "reliable_change",
    ]


def test_an_unknown_figure_is_named_with_the_known_ones(studies):
    with pytest.raises(KeyError, match="`name` must be one of 'within_between', 'trajectories'"):
        stages.figure_settings("violin", studies["example"])


def test_clean_settings_lays_the_sections_side_by_side(studies):
    study = studies["example"]
    settings = stages.clean_settings(
        read=study["read"], clean=study["clean"], instruments=study["measures"]["instruments"]
    )
    assert settings["raw"] == "data/raw/example/sessions_export.csv"
    assert settings["rules"]["session_gap"] == "flag"
    assert settings["instruments"] == {"wai_sr": {"max_missing": 1}, "ors": {"rci": 5}}
    assert "hash_ids" not in settings and "alliance" not in settings
