"""Instrument library: scoring rules of questionnaires, as data.

Each built-in instrument is one YAML file in this folder (``wai_sr.yaml``, ``ors.yaml``,
...), validated against ``instrument.schema.yaml`` (JSON Schema 2020-12). A study can
define its own instrument in its config with the same fields, and can override a
cut-off, a reliable-change value or the proration limit of a built-in one.

Only scoring rules are shipped, never item wordings (most instruments are copyrighted).

Examples
--------
>>> from allianceflow.instruments import load_instrument
>>> core10 = load_instrument("core10")
>>> core10.item_columns[:3]
('core10_1', 'core10_2', 'core10_3')
>>> core10.reverse, core10.cutoff, core10.rci
((2, 3), 11.0, 6.0)
>>> load_instrument("ors", overrides={"rci": 5}).rci
5.0
"""

from __future__ import annotations

import copy
import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache, lru_cache
from importlib import resources
from typing import Literal

import yaml

__all__ = [
    "Instrument",
    "available_instruments",
    "load_instrument",
    "load_schema",
    "validate_definition",
    "OVERRIDE_KEYS",
]

#: Keys a study may override on any instrument (``instruments: {ors: {cutoff: 28}}``).
OVERRIDE_KEYS = (
    "cutoff",
    "rci",
    "max_missing",
    "subscale_max_missing",
    "not_applicable",
    "response",
    "reverse",
    "subscales",
)

#: Source keys that need no entry in ``sources``.
_FREE_SOURCES = ("none", "study override")

Construct = Literal["alliance", "empathy", "outcome", "other"]
Direction = Literal["higher_is_better", "lower_is_better"]
TotalRule = Literal["sum", "mean"]
ProrationMethod = Literal["item_mean", "subscale_item_mean_rounded"]

# z for a two-sided 95% interval, as in Jacobson & Truax (1991).
_Z95 = 1.96


@dataclass(frozen=True)
class Instrument:
    """Validated scoring rules of one instrument.

    Attributes
    ----------
    id : str
        Instrument id; item columns are ``<id>_1`` ... ``<id>_<n_items>``.
    name : str
        Full name.
    construct : {'alliance', 'empathy', 'outcome', 'other'}
    informant : tuple of str
        Who completes it by design (scores are computed for any informant).
    n_items : int
    response_min, response_max : float
        Range of one raw item response.
    reverse : tuple of int
        1-based reverse-keyed items, scored as ``response_min + response_max - x``.
    subscales : dict of str to tuple of int
        Subscale name -> 1-based item numbers.
    total_rule : {'sum', 'mean'}
    direction : {'higher_is_better', 'lower_is_better'}
    max_missing : int
        A total is scored (prorated) when at most this many items are missing.
    subscale_max_missing : int
        The same limit for each subscale.
    proration_method : {'item_mean', 'subscale_item_mean_rounded'}
    cutoff : float or None
        Clinical cut-off of the total; None when none applies or it is unconfirmed and
        the study has not supplied it (see :meth:`require`).
    clinical_range : {'below', 'at_or_above'} or None
    rci : float or None
        Reliable-change value of the total (same None rule as ``cutoff``).
    unconfirmed : tuple of str
        Fields whose published value could not be confirmed (e.g. ``('cutoff',)``).
    not_applicable : float or None
        Code of a "does not apply" answer (outside the response range), or None when the
        instrument has none. Such answers count as missing items for proration.
    definition : dict
        The validated definition, with overrides applied (sources included).
    """

    id: str
    name: str
    construct: Construct
    informant: tuple[str, ...]
    n_items: int
    response_min: float
    response_max: float
    reverse: tuple[int, ...]
    subscales: dict[str, tuple[int, ...]]
    total_rule: TotalRule
    direction: Direction
    max_missing: int
    subscale_max_missing: int
    proration_method: ProrationMethod
    cutoff: float | None
    clinical_range: Literal["below", "at_or_above"] | None
    rci: float | None
    unconfirmed: tuple[str, ...]
    definition: dict = field(repr=False, compare=False)
    not_applicable: float | None = None

    @property
    def item_columns(self) -> tuple[str, ...]:
        """Names of the item columns, ``<id>_1`` ... ``<id>_<n_items>``."""
        return tuple(f"{self.id}_{i}" for i in range(1, self.n_items + 1))

    def scale_items(self, scale: str) -> tuple[int, ...]:
        """1-based items of ``scale`` ('total' or a subscale name)."""
        if scale == "total":
            return tuple(range(1, self.n_items + 1))
        if scale not in self.subscales:
            allowed = ["total", *self.subscales]
            raise KeyError(f"`scale` must be one of {allowed} for {self.id!r}; got {scale!r}.")
        return self.subscales[scale]

    def require(self, name: Literal["cutoff", "rci"]) -> float:
        """Return ``cutoff`` or ``rci``, raising if the study must supply it.

        Raises
        ------
        ValueError
            If the value is missing (unconfirmed, or not applicable to this instrument).
        """
        if name not in ("cutoff", "rci"):
            raise ValueError(f"`name` must be 'cutoff' or 'rci'; got {name!r}.")
        value = getattr(self, name)
        if value is None:
            why = (
                "could not be confirmed against a published source"
                if name in self.unconfirmed
                else "is not defined for this instrument"
            )
            fact = self.definition.get(name) or {}
            hint = ""
            if isinstance(fact, dict) and fact.get("suggested") is not None:
                hint = f" (a commonly quoted value is {fact['suggested']})"
            raise ValueError(
                f"The {name} of instrument {self.id!r} {why}; set it for the study, e.g. "
                f"config `instruments: {{{self.id}: {{{name}: <number>}}}}`{hint}."
            )
        return value


