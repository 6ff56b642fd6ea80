"""The rules of the clean stage and the state that its steps share.

A :class:`CleanRun` holds one cleaning run: the study's settings, the frame as the steps
leave it, and the log of every excluded, altered or flagged row. Each step of
:data:`allianceflow.clean.STEPS` is a function of a :class:`CleanRun`.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from ..contract import ENDING_TYPES as _CONTRACT_ENDINGS
from ..io import DataError

__all__ = [
    "CleanResult",
    "CleanRun",
    "DataError",
    "ENDING_TYPES",
    "EXCLUSION_COLUMNS",
    "ID_COLUMNS",
    "PATIENT_LEVEL",
    "RULES",
    "closest",
    "policies_of",
    "sort_rows",
    "in_order",
]

#: Canonical id and design columns; every other mapped column must be ``<instrument>_<item>``.
ID_COLUMNS = (
    "patient",
    "therapist",
    "system",
    "role",
    "session",
    "date",
    "days",
    "condition",
    "informant",
    "rupture",
    "ending",
    "followup_days",
    "modality",
)
#: Prefix of patient-level moderator columns (``moderator_<name>``, text, constant within
#: patient; e.g. ``moderator_referral``), mapped under ``read.columns`` like the others.
MODERATOR_PREFIX = "moderator_"
MODERATOR_NAME = re.compile(r"^moderator_[a-z][a-z0-9_]*[a-z]$")
#: Recorded ending types (the ``ending`` column after the study's ``labels``); see
#: :func:`allianceflow.clinical.endings_and_dose`.
ENDING_TYPES = _CONTRACT_ENDINGS
#: Patient-level columns: a value recorded on any of a patient's rows applies to all of them.
PATIENT_LEVEL = ("ending", "followup_days")
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
ITEM_NAME = re.compile(r"^[a-z][a-z0-9]*(?:_[a-z0-9]+)*_\d+$")

Policy = Literal["error", "exclude", "flag", "missing", "merge", "fill", "ignore"]

#: Every rule: its default policy and the policies it accepts (in the order they are
#: applied to a row, which is also the order of a row's entries in ``exclusions.csv``).
RULES: dict[str, tuple[str, tuple[str, ...]]] = {
    "id_variant": ("merge", ("error", "merge", "exclude")),
    "missing_id": ("exclude", ("error", "exclude")),
    "label_variant": ("merge", ("error", "merge")),
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
    "missing_therapist": ("fill", ("error", "fill", "exclude", "flag")),
    "condition_change": ("flag", ("error", "flag", "exclude")),
    "system_change": ("error", ("error", "exclude")),
    "role_change": ("error", ("error", "exclude")),
    "system_therapist": ("error", ("error", "exclude")),
    "system_size": ("flag", ("error", "exclude", "flag")),
    "system_roles": ("flag", ("error", "exclude", "flag")),
    "system_sessions": ("flag", ("error", "exclude", "flag", "ignore")),
}
RULE_ORDER = list(RULES)
OTHER_DATE_FORMATS = (
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
    """What :func:`allianceflow.clean.clean_sessions` returns.

    Attributes
    ----------
    sessions : pandas.DataFrame
        The canonical table, sorted by patient and session (and informant).
    exclusions : pandas.DataFrame
        One row per excluded, altered or flagged source row and rule, with columns
        :data:`EXCLUSION_COLUMNS`; ``action`` is ``excluded``, ``set_missing``,
        ``altered``, ``flagged`` or (check mode only) ``error``.
    flow : dict
        Counts that reconcile (see :func:`allianceflow.clean.reconcile`).
    """

    sessions: pd.DataFrame
    exclusions: pd.DataFrame
    flow: dict[str, Any] = field(default_factory=dict)


def _comparable(name: Any) -> str:
    return re.sub(r"[^0-9a-z]+", "", str(name).casefold())


def closest(name: str, candidates: Iterable[Any], cutoff: float = 0.6) -> list[str]:
    r"""Return the candidates whose names are similar to *name*, most similar first.

    Names are compared case-folded and without spaces or punctuation
    (``'Session_Date'`` ~ ``'SessionDate'``) by :class:`difflib.SequenceMatcher`'s ratio
    :math:`2M/T` (*M* matching characters, *T* characters in both strings); at most
    three with a ratio of at least *cutoff* are returned, so an unrelated name gets none.

    Examples
    --------
    >>> closest("Therapist", ["ClientCode", "Therapist_ID", "Visit #"])
    ['Therapist_ID']
    >>> closest("Therapist", ["ClientCode", "Visit #"])
    []
    """
    candidates = [str(c) for c in candidates]
    keys: dict[str, str] = {}
    for c in candidates:
        keys.setdefault(_comparable(c), c)
    found = difflib.get_close_matches(_comparable(name), list(keys), n=3, cutoff=cutoff)
    return [keys[k] for k in found]


def closest_text(name: str, candidates: Iterable[Any]) -> str:
    """``"Closest columns in the file: 'A', 'B'."`` or the file's columns when none is close."""
    candidates = [str(c) for c in candidates if c != "_source_row"]
    found = closest(name, candidates)
    if found:
        return f"Closest columns in the file: {', '.join(repr(m) for m in found)}."
    shown = ", ".join(repr(c) for c in candidates[:12]) + (", ..." if len(candidates) > 12 else "")
    return f"No column of the file has a similar name; its columns are {shown}."


