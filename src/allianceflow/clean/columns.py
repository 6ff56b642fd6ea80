"""Columns: wide → long, the mapping to canonical names, and the study's instruments."""

from __future__ import annotations

import re
from typing import Any

import pandas as pd

from ..contract import ITEM_PATTERN
from ..io import DataError, _stripped
from .state import ID_COLUMNS, ITEM_NAME, MODERATOR_NAME, closest_text

__all__ = [
    "map_columns",
    "wide_columns",
    "to_long",
    "instrument_table",
    "not_applicable_codes",
    "extraction_day",
]

_REQUIRED = ("patient", "session")
WIDE_PATTERN = r"^(?P<name>.+)_s(?P<session>\d+)$"


def map_columns(
    raw: pd.DataFrame, columns: dict[str, str], *, source: str, config: str = "config.yaml"
) -> pd.DataFrame:
    """Rename raw columns to canonical names and keep only the mapped ones.

    Parameters
    ----------
    raw : pandas.DataFrame
        Text columns plus ``_source_row``.
    columns : dict
        Raw name → canonical name (an id column of :data:`ID_COLUMNS` or
        ``<instrument>_<item>``).
    source : str
        The file name, for messages.
    config : str
        The configuration file's name, for messages.

    Returns
    -------
    pandas.DataFrame
        ``_source_row`` and the mapped columns under their canonical names.

    Raises
    ------
    DataError
        When a mapped raw column is not in the file (the message names the file's columns
        with a similar name, or lists its columns when none is similar), a canonical name
        is neither an id column nor ``<instrument>_<item>``, two raw columns map to one
        name, or a required canonical column (patient, session) is not mapped.
    """
    present = [c for c in raw.columns if c != "_source_row"]
    for raw_name, canonical in columns.items():
        if raw_name not in raw.columns:
            raise DataError(
                f"{source}: the config maps column {raw_name!r} to {canonical!r}, but the file "
                f"has no column {raw_name!r}. {closest_text(raw_name, present)} Fix the name "
                f"under `read.columns` in {config}."
            )
        if (
            canonical not in ID_COLUMNS
            and not ITEM_NAME.match(canonical)
            and not MODERATOR_NAME.match(canonical)
        ):
            raise DataError(
                f"{source}: column {raw_name!r} is mapped to {canonical!r}, which is neither a "
                f"canonical column ({', '.join(ID_COLUMNS)}), a patient-level moderator such "
                "as 'moderator_referral', nor an item name such as 'ors_1'."
            )
    seen: dict[str, str] = {}
    for raw_name, canonical in columns.items():
        if canonical in seen:
            raise DataError(
                f"{source}: columns {seen[canonical]!r} and {raw_name!r} are both mapped to "
                f"{canonical!r}. Map only one of them under `read.columns` in {config}."
            )
        seen[canonical] = raw_name
    mapped = set(columns.values())
    for required in _REQUIRED:
        if required not in mapped:
            raise DataError(
                f"{source}: no column is mapped to {required!r}. "
                f"{closest_text(required, present)} Add `<raw name>: {required}` under "
                f"`columns` in {config}."
            )
    out = raw[["_source_row", *columns]]  # a new frame: named in place, not copied again
    out.columns = [columns.get(c, c) for c in out.columns]
    return out


def wide_columns(
    raw: pd.DataFrame, pattern: str, source: str, config: str = "config.yaml"
) -> dict[str, tuple[str, int]]:
    """Per-session columns of a wide export: raw name → (name, session number)."""
    try:
        regex = re.compile(pattern)
    except re.error as error:
        raise DataError(
            f"{config}: `wide_pattern` {pattern!r} is not a valid regular expression ({error})."
        ) from None
    if not {"name", "session"} <= set(regex.groupindex):
        raise DataError(
            f"{config}: `wide_pattern` {pattern!r} must have the named groups (?P<name>...) "
            "and (?P<session>...), e.g. '^(?P<name>.+)_s(?P<session>\\d+)$'."
        )
    out = {}
    for column in raw.columns:
        match = regex.match(str(column))
        if match and match["session"].isdigit():
            out[column] = (match["name"], int(match["session"]))
    if not out:
        raise DataError(
            f"{source}: `format` is wide but no column matches `wide_pattern` {pattern!r} "
            f"(columns: {', '.join(repr(c) for c in list(raw.columns)[1:6])}, ...). Set "
            "`wide_pattern` for this study, or `format: long`."
        )
    return out


