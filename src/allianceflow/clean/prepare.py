"""The first steps of the clean stage: from the raw export to typed canonical columns.

Each function is one named step of :data:`allianceflow.clean.STEPS`: it reads and
replaces ``run.frame`` and logs what it changes or drops on the :class:`CleanRun`.
"""

from __future__ import annotations

import re
import unicodedata

import numpy as np
import pandas as pd

from ..contract import ITEM_PATTERN
from ..io import DataError, _distinct, _per_value, _stripped
from ..privacy import check_privacy, get_salt
from .columns import WIDE_PATTERN, extraction_day, instrument_table, map_columns, to_long
from .columns import wide_columns as _wide_columns
from .state import (
    ENDING_TYPES,
    ID_COLUMNS,
    MODERATOR_PREFIX,
    PATIENT_LEVEL,
    CleanRun,
    closest_text,
    number_text,
    sort_rows,
)

__all__ = [
    "drop_columns",
    "privacy_guard",
    "reshape",
    "map_to_canonical",
    "canonical_ids",
    "id_key",
    "parse_values",
    "apply_labels",
    "check_endings",
    "patient_level_values",
    "first_arms",
]

#: Id columns whose spellings are canonicalised (:func:`canonical_ids`).
ID_LIKE = ("patient", "therapist", "system")
_INTEGRAL = re.compile(r"^[+]?(\d+)(?:\.0*)?$")
_INVISIBLE = re.compile(r"[\s\u200b\u200c\u200d\u2060\ufeff]+")


def drop_columns(run: CleanRun) -> None:
    """Drop the raw columns the study lists under ``drop_columns`` (each must exist)."""
    dropped = list(run.study.get("drop_columns", []) or [])
    for column in dropped:
        if column not in run.frame.columns:
            raise DataError(
                f"{run.source}: `{run.key}.privacy.drop_columns` names {column!r}, but the file "
                f"has no such column. {closest_text(column, run.frame.columns[1:])}"
            )
    if dropped:
        # Deleted from a shallow copy of the run's own table: ``drop`` copied every column.
        frame = run.frame.copy(deep=False)
        for column in dict.fromkeys(dropped):
            del frame[column]
        run.frame = frame


def privacy_guard(run: CleanRun) -> None:
    """Refuse direct identifiers (:func:`allianceflow.privacy.check_privacy`); read the salt."""
    frame, columns = run.frame, run.columns
    if run.wide:
        per_session = _wide_columns(
            frame, run.study.get("wide_pattern", WIDE_PATTERN), run.source, run.config
        )
        raw_map = {c: columns[n] for c, (n, _) in per_session.items() if n in columns}
        raw_map.update({c: v for c, v in columns.items() if c in frame.columns})
    else:
        raw_map = {c: v for c, v in columns.items() if c in frame.columns}
    check_privacy(
        frame,
        source=run.source,
        mapped=raw_map,
        exempt=run.study.get("privacy_exempt", []) or [],
        date_columns=[c for c, v in raw_map.items() if v == "date"],
        hash_ids=run.hash_ids,
        key=f"{run.key}.privacy.drop_columns",
        config=run.config,
        declared=_declared_values(run, raw_map),
        distinct=None if run.wide else run.distinct,
    )
    if run.distinct:
        run.distinct_rows = frame["_source_row"].to_numpy().copy()
    run.raw_map = raw_map
    run.salt = get_salt(run.env) if run.hash_ids else None


def _declared_values(run: CleanRun, raw_map: dict[str, str]) -> dict[str, set[str]]:
    """Raw values the config declares, which the privacy guard does not read as content.

    The study's missing codes ("Not Applicable") in every column, and in each mapped column
    the raw values that ``read.labels`` relabels ("Usual Care" → usual_care).
    """
    labels = run.study.get("labels", {}) or {}
    declared: dict[str, set[str]] = {"*": set(run.codes)}
    for raw_column, canonical in raw_map.items():
        relabelled = labels.get(canonical) or {}
        if relabelled:
            declared[raw_column] = {str(value) for value in relabelled}
    return declared


