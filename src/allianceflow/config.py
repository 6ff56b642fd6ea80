"""Read and validate ``config.yaml`` against its JSON schema.

The schema lives in ``workflow/schemas/config.schema.yaml``. Validation fills in the
schema's defaults and stops at the first problem with a message a researcher can act on:
the key, what it holds, and what is allowed.
"""

from __future__ import annotations

import copy
import datetime
from pathlib import Path
from typing import Any

import jsonschema
import yaml

__all__ = [
    "ConfigError",
    "validate_config",
    "load_config",
    "SCHEMA_PATH",
    "STUDY_SECTIONS",
    "group_study",
    "flat_study",
]

#: Where the schema lives, relative to the project folder.
SCHEMA_PATH = Path("workflow") / "schemas" / "config.schema.yaml"

#: The sections of a study block, one per stage, and the keys each holds. Before the study
#: block was grouped these keys sat side by side in it; :func:`validate_config` points a key
#: found at its old place to its section, and :func:`group_study` moves it there.
STUDY_SECTIONS: dict[str, tuple[str, ...]] = {
    "read": (
        "raw",
        "format",
        "wide_pattern",
        "sheet",
        "header_rows",
        "skip_rows",
        "decimal",
        "delimiter",
        "encoding",
        "date_format",
        "missing_codes",
        "extraction_date",
        "columns",
        "labels",
    ),
    "privacy": ("drop_columns", "privacy_exempt", "hash_ids"),
    "clean": ("min_sessions", "rules", "distinguishable"),
    "measures": ("instruments", "alliance", "outcome", "reliability_bootstrap", "alpha_missing"),
    "derive": ("lag_across_gaps",),
    "report": ("figures", "tables"),
}
_SECTION_OF = {key: section for section, keys in STUDY_SECTIONS.items() for key in keys}


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
        return (
            f"{source}: `{key}` is {error.instance!r}; it must be of type {error.validator_value}."
        )
    if error.validator == "pattern" and "description" in error.schema:
        return (
            f"{source}: `{key}` is {error.instance!r}, which is not of the form this key needs. "
            f"{error.schema['description']}"
        )
    if error.validator == "oneOf" and "description" in error.schema:
        return f"{source}: `{key}` does not fit the expected shape: {error.schema['description']}"
    return f"{source}: `{key}`: {error.message}."


def group_study(study: dict[str, Any]) -> dict[str, Any]:
    """Move the keys of a study block written side by side into their sections.

    The inverse of :func:`flat_study`: ``{"raw": ..., "columns": ..., "rules": ...}``
    becomes ``{"read": {"raw": ..., "columns": ...}, "clean": {"rules": ...}}``
    (:data:`STUDY_SECTIONS`); keys already in a section stay there, and a flat ``derive``
    block merges with ``lag_across_gaps``.

    Examples
    --------
    >>> group_study({"raw": "x.csv", "alliance": "srs_total", "models": ["m"]})
    {'read': {'raw': 'x.csv'}, 'measures': {'alliance': 'srs_total'}, 'models': ['m']}
    """
    grouped: dict[str, Any] = {}
    for key, value in study.items():
        section = _SECTION_OF.get(key)
        if key == "report_labels":  # flat_study's name for report.labels
            grouped.setdefault("report", {})["labels"] = value
        elif section is None:
            if key in STUDY_SECTIONS and isinstance(value, dict):
                grouped.setdefault(key, {}).update(value)
            else:
                grouped[key] = value
        else:
            grouped.setdefault(section, {})[key] = value
    return grouped


def flat_study(study: dict[str, Any]) -> dict[str, Any]:
    """Lay the keys of a grouped study block side by side, as the clean step reads them.

    The inverse of :func:`group_study`: every key of the ``read``, ``privacy``, ``clean``,
    ``measures`` and ``report`` sections at the top level, ``derive.lag_across_gaps`` as
    ``lag_across_gaps`` and the rest of ``derive`` as ``derive``; other keys (``models``)
    as they are. Sections absent from *study* are left out.
    """
    flat: dict[str, Any] = {}
    for key, value in study.items():
        if key == "derive":
            rest = dict(value or {})
            if "lag_across_gaps" in rest:
                flat["lag_across_gaps"] = rest.pop("lag_across_gaps")
            flat["derive"] = rest
        elif key == "report":
            # report.labels (words for figures and tables) is not read.labels.
            rest = dict(value or {})
            if "labels" in rest:
                flat["report_labels"] = rest.pop("labels")
            flat.update(rest)
        elif key in STUDY_SECTIONS:
            flat.update(value or {})
        else:
            flat[key] = value
    return flat


