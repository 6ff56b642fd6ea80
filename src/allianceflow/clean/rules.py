"""The row and patient rules of the clean stage, each a named step of a :class:`CleanRun`."""

from __future__ import annotations

import calendar
import re

import numpy as np
import pandas as pd

from ..contract import ITEM_PATTERN, item_ranges
from ..io import _per_value
from .prepare import first_arms
from .state import ID_COLUMNS, OTHER_DATE_FORMATS, CleanRun, sort_rows

__all__ = [
    "missing_ids",
    "session_numbers",
    "parse_dates",
    "date_problem",
    "duplicates",
    "check_item_ranges",
    "session_order",
    "out_of_order",
    "session_gaps",
    "missing_therapist",
    "therapist_change",
    "condition_change",
    "followup",
    "min_sessions",
]


def missing_ids(run: CleanRun) -> None:
    """Rows without a patient id or session number (``missing_id``)."""
    f = run.frame
    no_patient, no_session = f["patient"].isna(), f["session"].isna()
    missing = no_patient | no_session
    if not missing.any():
        return
    # Reasons for the rows concerned only (a text per row of 10^6 rows costs seconds).
    no_patient, no_session = no_patient[missing], no_session[missing]
    reason = pd.Series(
        np.where(
            no_patient & no_session,
            "patient id and session number are empty",
            np.where(no_patient, "patient id is empty", "session number is empty"),
        ),
        index=no_patient.index,
        dtype=object,
    )
    run.apply(
        "missing_id",
        missing,
        column=None,
        reason=reason,
        fix="Fill in the patient id and session number.",
    )


def session_numbers(run: CleanRun) -> None:
    """Session numbers must be whole numbers of 1 or more (``session_invalid``)."""
    f = run.frame
    session = f["session"]
    invalid = (session < 1) | (session != np.floor(session))
    run.apply(
        "session_invalid",
        invalid,
        column="session",
        reason=f.loc[invalid, "_session_text"].map(
            lambda v: f"session number {v} is not a whole number of 1 or more"
        ),
        fix="Session numbers count from 1 (1 = the first session); correct the value.",
    )


_DIRECTIVES = {
    "%d": r"(?P<d>\d{1,2})",
    "%m": r"(?P<m>\d{1,2})",
    "%Y": r"(?P<Y>\d{4})",
    "%y": r"(?P<y>\d{2})",
    "%H": r"\d{1,2}",
    "%M": r"\d{1,2}",
    "%S": r"\d{1,2}",
}


def _shape(fmt: str) -> re.Pattern | None:
    """Return a regular expression of the strings *fmt* writes, or None for other directives."""
    parts, i = [], 0
    while i < len(fmt):
        if fmt[i] == "%":
            directive = fmt[i : i + 2]
            if directive not in _DIRECTIVES:
                return None
            parts.append(_DIRECTIVES[directive])
            i += 2
        else:
            parts.append(re.escape(fmt[i]))
            i += 1
    return re.compile("^" + "".join(parts) + "$")