def reshape(run: CleanRun) -> None:
    """Wide exports (``format: wide``): one row per patient × session with any value."""
    run.source_rows = len(run.frame)
    if not run.wide:
        return
    if "session" in run.columns.values():
        raise DataError(
            f"{run.source}: `format` is wide, so session numbers come from the column names "
            f"(`read.wide_pattern`); remove the mapping to 'session' under `read.columns`."
        )
    run.frame, run.source_rows = to_long(run.frame, run.study, run.source, run.codes, run.config)
    run.columns = {**run.columns, "__session__": "session"}


def _count_missing(run: CleanRun) -> None:
    """Blank and coded cells of every mapped column among the rows read.

    A column other than ``ending`` (blank until someone is discharged) that is blank in
    every row is refused: the export probably lost it.
    """
    numeric_codes = _numeric_codes(run.codes)
    decimal = run.study.get("decimal", ".")
    known = run.distinct_values()
    for col in run.value_cols:
        # Blank and coded are properties of a value, so they are decided once per distinct
        # value and counted with the number of rows holding it.
        if col in known:
            codes, values = known[col]
        else:
            codes, values = pd.factorize(run.frame[col], use_na_sentinel=False)
        rows = np.bincount(codes, minlength=len(values))
        text = _stripped(pd.Series(values, dtype=object))
        blank = text.eq("")
        if col != "ending" and not rows[~blank.to_numpy()].any():
            raise DataError(
                f"{run.source}: column {run.raw_names[col]!r} (mapped to {col!r}) is empty "
                f"in every one of its {run.rows_read} rows; the export probably lost it. Export "
                f"the data again, or remove the column from `read.columns` in {run.config}."
            )
        coded = text.isin(run.codes)
        if col not in (
            "patient",
            "therapist",
            "condition",
            "informant",
            "rupture",
            "ending",
            "modality",
        ) and not col.startswith(MODERATOR_PREFIX):
            number_text_ = text.str.replace(",", ".", regex=False) if decimal == "," else text
            coded |= pd.to_numeric(number_text_.mask(blank | coded), errors="coerce").isin(
                numeric_codes
            )
        run.missing_by_column[col] = {
            "raw_column": run.raw(col),
            "read_blank": int(rows[(blank & ~coded).to_numpy()].sum()),
            "read_coded": int(rows[coded.to_numpy()].sum()),
        }


def map_to_canonical(run: CleanRun) -> None:
    """Map raw columns to canonical names and check the mapping against the file."""
    frame = map_columns(run.frame, run.columns, source=run.source, config=run.config)
    run.raw_names = {v: k for k, v in run.columns.items()}
    run.raw_names["session"] = run.raw_names.get("session", "session")
    table = instrument_table(run.study, frame.columns)
    run.instruments = {k: v[:3] for k, v in table.items()}
    run.max_missing = {k: v[3] for k, v in table.items()}
    for column in frame.columns:
        match = ITEM_PATTERN.match(column)
        if match and column not in ID_COLUMNS and match["instrument"] in run.instruments:
            n_items = run.instruments[match["instrument"]][2]
            if not 1 <= int(match["item"]) <= n_items:
                raise DataError(
                    f"{run.source}: column {run.raw_names[column]!r} is mapped to {column!r}, but "
                    f"{match['instrument']} has items 1 to {n_items}. Fix the mapping under "
                    f"`columns` in {run.config}."
                )
    extraction = run.study.get("extraction_date")
    if extraction is not None:
        if "date" not in frame.columns:
            raise DataError(
                f"{run.source}: `{run.key}.read.extraction_date` is set, but no column is mapped "
                "to 'date', so the follow-up time cannot be computed. Map the session dates to "
                "'date', or map a column of days from each patient's first session to the "
                "extraction to 'followup_days' and remove `extraction_date`."
            )
        run.extraction = extraction_day(extraction, run.key, run.config)
    if "followup_days" in frame.columns and "date" in frame.columns:
        raise DataError(
            f"{run.source}: column {run.raw_names['followup_days']!r} is mapped to "
            "'followup_days', but the sessions are dated, and with dates the follow-up time must "
            "come from the extraction day (days are counted from each patient's first kept "
            f"session). Remove the mapping and set `{run.key}.read.extraction_date` to the day the "
            "data were exported."
        )
    run.rows_read = len(frame)
    if run.rows_read == 0:
        raise DataError(
            f"{run.source}: the file has a header but no data rows. Export the data again."
        )
    # map_columns' table is a new one: its index is replaced in place (reset_index
    # copied every column).
    frame.index = pd.RangeIndex(len(frame))
    run.value_cols = [c for c in frame.columns if c != "_source_row"]
    run.frame = frame
    _count_missing(run)  # also refuses a column that is blank in every row
    frame["_session_text"] = _stripped(frame["session"])


