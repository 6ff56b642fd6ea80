"""config.yaml is validated against its schema before anything runs."""

import copy

import pytest
import yaml

from allianceflow.config import (
    STUDY_SECTIONS,
    ConfigError,
    flat_study,
    group_study,
    load_config,
    validate_config,
)

SCHEMA = "workflow/schemas/config.schema.yaml"


@pytest.fixture
def config(root):
    return yaml.safe_load((root / "config.yaml").read_text())


@pytest.fixture
def schema(root):
    return yaml.safe_load((root / SCHEMA).read_text())


def test_shipped_config_is_valid_and_defaults_are_filled(root, config, schema):
    resolved = validate_config(config, schema)
    assert resolved["studies"]["example"]["read"]["encoding"] == "utf-8-sig"  # a schema default
    assert resolved["studies"]["example"]["read"]["missing_codes"] == [-9]  # the config's own
    assert resolved["studies"]["example"]["report"] == {
        "figures": {
            "example_patient": None,
            "trajectory_model": None,
            "caterpillar_group": "therapist",
            "patient_lines": True,
        },
        "tables": {"min_cell": 5},
        "labels": {
            "arms": {"feedback": "routine outcome feedback", "tau": "treatment as usual"},
            "variables": {},
            "instruments": {},
            "informants": {},
        },
    }
    assert "encoding" not in config["studies"]["example"]["read"]  # the input is not modified
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
            ("studies", "example", "read", "format"),
            "wide-ish",
            "`studies.example.read.format` is 'wide-ish'; allowed values are 'long'.",
        ),
        (
            ("studies", "example", "read", "delimiter"),
            ":",
            r"`studies.example.read.delimiter` is ':'; "
            r"allowed values are ',', ';', '\\t', '\|', None.",
        ),
        (("seed",), -1, "`seed`: -1 is less than the minimum of 0."),
        (
            ("studies", "example", "colour"),
            "red",
            r"`studies.example`: Additional properties are not allowed "
            r"\('colour' was unexpected\). "
            r"Allowed keys are clean, derive, measures, models, privacy, read, report.",
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
    del bad["studies"]["example"]["measures"]["outcome"]
    with pytest.raises(
        ConfigError,
        match=r"^config.yaml: `studies.example.measures` lacks a required key: 'outcome'.",
    ):
        validate_config(bad, schema)


def test_study_naming_an_undefined_model_is_refused(config, schema):
    bad = copy.deepcopy(config)
    bad["studies"]["example"]["models"] = ["alliance_outcme"]
    with pytest.raises(
        ConfigError,
        match="names 'alliance_outcme', which is not defined under `models`; defined models are "
        "alliance_components, alliance_outcome, ",
    ):
        validate_config(bad, schema)


@pytest.mark.parametrize(
    ("name", "why", "suggestion"),
    [
        (
            "table1",
            "is also the name of a table every study writes (tables/table1.csv and the other "
            "formats)",
            "table1_model",
        ),
        ("models", "is also the name of a table every study writes (tables/models.csv", None),
        (
            "simple_slopes_growth",
            "starts with 'simple_slopes_', which names the simple-slopes tables",
            "growth_model",
        ),  # fmt: skip
        ("lrt_growth", "starts with 'lrt_', which names the model comparisons", "growth_model"),
        # a file system that ignores case (macOS, Windows) makes these the same files
        ("Table1", "is also the name of a table every study writes (tables/table1.csv", None),
        (
            "expected_response",
            "is also the name of the expected-response model derive writes "
            "(models/expected_response.json)",
            "expected_response_model",
        ),
        ("lrt_", "starts with 'lrt_', which names the model comparisons", "model_lrt"),
    ],
)
def test_a_model_named_like_another_output_is_refused(config, schema, name, why, suggestion):
    """A model called like a table (or a comparison) would write that table's files."""
    bad = copy.deepcopy(config)
    bad["models"][name] = bad["models"]["alliance_outcome"]
    with pytest.raises(ConfigError) as error:
        validate_config(bad, schema)
    message = str(error.value)
    assert message.startswith(f"config.yaml: the model name {name!r} under `models` {why}")
    if suggestion:
        assert f"Rename the model (and every study or comparison that names it), e.g. to " \
            f"'{suggestion}'." in message  # fmt: skip
    assert message.endswith(
        "Names not to use: table1, reliability, intake_correlations, clinical_significance, "
        "sudden_gains, ruptures, models, binary_effects, expected_response (in any case), "
        "and names starting with simple_slopes_ or lrt_."
    )


def test_two_model_names_that_differ_only_in_case_are_refused(config, schema):
    bad = copy.deepcopy(config)
    bad["models"]["Growth"] = bad["models"]["growth"]
    with pytest.raises(ConfigError) as error:
        validate_config(bad, schema)
    assert str(error.value) == (
        "config.yaml: the model names 'growth' and 'Growth' under `models` differ only in "
        "case; on macOS and Windows, whose file systems ignore case, they would write the "
        "same files. Rename one of them."
    )


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
        match=r"^config.yaml: `models.alliance_outcome` does not fit the expected shape: "
        r"a model is given by exactly one of `formula`",
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
        match=r"`studies.example.derive.on_track.reference` is 'reference', so `reference_study` "
        r"must name another study; got None. Other studies: example2.",
    ):
        validate_config(bad, schema)
    bad["studies"]["example"]["derive"]["on_track"]["reference_study"] = "example2"
    assert (
        validate_config(bad, schema)["studies"]["example"]["derive"]["on_track"]["reference_study"]
        == "example2"
    )