def to_long(
    raw: pd.DataFrame, study: dict[str, Any], source: str, codes: set[str], config: str
) -> tuple[pd.DataFrame, int]:
    """Melt ``<name>_s<k>`` columns into one row per patient × session with any value."""
    per_session = wide_columns(raw, study.get("wide_pattern", WIDE_PATTERN), source, config)
    fixed = [c for c in raw.columns if c not in per_session]
    sessions = sorted({s for _, s in per_session.values()})
    parts = []
    for k in sessions:
        cols = {c: name for c, (name, s) in per_session.items() if s == k}
        part = raw[fixed].copy()
        block = raw[list(cols)].rename(columns=cols)
        text = block.apply(_stripped)
        filled = (text.ne("") & ~text.isin(codes)).any(axis=1)
        part = pd.concat([part, block], axis=1).loc[filled]
        part["__session__"] = str(k)
        parts.append(part)
    long = pd.concat(parts, ignore_index=True).fillna("")
    long = long.sort_values(
        ["_source_row", "__session__"],
        key=lambda s: s.astype(int) if s.name == "__session__" else s,
        kind="mergesort",
    )
    return long.reset_index(drop=True), len(raw)


def instrument_table(study: dict[str, Any], columns) -> dict[str, tuple[float, float, int, int]]:
    """Instrument id → (response_min, response_max, n_items, max_missing) for the study."""
    from ..instruments import available_instruments, load_instrument

    specs = study.get("instruments") or []
    if isinstance(specs, dict):
        entries = list(specs.items())
    else:
        entries = [(s, None) if isinstance(s, str) else (s.get("id"), s) for s in specs]
    table: dict[str, tuple[float, float, int, int]] = {}

    def row(inst) -> tuple[float, float, int, int]:
        return (
            float(inst.response_min),
            float(inst.response_max),
            int(inst.n_items),
            int(inst.max_missing),
        )

    for ident, spec in entries:
        try:
            if isinstance(spec, dict) and "items" in spec:
                inst = load_instrument(spec)
            elif isinstance(spec, dict):
                inst = load_instrument(ident, overrides=spec or None)
            else:
                inst = load_instrument(ident)
        except (ValueError, KeyError, TypeError, FileNotFoundError):
            continue
        table[inst.id] = row(inst)
    builtin = set(available_instruments())
    for column in columns:
        match = ITEM_PATTERN.match(column)
        if match and match["instrument"] in builtin and match["instrument"] not in table:
            table[match["instrument"]] = row(load_instrument(match["instrument"]))
    return table


def not_applicable_codes(study: dict[str, Any], columns) -> dict[str, float]:
    """Instrument id → its "does not apply" code, for the study's instruments that have one.

    Such a code (e.g. the CARE Measure's) lies outside the response range but is an answer,
    not an out-of-range value; the score stage counts it as a missing item.
    """
    from ..instruments import load_instrument

    out = {}
    for ident in instrument_table(study, columns):
        specs = study.get("instruments") or {}
        spec = specs.get(ident) if isinstance(specs, dict) else None
        try:
            if isinstance(spec, dict) and "items" in spec:
                inst = load_instrument({**spec, "id": ident})
            else:
                inst = load_instrument(ident, overrides=spec or None)
        except (ValueError, KeyError, TypeError):
            continue
        if inst.not_applicable is not None:
            out[ident] = inst.not_applicable
    return out


def extraction_day(value: Any, key: str, config: str = "config.yaml") -> pd.Timestamp:
    """Read the study's ``extraction_date`` (``YYYY-MM-DD``) as a timestamp."""
    stamp = pd.to_datetime(str(value), format="%Y-%m-%d", errors="coerce")
    if pd.isna(stamp):
        raise DataError(
            f"{config}: `{key}.read.extraction_date` is {value!r}, which is not a day of the "
            "calendar; write the day the data were exported as YYYY-MM-DD, e.g. '2025-09-01'."
        )
    return stamp