def date_problem(value: str, fmt: str, *, quote: bool = True) -> str:
    """Why *value* is not a date in the format *fmt*, in words.

    A value written in *fmt* whose day or month does not exist is called impossible
    (``31.02.2024``: February 2024 has 29 days); a value that another common format
    reads is a mixed format; anything else does not match. With ``quote=False`` the
    value itself is not repeated (when ids are hashed no calendar date is written).

    Examples
    --------
    >>> date_problem("31.02.2024", "%d.%m.%Y")
    "date '31.02.2024' is impossible: February 2024 has 29 days"
    >>> date_problem("2024-02-08", "%d/%m/%Y", quote=False)
    'the date is written as %Y-%m-%d, but the date format is %d/%m/%Y (mixed date formats)'
    >>> date_problem("31.02.2024", "%d.%m.%Y", quote=False)
    'the date is impossible: that day does not exist in its month'
    """
    shown = f"date {value!r}" if quote else "the date"
    shape = _shape(fmt)
    match = shape.match(value) if shape is not None else None
    if match is not None:
        parts = match.groupdict()
        month = int(parts["m"]) if parts.get("m") else None
        year = int(parts["Y"]) if parts.get("Y") else None
        if year is None and parts.get("y"):
            year = 2000 + int(parts["y"])
        if month is not None and not 1 <= month <= 12:
            return f"{shown} is impossible: there is no month {month}"
        if parts.get("d") and month is not None and year is not None:
            days = calendar.monthrange(year, month)[1]
            day = int(parts["d"])
            if not 1 <= day <= days:
                if not quote:  # naming the month and year would give the date away
                    return f"{shown} is impossible: that day does not exist in its month"
                return f"{shown} is impossible: {calendar.month_name[month]} {year} has {days} days"
        return f"{shown} is impossible (not a day of the calendar)"
    for other in OTHER_DATE_FORMATS:
        if other != fmt and not pd.isna(pd.to_datetime(value, format=other, errors="coerce")):
            return (
                f"{shown} is written as {other}, but the date format is {fmt} (mixed date formats)"
            )
    return f"{shown} does not match the date format {fmt}"


def parse_dates(run: CleanRun) -> None:
    """Calendar dates (``date_invalid``) and sessions after the extraction (``after_extraction``).

    Reasons give the number of days, never the date of a session or of the extraction; a
    value that is not a date is quoted only when ids are not hashed.
    """
    if not run.has_dates:
        return
    f = run.frame
    typed = run.raw_names.get("date") in run.date_columns
    fmt = "%Y-%m-%d" if typed else run.study.get("date_format", "%Y-%m-%d")
    dates = _per_value(
        f["date"].dropna(), lambda s: pd.to_datetime(s, format=fmt, errors="coerce")
    ).reindex(f.index)
    bad = dates.isna() & f["date"].notna()
    if bad.any():
        quote = run.salt is None
        reasons = f["date"][bad].map(lambda v: date_problem(v, fmt, quote=quote))
        fix = (
            "Write every date in one format in the file, or set `read.date_format` for this study "
            f"in {run.config}."
        )
        if "is impossible" in reasons.iloc[0]:
            fix = "Correct the date: it is a typing error, since no such day exists."
        if typed:
            fix = (
                "The other cells of this column are spreadsheet dates; enter this cell as a "
                "date too."
            )
        run.apply(
            "date_invalid",
            bad,
            column="date",
            reason=reasons,
            fix=fix,
        )
    # Set on a shallow copy (the run's own table; no column is copied): ``assign`` made a
    # deep copy of every column, which at 10^6 rows cost ~2 s.
    frame = run.frame.copy(deep=False)
    frame["date"] = dates.reindex(frame.index)
    run.frame = frame
    extraction = run.extraction
    if extraction is not None:
        f = run.frame
        day = f["date"].dt.normalize()
        late = day > extraction  # a session on the extraction day is in
        run.apply(
            "after_extraction",
            late,
            column="date",
            reason=(day[late] - extraction).dt.days.map(
                lambda n: f"the session is dated {n} day(s) after the extraction date"
            ),
            fix=(
                f"Check the date, or set `{run.key}.read.extraction_date` to the day the data were "
                "exported."
            ),
        )


def duplicates(run: CleanRun) -> None:
    """Identical copies (``duplicate_identical``) and conflicting rows of one key."""
    keys = run.keys
    f = run.frame
    # The keys are value columns, so identical rows share their key: only the rows of a
    # repeated key are compared on every value column, and only they can conflict.
    repeated = f.duplicated(keys, keep=False).to_numpy()
    identical = np.zeros(len(f), dtype=bool)
    if repeated.any():
        identical[repeated] = f.loc[repeated].duplicated(run.value_cols, keep="first").to_numpy()
    run.apply(
        "duplicate_identical",
        pd.Series(identical, index=f.index),
        column=None,
        reason="identical copy of an earlier row; the first copy is kept",
        fix="Delete the copy from the file.",
    )
    if not repeated.any():
        return
    if identical.any():  # dropped, or the run stopped (policy error)
        candidates = run.frame.index.isin(f.index[repeated & ~identical])
    else:
        candidates = repeated
    f = run.frame
    conflicting = np.zeros(len(f), dtype=bool)
    conflicting[candidates] = f.loc[candidates].duplicated(keys, keep=False).to_numpy()
    conflicting = pd.Series(conflicting, index=f.index)
    if not conflicting.any():
        return
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
    run.apply(
        "duplicate_conflicting",
        conflicting,
        column=None,
        reason=reason,
        fix="Keep one row per patient and session in the file (or map an `informant` column).",
    )


