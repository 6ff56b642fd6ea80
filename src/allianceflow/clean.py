"""Turn a raw session export into the canonical session table.

Every row read is either kept or excluded with a reason: the exclusions table names the
source file, the source row (the row a spreadsheet shows), the rule and the reason, and the
flow counts reconcile ``read == kept + excluded`` at session and at patient level.

The stage runs, in order: drop the columns the study declares (``drop_columns``); the
privacy guard (:mod:`allianceflow.privacy`); wide → long (``format: wide``); the column
mapping; declared missing codes → missing; the rules below, each with a policy from the
study's ``rules`` block; calendar dates → ``days``; optional keyed hashing of ids; and the
data contract (:mod:`allianceflow.contract`).

How treatment ended is patient-level information. A column mapped to ``ending`` records it
(after the study's ``labels``: planned, unilateral, dropout or ongoing; blank when not
recorded); a value on any of a patient's rows applies to all of them, so an export that
writes the discharge reason on the last row only is read correctly. For endings inferred
from a gap (:func:`allianceflow.clinical.endings_and_dose`), the time from each patient's
first session to the data extraction is ``followup_days``: computed from the study's
``extraction_date`` (the day the export was made, ``YYYY-MM-DD``) and the session dates, or
mapped from the export when it has no dates.

=====================  ===========================================  =================  ================
rule                   what it finds                                policies           default
=====================  ===========================================  =================  ================
id_variant             ids that differ only by case or spaces       error merge        merge
                                                                    exclude
missing_id             empty patient id or session number           error exclude      exclude
not_a_number           text in a numeric column                     error exclude      error
                                                                    missing
ending_invalid         an ``ending`` that is not planned,           error missing      error
                       unilateral, dropout or ongoing after
                       ``labels``
ending_conflict        a patient whose ``ending`` or                error exclude      error
                       ``followup_days`` differs between rows
session_invalid        session number < 1 or not whole              error exclude      error
date_invalid           a date that does not match ``date_format``   error exclude      error
after_extraction       a session dated after ``extraction_date``    error exclude      error
                       (or after the mapped ``followup_days``,
                       or a negative ``followup_days``)
duplicate_identical    an identical copy of an earlier row          error exclude      exclude
duplicate_conflicting  same patient × session × informant,          error exclude      exclude
                       different values (all copies)
out_of_range           item outside its instrument's range          error exclude      error
                                                                    missing
session_order          a later session dated before an earlier one  error exclude      flag
                                                                    flag ignore
session_gap            missing session numbers before a session     error flag ignore  flag
therapist_change       a patient's therapist changes                error exclude      flag
                                                                    flag ignore
min_sessions           a patient with fewer than ``min_sessions``   error exclude      exclude
                                                                    flag
=====================  ===========================================  =================  ================

``error`` stops with one paragraph naming the file, row, column and fix; ``exclude`` drops
the row (or, for patient rules, all the patient's rows) and logs it with action
``excluded``; ``missing`` blanks the value (action ``set_missing``); ``merge`` rewrites the
id to the patient's most frequent spelling (action ``altered``); ``flag`` keeps the row and
logs it (action ``flagged``); ``ignore`` does nothing.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from .contract import ENDING_TYPES as _CONTRACT_ENDINGS
from .contract import ITEM_PATTERN, item_ranges, validate_sessions
from .io import DataError, _per_value, _stripped
from .privacy import check_privacy, get_salt, pseudonymise

__all__ = [
    "CleanResult",
    "DataError",
    "clean_sessions",
    "map_columns",
    "reconcile",
    "ENDING_TYPES",
    "EXCLUSION_COLUMNS",
    "ID_COLUMNS",
    "RULES",
]

#: Canonical id and design columns; every other mapped column must be ``<instrument>_<item>``.
ID_COLUMNS = (
    "patient",
    "therapist",
    "session",
    "date",
    "days",
    "condition",
    "informant",
    "rupture",
    "ending",
    "followup_days",
)
#: Recorded ending types (the ``ending`` column after the study's ``labels``); see
#: :func:`allianceflow.clinical.endings_and_dose`.
ENDING_TYPES = _CONTRACT_ENDINGS
#: Patient-level columns: a value recorded on any of a patient's rows applies to all of them.
PATIENT_LEVEL = ("ending", "followup_days")
_REQUIRED = ("patient", "session")
#: Columns of ``exclusions.csv``.
EXCLUSION_COLUMNS = [
    "source_file",
    "source_row",
    "patient",
    "session",
    "rule",
    "action",
    "column",
    "reason",
]
_ITEM = re.compile(r"^[a-z][a-z0-9]*(?:_[a-z0-9]+)*_\d+$")

Policy = Literal["error", "exclude", "flag", "missing", "merge", "ignore"]

#: Every rule: its default policy and the policies it accepts.
RULES: dict[str, tuple[str, tuple[str, ...]]] = {
    "id_variant": ("merge", ("error", "merge", "exclude")),
    "missing_id": ("exclude", ("error", "exclude")),
    "not_a_number": ("error", ("error", "exclude", "missing")),
    "ending_invalid": ("error", ("error", "missing")),
    "ending_conflict": ("error", ("error", "exclude")),
    "session_invalid": ("error", ("error", "exclude")),
    "date_invalid": ("error", ("error", "exclude")),
    "after_extraction": ("error", ("error", "exclude")),
    "duplicate_identical": ("exclude", ("error", "exclude")),
    "duplicate_conflicting": ("exclude", ("error", "exclude")),
    "out_of_range": ("error", ("error", "exclude", "missing")),
    "session_order": ("flag", ("error", "exclude", "flag", "ignore")),
    "session_gap": ("flag", ("error", "flag", "ignore")),
    "therapist_change": ("flag", ("error", "exclude", "flag", "ignore")),
    "min_sessions": ("exclude", ("error", "exclude", "flag")),
}
_ORDER = list(RULES)
_OTHER_DATE_FORMATS = (
    "%Y-%m-%d",
    "%d/%m/%Y",
    "%m/%d/%Y",
    "%d-%m-%Y",
    "%d.%m.%Y",
    "%Y/%m/%d",
    "%d/%m/%y",
    "%Y-%m-%d %H:%M:%S",
)


@dataclass
class CleanResult:
    """What :func:`clean_sessions` returns.

    Attributes
    ----------
    sessions : pandas.DataFrame
        The canonical table, sorted by patient and session (and informant).
    exclusions : pandas.DataFrame
        One row per excluded, altered or flagged source row and rule, with columns
        :data:`EXCLUSION_COLUMNS`; ``action`` is ``excluded``, ``set_missing``,
        ``altered``, ``flagged`` or (check mode only) ``error``.
    flow : dict
        Counts that reconcile (see :func:`reconcile`).
    """

    sessions: pd.DataFrame
    exclusions: pd.DataFrame
    flow: dict[str, Any] = field(default_factory=dict)


def _closest(name: str, candidates) -> str:
    matches = difflib.get_close_matches(name, list(candidates), n=3, cutoff=0.3)
    return ", ".join(repr(m) for m in matches) if matches else "none similar"


def map_columns(raw: pd.DataFrame, columns: dict[str, str], *, source: str) -> pd.DataFrame:
    """Rename raw columns to canonical names and keep only the mapped ones.

    Raises
    ------
    DataError
        When a mapped raw column is not in the file (the message lists the file's closest
        columns), a canonical name is neither an id column nor ``<instrument>_<item>``,
        two raw columns map to one name, or a required canonical column (patient, session)
        is not mapped.
    """
    present = [c for c in raw.columns if c != "_source_row"]
    for raw_name, canonical in columns.items():
        if raw_name not in raw.columns:
            raise DataError(
                f"{source}: the config maps column {raw_name!r} to {canonical!r}, but the file "
                f"has no column {raw_name!r}. Closest columns in the file: "
                f"{_closest(raw_name, present)}. Fix the name under `columns` in config.yaml."
            )
        if canonical not in ID_COLUMNS and not _ITEM.match(canonical):
            raise DataError(
                f"{source}: column {raw_name!r} is mapped to {canonical!r}, which is neither a "
                f"canonical column ({', '.join(ID_COLUMNS)}) nor an item name such as 'ors_1'."
            )
    seen: dict[str, str] = {}
    for raw_name, canonical in columns.items():
        if canonical in seen:
            raise DataError(
                f"{source}: columns {seen[canonical]!r} and {raw_name!r} are both mapped to "
                f"{canonical!r}. Map only one of them under `columns` in config.yaml."
            )
        seen[canonical] = raw_name
    mapped = set(columns.values())
    for required in _REQUIRED:
        if required not in mapped:
            raise DataError(
                f"{source}: no column is mapped to {required!r}. Closest columns in the file: "
                f"{_closest(required, present)}. Add `<raw name>: {required}` under `columns`."
            )
    out = raw[["_source_row", *columns]].rename(columns=columns)
    return out


# --------------------------------------------------------------------------- helpers


def _policies(study: dict[str, Any], key: str) -> dict[str, str]:
    given = dict(study.get("rules") or {})
    out = {}
    for rule, (default, allowed) in RULES.items():
        policy = given.pop(rule, default)
        if policy not in allowed:
            raise DataError(
                f"config.yaml: `{key}.rules.{rule}` is {policy!r}; allowed values are "
                f"{', '.join(repr(a) for a in allowed)}."
            )
        out[rule] = policy
    if given:
        raise DataError(
            f"config.yaml: `{key}.rules` has unknown rule(s) {', '.join(repr(g) for g in sorted(given))}; "
            f"the rules are {', '.join(_ORDER)}."
        )
    return out


def _instrument_table(study: dict[str, Any], columns) -> dict[str, tuple[float, float, int]]:
    """Instrument id -> (response_min, response_max, n_items) for the study's items."""
    try:
        from .instruments import available_instruments, load_instrument
    except ImportError:  # pragma: no cover - the library ships with the package
        return {}
    specs = study.get("instruments") or []
    entries: list[Any] = []
    if isinstance(specs, dict):
        entries = [(k, v) for k, v in specs.items()]
    else:
        entries = [(s, None) if isinstance(s, str) else (s.get("id"), s) for s in specs]
    table: dict[str, tuple[float, float, int]] = {}
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
        table[inst.id] = (float(inst.response_min), float(inst.response_max), int(inst.n_items))
    builtin = set(available_instruments())
    for column in columns:
        match = ITEM_PATTERN.match(column)
        if match and match["instrument"] in builtin and match["instrument"] not in table:
            inst = load_instrument(match["instrument"])
            table[inst.id] = (float(inst.response_min), float(inst.response_max), int(inst.n_items))
    return table


