"""Settings a later stage needs are checked when the config is validated, before any job."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from allianceflow.config import STUDY_SECTIONS, ConfigError, group_study, validate_config

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
CONFIG = yaml.safe_load((ROOT / "config.yaml").read_text(encoding="utf-8"))


def with_study(name: str, **changes) -> dict:
    """The shipped config with *changes* (keys named as in the sections) in their sections."""
    config = copy.deepcopy(CONFIG)
    study = config["studies"][name]
    for section, value in group_study(changes).items():
        if section in STUDY_SECTIONS:
            study.setdefault(section, {}).update(value)
        else:
            study[section] = value
    return config


def test_the_shipped_config_passes():
    validate_config(CONFIG, SCHEMA)


NEEDS_RCI = (
    "config.yaml: reliable change and sudden gains need the reliable change value of the "
    "outcome instrument 'phq9', and its file ships none (it could not be confirmed from a "
    "published source). Set `studies.example2.measures.instruments.phq9: {rci: <points>}`, "
    "or set "
    "`studies.example2.derive.reliable_change.enabled: false` and "
    "`studies.example2.derive.sudden_gains.cutoff: <points>` or "
    "`studies.example2.derive.sudden_gains.enabled: false`."
)


def test_phq9_as_shipped_is_refused_before_any_job():
    config = with_study("example2", instruments={"srs": None, "phq9": None})
    with pytest.raises(ConfigError) as error:
        validate_config(config, SCHEMA)
    assert str(error.value) == NEEDS_RCI


@pytest.mark.parametrize(
    "derive, message",
    [
        (
            {"reliable_change": {"enabled": False}},
            "config.yaml: sudden gains needs the reliable change value of the outcome instrument "
            "'phq9'",
        ),
        (
            {"sudden_gains": {"cutoff": 5}},
            "config.yaml: reliable change needs the reliable change value of the outcome "
            "instrument 'phq9'",
        ),
        ({"reliable_change": {"enabled": False}, "sudden_gains": {"cutoff": 5}}, None),
        ({"reliable_change": {"enabled": False}, "sudden_gains": {"enabled": False}}, None),
    ],
)
def test_each_derived_variable_that_needs_the_rci(derive, message):
    study = copy.deepcopy(CONFIG["studies"]["example2"])
    config = with_study(
        "example2", instruments={"srs": None, "phq9": None}, derive={**study["derive"], **derive}
    )
    if message is None:
        validate_config(config, SCHEMA)
        return
    with pytest.raises(ConfigError) as error:
        validate_config(config, SCHEMA)
    assert str(error.value).startswith(message)


def test_messages_name_the_config_file_given():
    config = with_study("example2", instruments={"srs": None, "phq9": None})
    with pytest.raises(ConfigError, match=r"^site_b\.yaml: reliable change"):
        validate_config(config, SCHEMA, source="site_b.yaml")


@pytest.mark.parametrize(
    "change, message",
    [
        (
            {"derive": {"on_track": {"enabled": False}}},
            "config.yaml: model 'feedback' (preset feedback) needs the on-track status, but "
            "`studies.example.derive.on_track.enabled` is false. Switch it on, or remove "
            "'feedback' from `studies.example.models`.",
        ),
        (
            {"derive": {"ruptures": {"enabled": False}}},
            "config.yaml: model 'rupture_repair' (preset rupture_repair) needs detected ruptures, "
            "but `studies.example.derive.ruptures.enabled` is false. Switch it on, or remove "
            "'rupture_repair' from `studies.example.models`.",
        ),
        (
            {"instruments": {"srs": None, "ors": {"rci": 5}}, "alliance": "srs_total"},
            "config.yaml: model 'alliance_components' (preset alliance_components) needs the "
            "alliance subscale(s) task, bond, goal, but 'srs' has none. Use an alliance "
            "instrument with these subscales, or remove 'alliance_components' from "
            "`studies.example.models`.",
        ),
        (
            {"outcome": "phq9_total"},
            "config.yaml: `studies.example.measures` uses the score 'phq9_total', which none of "
            "its `instruments` produces; scores are named '<instrument>_total' or "
            "'<instrument>_<subscale>', e.g. 'ors_total' or 'wai_sr_bond'.",
        ),
    ],
)
def test_presets_find_what_they_need(change, message):
    study = copy.deepcopy(CONFIG["studies"]["example"])
    if "derive" in change:
        derive = copy.deepcopy(study["derive"])
        derive.update(change.pop("derive"))
        change["derive"] = derive
    with pytest.raises(ConfigError) as error:
        validate_config(with_study("example", **change), SCHEMA)
    assert str(error.value) == message


def test_feedback_preset_needs_an_arm_column():
    study = copy.deepcopy(CONFIG["studies"]["example"])
    columns = {k: v for k, v in study["read"]["columns"].items() if v != "condition"}
    labels = {k: v for k, v in study["read"]["labels"].items() if k != "condition"}
    with pytest.raises(ConfigError) as error:
        validate_config(with_study("example", columns=columns, labels=labels), SCHEMA)
    assert str(error.value) == (
        "config.yaml: model 'feedback' (preset feedback) compares arms, but "
        "`studies.example.read.columns` maps no column to 'condition'. Map the arm column, or "
        "remove "
        "'feedback' from `studies.example.models`."
    )