def check_item_ranges(run: CleanRun) -> None:
    """Items outside their instrument's response range (``out_of_range``)."""
    from .columns import not_applicable_codes

    run.ranges = item_ranges(
        [c for c in run.value_cols if c not in ID_COLUMNS],
        {k: v[:2] for k, v in run.instruments.items()},
    )
    codes = not_applicable_codes(run.study, run.frame.columns) if run.ranges else {}
    for col, (low, high, *_) in list(run.ranges.items()):
        values = run.frame[col]
        out = (values < low) | (values > high)
        code = codes.get(ITEM_PATTERN.match(col)["instrument"])
        if code is not None:
            # a "does not apply" answer (e.g. CARE) is kept; the score stage counts it
            out &= values.ne(code)
            run.ranges[col] = (low, high, code)
        if out.any():
            instrument = ITEM_PATTERN.match(col)["instrument"]
            reason = values[out].map(
                lambda v, c=col, lo=low, hi=high, i=instrument: (
                    f"{c} = {v:g} is outside the response range {lo:g} to {hi:g} of {i}"
                )
            )
            run.apply(
                "out_of_range",
                out,
                column=col,
                reason=reason,
                fix=(
                    "Correct the value, or declare it under `read.missing_codes` if it is a code "
                    "for 'missing'."
                ),
            )


def out_of_order(dates: np.ndarray) -> np.ndarray:
    """Which dates of one patient's series (in session order) break the order.

    The kept dates are a longest non-decreasing subsequence (the fewest rows are
    flagged). Among several, the one of the earliest sessions is kept, unless another
    spans fewer days by more than the longest interval between its own kept dates: then
    that one is kept, so a far-off date (a session typed as 2031) is the one flagged,
    whether it comes before or after the rows it disagrees with, while a near tie (a date
    a few days off either way) flags the later session.

    Examples
    --------
    >>> out_of_order(np.array([1, 2, 2031, 4, 5])).tolist()
    [False, False, True, False, False]
    >>> out_of_order(np.array([1, 8, 5])).tolist()
    [False, False, True]
    >>> out_of_order(np.array([1, 8, 15, 2031, 29])).tolist()
    [False, False, False, True, False]
    >>> out_of_order(np.array([1, 2031, 15])).tolist()
    [False, True, False]
    """
    n = len(dates)
    if not n:
        return np.zeros(0, dtype=bool)
    longest = np.ones(n, dtype=int)  # longest non-decreasing run starting at i
    end = dates.copy()  # the smallest last date of such a run starting at i
    for i in range(n - 2, -1, -1):
        later = np.flatnonzero(dates[i + 1 :] >= dates[i]) + i + 1
        if len(later):
            longest[i] = 1 + longest[later].max()
            if longest[i] > 1:
                end[i] = end[later[longest[later] == longest[i] - 1]].min()
    need = int(longest.max())

    def kept(start: int | None, target=None) -> np.ndarray:
        keep, left, last = np.zeros(n, dtype=bool), need, None
        for i in range(start or 0, n):
            if (
                left
                and longest[i] == left
                and (last is None or dates[i] >= last)
                and (target is None or end[i] == target)
            ):
                keep[i], last, left = True, dates[i], left - 1
        return keep

    earliest = kept(None)
    starts = np.flatnonzero(longest == need)
    spans = end[starts] - dates[starts]
    start = int(starts[np.argmin(spans)])
    shortest = kept(start, end[start])
    span = dates[shortest][-1] - dates[shortest][0]
    steps = np.diff(dates[shortest])
    if dates[earliest][-1] - dates[earliest][0] - span > (steps.max() if len(steps) else 0):
        return ~shortest
    return ~earliest


