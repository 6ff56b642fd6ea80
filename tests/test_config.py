"""config.yaml is validated against its schema before anything runs."""

import copy

import pytest
import yaml

from allianceflow.config import ConfigError, load_config, validate_config

SCHEMA = "workflow/schemas/config.schema.yaml"


@pytest.fixture
def config(root):
    return yaml.safe_load((root / "config.yaml").read_text())


@pytest.fixture
def schema(root):
    return yaml.safe_load((root / SCHEMA).read_text())


def test_shipped_config_is_valid_and_defaults_are_filled(root, config, schema):
    resolved = validate_config(config, schema)
    assert resolved["studies"]["example"]["encoding"] == "utf-8-sig"  # a schema default
    assert resolved["studies"]["example"]["missing_codes"] == [-9]  # the config's own value
    assert "encoding" not in config["studies"]["example"]  # the input is not modified
    assert load_config(root / "config.yaml") == resolved


@pytest.mark.parametrize(
    "path, value, message",
    [
        (
            ("models", "alliance_outcome", "reml"),
            "yes",
            "`models.alliance_outcome.reml` is 'yes'; it must be of type boolean.",
        ),
        (
            ("studies", "example", "format"),
            "wide-ish",
            "`studies.example.format` is 'wide-ish'; allowed values are 'long'.",
        ),
        (
            ("studies", "example", "delimiter"),
            ":",
            r"`studies.example.delimiter` is ':'; allowed values are ',', ';', '\\t', '\|', None.",
        ),
        (("seed",), -1, "`seed`: -1 is less than the minimum of 0."),
        (
            ("studies", "example", "colour"),
            "red",
            r"`studies.example`: Additional properties are not allowed \('colour' was unexpected\). Allowed keys are .*alliance",
        ),
    ],
)
def test_invalid_values_name_the_key_and_what_is_allowed(config, schema, path, value, message):
    bad = copy.deepcopy(config)
    node = bad
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(ConfigError, match="^config.yaml: " + message):
        validate_config(bad, schema)


def test_missing_required_key_is_named(config, schema):
    bad = copy.deepcopy(config)
    del bad["studies"]["example"]["outcome"]
    with pytest.raises(
        ConfigError, match=r"^config.yaml: `studies.example` lacks a required key: 'outcome'."
    ):
        validate_config(bad, schema)


def test_study_naming_an_undefined_model_is_refused(config, schema):
    bad = copy.deepcopy(config)
    bad["studies"]["example"]["models"] = ["alliance_outcme"]
    with pytest.raises(
        ConfigError,
        match="names 'alliance_outcme', which is not defined under `models`; defined models are alliance_components, alliance_outcome, ",
    ):
        validate_config(bad, schema)


def test_a_file_that_is_not_a_mapping_is_refused(tmp_path, root):
    path = tmp_path / "config.yaml"
    path.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="config.yaml: the file must hold a mapping"):
        load_config(path, schema=root / SCHEMA)


def test_model_needs_exactly_one_of_formula_or_preset(config, schema):
    bad = copy.deepcopy(config)
    bad["models"]["alliance_outcome"]["preset"] = "growth"
    with pytest.raises(
        ConfigError,
        match=r"^config.yaml: `models.alliance_outcome` does not fit the expected shape: a model is given by exactly one of `formula`",
    ):
        validate_config(bad, schema)
    good = copy.deepcopy(config)
    good["models"]["growth"] = {"preset": "growth", "options": {"time_shape": "log"}}
    assert validate_config(good, schema)["models"]["growth"]["reml"] is True


def test_comparison_of_an_undefined_model_is_refused(config, schema):
    bad = copy.deepcopy(config)
    bad["comparisons"] = [["alliance_outcome", "growht"]]
    with pytest.raises(
        ConfigError, match="`comparisons` names 'growht', which is not defined under `models`"
    ):
        validate_config(bad, schema)


def test_reference_sample_must_name_another_study(config, schema):
    bad = copy.deepcopy(config)
    bad["studies"]["example"]["derive"]["on_track"]["reference"] = "reference"
    with pytest.raises(
        ConfigError,
        match=r"`studies.example.derive.on_track.reference` is 'reference', so `reference_study` must name another study; got None. Other studies: example2.",
    ):
        validate_config(bad, schema)
    bad["studies"]["example"]["derive"]["on_track"]["reference_study"] = "example2"
    assert (
        validate_config(bad, schema)["studies"]["example"]["derive"]["on_track"]["reference_study"]
        == "example2"
    )