# --------------------------------------------------------------------------- files


def _package_files():
    return resources.files(__name__)


@lru_cache(maxsize=1)
def load_schema() -> dict:
    """Return the instrument JSON schema (``instrument.schema.yaml``) as a dict."""
    text = _package_files().joinpath("instrument.schema.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def available_instruments() -> list[str]:
    """Ids of the built-in instruments, sorted.

    Examples
    --------
    >>> available_instruments()
    ['care', 'core10', 'gad7', 'oq45', 'ors', 'phq9', 'softa_s', 'srs', 'wai_sr']
    """
    names = []
    for entry in _package_files().iterdir():
        name = entry.name
        if name.endswith(".yaml") and not name.endswith(".schema.yaml"):
            names.append(name[: -len(".yaml")])
    return sorted(names)


@cache
def _read_builtin(name: str) -> dict:
    text = _package_files().joinpath(f"{name}.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


# --------------------------------------------------------------------------- validation


def _path(error) -> str:
    parts = [str(p) for p in error.absolute_path]
    if error.validator == "required":
        # Name the missing field itself, not its parent.
        missing = [name for name in error.validator_value if name not in error.instance]
        parts.append(missing[0] if missing else "?")
    elif error.validator == "additionalProperties" and isinstance(error.instance, dict):
        known = set(error.schema.get("properties", {}))
        extra = sorted(k for k in error.instance if k not in known)
        parts.append(extra[0] if extra else "?")
    return ".".join(parts) if parts else "<root>"


def _where(definition: Mapping) -> str:
    ident = definition.get("id") if isinstance(definition, Mapping) else None
    return f"instrument {ident!r}" if ident else "instrument definition"


def _normalise(definition: Mapping) -> dict:
    """Accept shorthand numbers for ``cutoff`` / ``rci`` (``cutoff: 28``)."""
    out = copy.deepcopy(dict(definition))
    for key in ("cutoff", "rci"):
        value = out.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = {"value": float(value), "source": "study override"}
    return out


def validate_definition(definition: Mapping) -> dict:
    """Validate an instrument definition; return it normalised.

    Checks the JSON schema first, then the rules a schema cannot express (item numbers
    within range, min < max, sources that exist, ...).

    Parameters
    ----------
    definition : mapping
        Fields as in a built-in YAML file. ``cutoff`` and ``rci`` may be plain numbers.

    Returns
    -------
    dict
        The normalised definition.

    Raises
    ------
    ValueError
        Naming the offending field, what was received and what is allowed.
    """
    import jsonschema

    if not isinstance(definition, Mapping):
        raise ValueError(
            "An instrument definition must be a mapping of fields; "
            f"got {type(definition).__name__}."
        )
    d = _normalise(definition)
    where = _where(d)
    validator = jsonschema.Draft202012Validator(load_schema())
    errors = sorted(validator.iter_errors(d), key=lambda e: (list(e.absolute_path), e.message))
    if errors:
        err = errors[0]
        # For oneOf/anyOf failures the most specific sub-error names the field best.
        best = jsonschema.exceptions.best_match(errors)
        if best is not None:
            err = best
        raise ValueError(f"{where}: field `{_path(err)}` is invalid: {err.message}.")
    _check_semantics(d, where)
    return d


def _check_items(values, n_items: int, field_name: str, where: str) -> None:
    bad = [i for i in values if i > n_items]
    if bad:
        raise ValueError(
            f"{where}: field `{field_name}` names item(s) {bad} but the instrument has "
            f"{n_items} items (allowed 1..{n_items})."
        )


def _check_source(fact: Mapping, field_name: str, sources: Mapping, where: str) -> None:
    src = fact.get("source")
    if src is None or src in _FREE_SOURCES or src in sources:
        return
    raise ValueError(
        f"{where}: field `{field_name}.source` is {src!r}, which is not a key of `sources` "
        f"({sorted(sources)}) nor one of {list(_FREE_SOURCES)}."
    )


def _check_semantics(d: dict, where: str) -> None:
    n = d["items"]
    sources = d["sources"]
    resp = d["response"]
    if resp["min"] is None or resp["max"] is None:
        if not resp.get("unconfirmed"):
            raise ValueError(
                f"{where}: field `response` has a null min or max; mark it `unconfirmed: true` "
                "when the range could not be confirmed, or give both numbers."
            )
    elif not resp["min"] < resp["max"]:
        raise ValueError(
            f"{where}: field `response` must have min < max; "
            f"got min={resp['min']}, max={resp['max']}."
        )
    _check_source(resp, "response", sources, where)
    na = resp.get("not_applicable")
    known = resp["min"] is not None and resp["max"] is not None
    if na is not None and known and resp["min"] <= na <= resp["max"]:
        raise ValueError(
            f"{where}: field `response.not_applicable` must lie outside the response range "
            f"{resp['min']:g} to {resp['max']:g} (it is a code, not an answer); got {na:g}."
        )
    if "not_applicable_source" in resp:
        _check_source(
            {"source": resp["not_applicable_source"]}, "response.not_applicable", sources, where
        )
    _check_items(d.get("reverse") or [], n, "reverse", where)
    if "reverse_source" in d:
        _check_source({"source": d["reverse_source"]}, "reverse", sources, where)
    for name, sub in d.get("subscales", {}).items():
        if name == "total":
            raise ValueError(f"{where}: field `subscales.total` is reserved for the total score.")
        if sub["items"] is None and not sub.get("unconfirmed"):
            raise ValueError(
                f"{where}: field `subscales.{name}.items` is null; mark the subscale "
                "`unconfirmed: true` when its items could not be confirmed, or list them."
            )
        _check_items(sub["items"] or [], n, f"subscales.{name}.items", where)
        _check_source(sub, f"subscales.{name}", sources, where)
    pr = d["proration"]
    if pr["max_missing"] >= n:
        raise ValueError(
            f"{where}: field `proration.max_missing` must be less than the number of items "
            f"({n}); got {pr['max_missing']}."
        )
    _check_source(pr, "proration", sources, where)
    if pr.get("method") == "subscale_item_mean_rounded":
        covered = sorted({i for s in d.get("subscales", {}).values() for i in s["items"] or []})
        if covered != list(range(1, n + 1)):
            missing = sorted(set(range(1, n + 1)) - set(covered))
            raise ValueError(
                f"{where}: field `proration.method` 'subscale_item_mean_rounded' needs "
                f"subscales that cover every item; items {missing} are in no subscale."
            )
    for key in ("cutoff", "rci"):
        fact = d.get(key)
        if fact is None:
            continue
        _check_source(fact, key, sources, where)
        if "value" in fact:
            if fact.get("unconfirmed") and fact["value"] is not None:
                raise ValueError(
                    f"{where}: field `{key}.value` must be null when `{key}.unconfirmed` is "
                    f"true (put the unconfirmed number in `{key}.suggested`); got {fact['value']}."
                )
            if fact["value"] is None and not fact.get("unconfirmed"):
                raise ValueError(
                    f"{where}: field `{key}.value` is null; mark it `unconfirmed: true` or "
                    f"set `{key}: null` when the instrument has no {key}."
                )
            if key == "rci" and fact["value"] is not None and fact["value"] <= 0:
                raise ValueError(f"{where}: field `rci.value` must be > 0; got {fact['value']}.")
    if d.get("cutoff") is not None and "clinical_range" not in d:
        raise ValueError(
            f"{where}: field `clinical_range` is required when `cutoff` is given "
            "(allowed: 'below', 'at_or_above')."
        )


# --------------------------------------------------------------------------- overrides


def _check_number(value, key: str, where: str, *, integer: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if integer:
        ok = ok and float(value).is_integer() and value >= 0
    if not ok:
        kind = "a non-negative integer" if integer else "a finite number"
        raise ValueError(f"{where}: override `{key}` must be {kind}; got {value!r}.")


def _apply_overrides(d: dict, overrides: Mapping | None, where: str) -> dict:
    if not overrides:
        return d
    if not isinstance(overrides, Mapping):
        raise ValueError(
            f"{where}: `overrides` must be a mapping such as {{'cutoff': 28}}; "
            f"got {type(overrides).__name__}."
        )
    unknown = sorted(set(overrides) - set(OVERRIDE_KEYS))
    if unknown:
        close = difflib.get_close_matches(unknown[0], OVERRIDE_KEYS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(
            f"{where}: override `{unknown[0]}` is not allowed{hint}; "
            f"allowed: {list(OVERRIDE_KEYS)}."
        )
    d = copy.deepcopy(d)
    if "not_applicable" in overrides:
        value = overrides["not_applicable"]
        if value is not None:
            _check_number(value, "not_applicable", where)
        d["response"]["not_applicable"] = None if value is None else float(value)
    for key in ("cutoff", "rci"):
        if key in overrides:
            value = overrides[key]
            if value is None:
                d[key] = None
                continue
            _check_number(value, key, where)
            if key == "rci" and value <= 0:
                raise ValueError(f"{where}: override `rci` must be > 0; got {value!r}.")
            old = d.get(key) or {}
            published = old.get("value")
            if published is None:
                published = old.get("suggested")
            d[key] = {
                "value": float(value),
                "source": "study override",
                "note": f"study override (published or suggested value: {published})",
            }
    _override_scoring_key(d, overrides, where)
    if key_present := [k for k in ("max_missing", "subscale_max_missing") if k in overrides]:
        for key in key_present:
            _check_number(overrides[key], key, where, integer=True)
            d["proration"][key] = int(overrides[key])
        d["proration"]["source"] = "study override"
        d["proration"]["unconfirmed"] = False
    return d


def _item_list(value, key: str, where: str) -> list[int]:
    ok = (
        isinstance(value, (list, tuple))
        and all(isinstance(i, int) and not isinstance(i, bool) and i >= 1 for i in value)
        and len(set(value)) == len(value)
    )
    if not ok:
        raise ValueError(
            f"{where}: override `{key}` must be a list of distinct item numbers (1, 2, ...); "
            f"got {value!r}."
        )
    return list(value)


def _override_scoring_key(d: dict, overrides: Mapping, where: str) -> None:
    """Apply the study's `response`, `reverse` and `subscales` overrides to *d* in place.

    These supply scoring rules that a built-in file leaves null because they could not be
    confirmed (e.g. the SOFTA-s item key); they are recorded with source "study override".
    """
    if "response" in overrides:
        value = overrides["response"]
        if not isinstance(value, Mapping) or set(value) != {"min", "max"}:
            raise ValueError(
                f"{where}: override `response` must be a mapping {{min: <number>, max: "
                f"<number>}}; got {value!r}."
            )
        for bound in ("min", "max"):
            _check_number(value[bound], f"response.{bound}", where)
        d["response"].update(
            min=float(value["min"]),
            max=float(value["max"]),
            source="study override",
            unconfirmed=False,
        )
    if "reverse" in overrides:
        d["reverse"] = _item_list(overrides["reverse"], "reverse", where)
        d["reverse_source"] = "study override"
    if "subscales" in overrides:
        value = overrides["subscales"]
        known = d.get("subscales") or {}
        if not isinstance(value, Mapping) or not value:
            raise ValueError(
                f"{where}: override `subscales` must map subscale names ({sorted(known)}) to "
                f"lists of item numbers; got {value!r}."
            )
        for name, items in value.items():
            if name not in known:
                raise ValueError(
                    f"{where}: override `subscales` names {name!r}, which is not a subscale of "
                    f"this instrument (allowed: {sorted(known)})."
                )
            known[name].update(
                items=_item_list(items, f"subscales.{name}", where),
                source="study override",
                unconfirmed=False,
            )


def _unscorable(d: dict) -> list[str]:
    """Scoring rules a definition leaves null (unconfirmed), in words."""
    missing = []
    if d["response"]["min"] is None or d["response"]["max"] is None:
        missing.append("response range (`response: {min: ..., max: ...}`)")
    if d.get("reverse", []) is None:
        missing.append("reverse-keyed items (`reverse: [...]`, [] for none)")
    subs = sorted(k for k, v in (d.get("subscales") or {}).items() if v["items"] is None)
    if subs:
        missing.append(f"items of the subscales {subs} (`subscales: {{<name>: [...]}}`)")
    return missing


# --------------------------------------------------------------------------- build


def _fact_value(fact) -> float | None:
    if fact is None:
        return None
    if "value" in fact:
        return None if fact["value"] is None else float(fact["value"])
    # Jacobson & Truax (1991): RCI = z * sqrt(2) * SD * sqrt(1 - r).
    return _Z95 * math.sqrt(2.0) * fact["sd"] * math.sqrt(1.0 - fact["reliability"])


def _build(d: dict) -> Instrument:
    missing = _unscorable(d)
    if missing:
        raise ValueError(
            f"{_where(d)} cannot be scored as shipped: its {'; '.join(missing)} could not be "
            "confirmed against a published source. Set them for the study from the "
            f"developers' scoring key, e.g. config `instruments: {{{d['id']}: {{response: "
            "{min: <lowest>, max: <highest>}, reverse: [<items>], subscales: "
            "{<name>: [<items>]}}}`."
        )
    pr = d["proration"]
    unconfirmed = []
    for key in ("cutoff", "rci"):
        fact = d.get(key)
        if fact is not None and fact.get("unconfirmed"):
            unconfirmed.append(key)
    if pr.get("unconfirmed"):
        unconfirmed.append("proration")
    if any(s.get("unconfirmed") for s in d.get("subscales", {}).values()):
        unconfirmed.append("subscales")
    cutoff = _fact_value(d.get("cutoff"))
    n = d["items"]
    if cutoff is not None:
        if d["total"] == "sum":
            hi = n * d["response"]["max"]
            lo = n * d["response"]["min"]
        else:
            hi, lo = d["response"]["max"], d["response"]["min"]
        if not lo <= cutoff <= hi:
            raise ValueError(
                f"{_where(d)}: field `cutoff` must lie within the total's range "
                f"[{lo:g}, {hi:g}]; got {cutoff:g}."
            )
    return Instrument(
        id=d["id"],
        name=d["name"],
        construct=d["construct"],
        informant=tuple(d["informant"]),
        n_items=n,
        response_min=float(d["response"]["min"]),
        response_max=float(d["response"]["max"]),
        reverse=tuple(sorted(d.get("reverse", []))),
        subscales={k: tuple(v["items"]) for k, v in d.get("subscales", {}).items()},
        total_rule=d["total"],
        direction=d["direction"],
        max_missing=int(pr["max_missing"]),
        subscale_max_missing=int(pr.get("subscale_max_missing", pr["max_missing"])),
        proration_method=pr.get("method", "item_mean"),
        cutoff=cutoff,
        clinical_range=d.get("clinical_range"),
        rci=_fact_value(d.get("rci")),
        unconfirmed=tuple(unconfirmed),
        definition=d,
        not_applicable=(
            None
            if d["response"].get("not_applicable") is None
            else float(d["response"]["not_applicable"])
        ),
    )


def load_instrument(
    spec: str | Mapping | Instrument, overrides: Mapping | None = None
) -> Instrument:
    """Load a built-in or study-defined instrument, with optional study overrides.

    Parameters
    ----------
    spec : str, mapping or Instrument
        A built-in id (see :func:`available_instruments`), or a mapping with the same
        fields as a built-in YAML file (a study-defined instrument from config), or an
        :class:`Instrument` (returned as is, with ``overrides`` applied).
    overrides : mapping, optional
        Replaces published numbers for this study: ``cutoff``, ``rci`` (numbers, or None
        to drop), ``max_missing`` and ``subscale_max_missing`` (non-negative integers),
        ``not_applicable`` (the export's code for "does not apply", or None), and the
        scoring key a built-in file leaves null because it could not be confirmed:
        ``response`` (``{"min": ..., "max": ...}``), ``reverse`` (item numbers) and
        ``subscales`` (``{name: [items]}`` for the file's subscales).
        Overridden numbers are recorded with source "study override".

    Returns
    -------
    Instrument

    Raises
    ------
    KeyError
        Unknown built-in id (the message lists the available ids and the closest one).
    ValueError
        Invalid definition or override; the message names the field. Also when a scoring
        rule is left null as unconfirmed (e.g. the SOFTA-s item key) and the overrides do
        not supply it: the message names every missing rule.
    """
    if isinstance(spec, Instrument):
        definition = spec.definition
    elif isinstance(spec, str):
        names = available_instruments()
        if spec not in names:
            close = difflib.get_close_matches(spec, names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else "."
            raise KeyError(
                f"`spec` {spec!r} is not a built-in instrument (available: {names}){hint} "
                "A study-defined instrument is passed as a mapping of fields."
            )
        definition = _read_builtin(spec)
    elif isinstance(spec, Mapping):
        definition = spec
    else:
        raise ValueError(
            "`spec` must be an instrument id, a mapping of fields or an Instrument; "
            f"got {type(spec).__name__}."
        )
    d = validate_definition(definition)
    d = _apply_overrides(d, overrides, _where(d))
    if overrides:
        d = validate_definition(d)
    return _build(d)