def session_order(run: CleanRun) -> None:
    """Sessions dated out of order with their numbers (``session_order``)."""
    if not run.has_dates or not len(run.frame):
        return
    group = run.group
    f = sort_rows(run.frame[list(dict.fromkeys([*group, "session", "date"]))], [*group, "session"])
    keys_of = [f[c] for c in group]
    running = f.groupby(keys_of, observed=True, dropna=False)["date"].cummax()
    earlier = running.groupby(keys_of, observed=True, dropna=False).shift()
    suspect = f["date"] < earlier
    if not suspect.any():
        return
    series = f.groupby(keys_of, observed=True, dropna=False, sort=False).ngroup()
    involved = series.isin(series[suspect])
    order = pd.Series(False, index=f.index)
    reasons = {}
    dated = involved & f["date"].notna()
    for _, part in f[dated].groupby(series[dated], sort=False):
        dates = part["date"].to_numpy()
        flagged = out_of_order(dates.astype("datetime64[ns]").astype("int64"))
        kept = np.flatnonzero(~flagged)
        for i in np.flatnonzero(flagged):
            before, after = kept[kept < i], kept[kept > i]
            s = int(part["session"].iloc[i])
            if len(before) and dates[i] < dates[before[-1]]:
                j = before[-1]
                gap = (pd.Timestamp(dates[j]).normalize() - pd.Timestamp(dates[i]).normalize()).days
                where = "before the previous session"
            else:
                j = after[0]
                gap = (pd.Timestamp(dates[i]).normalize() - pd.Timestamp(dates[j]).normalize()).days
                where = "after the next session"
            when = f"{gap} day(s) {where}" if gap else f"on the same day but {where.split()[0]}"
            reasons[part.index[i]] = (
                f"session {s} is dated {when} (session {int(part['session'].iloc[j])})"
            )
            order[part.index[i]] = True
    run.apply(
        "session_order",
        order,
        column="date",
        reason=pd.Series(reasons, dtype=object),
        fix="Check the session numbers and dates of this patient.",
    )


def session_gaps(run: CleanRun) -> None:
    """Session numbers missing before a recorded session (``session_gap``)."""
    group = run.group
    f = sort_rows(run.frame[list(dict.fromkeys([*group, "session"]))], [*group, "session"])
    previous = f.groupby(group, observed=True, dropna=False)["session"].shift().fillna(0)
    gap = f["session"] - previous > 1

    def missing(s: float, p: float) -> str:
        plural = "s" if s - p > 2 else ""
        span = "" if s - p == 2 else f" to {int(s) - 1}"
        return f"session{plural} {int(p) + 1}{span} missing before session {int(s)}"

    reason = pd.Series(
        [missing(s, p) for s, p in zip(f.loc[gap, "session"], previous[gap], strict=True)],
        index=f.index[gap],
    )
    run.apply(
        "session_gap",
        gap,
        column="session",
        reason=reason,
        fix="Add the missing sessions, or accept gaps with `flag` or `ignore`.",
    )