def _extraction_date(value: Any, key: str) -> pd.Timestamp:
    """The study's ``extraction_date`` (``YYYY-MM-DD``) as a timestamp."""
    stamp = pd.to_datetime(str(value), format="%Y-%m-%d", errors="coerce")
    if pd.isna(stamp):
        raise DataError(
            f"config.yaml: `{key}.extraction_date` is {value!r}, which is not a day of the "
            "calendar; write the day the data were exported as YYYY-MM-DD, e.g. '2025-09-01'."
        )
    return stamp


def _number_text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return "" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)


class _Cleaner:
    """State of one cleaning run: the frame, the log of actions and the policies."""

    def __init__(
        self,
        frame: pd.DataFrame,
        *,
        source: str,
        policies: dict[str, str],
        raw_names: dict[str, str],
        key: str,
        collect: bool,
    ) -> None:
        self.frame = frame
        self.source = source
        self.policies = policies
        self.raw_names = raw_names
        self.key = key
        self.collect = collect
        self.records: list[pd.DataFrame] = []
        self.patient_rule: dict[Any, str] = {}

    def raw(self, column: str | None) -> str:
        return self.raw_names.get(column, column) if column else ""

    def record(
        self, part: pd.DataFrame, rule: str, action: str, column: str | None, reason
    ) -> None:
        reasons = reason if isinstance(reason, pd.Series) else pd.Series(reason, index=part.index)
        self.records.append(
            pd.DataFrame(
                {
                    "source_file": self.source,
                    "source_row": part["_source_row"].to_numpy(),
                    "patient": part["patient"].astype(object).to_numpy(),
                    "session": part["_session_text"].to_numpy(),
                    "rule": rule,
                    "action": action,
                    "column": self.raw(column) if column else "",
                    "reason": reasons.loc[part.index].to_numpy(),
                }
            )
        )

    def apply(
        self,
        rule: str,
        mask: pd.Series,
        *,
        column: str | None,
        reason,
        fix: str,
        missing_column: str | None = None,
    ) -> None:
        """Apply the policy of *rule* to the rows in *mask*."""
        mask = mask.reindex(self.frame.index, fill_value=False).astype(bool)
        if not mask.any():
            return
        policy = self.policies[rule]
        if policy == "ignore":
            return
        part = self.frame.loc[mask]
        reasons = reason if isinstance(reason, pd.Series) else pd.Series(reason, index=part.index)
        if policy == "error":
            if not self.collect:
                first = part.index[0]
                where = f", column {self.raw(column)!r}" if column else ""
                others = (
                    f" ({len(part) - 1} more row(s) have the same problem)" if len(part) > 1 else ""
                )
                allowed = [p for p in RULES[rule][1] if p != "error"]
                raise DataError(
                    f"{self.source}, row {part.loc[first, '_source_row']}{where}: "
                    f"{reasons.loc[first]}{others}. {fix} Or set `{self.key}.rules.{rule}` to "
                    f"{' or '.join(repr(a) for a in allowed)} in config.yaml."
                )
            self.record(part, rule, "error", column, reasons)
            self._drop(mask, rule)
        elif policy == "exclude":
            self.record(part, rule, "excluded", column, reasons)
            self._drop(mask, rule)
        elif policy == "missing":
            self.record(part, rule, "set_missing", column, reasons)
            self.frame.loc[mask, missing_column or column] = np.nan
        elif policy == "flag":
            self.record(part, rule, "flagged", column, reasons)
        else:  # pragma: no cover - merge is handled by the id rule
            raise AssertionError(policy)

    def _drop(self, mask: pd.Series, rule: str) -> None:
        gone = self.frame.loc[mask, "patient"].dropna().unique()
        self.frame = self.frame.loc[~mask]
        left = set(self.frame["patient"].dropna().unique())
        for patient in gone:
            if patient not in left:
                self.patient_rule[patient] = rule

    def exclusions(self) -> pd.DataFrame:
        if not self.records:
            return pd.DataFrame({c: pd.Series(dtype=object) for c in EXCLUSION_COLUMNS})
        out = pd.concat(self.records, ignore_index=True)
        out["_order"] = out["rule"].map(_ORDER.index)
        out = out.sort_values(["source_row", "_order", "column"], kind="mergesort").drop(
            columns="_order"
        )
        return out.reset_index(drop=True)