def id_key(value: str) -> str:
    """Return the key under which spellings of one id are merged.

    Compatibility normal form (NFKC: full-width digits, ligatures, composed accents),
    case folding, no whitespace or invisible characters, and a whole number written as
    a number (``'007'``, ``'7'``, ``'7.0'`` all give ``'7'``).

    Examples
    --------
    >>> [id_key(v) for v in ["P01", " p01", "P 01", "1.0", "001", "Jose\u0301"]]
    ['p01', 'p01', 'p01', '1', '1', 'josé']
    """
    text = _INVISIBLE.sub("", unicodedata.normalize("NFKC", value).casefold())
    number = _INTEGRAL.match(text)
    return str(int(number.group(1))) if number else text


def canonical_ids(run: CleanRun) -> None:
    """Strip ids, blank their missing codes, and merge spellings of one id (``id_variant``).

    Ids are put in Unicode NFC and stripped of surrounding spaces. Ids with the same
    :func:`id_key` are one id; with the policy ``merge`` every spelling is rewritten to
    the id's most frequent one (the first seen on a tie) and each rewritten row is logged
    with action ``altered``; ``exclude`` drops the rows of the other spellings.
    """
    frame = run.frame
    run.id_cols = [c for c in ID_LIKE if c in frame]
    altered: list[tuple[str, pd.Series, pd.Series]] = []
    for col in run.id_cols:
        distinct = _distinct(frame[col])
        if distinct is not None:
            # Each distinct id is read once; with no two spellings of one key (the usual
            # case) the column is the cleaned distinct values taken by their codes.
            row_codes, raw = distinct
            cleaned = raw.astype(str).str.strip().map(lambda v: unicodedata.normalize("NFC", v))
            cleaned = cleaned.mask(cleaned.isin(run.codes) | cleaned.eq(""))
            if not cleaned.dropna().map(id_key).duplicated().any():
                frame[col] = pd.Series(
                    cleaned.to_numpy(dtype=object)[row_codes], index=frame.index, dtype=object
                )
                continue
        text = _per_value(frame[col], lambda s: s.astype(str))
        stripped = _per_value(
            _stripped(text), lambda s: s.map(lambda v: unicodedata.normalize("NFC", v))
        )
        values = stripped.mask(stripped.isin(run.codes) | stripped.eq(""))
        present = values.notna()
        keyed = _per_value(values[present], lambda s: s.map(id_key))
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
            altered.append((col, spelled.loc[idx, "raw"], target.loc[idx]))
        frame[col] = values.astype(object)
    run.frame = frame
    how = "case, spaces, number format or Unicode form"
    for col, old, new in altered:
        mask = pd.Series(False, index=run.frame.index)
        mask.loc[old.index] = True
        if run.salt is None:
            reason = pd.Series(
                [
                    f"{col} id {o!r} is a spelling of {n!r} ({how})"
                    for o, n in zip(old, new, strict=True)
                ],
                index=old.index,
            )
        else:
            reason = pd.Series(
                [
                    f"the {col} id of this row is another spelling ({how}) of the id hashed as "
                    f"{run.shown_id(n)}"
                    for n in new
                ],
                index=old.index,
            )
        if run.policies["id_variant"] == "merge":
            run.frame.loc[old.index, col] = new.to_numpy()
            part = run.frame.loc[mask]
            merged = "; merged" if run.salt is not None else ""
            changed = pd.Series(
                [merged or f"; changed to {n!r}" for n in new], index=old.index, dtype=object
            )
            run.record(part, "id_variant", "altered", col, reason + changed)
        else:
            run.apply(
                "id_variant",
                mask,
                column=col,
                reason=reason,
                fix=f"Write every id of one {col} the same way in the file.",
            )