def missing_therapist(run: CleanRun) -> None:
    """Rows with a blank therapist (``missing_therapist``).

    With the default policy ``fill``, a blank is filled with the therapist the patient's
    other rows name when they name exactly one (action ``altered``); a row that cannot be
    filled (the patient's other rows name none, or several) is excluded. ``exclude`` and
    ``flag`` act on every blank row without filling; ``error`` stops.
    """
    if "therapist" not in run.value_cols:
        return
    f = run.frame
    blank = f["therapist"].isna()
    if not blank.any():
        return
    others = ~blank & f["patient"].isin(set(f.loc[blank, "patient"].dropna()))
    named = f.loc[others].groupby("patient")["therapist"].agg(lambda t: list(pd.unique(t)))
    options = f.loc[blank, "patient"].map(named)
    if run.policies["missing_therapist"] == "fill":
        fillable = options.map(lambda o: isinstance(o, list) and len(o) == 1)
        idx = options.index[fillable.astype(bool)]
        if len(idx):
            values = options[idx].map(lambda o: o[0])
            run.frame.loc[idx, "therapist"] = values.to_numpy()
            run.record(
                run.frame.loc[idx],
                "missing_therapist",
                "altered",
                "therapist",
                values.map(
                    lambda t: (
                        "therapist is blank; filled with the patient's only therapist "
                        f"{run.shown_id(t)}"
                    )
                ),
            )
        options = options.drop(idx)

    def why(o) -> str:
        if not isinstance(o, list):
            return "therapist is blank, and no other row of the patient names one"
        return f"therapist is blank, and the patient's other rows name {len(o)} therapists"

    mask = pd.Series(False, index=run.frame.index)
    mask.loc[options.index] = True
    run.apply(
        "missing_therapist",
        mask,
        column="therapist",
        reason=options.map(why),
        fix="Fill in the therapist, or exclude or flag such rows.",
    )


def therapist_change(run: CleanRun) -> None:
    """Patients seen by more than one therapist (``therapist_change``)."""
    if "therapist" not in run.value_cols:
        return
    group = run.group
    f = sort_rows(
        run.frame[list(dict.fromkeys([*group, "session", "therapist"]))], [*group, "session"]
    )
    therapists = f.groupby("patient")["therapist"].nunique()
    changers = therapists.index[therapists > 1]
    if not len(changers):
        return
    rows_of = f["patient"].isin(changers)
    prev = f.groupby("patient")["therapist"].ffill().groupby(f["patient"]).shift()
    change = rows_of & f["therapist"].notna() & prev.notna() & f["therapist"].ne(prev)
    target = change if run.policies["therapist_change"] in ("flag", "error") else rows_of
    listing = (
        f[rows_of]
        .groupby("patient")["therapist"]
        .agg(
            lambda t: " → ".join(
                str(v) if run.salt is None else run.shown_id(v)[1:-1] for v in pd.unique(t.dropna())
            )
        )
    )
    reason = f.loc[target, "patient"].map(
        lambda p: f"the patient's therapist changes ({listing[p]})"
    )
    run.apply(
        "therapist_change",
        target,
        column="therapist",
        reason=reason,
        fix="Keep one therapist per patient, or flag or exclude such patients.",
    )