def _moved_keys(config: dict[str, Any], source: str) -> None:
    """Name the new place of keys that earlier versions accepted."""
    studies = config.get("studies")
    for name, study in studies.items() if isinstance(studies, dict) else ():
        moved = [key for key in study if key in _SECTION_OF] if isinstance(study, dict) else []
        if moved:
            places = ", ".join(
                f"`{key}` to `studies.{name}.{_SECTION_OF[key]}.{key}`" for key in moved
            )
            raise ConfigError(
                f"{source}: the study block is grouped by stage ({', '.join(STUDY_SECTIONS)}, "
                f"models), and `studies.{name}` holds keys of the earlier flat layout. Move "
                f"{places}."
            )
        endings = (
            ((study or {}).get("derive") or {}).get("endings") if isinstance(study, dict) else None
        )
        old = (
            sorted(set(endings or {}) & {"column", "followup", "labels"})
            if isinstance(endings, dict)
            else []
        )
        if old:
            raise ConfigError(
                f"{source}: `studies.{name}.derive.endings.{old[0]}` is no longer a setting. Map "
                f"the export's ending column to 'ending' under `studies.{name}.read.columns` and "
                f"its labels under `studies.{name}.read.labels.ending`; for endings inferred from "
                f"a gap, give the day of the export as `studies.{name}.read.extraction_date`."
            )


def _check_endings(name: str, study: dict[str, Any], source: str) -> None:
    """Cross-key checks of endings and follow-up time that the schema cannot express."""
    from .contract import ENDING_TYPES

    key = f"studies.{name}.read"
    read = study["read"]
    mapped = set(read["columns"].values())
    extraction = read.get("extraction_date")
    if extraction is not None:
        try:
            datetime.date.fromisoformat(extraction)
        except ValueError:
            raise ConfigError(
                f"{source}: `{key}.extraction_date` is {extraction!r}, which is not a day of the "
                "calendar; write the day the data were exported as YYYY-MM-DD, e.g. '2025-09-01'."
            ) from None
        if "date" not in mapped:
            raise ConfigError(
                f"{source}: `{key}.extraction_date` is set, but no column is mapped to 'date' "
                f"under `{key}.columns`, so the follow-up time cannot be computed. Map the session "
                "dates to 'date', or map a column of days from each patient's first session to the "
                "extraction to 'followup_days' and remove `extraction_date`."
            )
    if "followup_days" in mapped and "date" in mapped:
        raise ConfigError(
            f"{source}: `{key}.columns` maps a column to 'followup_days', but the sessions are "
            "dated (a column is mapped to 'date'), and with dates the follow-up time comes from "
            f"the day of the export. Remove that mapping and set `{key}.extraction_date`."
        )
    for raw, target in ((read.get("labels") or {}).get("ending") or {}).items():
        if str(target).casefold() not in ENDING_TYPES:
            raise ConfigError(
                f"{source}: `{key}.labels.ending` maps {raw!r} to {target!r}; an ending must be "
                f"one of {', '.join(ENDING_TYPES)}."
            )
    endings = study.get("derive", {}).get("endings", {})
    prefix = f"{source}: `studies.{name}.derive.endings"
    if endings.get("gap_days") is not None:
        if extraction is None and not {"followup_days", "days"} <= mapped:
            raise ConfigError(
                f"{prefix}.gap_days` infers endings from the time between a patient's last "
                "session and the data extraction, so the study needs that time: set "
                f"`{key}.extraction_date` (the day of the export, YYYY-MM-DD) with dated sessions, "
                "or, for an export without dates, map columns to 'days' and 'followup_days' under "
                f"`{key}.columns`."
            )
    elif endings.get("planned_sessions") is not None:
        raise ConfigError(
            f"{prefix}.planned_sessions` only applies to endings inferred from a gap; set "
            f"`studies.{name}.derive.endings.gap_days` too, or remove it."
        )