def _numeric_codes(codes: set[str]) -> set[float]:
    out = set()
    for code in codes:
        try:
            out.add(float(code))
        except ValueError:
            pass
    return out


def parse_values(run: CleanRun) -> None:
    """Strip values, blank missing codes, and read numeric columns (``not_a_number``)."""
    numeric_codes = _numeric_codes(run.codes)
    decimal = run.study.get("decimal", ".")
    codes = run.codes
    frame = run.frame
    numeric_cols = [
        c
        for c in run.value_cols
        if (c not in ID_COLUMNS or c in ("session", "days", "followup_days"))
        and not c.startswith(MODERATOR_PREFIX)
    ]
    known = run.distinct_values()
    for col in run.value_cols:
        if col in run.id_cols:
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

        distinct = known[col] if col in known else _distinct(frame[col])
        if distinct is not None:
            # Every result is decided per distinct value and taken by the codes once.
            row_codes, values = distinct
            per_value = parse(values)
            counts = np.bincount(row_codes, minlength=len(values))
            missing_values = per_value["missing"].to_numpy(dtype=bool)
            empty_values = per_value["empty"].to_numpy(dtype=bool)
            if numeric:
                number_values = per_value["number"]
                missing_values = missing_values | number_values.isin(numeric_codes).to_numpy()
                bad_values = number_values.isna().to_numpy() & ~empty_values & ~missing_values
                kept_values = number_values.mask(missing_values).to_numpy(dtype="float64")
            else:
                kept_values = (
                    per_value["text"].mask(missing_values | empty_values).to_numpy(dtype=object)
                )
            run.missing_counts[col] = int(counts[missing_values].sum())
            frame[col] = pd.Series(kept_values[row_codes], index=frame.index)
            if not numeric:
                continue
            text = pd.Series(per_value["text"].to_numpy(dtype=object)[row_codes], index=frame.index)
            frame["_text_" + col] = text
            bad = pd.Series(bad_values[row_codes], index=frame.index)
            if bad.any():
                _not_a_number(run, frame, col, text, bad, decimal)
                frame = run.frame
                known = run.distinct_values()  # empty when rows were dropped
            continue
        parsed = _per_value(frame[col], parse)
        text, empty, missing = parsed["text"], parsed["empty"], parsed["missing"]
        if not numeric:
            run.missing_counts[col] = int(missing.sum())
            frame[col] = text.mask(missing | empty).astype(object)
            continue
        number = parsed["number"]
        missing = missing | number.isin(numeric_codes)
        run.missing_counts[col] = int(missing.sum())
        bad = number.isna() & ~empty & ~missing
        frame[col] = number.mask(missing)
        frame["_text_" + col] = text
        if bad.any():
            _not_a_number(run, frame, col, text, bad, decimal)
            frame = run.frame
            known = run.distinct_values()
    run.frame = frame
    run.distinct, run.distinct_rows = {}, None  # parsed: the raw codes are not needed again