def condition_change(run: CleanRun) -> None:
    """One arm per patient: the first recorded one (``condition_change``).

    The analysis is by intention to treat: every row of a patient takes the arm of the
    patient's first recorded session (the best record of the allocation), taken by
    :func:`allianceflow.clean.prepare.patient_level_values` before any row-level rule
    runs, so the arm of a first session that a rule excludes (an impossible date, a
    duplicate) still counts. With the default ``flag``, a patient whose arm changes is
    kept and each row whose recorded arm differs is logged with action ``altered``;
    ``exclude`` drops such patients (a per-protocol choice that can break the
    comparability of randomised arms); ``error`` stops. A blank arm on a row of a patient
    with a recorded arm is filled with it and logged (action ``altered``) whatever the
    policy.
    """
    if "condition" not in run.value_cols:
        return
    f = sort_rows(run.frame[["patient", "session", "condition"]], ["patient", "session"])
    recorded = f[f["condition"].notna()]
    taken = run.first_arm if run.first_arm is not None else first_arms(run.frame)
    if (
        run.first_arm is not None
        and not pd.Index(f["patient"].dropna().unique()).difference(taken.index).empty
    ):
        # Patients whose arm was not taken before the row rules (none, as a rule): their
        # first arm among the rows now.
        now = first_arms(run.frame)
        taken = pd.concat([taken, now.loc[now.index.difference(taken.index)]])
    taken = taken.loc[taken.index.isin(set(f["patient"].dropna()))]
    if not len(taken):
        return
    first = taken["condition"]
    arm = f["patient"].map(first)
    gone = taken.loc[~taken["_label"].isin(f.index), "_source_row"]
    arms = pd.concat(
        [
            pd.DataFrame({"patient": first.index, "condition": first.to_numpy()}),
            recorded[["patient", "condition"]],
        ]
    )
    kinds = arms.groupby("patient")["condition"].nunique()
    switchers = kinds.index[kinds > 1]
    policy = run.policies["condition_change"]
    if len(switchers):
        listing = arms[arms["patient"].isin(switchers)].groupby("patient")["condition"]
        listing = listing.agg(lambda c: " → ".join(map(str, pd.unique(c))))

        def source(p) -> str:
            if p not in gone.index:
                return ""
            return f"; it is recorded on row {gone[p]}, which is excluded"

        if policy == "flag":
            differs = f["condition"].notna() & f["condition"].ne(arm)
            idx = f.index[differs]
            run.frame.loc[idx, "condition"] = arm[idx].to_numpy()
            run.record(
                run.frame.loc[idx],
                "condition_change",
                "altered",
                "condition",
                pd.Series(
                    [
                        f"the patient's arm changes ({listing[p]}); analysed in the first "
                        f"recorded arm, {a!r} (intention to treat{source(p)})"
                        for p, a in zip(f.loc[idx, "patient"], arm[idx], strict=True)
                    ],
                    index=idx,
                    dtype=object,
                ),
            )
        else:
            target = f["patient"].isin(switchers)
            if policy == "error":
                target = f["condition"].notna() & f["condition"].ne(arm)
            run.apply(
                "condition_change",
                target,
                column="condition",
                reason=f.loc[target, "patient"].map(
                    lambda p: f"the patient's arm changes ({listing[p]}{source(p)})"
                ),
                fix=(
                    "Record the arm the patient was allocated to on every row, or set the rule "
                    "to 'flag' to analyse each patient in the first recorded arm (intention to "
                    "treat)."
                ),
            )
    f = run.frame
    blank = f["condition"].isna() & f["patient"].isin(first.index)
    if blank.any():
        fill = f.loc[blank, "patient"].map(first)
        run.frame.loc[blank, "condition"] = fill.to_numpy()
        run.record(
            run.frame.loc[blank],
            "condition_change",
            "altered",
            "condition",
            fill.map(lambda a: f"arm is blank; filled with the patient's recorded arm {a!r}"),
        )


def followup(run: CleanRun) -> None:
    """Check mapped follow-up times: negative, or before a session (``after_extraction``)."""
    if "followup_days" not in run.frame:
        return
    fix = (
        "Check the patient's follow-up time (days from the first session to the extraction) "
        "and day counts."
    )
    f = run.frame
    negative = f["followup_days"] < 0
    run.apply(
        "after_extraction",
        negative,
        column="followup_days",
        reason=f.loc[negative, "followup_days"].map(
            lambda u: (
                f"the follow-up time is {u:g} days, so the extraction would precede the first "
                "session"
            )
        ),
        fix=fix,
    )
    if "days" in run.frame:
        f = run.frame
        late = f["days"] > f["followup_days"]
        run.apply(
            "after_extraction",
            late,
            column="days",
            reason=[
                f"the session is on day {d:g}, after the follow-up time of {u:g} days"
                for d, u in zip(f.loc[late, "days"], f.loc[late, "followup_days"], strict=True)
            ],
            fix=fix,
        )


def min_sessions(run: CleanRun) -> None:
    """Patients with fewer than ``min_sessions`` sessions (``min_sessions``)."""
    minimum = int(run.study.get("min_sessions", 1) or 1)
    if minimum <= 1:
        return
    f = run.frame
    count = f.groupby("patient")["session"].transform("nunique")
    few = count < minimum
    reason = count[few].map(
        lambda n: f"the patient has {n} session(s), fewer than min_sessions = {minimum}"
    )
    run.apply(
        "min_sessions",
        few,
        column=None,
        reason=reason,
        fix="Lower `min_sessions`, or exclude such patients.",
    )