# --------------------------------------------------------------------------- wide → long


def _wide_columns(raw: pd.DataFrame, pattern: str, source: str) -> dict[str, tuple[str, int]]:
    try:
        regex = re.compile(pattern)
    except re.error as error:
        raise DataError(
            f"config.yaml: `wide_pattern` {pattern!r} is not a valid regular expression ({error})."
        ) from None
    if not {"name", "session"} <= set(regex.groupindex):
        raise DataError(
            f"config.yaml: `wide_pattern` {pattern!r} must have the named groups (?P<name>...) "
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


def _to_long(
    raw: pd.DataFrame, study: dict[str, Any], source: str, codes: set[str]
) -> tuple[pd.DataFrame, int]:
    """Melt ``<name>_s<k>`` columns into one row per patient × session with any value."""
    per_session = _wide_columns(
        raw, study.get("wide_pattern", r"^(?P<name>.+)_s(?P<session>\d+)$"), source
    )
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


# --------------------------------------------------------------------------- the stage


def clean_sessions(
    raw: pd.DataFrame,
    study: dict[str, Any],
    *,
    source: str,
    name: str | None = None,
    collect: bool = False,
    env: dict[str, str] | None = None,
) -> CleanResult:
    """Clean one raw export (as read by :func:`allianceflow.io.read_raw`).

    Parameters
    ----------
    raw : pandas.DataFrame
        Text columns plus ``_source_row`` (``raw.attrs["date_columns"]`` names columns of
        typed dates, read as ``%Y-%m-%d``).
    study : dict
        The study's block of the validated config: ``columns``, ``format``,
        ``wide_pattern``, ``missing_codes``, ``decimal``, ``labels``, ``date_format``,
        ``extraction_date``, ``drop_columns``, ``privacy_exempt``, ``hash_ids``,
        ``min_sessions``, ``rules``, ``instruments`` (item ranges come from
        :mod:`allianceflow.instruments`).
    source : str
        The file name, used in exclusions and messages.
    name : str, optional
        The study's name, so messages can name config keys as ``studies.<name>.<key>``.
    collect : bool
        Check mode (``allianceflow check``): rules whose policy is ``error`` log the rows
        with action ``error`` and drop them instead of stopping, so every problem is listed.
    env : dict, optional
        Environment to read the salt from (default ``os.environ``).

    Returns
    -------
    CleanResult
        ``sessions``: the canonical table sorted by patient and session, with ``days``
        since the patient's first kept session (calendar dates are dropped), and, when the
        study has them, the patient-level ``ending`` (category of planned, unilateral,
        dropout, ongoing; missing when not recorded) and ``followup_days`` (days from the
        patient's first kept session to ``extraction_date``); ``exclusions``:
        one row per excluded, altered or flagged source row and rule; ``flow``: counts
        that reconcile (:func:`reconcile`).

    Raises
    ------
    DataError
        One paragraph naming the file, row, column and fix: a column that looks like a
        direct identifier, a mapping error, an ``extraction_date`` without session dates
        (or with a mapped ``followup_days``), or a rule whose policy is ``error``.

    Notes
    -----
    Missing codes are compared as text (``"NA"``, ``""``) and, in numeric columns, as
    numbers (``-9`` matches ``-9.0``). With ``decimal: ","`` a comma is the decimal mark.
    Ids are stripped of surrounding spaces; ids that become equal after case folding and
    removal of all spaces are variants of one id. Patient-level rules (therapist change,
    too few sessions) act on all of a patient's rows. ``days`` is whole days since the
    patient's first kept dated session. Patient-level values (``ending``,
    ``followup_days``) are checked for conflicts and copied to all of the patient's rows
    before any row-level rule runs, so a value recorded on a row that a later rule
    excludes still describes the patient. A session on the extraction day counts as
    before the extraction, whatever its time of day.
    """
    key = f"studies.{name}" if name else "studies.<study>"
    policies = _policies(study, key)
    frame = raw.copy()
    date_columns = set(raw.attrs.get("date_columns", []))
    codes = {str(c).strip() for c in study.get("missing_codes", [])}
    columns = dict(study["columns"])
    wide = study.get("format", "long") == "wide"

    # 1. columns the study drops explicitly, then the privacy guard -------------------------
    for column in study.get("drop_columns", []) or []:
        if column not in frame.columns:
            raise DataError(
                f"{source}: `{key}.drop_columns` names {column!r}, but the file has no such "
                f"column. Closest columns in the file: {_closest(column, frame.columns[1:])}."
            )
    frame = frame.drop(columns=list(study.get("drop_columns", []) or []))
    if wide:
        per_session = _wide_columns(
            frame, study.get("wide_pattern", r"^(?P<name>.+)_s(?P<session>\d+)$"), source
        )
        raw_map = {c: columns[n] for c, (n, _) in per_session.items() if n in columns}
        raw_map.update({c: v for c, v in columns.items() if c in frame.columns})
    else:
        raw_map = {c: v for c, v in columns.items() if c in frame.columns}
    check_privacy(
        frame,
        source=source,
        mapped=raw_map,
        exempt=study.get("privacy_exempt", []) or [],
        date_columns=[c for c, v in raw_map.items() if v == "date"],
        hash_ids=bool(study.get("hash_ids", False)),
        key=f"{key}.drop_columns",
    )
    salt = get_salt(env) if study.get("hash_ids", False) else None

    # 2. shape and mapping -------------------------------------------------------------------
    source_rows = len(frame)
    if wide:
        if "session" in columns.values():
            raise DataError(
                f"{source}: `format` is wide, so session numbers come from the column names "
                f"(`wide_pattern`); remove the mapping to 'session' under `columns`."
            )
        frame, source_rows = _to_long(frame, study, source, codes)
        columns = {**columns, "__session__": "session"}
    frame = map_columns(frame, columns, source=source)
    raw_names = {v: k for k, v in columns.items()}
    raw_names["session"] = raw_names.get("session", "session")
    instruments = _instrument_table(study, frame.columns)
    for column in frame.columns:
        match = ITEM_PATTERN.match(column)
        if match and column not in ID_COLUMNS and match["instrument"] in instruments:
            n_items = instruments[match["instrument"]][2]
            if not 1 <= int(match["item"]) <= n_items:
                raise DataError(
                    f"{source}: column {raw_names[column]!r} is mapped to {column!r}, but "
                    f"{match['instrument']} has items 1 to {n_items}. Fix the mapping under "
                    "`columns` in config.yaml."
                )
    extraction = study.get("extraction_date")
    if extraction is not None:
        if "date" not in frame.columns:
            raise DataError(
                f"{source}: `{key}.extraction_date` is set, but no column is mapped to 'date', so "
                "the follow-up time cannot be computed. Map the session dates to 'date', or map a "
                "column of days from each patient's first session to the extraction to "
                "'followup_days' and remove `extraction_date`."
            )
        extraction = _extraction_date(extraction, key)
    if "followup_days" in frame.columns and "date" in frame.columns:
        raise DataError(
            f"{source}: column {raw_names['followup_days']!r} is mapped to 'followup_days', but the "
            "sessions are dated, and with dates the follow-up time must come from the extraction "
            "day (days are counted from each patient's first kept session). Remove the mapping and "
            f"set `{key}.extraction_date` to the day the data were exported."
        )
    rows_read = len(frame)
    if rows_read == 0:
        raise DataError(f"{source}: the file has a header but no data rows. Export the data again.")
    for column in frame.columns[1:]:
        if column == "ending":  # blank until someone is discharged; not a lost column
            continue
        if _per_value(frame[column], lambda s: s.astype(str).str.strip().eq("")).all():
            raise DataError(
                f"{source}: column {raw_names[column]!r} (mapped to {column!r}) is empty in "
                f"every one of its {rows_read} rows; the export probably lost it. Export the "
                "data again, or remove the column from `columns` in config.yaml."
            )
    frame = frame.reset_index(drop=True)
    value_cols = [c for c in frame.columns if c != "_source_row"]
    frame["_session_text"] = _stripped(frame["session"])

    # 3. ids: surrounding spaces, missing codes, variants ------------------------------------
    id_cols = [c for c in ("patient", "therapist") if c in frame]
    altered_ids: list[tuple[str, pd.Series, pd.Series]] = []
    for col in id_cols:
        text = _per_value(frame[col], lambda s: s.astype(str))
        stripped = _stripped(text)
        values = stripped.mask(stripped.isin(codes) | stripped.eq(""))
        present = values.notna()
        keyed = _per_value(
            values[present], lambda s: s.str.casefold().str.replace(r"\s+", "", regex=True)
        )
        spelled = pd.DataFrame({"key": keyed, "raw": text[present], "value": values[present]})
        spellings = spelled.groupby("key", sort=False)["raw"].nunique()
        variant_keys = spellings.index[spellings > 1]
        if len(variant_keys):
            counts = (
                spelled[spelled["key"].isin(variant_keys)]
                .groupby(["key", "value"], sort=False)
                .size()
            )
            counts = counts.reset_index(name="n").sort_values(
                "n", ascending=False, kind="mergesort"
            )
            canonical = counts.drop_duplicates("key").set_index("key")["value"]
            target = spelled["key"].map(canonical)
            changed = target.notna() & spelled["raw"].ne(target)
            idx = spelled.index[changed]
            altered_ids.append((col, spelled.loc[idx, "raw"], target.loc[idx]))
        frame[col] = values.astype(object)
    cleaner = _Cleaner(
        frame, source=source, policies=policies, raw_names=raw_names, key=key, collect=collect
    )
    for col, old, new in altered_ids:
        mask = pd.Series(False, index=cleaner.frame.index)
        mask.loc[old.index] = True
        reason = pd.Series(
            [f"{col} id {o!r} differs from {n!r} only by case or spaces" for o, n in zip(old, new)],
            index=old.index,
        )
        if policies["id_variant"] == "merge":
            cleaner.frame.loc[old.index, col] = new.to_numpy()
            part = cleaner.frame.loc[mask]
            cleaner.record(
                part,
                "id_variant",
                "altered",
                col,
                reason + pd.Series([f"; changed to {n!r}" for n in new], index=old.index),
            )
        else:
            cleaner.apply(
                "id_variant",
                mask,
                column=col,
                reason=reason,
                fix=f"Write every id of one {col} the same way in the file.",
            )

    # 4. other values: strip, missing codes, numbers -----------------------------------------
    numeric_codes = set()
    for code in codes:
        try:
            numeric_codes.add(float(code))
        except ValueError:
            pass
    decimal = study.get("decimal", ".")
    missing_counts: dict[str, int] = {}
    frame = cleaner.frame
    numeric_cols = [
        c for c in value_cols if c not in ID_COLUMNS or c in ("session", "days", "followup_days")
    ]
    for col in value_cols:
        if col in id_cols:
            continue
        numeric = col in numeric_cols

        def parse(values: pd.Series, numeric: bool = numeric) -> pd.DataFrame:
            t = values.astype(str).str.strip()
            parts = {"text": t, "empty": t.eq(""), "missing": t.isin(codes)}
            if numeric:
                number_text = t.str.replace(",", ".", regex=False) if decimal == "," else t
                parts["number"] = pd.to_numeric(
                    number_text.mask(parts["empty"] | parts["missing"]), errors="coerce"
                ).astype("float64")
            return pd.DataFrame(parts, index=values.index)

        parsed = _per_value(frame[col], parse)
        text, empty, missing = parsed["text"], parsed["empty"], parsed["missing"]
        number = None
        if numeric:
            number = parsed["number"]
            missing = missing | number.isin(numeric_codes)
        missing_counts[col] = int(missing.sum())
        if col in numeric_cols:
            bad = number.isna() & ~empty & ~missing
            frame[col] = number.mask(missing)
            frame["_text_" + col] = text
            if bad.any():
                cleaner.frame = frame
                hint = ""
                comma = text[bad].str.fullmatch(r"-?\d+,\d+")
                if comma.any() and decimal != ",":
                    hint = " The file writes decimals with a comma: set `decimal: ','` for this study in config.yaml."
                reason = text[bad].map(lambda v: f"{v!r} is not a number")
                cleaner.apply(
                    "not_a_number",
                    bad,
                    column=col,
                    reason=reason,
                    fix=f"Correct the value, or declare it under `missing_codes` if it means 'missing'.{hint}",
                )
                frame = cleaner.frame
        else:
            frame[col] = text.mask(missing | empty).astype(object)
    for col, mapping in (study.get("labels") or {}).items():
        if col in frame:
            frame[col] = _per_value(
                frame[col], lambda s, m=mapping: s.map(lambda v: m.get(v, v) if pd.notna(v) else v)
            )
    cleaner.frame = frame
    if "ending" in frame:
        folded = _per_value(
            frame["ending"], lambda s: s.map(lambda v: v.casefold() if isinstance(v, str) else v)
        )
        known = folded.isin(ENDING_TYPES)
        frame["ending"] = frame["ending"].where(~known, folded)
        bad = frame["ending"].notna() & ~known
        if bad.any():
            example = frame.loc[bad, "ending"].iloc[0]
            cleaner.apply(
                "ending_invalid",
                bad,
                column="ending",
                reason=frame.loc[bad, "ending"].map(
                    lambda v: f"ending {v!r} is not one of {', '.join(ENDING_TYPES)}"
                ),
                fix=(
                    f"Map each of the export's ending labels to one of these types under "
                    f"`{key}.labels.ending` in config.yaml (here `{example!r}: <type>`); leave the cell "
                    "blank when the ending is not recorded."
                ),
            )
    # Patient-level values: one per patient, then on every row of the patient (before any
    # row is excluded, so an ending recorded on a row that a later rule drops is kept).
    for col in PATIENT_LEVEL:
        if col not in cleaner.frame:
            continue
        f = cleaner.frame[["patient", "session", col]].sort_values(
            ["patient", "session"], kind="mergesort"
        )
        recorded = f[f[col].notna()]
        kinds = recorded.groupby("patient")[col].nunique()
        conflicting = kinds.index[kinds > 1]
        if len(conflicting):
            of = recorded[recorded["patient"].isin(conflicting)]
            first = of.groupby("patient")[col].transform("first")
            listing = of.groupby("patient")[col].agg(
                lambda v: ", ".join(_number_text(x) for x in pd.unique(v))
            )
            target = (
                of.index[of[col].ne(first)]
                if policies["ending_conflict"] == "error"
                else f.index[f["patient"].isin(conflicting)]
            )
            mask = pd.Series(False, index=cleaner.frame.index)
            mask.loc[target] = True
            reason = cleaner.frame.loc[target, "patient"].map(
                lambda p, c=col: (
                    f"the patient's {c} differs between rows ({listing[p]}); it is one value per patient"
                )
            )
            cleaner.apply(
                "ending_conflict",
                mask,
                column=col,
                reason=reason,
                fix=f"Record one {col} per patient (on any or all of the patient's rows).",
            )
        if len(recorded):
            cleaner.frame = cleaner.frame.assign(
                **{col: cleaner.frame.groupby("patient")[col].transform("first")}
            )

    # 5. ids and session numbers ---------------------------------------------------------------
    f = cleaner.frame
    no_patient, no_session = f["patient"].isna(), f["session"].isna()
    reason = pd.Series(
        np.where(
            no_patient & no_session,
            "patient id and session number are empty",
            np.where(no_patient, "patient id is empty", "session number is empty"),
        ),
        index=f.index,
    )
    cleaner.apply(
        "missing_id",
        no_patient | no_session,
        column=None,
        reason=reason,
        fix="Fill in the patient id and session number.",
    )
    f = cleaner.frame
    session = f["session"]
    invalid = (session < 1) | (session != np.floor(session))
    cleaner.apply(
        "session_invalid",
        invalid,
        column="session",
        reason=f.loc[invalid, "_session_text"].map(
            lambda v: f"session number {v} is not a whole number of 1 or more"
        ),
        fix="Session numbers count from 1 (1 = the first session); correct the value.",
    )

    # 6. dates ----------------------------------------------------------------------------------
    has_dates = "date" in cleaner.frame
    if has_dates:
        f = cleaner.frame
        typed = raw_names.get("date") in date_columns
        fmt = "%Y-%m-%d" if typed else study.get("date_format", "%Y-%m-%d")
        dates = _per_value(
            f["date"].dropna(), lambda s: pd.to_datetime(s, format=fmt, errors="coerce")
        ).reindex(f.index)
        bad = dates.isna() & f["date"].notna()
        if bad.any():

            def why(value: str) -> str:
                for other in _OTHER_DATE_FORMATS:
                    if other != fmt and not pd.isna(
                        pd.to_datetime(value, format=other, errors="coerce")
                    ):
                        return (
                            f"date {value!r} is written as {other}, but the date format is {fmt} "
                            f"(mixed date formats)"
                        )
                return f"date {value!r} does not match the date format {fmt}"

            fix = (
                "Write every date in one format in the file, or set `date_format` for this study "
                "in config.yaml."
            )
            if typed:
                fix = "The other cells of this column are spreadsheet dates; enter this cell as a date too."
            cleaner.apply(
                "date_invalid", bad, column="date", reason=f["date"][bad].map(why), fix=fix
            )
        cleaner.frame = cleaner.frame.assign(date=dates.reindex(cleaner.frame.index))
        if extraction is not None:
            f = cleaner.frame
            late = f["date"].dt.normalize() > extraction  # a session on the extraction day is in
            cleaner.apply(
                "after_extraction",
                late,
                column="date",
                reason=f.loc[late, "date"].map(
                    lambda d: (
                        f"the session is dated {d:%Y-%m-%d}, after the "
                        f"extraction date {extraction:%Y-%m-%d}"
                    )
                ),
                fix=f"Check the date, or set `{key}.extraction_date` to the day the data were exported.",
            )

    # 7. duplicates -----------------------------------------------------------------------------
    keys = ["patient", "session"] + (["informant"] if "informant" in value_cols else [])
    content = value_cols
    f = cleaner.frame
    cleaner.apply(
        "duplicate_identical",
        f.duplicated(content, keep="first"),
        column=None,
        reason="identical copy of an earlier row; the first copy is kept",
        fix="Delete the copy from the file.",
    )
    f = cleaner.frame
    conflicting = f.duplicated(keys, keep=False)
    if conflicting.any():
        first_row = (
            f.loc[conflicting]
            .groupby(keys, observed=True, dropna=False)["_source_row"]
            .transform("min")
        )
        rows = (
            f.loc[conflicting]
            .groupby(keys, observed=True, dropna=False)["_source_row"]
            .transform(lambda s: ", ".join(str(r) for r in s))
        )
        reason = pd.Series(
            [
                f"same {' × '.join(keys)} as rows {r} but different values; all copies are excluded"
                for r in rows
            ],
            index=rows.index,
        )
        del first_row
        cleaner.apply(
            "duplicate_conflicting",
            conflicting,
            column=None,
            reason=reason,
            fix="Keep one row per patient and session in the file (or map an `informant` column).",
        )

    # 8. item ranges --------------------------------------------------------------------------
    ranges = item_ranges(
        [c for c in value_cols if c not in ID_COLUMNS], {k: v[:2] for k, v in instruments.items()}
    )
    for col, (low, high) in ranges.items():
        f = cleaner.frame
        values = f[col]
        out = (values < low) | (values > high)
        if out.any():
            instrument = ITEM_PATTERN.match(col)["instrument"]
            reason = values[out].map(
                lambda v: (
                    f"{col} = {v:g} is outside the response range {low:g} to {high:g} of {instrument}"
                )
            )
            cleaner.apply(
                "out_of_range",
                out,
                column=col,
                reason=reason,
                fix="Correct the value, or declare it under `missing_codes` if it is a code for 'missing'.",
            )

    # 9. order, gaps and therapists within patients --------------------------------------------
    group = ["patient"] + (["informant"] if "informant" in value_cols else [])
    if has_dates and len(cleaner.frame):
        f = cleaner.frame[list(dict.fromkeys([*group, "session", "date"]))].sort_values(
            [*group, "session"], kind="mergesort"
        )
        keys_of = [f[c] for c in group]
        running = f.groupby(keys_of, observed=True, dropna=False)["date"].cummax()
        earlier = running.groupby(keys_of, observed=True, dropna=False).shift()
        order = f["date"] < earlier
        reason = pd.Series(
            [
                f"session {int(s)} is dated {d:%Y-%m-%d}, before an earlier session ({e:%Y-%m-%d})"
                for s, d, e in zip(f.loc[order, "session"], f.loc[order, "date"], earlier[order])
            ],
            index=f.index[order],
        )
        cleaner.apply(
            "session_order",
            order,
            column="date",
            reason=reason,
            fix="Check the session numbers and dates of this patient.",
        )
    f = cleaner.frame[list(dict.fromkeys([*group, "session"]))].sort_values(
        [*group, "session"], kind="mergesort"
    )
    previous = f.groupby(group, observed=True, dropna=False)["session"].shift().fillna(0)
    gap = f["session"] - previous > 1
    reason = pd.Series(
        [
            f"session{'s' if s - p > 2 else ''} {int(p) + 1}{'' if s - p == 2 else f' to {int(s) - 1}'} missing before session {int(s)}"
            for s, p in zip(f.loc[gap, "session"], previous[gap])
        ],
        index=f.index[gap],
    )
    cleaner.apply(
        "session_gap",
        gap,
        column="session",
        reason=reason,
        fix="Add the missing sessions, or accept gaps with `flag` or `ignore`.",
    )
    if "therapist" in value_cols:
        f = cleaner.frame[list(dict.fromkeys([*group, "session", "therapist"]))].sort_values(
            [*group, "session"], kind="mergesort"
        )
        therapists = f.groupby("patient")["therapist"].nunique()
        changers = therapists.index[therapists > 1]
        if len(changers):
            rows_of = f["patient"].isin(changers)
            prev = f.groupby("patient")["therapist"].ffill().groupby(f["patient"]).shift()
            change = rows_of & f["therapist"].notna() & prev.notna() & f["therapist"].ne(prev)
            target = change if policies["therapist_change"] in ("flag", "error") else rows_of
            listing = (
                f[rows_of]
                .groupby("patient")["therapist"]
                .agg(lambda t: " → ".join(pd.unique(t.dropna())))
            )
            reason = f.loc[target, "patient"].map(
                lambda p: f"the patient's therapist changes ({listing[p]})"
            )
            cleaner.apply(
                "therapist_change",
                target,
                column="therapist",
                reason=reason,
                fix="Keep one therapist per patient, or flag or exclude such patients.",
            )
    if "followup_days" in cleaner.frame:
        f = cleaner.frame
        fix = "Check the patient's follow-up time (days from the first session to the extraction) and day counts."
        negative = f["followup_days"] < 0
        cleaner.apply(
            "after_extraction",
            negative,
            column="followup_days",
            reason=f.loc[negative, "followup_days"].map(
                lambda u: (
                    f"the follow-up time is {u:g} days, so the extraction would precede the first session"
                )
            ),
            fix=fix,
        )
        if "days" in cleaner.frame:
            f = cleaner.frame
            late = f["days"] > f["followup_days"]
            cleaner.apply(
                "after_extraction",
                late,
                column="days",
                reason=[
                    f"the session is on day {d:g}, after the follow-up time of {u:g} days"
                    for d, u in zip(f.loc[late, "days"], f.loc[late, "followup_days"])
                ],
                fix=fix,
            )
    minimum = int(study.get("min_sessions", 1) or 1)
    if minimum > 1:
        f = cleaner.frame
        count = f.groupby("patient")["session"].transform("nunique")
        few = count < minimum
        reason = count[few].map(
            lambda n: f"the patient has {n} session(s), fewer than min_sessions = {minimum}"
        )
        cleaner.apply(
            "min_sessions",
            few,
            column=None,
            reason=reason,
            fix="Lower `min_sessions`, or exclude such patients.",
        )

    # 10. days, hashing, types, contract ------------------------------------------------------
    f = cleaner.frame.copy()
    f["session"] = f["session"].astype("int64")
    if has_dates:
        first = f.groupby("patient")["date"].transform("min")
        f["days"] = (f["date"] - first).dt.days.astype("float64")
        if extraction is not None:
            f["followup_days"] = (extraction - first.dt.normalize()).dt.days.astype("float64")
        f = f.drop(columns="date")
    elif "days" in f:
        f["days"] = f["days"].astype("float64")
    if "followup_days" in f:
        f["followup_days"] = f["followup_days"].astype("float64")
    exclusions = cleaner.exclusions()
    if salt is not None:
        for col in id_cols:
            f[col] = pseudonymise(f[col], salt)
        exclusions["patient"] = pseudonymise(exclusions["patient"], salt)
        cleaner.patient_rule = {
            k: v
            for k, v in zip(
                pseudonymise(pd.Series(list(cleaner.patient_rule), dtype=object), salt),
                cleaner.patient_rule.values(),
            )
        }
    for col in id_cols:
        f[col] = f[col].astype(object)
    for col in ("condition", "informant", "rupture"):
        if col in f:
            f[col] = f[col].astype("category")
    if "ending" in f:
        f["ending"] = pd.Categorical(f["ending"], categories=list(ENDING_TYPES))
    f = f.sort_values(keys, kind="mergesort")
    rows = f["_source_row"]
    sessions = f[[c for c in f.columns if c in value_cols or c in ("days", "followup_days")]]
    sessions = sessions[
        [c for c in ID_COLUMNS if c in sessions] + [c for c in sessions if c not in ID_COLUMNS]
    ]
    validate_sessions(sessions, ranges=ranges, source=source, rows=rows)
    sessions = sessions.reset_index(drop=True)
    flow = _flow(
        source,
        rows_read,
        source_rows,
        sessions,
        exclusions,
        cleaner.patient_rule,
        missing_counts,
        wide,
    )
    return CleanResult(sessions=sessions, exclusions=exclusions, flow=flow)


def _flow(
    source, rows_read, source_rows, sessions, exclusions, patient_rule, missing_counts, wide
) -> dict[str, Any]:
    removed = exclusions[exclusions["action"].isin(["excluded", "error"])]
    actions = {}
    for action in ("flagged", "altered", "set_missing"):
        part = exclusions[exclusions["action"] == action]
        actions[action] = {k: int(v) for k, v in part["rule"].value_counts().sort_index().items()}
    kept_patients = set(sessions["patient"])
    read_patients = kept_patients | set(removed["patient"].dropna())
    gone = read_patients - kept_patients
    by_rule = (
        pd.Series([patient_rule.get(p, "unknown") for p in gone], dtype=object)
        .value_counts()
        .sort_index()
    )
    flow = {
        "source_file": source,
        "format": "wide" if wide else "long",
        "source_rows_read": int(source_rows),
        "sessions": {
            "read": int(rows_read),
            "kept": int(len(sessions)),
            "excluded": int(len(removed)),
            "excluded_by_rule": {
                k: int(v) for k, v in removed["rule"].value_counts().sort_index().items()
            },
            "flagged_by_rule": actions["flagged"],
            "altered_by_rule": actions["altered"],
        },
        "patients": {
            "read": len(read_patients),
            "kept": len(kept_patients),
            "excluded": len(gone),
            "excluded_by_rule": {k: int(v) for k, v in by_rule.items()},
            "rows_without_patient_id": int(removed["patient"].isna().sum()),
        },
        "values": {
            "missing_code": int(sum(missing_counts.values())),
            "set_missing_by_rule": actions["set_missing"],
        },
    }
    return flow


def reconcile(flow: dict[str, Any]) -> list[str]:
    """The ways *flow* fails to reconcile; an empty list when it does.

    Checks, at session and at patient level, ``read == kept + excluded`` and that the
    per-rule counts sum to ``excluded``.
    """
    problems = []
    for level in ("sessions", "patients"):
        block = flow[level]
        if block["read"] != block["kept"] + block["excluded"]:
            problems.append(
                f"{level}: read {block['read']} != kept {block['kept']} + excluded {block['excluded']}"
            )
        if sum(block["excluded_by_rule"].values()) != block["excluded"]:
            problems.append(
                f"{level}: excluded_by_rule sums to {sum(block['excluded_by_rule'].values())}, not {block['excluded']}"
            )
    return problems