def policies_of(study: dict[str, Any], key: str, config: str = "config.yaml") -> dict[str, str]:
    """Return the policy of every rule: the study's ``rules`` over the :data:`RULES` defaults."""
    given = dict(study.get("rules") or {})
    out = {}
    for rule, (default, allowed) in RULES.items():
        policy = given.pop(rule, default)
        if policy not in allowed:
            raise DataError(
                f"{config}: `{key}.clean.rules.{rule}` is {policy!r}; allowed values are "
                f"{', '.join(repr(a) for a in allowed)}."
            )
        out[rule] = policy
    if given:
        raise DataError(
            f"{config}: `{key}.clean.rules` has unknown rule(s) "
            f"{', '.join(repr(g) for g in sorted(given))}; the rules are {', '.join(RULE_ORDER)}."
        )
    return out


def sort_rows(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """*frame* as ``frame.sort_values(keys, kind="mergesort")`` sorts it (stable).

    Exports usually come in this order already (by patient, then session), and the sort
    would factorise every text id to find that out: *frame* itself, not a copy, is returned
    when its rows are in order (:func:`in_order`), and pandas sorts the others. Callers
    read the result; one that writes into it must copy it first.
    """
    if in_order(frame, keys):
        return frame
    return frame.sort_values(keys, kind="mergesort")


def in_order(frame: pd.DataFrame, keys: list[str]) -> bool:
    """Whether a stable sort of *frame* by *keys* would leave its rows where they are.

    True when each row's keys, compared one key after another, are equal to or after the
    previous row's. Only NumPy and object columns of one comparable type are compared: a
    categorical key (sorted by the order of its categories), ids of types that cannot be
    ordered, or a missing value where it has to be compared give False, and the caller
    sorts. (NaN and NaT compare false: one that decides the order gives False, one after a
    new patient's id does not, as pandas' sort leaves that row too. None, or pd.NA in a
    nullable column, gives False wherever it is.)
    """
    n = len(frame)
    if n < 2:
        return True
    later = np.zeros(n - 1, dtype=bool)
    tied = np.ones(n - 1, dtype=bool)
    for key in keys:
        dtype = frame[key].dtype
        if not isinstance(dtype, np.dtype) or dtype.kind not in "biufmMO":
            return False
        values = frame[key].to_numpy()
        before, after = values[:-1], values[1:]
        try:
            # NaN and NaT compare false both ways: a missing value that decides the order
            # is never taken for in order.
            with np.errstate(invalid="ignore"):
                later |= tied & np.asarray(after > before, dtype=bool)
                tied &= np.asarray(after == before, dtype=bool)
        except (TypeError, ValueError):  # None, pd.NA or ids of types that cannot be ordered
            return False
    return bool(np.all(later | tied))


def number_text(value: Any) -> str:
    """``2.0`` → ``'2'``, missing → ``''``, else ``str(value)``."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return "" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)


class CleanRun:
    """State of one cleaning run: the settings, the frame, and the log of actions.

    Steps read and replace :attr:`frame` and call :meth:`apply` (a rule's policy on the
    rows of a mask) or :meth:`record` (log rows without dropping them).
    """

    def __init__(
        self,
        raw: pd.DataFrame,
        study: dict[str, Any],
        *,
        source: str,
        name: str | None,
        collect: bool,
        env: dict[str, str] | None,
        config: str,
    ) -> None:
        self.study = study
        self.source = source
        self.config = config
        self.key = f"studies.{name}" if name else "studies.<study>"
        self.policies = policies_of(study, self.key, config)
        self.collect = collect
        self.env = env
        # A shallow copy: no step writes into the raw columns, and map_to_canonical takes
        # the mapped ones into a new table (map_columns) before any step sets a value, so
        # *raw* is left as it was without copying every column first.
        self.frame = raw.copy(deep=False)
        self.date_columns = set(raw.attrs.get("date_columns", []))
        self.codes = {str(c).strip() for c in study.get("missing_codes", [])}
        self.columns = dict(study["columns"])
        self.wide = study.get("format", "long") == "wide"
        self.hash_ids = bool(study.get("hash_ids", False))
        self.salt: str | None = None
        self.raw_map: dict[str, str] = {}
        self.raw_names: dict[str, str] = {}
        self.source_rows = len(raw)
        self.rows_read = 0
        self.instruments: dict[str, tuple[float, float, int]] = {}
        self.max_missing: dict[str, int] = {}
        self.extraction: pd.Timestamp | None = None
        self.value_cols: list[str] = []
        self.id_cols: list[str] = []
        self.missing_counts: dict[str, int] = {}
        self.missing_by_column: dict[str, dict[str, int]] = {}
        self.ranges: dict[str, tuple[float, float]] = {}
        self.records: list[pd.DataFrame] = []
        self.patient_rule: dict[Any, str] = {}
        #: Systems (couples, families) named on the rows read, and the rule that removed
        #: each system's last row (see :mod:`allianceflow.clean.systems`).
        self.systems_read: int = 0
        self.system_rule: dict[Any, str] = {}
        #: Each patient's first recorded arm and its source row, taken before any row rule.
        self.first_arm: pd.DataFrame | None = None
        #: Codes and distinct values of the raw all-text columns, by raw name, taken by the
        #: privacy guard, and the source rows they are aligned with: the value columns are
        #: not rewritten before they are parsed, so while the rows are these rows the
        #: later steps reuse them instead of factorising the columns again.
        self.distinct: dict[str, tuple[np.ndarray, pd.Series]] = {}
        self.distinct_rows: np.ndarray | None = None
        self.result: CleanResult | None = None

    # ------------------------------------------------------------------ small helpers
    def distinct_values(self) -> dict[str, tuple[np.ndarray, pd.Series]]:
        """Codes and distinct values of the canonical columns, while the rows are unchanged.

        Empty once a step has dropped or reordered rows (the source rows differ from
        those the privacy guard saw); see :attr:`distinct`.
        """
        if not self.distinct or self.distinct_rows is None or "_source_row" not in self.frame:
            return {}
        rows = self.frame["_source_row"].to_numpy()
        if len(rows) != len(self.distinct_rows) or not np.array_equal(rows, self.distinct_rows):
            return {}
        return {
            column: self.distinct[raw]
            for column, raw in self.raw_names.items()
            if raw in self.distinct and column in self.frame
        }

    @property
    def has_dates(self) -> bool:
        """Whether the sessions carry calendar dates (a column mapped to ``date``)."""
        return "date" in self.frame

    @property
    def group(self) -> list[str]:
        """The columns that identify one series of sessions: patient (and informant)."""
        return ["patient"] + (["informant"] if "informant" in self.value_cols else [])

    @property
    def keys(self) -> list[str]:
        """The columns that identify one row: patient, session (and informant)."""
        return ["patient", "session"] + (["informant"] if "informant" in self.value_cols else [])

    def raw(self, column: str | None) -> str:
        """Return the raw (file) name of a canonical column."""
        return self.raw_names.get(column, column) if column else ""

    def shown_id(self, value: Any) -> str:
        """Show an id as it may appear in a reason: its keyed hash when ids are hashed."""
        if self.salt is None:
            return repr(value)
        from ..privacy import pseudonymise

        return repr(pseudonymise(pd.Series([value], dtype=object), self.salt).iloc[0])

    # ------------------------------------------------------------------ the log
    def _session_shown(self, part: pd.DataFrame):
        """Show the session cells in the log: as written, but blank when hashed and not a number.

        With hashed ids a cell that is not a plain number (a date typed into the session
        column, say) is left blank, so no calendar date reaches the exclusions.
        """
        text = part["_session_text"].astype(object)
        if self.salt is None:
            return text.to_numpy()
        plain = text.astype(str).str.strip().str.fullmatch(r"[+-]?\d+(\.\d+)?")
        return text.where(plain.fillna(False), "").to_numpy()

    def record(
        self, part: pd.DataFrame, rule: str, action: str, column: str | None, reason
    ) -> None:
        """Log the rows of *part* under *rule* with *action* and *reason* (text or Series)."""
        reasons = reason if isinstance(reason, pd.Series) else pd.Series(reason, index=part.index)
        self.records.append(
            pd.DataFrame(
                {
                    "source_file": self.source,
                    "source_row": part["_source_row"].to_numpy(),
                    "patient": part["patient"].astype(object).to_numpy(),
                    "session": self._session_shown(part),
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
                allowed = " or ".join(repr(p) for p in RULES[rule][1] if p != "error")
                raise DataError(
                    f"{self.source}, row {part.loc[first, '_source_row']}{where}: "
                    f"{reasons.loc[first]}{others}. {fix} Or set "
                    f"`{self.key}.clean.rules.{rule}` to {allowed} in {self.config}."
                )
            self.record(part, rule, "error", column, reasons)
            self.drop(mask, rule)
        elif policy in ("exclude", "fill"):
            self.record(part, rule, "excluded", column, reasons)
            self.drop(mask, rule)
        elif policy == "missing":
            self.record(part, rule, "set_missing", column, reasons)
            self.frame.loc[mask, missing_column or column] = np.nan
        elif policy == "flag":
            self.record(part, rule, "flagged", column, reasons)
        else:  # pragma: no cover - merge is handled by the id step
            raise AssertionError(policy)

    def drop(self, mask: pd.Series, rule: str) -> None:
        """Drop the rows of *mask*; a patient left with no row is excluded by *rule*."""
        gone = self.frame.loc[mask, "patient"].dropna().unique()
        systems = self.frame.loc[mask, "system"].dropna().unique() if "system" in self.frame else ()
        self.frame = self.frame.loc[~mask]
        left = set(self.frame["patient"].dropna().unique())
        for patient in gone:
            if patient not in left:
                self.patient_rule[patient] = rule
        if len(systems):
            left = set(self.frame["system"].dropna().unique())
            for system in systems:
                if system not in left:
                    self.system_rule[system] = rule

    def exclusions(self) -> pd.DataFrame:
        """Return the log as a table sorted by source row, rule order and column."""
        if not self.records:
            return pd.DataFrame({c: pd.Series(dtype=object) for c in EXCLUSION_COLUMNS})
        out = pd.concat(self.records, ignore_index=True)
        out["_order"] = out["rule"].map(RULE_ORDER.index)
        out = out.sort_values(["source_row", "_order", "column"], kind="mergesort").drop(
            columns="_order"
        )
        return out.reset_index(drop=True)