def _not_a_number(
    run: CleanRun, frame: pd.DataFrame, col: str, text: pd.Series, bad: pd.Series, decimal: str
) -> None:
    """Apply ``not_a_number`` to the rows of *bad* (text in the numeric column *col*).

    Sets ``run.frame`` (to *frame*, less the rows the policy drops).
    """
    run.frame = frame
    hint = ""
    comma = text[bad].str.fullmatch(r"-?\d+,\d+")
    if comma.any() and decimal != ",":
        hint = (
            " The file writes decimals with a comma: set `read.decimal: ','` for this "
            f"study in {run.config}."
        )
    if run.salt is None:
        reason = text[bad].map(lambda v: f"{v!r} is not a number")
    else:
        reason = "the value is not a number"
    run.apply(
        "not_a_number",
        bad,
        column=col,
        reason=reason,
        fix=(
            "Correct the value, or declare it under `read.missing_codes` if it means "
            f"'missing'.{hint}"
        ),
    )


#: Category columns whose label spellings are merged (``label_variant``); endings are
#: case-folded by :func:`check_endings`.
LABEL_LIKE = ("condition", "informant", "rupture", "role")


def label_key(value: str) -> str:
    """Return the key under which spellings of one category label are merged.

    Compatibility normal form (NFKC), case folding and runs of spaces as one space.

    Examples
    --------
    >>> [label_key(v) for v in ["Feedback", "FEEDBACK", "usual  care", "Usual Care"]]
    ['feedback', 'feedback', 'usual care', 'usual care']
    """
    return " ".join(unicodedata.normalize("NFKC", value).casefold().split())


def _label_variants(run: CleanRun) -> None:
    """Merge spellings of one label in a category column (``label_variant``).

    Without this, "Feedback" and "feedback" would be two arms of the trial. Each rewritten
    row is logged as altered; with the policy ``error`` the first one stops the stage.
    """
    frame = run.frame
    for col in [c for c in LABEL_LIKE if c in frame]:
        present = frame[col].notna()
        if not present.any():
            continue
        values = frame.loc[present, col].astype(str)
        keyed = _per_value(values, lambda s: s.map(label_key))
        spellings = pd.DataFrame({"key": keyed, "value": values})
        counts = spellings.groupby(["key", "value"], sort=False).size().reset_index(name="n")
        variant = counts.groupby("key")["value"].transform("size").gt(1)
        if not variant.any():
            continue
        # A spelling the study maps under `read.labels` wins, then the most frequent one.
        declared = set((run.study.get("labels") or {}).get(col) or {})
        counts = counts[variant]
        counts = counts.assign(declared=counts["value"].isin(declared))
        counts = counts.sort_values(["declared", "n"], ascending=False, kind="mergesort")
        canonical = counts.drop_duplicates("key").set_index("key")["value"]
        target = spellings["key"].map(canonical)
        changed = target.notna() & spellings["value"].ne(target)
        idx = spellings.index[changed]
        old, new = spellings.loc[idx, "value"], target.loc[idx]
        reason = pd.Series(
            [
                f"{col} label {o!r} is a spelling of {n!r} (case, spaces or Unicode form)"
                for o, n in zip(old, new, strict=True)
            ],
            index=idx,
        )
        mask = pd.Series(False, index=frame.index)
        mask.loc[idx] = True
        if run.policies["label_variant"] == "merge":
            frame.loc[idx, col] = new.to_numpy()
            run.record(frame.loc[idx], "label_variant", "altered", col, reason)
        else:
            run.apply(
                "label_variant",
                mask,
                column=col,
                reason=reason,
                fix=f"Write every {col} label the same way in the file, or map each spelling "
                f"under `{run.key}.read.labels.{col}` in {run.config}.",
            )
    run.frame = frame


def apply_labels(run: CleanRun) -> None:
    """Merge spellings of one label (``label_variant``), then apply the study's ``labels``."""
    _label_variants(run)
    frame = run.frame
    for col, mapping in (run.study.get("labels") or {}).items():
        if col in frame:
            frame[col] = _per_value(
                frame[col], lambda s, m=mapping: s.map(lambda v: m.get(v, v) if pd.notna(v) else v)
            )
    run.frame = frame