def _study_instrument(study: dict[str, Any], score: str, key: str, source: str):
    """Return the study's instrument (with its overrides) that produces the score *score*."""
    from .instruments import load_instrument
    from .score import score_columns

    specs = (study.get("measures") or {}).get("instruments") or {}
    items = specs.items() if isinstance(specs, dict) else ((name, None) for name in specs)
    for ident, spec in items:
        own = isinstance(spec, dict) and "items" in spec
        try:
            inst = load_instrument(spec if own else ident, overrides=None if own else spec)
        except (ValueError, KeyError, TypeError, FileNotFoundError) as error:
            raise ConfigError(
                f"{source}: `{key}.measures.instruments.{ident}` cannot be loaded: {error}"
            ) from None
        if score in score_columns(inst):
            return inst
    raise ConfigError(
        f"{source}: `{key}.measures` uses the score {score!r}, which none of its `instruments` "
        "produces; "
        "scores are named '<instrument>_total' or '<instrument>_<subscale>', e.g. 'ors_total' "
        "or 'wai_sr_bond'."
    )


def _check_instrument_numbers(name: str, study: dict[str, Any], source: str) -> None:
    """Numbers the derive stage takes from the outcome instrument must exist before any job.

    Reliable change, and sudden gains without their own ``cutoff``, need the outcome's
    reliable change value (``rci``); instruments whose published value could not be
    confirmed ship none (PHQ-9, ORS), so the study must set it or switch the variable off.
    """
    key = f"studies.{name}"
    measures = study.get("measures") or {}
    if "outcome" not in measures or "alliance" not in measures:
        return
    outcome = _study_instrument(study, measures["outcome"], key, source)
    _study_instrument(study, measures["alliance"], key, source)
    derive = study.get("derive") or {}
    needs = []
    if (derive.get("reliable_change") or {}).get("enabled", True):
        needs.append(("reliable change", f"`{key}.derive.reliable_change.enabled: false`"))
    gains = derive.get("sudden_gains") or {}
    if gains.get("enabled", True) and gains.get("cutoff") is None:
        needs.append(
            (
                "sudden gains",
                f"`{key}.derive.sudden_gains.cutoff: <points>` or "
                f"`{key}.derive.sudden_gains.enabled: false`",
            )
        )
    if outcome.rci is None and needs:
        what = " and ".join(n[0] for n in needs)
        other = " and ".join(n[1] for n in needs)
        raise ConfigError(
            f"{source}: {what} need{'s' if len(needs) == 1 else ''} the reliable change value "
            f"of the outcome instrument "
            f"{outcome.id!r}, and its file ships none (it could not be confirmed from a "
            f"published source). Set `{key}.measures.instruments.{outcome.id}: "
            f"{{rci: <points>}}`, or "
            f"set {other}."
        )


def _check_presets(name: str, study: dict[str, Any], config: dict[str, Any], source: str) -> None:
    """Presets the study fits must find the columns and derived variables they use."""
    key = f"studies.{name}"
    mapped = set(study["read"]["columns"].values())
    measures = study.get("measures") or {}
    derive = study.get("derive") or {}
    for model in study.get("models", []):
        spec = config["models"].get(model) or {}
        preset = spec.get("preset")
        options = spec.get("options") or {}
        moderator = options.get("moderator")
        if (
            moderator
            and (moderator == "modality" or str(moderator).startswith("moderator_"))
            and moderator not in mapped
        ):
            raise ConfigError(
                f"{source}: model {model!r} is moderated by {moderator!r}, but "
                f"`{key}.read.columns` maps no column to {moderator!r}. Map the column, or "
                f"remove {model!r} from `{key}.models`."
            )
        if preset == "feedback":
            arm = options.get("arm", "condition")
            if arm == "condition" and "condition" not in mapped:
                raise ConfigError(
                    f"{source}: model {model!r} (preset feedback) compares arms, but "
                    f"`{key}.read.columns` maps no column to 'condition'. Map the arm column, or "
                    f"remove {model!r} from `{key}.models`."
                )
            if not (derive.get("on_track") or {}).get("enabled", True):
                raise ConfigError(
                    f"{source}: model {model!r} (preset feedback) needs the on-track status, but "
                    f"`{key}.derive.on_track.enabled` is false. Switch it on, or remove "
                    f"{model!r} from `{key}.models`."
                )
        elif preset == "rupture_repair" and not (derive.get("ruptures") or {}).get("enabled", True):
            raise ConfigError(
                f"{source}: model {model!r} (preset rupture_repair) needs detected ruptures, but "
                f"`{key}.derive.ruptures.enabled` is false. Switch it on, or remove {model!r} "
                f"from `{key}.models`."
            )
        elif preset == "alliance_components" and "alliance" in measures:
            alliance = _study_instrument(study, measures["alliance"], key, source)
            wanted = options.get("components", ("task", "bond", "goal"))
            missing = [c for c in wanted if c not in alliance.subscales]
            if missing:
                have = ", ".join(alliance.subscales) or "none"
                raise ConfigError(
                    f"{source}: model {model!r} (preset alliance_components) needs the alliance "
                    f"subscale(s) {', '.join(missing)}, but {alliance.id!r} has {have}. Use an "
                    f"alliance instrument with these subscales, or remove {model!r} from "
                    f"`{key}.models`."
                )