def test_keys_of_the_flat_study_block_point_to_their_section(config, schema):
    bad = copy.deepcopy(config)
    study = bad["studies"]["example2"]
    study["raw"] = study["read"].pop("raw")
    study["caterpillar"] = "ignored: not a key of the earlier layout"
    study["figures"] = {"caterpillar_group": "therapist"}
    with pytest.raises(ConfigError) as error:
        validate_config(bad, schema)
    assert str(error.value) == (
        "config.yaml: the study block is grouped by stage (read, privacy, clean, measures, "
        "derive, report, models), and `studies.example2` holds keys of the earlier flat layout. "
        "Move `raw` to `studies.example2.read.raw`, `figures` to "
        "`studies.example2.report.figures`."
    )


def test_group_study_and_flat_study_are_inverse(config, schema):
    study = validate_config(config, schema)["studies"]["example"]
    flat = flat_study(study)
    assert flat["raw"] == "data/raw/example/sessions_export.csv"
    assert flat["rules"]["session_gap"] == "flag" and flat["hash_ids"] is False
    assert flat["lag_across_gaps"] is False and "lag_across_gaps" not in flat["derive"]
    assert flat["tables"] == {"min_cell": 5} and flat["models"] == study["models"]
    assert group_study(flat) == study
    # every key of the study block has one section, and the schema has it there
    section_of = [key for keys in STUDY_SECTIONS.values() for key in keys]
    assert len(section_of) == len(set(section_of)) == 28
    study_schema = schema["$defs"]["study"]["properties"]
    for section, keys in STUDY_SECTIONS.items():
        assert set(keys) <= set(study_schema[section]["properties"]), section


def test_every_schema_property_has_a_type_description_and_default(schema):
    """Each setting documents itself.

    A type, a description, and a default unless its block requires it.
    """
    # no schema default on purpose: the design's keys left out are supplied by a fitted
    # study (power.from_study) or by PowerDesign; a model gives one of formula or preset
    exempt = {
        f"power.design.{key}"
        for key in schema["$defs"]["power"]["properties"]["design"]["properties"]
    }
    exempt |= {"model.formula", "model.preset"}
    missing = []

    def walk(node, path, required):
        for key, spec in node.get("properties", {}).items():
            where = f"{path}.{key}"
            if "description" not in spec:
                missing.append(f"{where}: description")
            if not {"type", "oneOf", "$ref"} & set(spec):
                missing.append(f"{where}: type")
            if "default" not in spec and key not in required and where not in exempt:
                missing.append(f"{where}: default")
            walk(spec, where, set(spec.get("required", [])))

    walk(schema, "", set(schema["required"]))
    for name, block in schema["$defs"].items():
        walk(block, name, set(block.get("required", [])))
    assert missing == []


def _schema_default(schema, path):
    """Return the default of a schema property, e.g. ("study", "derive", "ruptures", "x")."""
    node = schema["$defs"][path[0]]
    for key in path[1:]:
        node = node["properties"][key]
    return node["default"]


def test_function_defaults_agree_with_the_schema(schema):
    """Defaults live in the schema, and the functions agree with it.

    A function that takes a setting as a keyword defaults to the schema's value, so a
    notebook gets the pipeline's analysis.
    """
    import inspect

    from allianceflow import derive, ontrack, pool, power, ruptures, score, stages, suddengains

    pairs = [
        (pool.meta_analysis, "method", ("pool", "method")),
        (pool.meta_analysis, "hksj", ("pool", "hksj")),
        (pool.meta_analysis, "alpha", ("pool", "alpha")),
        (stages.reliability_stage, "n_boot", ("study", "measures", "reliability_bootstrap")),
        (stages.reliability_stage, "alpha_missing", ("study", "measures", "alpha_missing")),
        (score.reliability, "alpha_missing", ("study", "measures", "alpha_missing")),
        (stages.descriptive_table_stage, "min_cell", ("study", "report", "tables", "min_cell")),
        (stages.power_chunk_stage, "alliance_items", ("power", "alliance_items")),
        (stages.power_chunk_stage, "alpha", ("power", "alpha")),
        (derive.derive_tables, "lag_across_gaps", ("study", "derive", "lag_across_gaps")),
        (ontrack.on_track, "tolerance", ("study", "derive", "on_track", "tolerance")),
        (ruptures.detect_ruptures, "method", ("study", "derive", "ruptures", "method")),
        (ruptures.detect_ruptures, "threshold", ("study", "derive", "ruptures", "threshold")),
        (ruptures.detect_ruptures, "across_gaps", ("study", "derive", "ruptures", "across_gaps")),
    ]
    pairs += [
        (stages.pool_stage, key, ("pool", key))
        for key in ("term", "method", "hksj", "alpha", "one_stage", "standardise")
    ]
    pairs += [
        (
            ruptures.detect_ruptures,
            "repair_within",
            ("study", "derive", "ruptures", "repair_within"),
        )
    ]
    pairs += [
        (suddengains.sudden_gains, key, ("study", "derive", "sudden_gains", key))
        for key in ("pct", "crit3", "alpha", "adjust", "critical_value")
    ]
    differ = []
    for function, parameter, path in pairs:
        default = inspect.signature(function).parameters[parameter].default
        if default != _schema_default(schema, path):
            differ.append(f"{function.__name__}({parameter}={default!r}) vs {'.'.join(path)}")
    assert differ == []
    events = inspect.signature(suddengains.sudden_gains).parameters["events"].default
    assert list(events) == _schema_default(schema, ("study", "derive", "sudden_gains", "events"))
    assert power.DEFAULT_FORMULA == _schema_default(schema, ("power", "formula"))
    assert len(pairs) == 26