def check_endings(run: CleanRun) -> None:
    """Check that endings are planned, unilateral, dropout or ongoing (``ending_invalid``)."""
    frame = run.frame
    if "ending" not in frame:
        return
    folded = _per_value(
        frame["ending"], lambda s: s.map(lambda v: v.casefold() if isinstance(v, str) else v)
    )
    known = folded.isin(ENDING_TYPES)
    frame["ending"] = frame["ending"].where(~known, folded)
    bad = frame["ending"].notna() & ~known
    if bad.any():
        example = frame.loc[bad, "ending"].iloc[0]
        run.apply(
            "ending_invalid",
            bad,
            column="ending",
            reason=frame.loc[bad, "ending"].map(
                lambda v: f"ending {v!r} is not one of {', '.join(ENDING_TYPES)}"
            ),
            fix=(
                f"Map each of the export's ending labels to one of these types under "
                f"`{run.key}.read.labels.ending` in {run.config} (here `{example!r}: <type>`); "
                "leave the cell blank when the ending is not recorded."
            ),
        )


def first_arms(frame: pd.DataFrame) -> pd.DataFrame:
    """Each patient's first recorded arm: by session number, then source row.

    Returns a frame indexed by patient with the columns ``condition``, ``_source_row``
    (the file row the arm is recorded on) and ``_label`` (that row's label in *frame*);
    rows with a blank arm or patient are skipped, and a row without a session number
    comes after the numbered ones.
    """
    f = frame[["patient", "session", "_source_row", "condition"]]
    f = sort_rows(
        f.loc[f["patient"].notna() & f["condition"].notna()], ["patient", "session", "_source_row"]
    )
    f = f.drop_duplicates("patient").assign(_label=f.index[~f["patient"].duplicated()])
    return f.set_index("patient")[["condition", "_source_row", "_label"]]


def patient_level_values(run: CleanRun) -> None:
    """One ending and follow-up time per patient (``ending_conflict``), on all its rows.

    Runs before any row-level rule, so an ending recorded on a row that a later rule
    excludes still describes the patient. For the same reason it records each patient's
    first recorded arm (by session number, then source row) in ``run.first_arm``: the arm
    :func:`allianceflow.clean.rules.condition_change` analyses the patient in (intention
    to treat), even when a later rule excludes the row it is recorded on.
    """
    if "condition" in run.frame:
        run.first_arm = first_arms(run.frame)
    moderators = [c for c in run.frame if c.startswith(MODERATOR_PREFIX)]
    for col in [*PATIENT_LEVEL, *moderators]:
        if col not in run.frame:
            continue
        # Only the rows that record a value are sorted (a stable sort of them keeps the
        # order they have in the sorted table).
        recorded = sort_rows(
            run.frame.loc[run.frame[col].notna(), ["patient", "session", col]],
            ["patient", "session"],
        )
        kinds = recorded.groupby("patient")[col].nunique()
        conflicting = kinds.index[kinds > 1]
        if len(conflicting):
            of = recorded[recorded["patient"].isin(conflicting)]
            first = of.groupby("patient")[col].transform("first")
            listing = of.groupby("patient")[col].agg(
                lambda v: ", ".join(number_text(x) for x in pd.unique(v))
            )
            target = (
                of.index[of[col].ne(first)]
                if run.policies["ending_conflict"] == "error"
                else run.frame.index[run.frame["patient"].isin(conflicting)]
            )
            mask = pd.Series(False, index=run.frame.index)
            mask.loc[target] = True
            reason = run.frame.loc[target, "patient"].map(
                lambda p, c=col, listing=listing: (
                    f"the patient's {c} differs between rows ({listing[p]}); it is one value "
                    "per patient"
                )
            )
            run.apply(
                "ending_conflict",
                mask,
                column=col,
                reason=reason,
                fix=f"Record one {col} per patient (on any or all of the patient's rows).",
            )
        if len(recorded):
            # Set on the run's own table: ``assign`` would copy every column.
            run.frame[col] = run.frame.groupby("patient")[col].transform("first")