def _check_model_names(models: dict[str, Any], source: str) -> None:
    """Refuse a model name that another output of a study already uses.

    A model's table is ``tables/<model>.*`` and its result ``models/<model>.json``; the
    descriptive tables, the table of all models, the binary-outcome table, the
    expected-response model (``models/expected_response.json``), the simple-slopes tables
    (``simple_slopes_<model>``) and the comparisons (``models/lrt_<a>_vs_<b>``) live beside
    them (:data:`allianceflow.stages.RESERVED_MODEL_NAMES`). Names are compared without
    regard to case, as macOS's and Windows's file systems compare them.
    """
    from .stages import RESERVED_MODEL_NAMES, RESERVED_MODEL_PREFIXES

    seen: dict[str, str] = {}
    for model in models:
        other = seen.setdefault(model.casefold(), model)
        if other != model:
            raise ConfigError(
                f"{source}: the model names {other!r} and {model!r} under `models` differ only "
                "in case; on macOS and Windows, whose file systems ignore case, they would "
                "write the same files. Rename one of them."
            )
    for model in models:
        folded = model.casefold()
        taken = folded in RESERVED_MODEL_NAMES
        prefix = next((p for p in RESERVED_MODEL_PREFIXES if folded.startswith(p)), None)
        if not (taken or prefix):
            continue
        if folded == "expected_response":
            why = (
                "is also the name of the expected-response model derive writes "
                "(models/expected_response.json)"
            )
        elif taken:
            why = (
                f"is also the name of a table every study writes (tables/{folded}.csv and "
                "the other formats)"
            )
        else:
            names = "simple-slopes tables" if prefix == "simple_slopes_" else "model comparisons"
            why = f"starts with {prefix!r}, which names the {names}"
        stem = model[len(prefix) :] if prefix else model
        suggestion = f"{stem}_model" if stem else f"model_{model.strip('_')}"
        raise ConfigError(
            f"{source}: the model name {model!r} under `models` {why}, so the two could "
            "write the same file. Rename the model (and every study or comparison that "
            f"names it), e.g. to '{suggestion}'. Names not to use: "
            f"{', '.join(RESERVED_MODEL_NAMES)} (in any case), and names starting with "
            f"{' or '.join(RESERVED_MODEL_PREFIXES)}."
        )


def validate_config(
    config: dict[str, Any],
    schema: dict[str, Any] | str | Path = SCHEMA_PATH,
    *,
    source: str = "config.yaml",
) -> dict[str, Any]:
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
    _moved_keys(resolved, source)
    for study in (
        (resolved.get("studies") or {}).values()
        if isinstance(resolved.get("studies"), dict)
        else ()
    ):
        # YAML reads an unquoted 2025-09-01 as a date; the schema wants the text.
        read = study.get("read") if isinstance(study, dict) else None
        if isinstance(read, dict) and isinstance(read.get("extraction_date"), datetime.date):
            read["extraction_date"] = read["extraction_date"].isoformat()[:10]
    errors = sorted(
        _FillingValidator(schema).iter_errors(resolved),
        key=lambda e: (-len(e.absolute_path), _key(e.absolute_path)),
    )
    if errors:
        raise ConfigError(_describe(errors[0], source))
    _check_model_names(resolved["models"], source)
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
                    f"`reference_study` must name another study; got {ref!r}. Other studies: "
                    f"{others}."
                )
    for name, study in resolved["studies"].items():
        _check_endings(name, study, source)
        _check_instrument_numbers(name, study, source)
        _check_presets(name, study, resolved, source)
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
