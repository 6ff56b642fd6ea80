"""Read and validate ``config.yaml`` against its JSON schema.

The schema lives in ``workflow/schemas/config.schema.yaml``. Validation fills in the
schema's defaults and stops at the first problem with a message a researcher can act on:
the key, what it holds, and what is allowed.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import yaml

__all__ = ["ConfigError", "validate_config", "load_config", "SCHEMA_PATH"]

#: Where the schema lives, relative to the project folder.
SCHEMA_PATH = Path("workflow") / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """The configuration does not match its schema."""


def _with_defaults(validator_class):
    """Extend a jsonschema validator so that it fills in ``default`` values.

    This is the recipe of the jsonschema FAQ ("Why doesn't my schema's default
    property set the default on my instance?").
    """
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema and name not in instance:
                    instance[name] = copy.deepcopy(subschema["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


_FillingValidator = _with_defaults(jsonschema.Draft202012Validator)


def _key(path) -> str:
    return ".".join(str(p) for p in path) or "(top level)"


def _describe(error: jsonschema.ValidationError, source: str) -> str:
    key = _key(error.absolute_path)
    if error.validator == "enum":
        allowed = ", ".join(repr(v) for v in error.validator_value)
        return f"{source}: `{key}` is {error.instance!r}; allowed values are {allowed}."
    if error.validator == "required":
        return f"{source}: `{key}` lacks a required key: {error.message.split(' is ')[0]}."
    if error.validator == "additionalProperties":
        allowed = ", ".join(sorted(error.schema.get("properties", {})))
        return f"{source}: `{key}`: {error.message}. Allowed keys are {allowed}."
    if error.validator == "type":
        return f"{source}: `{key}` is {error.instance!r}; it must be of type {error.validator_value}."
    if error.validator == "oneOf" and "description" in error.schema:
        return f"{source}: `{key}` does not fit the expected shape: {error.schema['description']}"
    return f"{source}: `{key}`: {error.message}."


def validate_config(config: dict[str, Any], schema: dict[str, Any] | str | Path = SCHEMA_PATH, *, source: str = "config.yaml") -> dict[str, Any]:
    """Validate *config* against *schema* and return a copy with defaults filled in.

    Parameters
    ----------
    config : dict
        The parsed configuration.
    schema : dict or path
        The JSON schema, or the path of its YAML file.
    source : str
        Name of the configuration file, used in messages.

    Returns
    -------
    dict
        A deep copy of *config* with every schema default present.

    Raises
    ------
    ConfigError
        On the first problem (errors deep in the tree are reported first), e.g.
        "config.yaml: `models.alliance_outcome.reml` is 'yes'; it must be of type boolean."
    """
    if not isinstance(schema, dict):
        schema = yaml.safe_load(Path(schema).read_text(encoding="utf-8"))
    resolved = copy.deepcopy(config)
    errors = sorted(_FillingValidator(schema).iter_errors(resolved), key=lambda e: (-len(e.absolute_path), _key(e.absolute_path)))
    if errors:
        raise ConfigError(_describe(errors[0], source))
    for name, study in resolved["studies"].items():
        for model in study["models"]:
            if model not in resolved["models"]:
                known = ", ".join(sorted(resolved["models"]))
                raise ConfigError(
                    f"{source}: `studies.{name}.models` names {model!r}, which is not defined "
                    f"under `models`; defined models are {known}."
                )
    for name, study in resolved["studies"].items():
        on_track = study.get("derive", {}).get("on_track", {})
        if on_track.get("reference") == "reference":
            ref = on_track.get("reference_study")
            if ref not in resolved["studies"] or ref == name:
                others = ", ".join(sorted(s for s in resolved["studies"] if s != name)) or "none"
                raise ConfigError(
                    f"{source}: `studies.{name}.derive.on_track.reference` is 'reference', so "
                    f"`reference_study` must name another study; got {ref!r}. Other studies: {others}."
                )
    for pair in resolved.get("comparisons", []):
        for model in pair:
            if model not in resolved["models"]:
                known = ", ".join(sorted(resolved["models"]))
                raise ConfigError(
                    f"{source}: `comparisons` names {model!r}, which is not defined under "
                    f"`models`; defined models are {known}."
                )
    return resolved


def load_config(path: str | Path, schema: str | Path | None = None) -> dict[str, Any]:
    """Read a YAML configuration file and validate it (see :func:`validate_config`).

    The schema defaults to ``workflow/schemas/config.schema.yaml`` next to the config file.
    """
    path = Path(path)
    if schema is None:
        schema = path.resolve().parent / SCHEMA_PATH
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(config, dict):
        raise ConfigError(f"{path.name}: the file must hold a mapping of keys to values.")
    return validate_config(config, schema, source=path.name)
