"""Derived variables for the analysis: within/between-patient parts and lags.

References
----------
Curran, P. J., & Bauer, D. J. (2011). The disaggregation of within-person and
between-person effects in longitudinal models of change. *Annual Review of Psychology*,
62, 583–619.

Enders, C. K., & Tofighi, D. (2007). Centering predictor variables in cross-sectional
multilevel models: A new look at an old issue. *Psychological Methods*, 12(2), 121–138.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from ._checks import check_columns
from ._derive_checks import neighbour_rows as _neighbour_rows

__all__ = [
    "informant_alliances",
    "preset_variables",
    "within_between",
    "lag_within_patient",
    "derive_analysis",
    "derive_tables",
    "DerivedTables",
    "DERIVE_DEFAULTS",
]


def within_between(
    data: pd.DataFrame,
    column: str,
    *,
    patient: str = "patient",
    prefix: str | None = None,
    therapist: str | None = None,
    grand_mean: bool = False,
) -> pd.DataFrame:
    r"""Split a time-varying predictor into within- and between-patient parts.

    Parameters
    ----------
    data : pandas.DataFrame
        Long format, one row per session.
    column : str
        The predictor, e.g. ``"wai_sr_total"``.
    patient : str
        The patient id column.
    prefix : str, optional
        Prefix of the new columns; *column* when omitted.
    therapist : str, optional
        The therapist id column. When given, the between-patient part is split further
        for three-level models (sessions in patients in therapists).
    grand_mean : bool
        Also add the grand-mean-centred value ``<prefix>_gmc``.

    Returns
    -------
    pandas.DataFrame
        A copy of *data* with ``<prefix>_pmean`` (the patient's mean over their non-missing
        sessions), ``<prefix>_between`` (that mean minus the grand mean of patient means)
        and ``<prefix>_within`` (the session value minus the patient's mean). With
        *grand_mean*: ``<prefix>_gmc`` (the session value minus the grand mean, which is
        ``_within + _between``). With *therapist*: ``<prefix>_tmean`` (the therapist's
        mean of their patients' means), ``<prefix>_therapist`` (that minus the grand
        mean) and ``<prefix>_patient`` (the patient's mean minus their therapist's mean),
        so that ``_between = _therapist + _patient``.

    Raises
    ------
    KeyError
        A named column is missing.
    ValueError
        A patient seen by more than one therapist (the three-level split needs patients
        nested in therapists).

    Notes
    -----
    .. math::

        x^{B}_i = \bar x_i - \frac{1}{N}\sum_{i'} \bar x_{i'}, \qquad
        x^{W}_{it} = x_{it} - \bar x_i

    (person-mean centring, Enders & Tofighi 2007; Curran & Bauer 2011). The grand mean
    weighs every patient equally, whatever their number of sessions. Patients with no
    observed value get missing parts. With therapists :math:`j`,

    .. math::

        \bar x_j = \frac{1}{N_j}\sum_{i \in j} \bar x_i, \qquad
        x^{T}_j = \bar x_j - \bar x, \qquad x^{P}_{i} = \bar x_i - \bar x_{j(i)},

    each patient weighing equally within their therapist (patients with no observed value
    do not count). Grand-mean centring: :math:`x^{G}_{it} = x_{it} - \bar x`, with
    :math:`\bar x` the same grand mean of patient means.

    Examples
    --------
    >>> import pandas as pd
    >>> df = pd.DataFrame({"patient": ["a", "a", "b", "b"], "x": [1.0, 3.0, 5.0, 7.0]})
    >>> within_between(df, "x")[["x_within", "x_between"]].to_numpy().tolist()
    [[-1.0, -2.0], [1.0, -2.0], [-1.0, 2.0], [1.0, 2.0]]
    """
    check_columns(data, column, patient)
    if therapist is not None:
        check_columns(data, therapist)
    out = data.copy()
    _add_within_between(
        out,
        column,
        patient=patient,
        prefix=prefix or column,
        therapist=therapist,
        grand_mean=grand_mean,
    )
    return out


#: Passed as ``codes`` when :func:`_id_codes` gave None (the callers then group by the ids).
_NO_CODES = (None,)


def _add_within_between(
    out: pd.DataFrame,
    column: str,
    *,
    patient: str,
    prefix: str,
    therapist: str | None,
    grand_mean: bool,
    codes: Any = None,
) -> None:
    """The columns of :func:`within_between`, added to *out* in place (no copy of the table).

    *codes*: ``_id_codes(out[patient])`` when the caller has them already (the ids are the
    same for every column it splits), or ``_NO_CODES`` when those were None.
    """
    codes = _id_codes(out[patient]) if codes is None else codes
    codes = None if codes is _NO_CODES else codes
    patient_codes = None if codes is None else codes[0]
    if codes is None:
        pmean = out.groupby(patient, sort=False, observed=True)[column].transform("mean")
        per_patient = out.groupby(patient, sort=False, observed=True)[column].mean()
    else:
        # Grouped by the ids' codes (in order of first appearance, as `sort=False` groups
        # are): the same groups in the same order, without hashing the ids twice.
        codes, ids = codes
        grouped = out[column].groupby(codes, sort=False)
        pmean = grouped.transform("mean")
        per_patient = grouped.mean()
        per_patient.index = ids.take(per_patient.index.to_numpy()).rename(patient)
    grand = per_patient.mean()
    out[f"{prefix}_pmean"] = pmean
    out[f"{prefix}_between"] = pmean - grand
    out[f"{prefix}_within"] = out[column] - pmean
    if grand_mean:
        out[f"{prefix}_gmc"] = out[column] - grand
    if therapist is not None:
        pairs = _pairs(out, patient, therapist, patient_codes)
        multi = pairs[pairs.duplicated(patient, keep=False)]
        if len(multi):
            who = multi[patient].iloc[0]
            raise ValueError(
                f"Patient {who!r} is seen by more than one therapist "
                f"({', '.join(map(str, multi.loc[multi[patient] == who, therapist]))}); the "
                "three-level split needs each patient nested in one therapist."
            )
        of = pairs.set_index(patient)[therapist]
        tmeans = (
            per_patient.dropna().groupby(of.reindex(per_patient.dropna().index), sort=False).mean()
        )
        tmean = out[therapist].map(tmeans)
        out[f"{prefix}_tmean"] = tmean
        out[f"{prefix}_therapist"] = tmean - grand
        out[f"{prefix}_patient"] = pmean - tmean


def lag_within_patient(
    data: pd.DataFrame,
    columns: Sequence[str],
    *,
    patient: str = "patient",
    session: str = "session",
    lag: int = 1,
    across_gaps: bool = False,
    suffix: str | None = None,
) -> pd.DataFrame:
    """Values from an earlier (``lag > 0``) or later (``lag < 0``) session of the same patient.

    Parameters
    ----------
    data : pandas.DataFrame
        Long format; need not be sorted.
    columns : sequence of str
        Columns to lag.
    lag : int
        1 takes the previous session, -1 the next one (a lead).
    across_gaps : bool
        False (the default): the value comes from session ``s - lag`` only; when that
        session is missing from the data the lagged value is missing, because a missed
        session is not "the previous session". True: the previous *recorded* session counts
        whatever its number.
    suffix : str, optional
        Suffix of the new columns; ``"_lag"`` for lag 1, ``"_lag2"``, ``"_lead"`` …

    Returns
    -------
    pandas.DataFrame
        A copy of *data* (same row order) with one ``<column><suffix>`` per column.

    Examples
    --------
    >>> import pandas as pd
    >>> df = pd.DataFrame({"patient": ["a"] * 3, "session": [1, 2, 4], "x": [1.0, 2.0, 4.0]})
    >>> lag_within_patient(df, ["x"])["x_lag"].tolist()
    [nan, 1.0, nan]
    >>> lag_within_patient(df, ["x"], across_gaps=True)["x_lag"].tolist()
    [nan, 1.0, 2.0]
    """
    check_columns(data, patient, session, *columns)
    if not isinstance(lag, (int, np.integer)) or lag == 0:
        raise ValueError(f"`lag` must be a non-zero integer; got {lag!r}.")
    if suffix is None:
        suffix = ("_lag" if lag > 0 else "_lead") + (str(abs(lag)) if abs(lag) > 1 else "")
    out = data.copy()
    _add_lags(
        out,
        columns,
        patient=patient,
        session=session,
        lag=lag,
        across_gaps=across_gaps,
        suffix=suffix,
    )
    return out


def _add_lags(
    out: pd.DataFrame,
    columns: Sequence[str],
    *,
    patient: str,
    session: str,
    lag: int,
    across_gaps: bool,
    suffix: str,
) -> None:
    """The columns of :func:`lag_within_patient`, added to *out* in place (no copy of the table)."""
    if abs(lag) == 1 and patient not in columns and session not in columns:
        neighbour = _neighbour_rows(
            out, patient=patient, session=session, lag=lag, across_gaps=across_gaps
        )
        if neighbour is not None:
            # Sorted by patient and session: the row a lag (or lead) of one comes from is
            # the row just before (after), when it is the same patient's and, unless
            # across gaps, its session is one earlier (later). Missing where there is none,
            # with the types a left merge gives (int to float, bool to object).
            for column in columns:
                col = out[column]
                base = col.to_numpy() if isinstance(col.dtype, np.dtype) else col.array
                values = pd.api.extensions.take(base, neighbour, allow_fill=True)
                out[f"{column}{suffix}"] = pd.Series(values, index=out.index)
            return
    codes = _id_codes(out[patient], sort=True)
    if codes is not None and patient not in columns and session not in columns:
        # Patients by their codes (sorted like the ids): the same order and the same
        # matches as sorting and merging on the ids themselves, on integers.
        keys = pd.DataFrame(
            {"_patient": codes[0], "_session": out[session].to_numpy()}, index=out.index
        )
        values = out[list(columns)]
        if across_gaps:
            order = keys.sort_values(["_patient", "_session"], kind="mergesort").index
            shifted = (
                values.loc[order]
                .groupby(keys["_patient"].loc[order].to_numpy(), sort=False)
                .shift(lag)
            )
        else:
            source = pd.concat([keys, values], axis=1)
            source["_session"] = source["_session"] + lag
            shifted = keys.merge(source, on=["_patient", "_session"], how="left")
            shifted.index = out.index
        for column in columns:
            out[f"{column}{suffix}"] = shifted[column].reindex(out.index)
        return
    needed = list(dict.fromkeys([patient, session, *columns]))
    ordered = out[needed].sort_values([patient, session], kind="mergesort")
    if across_gaps:
        shifted = ordered.groupby(patient, sort=False, observed=True)[list(columns)].shift(lag)
    else:
        source = ordered[[patient, session, *columns]].copy()
        source[session] = source[session] + lag
        shifted = ordered[[patient, session]].merge(source, on=[patient, session], how="left")[
            list(columns)
        ]
        shifted.index = ordered.index
    for column in columns:
        out[f"{column}{suffix}"] = shifted[column].reindex(out.index)


def _pairs(
    out: pd.DataFrame, patient: str, therapist: str, patient_codes: np.ndarray | None
) -> pd.DataFrame:
    """``out[[patient, therapist]].dropna().drop_duplicates()``, by integer codes.

    The first row of each distinct (patient, therapist) pair with both present, in row
    order and with its index label, as ``drop_duplicates`` keeps it; found from the
    codes of the ids instead of hashing both text columns again.
    """
    if patient_codes is None:
        return out[[patient, therapist]].dropna().drop_duplicates()
    therapist_codes, therapists = pd.factorize(out[therapist])
    both = np.flatnonzero(therapist_codes >= 0)  # patient ids are all present here
    key = patient_codes[both].astype(np.int64) * (len(therapists) + 1) + therapist_codes[both]
    _, first = np.unique(key, return_index=True)
    return out[[patient, therapist]].iloc[both[np.sort(first)]]


def _by_patient(ids: pd.Series, values: pd.Series) -> pd.Series:
    """``ids.map(values)`` for *values* indexed by unique ids, taken by the ids' codes.

    Each distinct id is looked up once and the rows take its value by their integer codes
    (the same values and type as the map, which hashes every row's id) for float and
    object values; other types, ids that cannot be coded, or an index with repeats, go
    through the map itself.
    """
    # (the map gives bool values missing as float; a category or string type keeps its
    # type through the map, so it goes through the map)
    if not (isinstance(values.dtype, np.dtype) and values.dtype.kind in "fO"):
        return ids.map(values)
    codes = _id_codes(ids)
    if codes is None or not values.index.is_unique:
        return ids.map(values)
    per_id = values.reindex(codes[1]).to_numpy()
    return pd.Series(per_id[codes[0]], index=ids.index, name=ids.name)


def _id_codes(ids: pd.Series, *, sort: bool = False) -> tuple[np.ndarray, pd.Index] | None:
    """Integer codes of an id column and the ids they stand for, or None.

    None when an id is missing or, with *sort*, when the ids mix types (text and numbers,
    which factorize orders numbers first where sorting the ids raises), where the callers
    keep grouping by the ids themselves. With *sort* the codes follow the ids' sort order,
    else their order of first appearance.
    """
    if sort and pd.api.types.infer_dtype(ids, skipna=True).startswith("mixed"):
        return None
    try:
        codes, uniques = pd.factorize(ids, sort=sort)
    except TypeError:
        return None
    if len(codes) and codes.min() < 0:
        return None
    return codes, pd.Index(uniques)


def derive_analysis(
    scored: pd.DataFrame,
    *,
    alliance: str,
    outcome: str,
    lag_across_gaps: bool = False,
    therapist: str | None = None,
) -> pd.DataFrame:
    """Build the session-level analysis table from the scored sessions.

    Adds ``alliance`` and ``outcome`` (copies of the configured score columns), their
    within/between parts and grand-mean-centred values (:func:`within_between`, with the
    therapist split when *therapist* names a column), ``alliance_lag``,
    ``alliance_within_lag`` and ``outcome_lag`` (last session's values) and
    ``outcome_next`` (next session's outcome), all by :func:`lag_within_patient` with
    ``across_gaps=lag_across_gaps``. The model presets use these names.

    Parameters
    ----------
    scored : pandas.DataFrame
        The scored session table (one informant).
    alliance, outcome : str
        The score columns used as alliance and outcome.
    lag_across_gaps : bool
        See :func:`lag_within_patient`.
    therapist : str, optional
        Therapist id column for the three-level split (``alliance_therapist``,
        ``alliance_patient``, ``outcome_therapist`` …); None for two-level data.

    Returns
    -------
    pandas.DataFrame
        Sorted by patient and session, index reset. When *scored* is in that order
        already (ids of one type, no id or session missing), the table shares its columns
        (a shallow copy: change them in the result only by replacing them,
        ``out[c] = ...``).
    """
    check_columns(scored, alliance, outcome)
    # A shallow copy: the scored columns are shared with *scored* (not copied, which at
    # 10^6 rows is ~300 MB); every step below adds columns and none writes into one.
    out = scored.copy(deep=False)
    out["alliance"] = out[alliance]
    out["outcome"] = out[outcome]
    # The steps of within_between and lag_within_patient, adding columns to this one copy.
    codes = None  # the patients' codes, found once for both columns
    for name in ("alliance", "outcome"):
        check_columns(out, name, "patient")
        if therapist is not None:
            check_columns(out, therapist)
        codes = codes or _id_codes(out["patient"]) or _NO_CODES
        _add_within_between(
            out,
            name,
            patient="patient",
            prefix=name,
            therapist=therapist,
            grand_mean=True,
            codes=codes,
        )
    check_columns(out, "patient", "session")
    _add_lags(
        out,
        ["alliance", "alliance_within", "outcome"],
        patient="patient",
        session="session",
        lag=1,
        across_gaps=lag_across_gaps,
        suffix="_lag",
    )
    _add_lags(
        out,
        ["outcome"],
        patient="patient",
        session="session",
        lag=-1,
        across_gaps=lag_across_gaps,
        suffix="_next",
    )
    return _sorted_by_patient(out)


def _sorted_by_patient(out: pd.DataFrame) -> pd.DataFrame:
    """*out* sorted by patient and session (stable), with a fresh 0..n-1 index.

    The clean stage writes sessions in this order already, and a sort would copy the whole
    table; so an ordered table only gets its index replaced, in place.
    """
    patient = out["patient"].to_numpy()
    session = out["session"].to_numpy()
    try:
        later = patient[1:] > patient[:-1]
        same = patient[1:] == patient[:-1]
        ordered = bool(np.all(later | (same & (session[1:] >= session[:-1]))))
    except TypeError:  # ids of mixed types: let pandas decide the order
        ordered = False
    if not ordered:
        return out.sort_values(["patient", "session"], kind="mergesort").reset_index(drop=True)
    out.index = pd.RangeIndex(len(out))
    return out


def _detrended(data: pd.DataFrame, column: str, *, patient: str, session: str) -> pd.Series:
    """Residual of *column* from each patient's own least-squares line over sessions.

    Vectorised: slope_i = cov_i(t, x) / var_i(t) from group sums. Patients with fewer than
    two observed values, or all on one session, get their deviation from their own mean.
    """
    ok = data[column].notna()
    t = data[session].astype(float).where(ok)
    x = data[column].astype(float)
    codes = _id_codes(data[patient])
    # Integer codes group the rows as the ids do (transforms keep the row order).
    g = data[patient] if codes is None else codes[0]
    t_mean = t.groupby(g, observed=True).transform("mean")
    x_mean = x.groupby(g, observed=True).transform("mean")
    dt = t - t_mean
    sxy = (dt * (x - x_mean)).groupby(g, observed=True).transform("sum")
    sxx = (dt * dt).groupby(g, observed=True).transform("sum")
    slope = (sxy / sxx.where(sxx > 0)).fillna(0.0)
    return x - x_mean - slope * (data[session].astype(float) - t_mean)


def _ruptures_so_far(out: pd.DataFrame) -> pd.DataFrame:
    """Detected ruptures and repairs before each session, from information available then.

    ``rupture_flag`` is 1 at a session where a rupture was detected (0 otherwise, missing
    where detection was impossible); ``ruptures_before`` counts detected ruptures at
    earlier sessions of the patient, and ``repairs_before`` counts those whose repair
    (``rupture_repair_session``) happened at an earlier session. Both use only sessions
    before the current one, so they can predict its outcome without looking ahead.
    """
    out = out.copy()
    _add_ruptures_so_far(out)
    return out


def _add_ruptures_so_far(out: pd.DataFrame) -> None:
    """:func:`_ruptures_so_far`, adding the columns to *out* itself."""
    out["rupture_flag"] = out["rupture_detected"].astype("Float64").astype(float)
    narrow = out[["patient", "session", "rupture_flag", "rupture_repair", "rupture_repair_session"]]
    codes = _id_codes(out["patient"], sort=True)
    if codes is not None:
        # Patients by codes that sort as the ids do: the same order, groups and matches.
        narrow = narrow.assign(patient=codes[0])
    ordered = narrow.sort_values(["patient", "session"], kind="mergesort")
    order = ordered.index
    repaired_at = ordered.loc[
        ordered["rupture_repair"].eq("repaired"), ["patient", "rupture_repair_session"]
    ]
    events = (
        repaired_at.assign(session=repaired_at["rupture_repair_session"].astype("int64"))
        .groupby(["patient", "session"], observed=True)
        .size()
        .rename("repair_events")
        .reset_index()
    )
    repairs = (
        ordered[["patient", "session"]]
        .merge(events, on=["patient", "session"], how="left")["repair_events"]
        .fillna(0.0)
        .to_numpy(dtype=float)
    )
    ruptures = ordered["rupture_flag"].fillna(0.0).to_numpy()
    parts = pd.DataFrame({"patient": ordered["patient"].to_numpy(), "_r": ruptures, "_p": repairs})
    cum = parts.groupby("patient", sort=False, observed=True)[["_r", "_p"]].cumsum()
    out["ruptures_before"] = pd.Series(cum["_r"].to_numpy() - ruptures, index=order)
    out["repairs_before"] = pd.Series(cum["_p"].to_numpy() - repairs, index=order)


def preset_variables(
    analysis: pd.DataFrame,
    patients: pd.DataFrame | None = None,
    *,
    components: Sequence[str] = (),
    lag_across_gaps: bool = False,
) -> pd.DataFrame:
    r"""Add the variables the model presets use (:func:`allianceflow.models.preset_formula`).

    Parameters
    ----------
    analysis : pandas.DataFrame
        The analysis table from :func:`derive_analysis` (plus on-track status and ruptures
        when those were derived).
    patients : pandas.DataFrame, optional
        The patients table (for ``off_track``).
    components : mapping or sequence of str
        Alliance components as ``{name: score column}``, e.g. ``{"task": "wai_sr_task"}``,
        or a list of score columns named ``<instrument>_<name>``; each gives
        ``alliance_<name>_within_lag`` and ``alliance_<name>_between``.
    lag_across_gaps : bool
        The study's lag rule (:func:`lag_within_patient`).

    Returns
    -------
    pandas.DataFrame
        A copy with, where their inputs exist:

        ``log_session``
            :math:`\ln(\text{session})` (growth with log time).
        ``alliance_within_detrended_lag``
            Last session's deviation of the alliance from the patient's own least-squares
            line over sessions (detrending, Falkenström et al. 2017), so a shared upward
            trend in alliance and outcome is not read as a within-patient effect.
        ``alliance_therapist_mean``, ``alliance_patient_deviation``
            The therapist's mean alliance (grand-mean centred) and the patient's deviation
            from their therapist's mean (Baldwin, Wampold & Imel 2007); the
            ``alliance_therapist`` and ``alliance_patient`` parts of :func:`within_between`.
        ``outcome_baseline``
            The patient's intake outcome score.
        ``off_track``
            1 for patients flagged not on track at any session, else 0 (the "not on track"
            cases of feedback studies, Lambert et al. 2018); missing when never assessed.
            Being flagged happens after randomisation and can be changed by feedback itself,
            so in ``time × arm × off_track`` it is a post-randomisation moderator: read its
            interactions as descriptive, not causal.
        ``rupture_flag``, ``ruptures_before``, ``repairs_before``
            A detected rupture at this session (0/1), and the numbers of detected ruptures
            and of repairs at the patient's earlier sessions (see :func:`_ruptures_so_far`):
            with both counts in a model, ``repairs_before`` contrasts a repaired rupture with
            one not (yet) repaired, using only what was known before the session. A coded
            ``rupture`` column (none / confrontation / withdrawal) is left as it is.
        ``alliance_<c>_within_lag``, ``alliance_<c>_between``
            Per alliance component.
    """
    out = analysis.copy()
    _add_preset_variables(out, patients, components=components, lag_across_gaps=lag_across_gaps)
    return out


def _add_preset_variables(
    out: pd.DataFrame,
    patients: pd.DataFrame | None,
    *,
    components: Sequence[str] | Mapping[str, str],
    lag_across_gaps: bool,
) -> None:
    """:func:`preset_variables`, adding the columns to *out* itself (no copy of the table)."""
    out["log_session"] = np.log(out["session"].astype(float))
    out["alliance_within_detrended"] = _detrended(
        out, "alliance", patient="patient", session="session"
    )
    lagged = ["alliance_within_detrended"]
    if "alliance_therapist" in out:
        out["alliance_therapist_mean"] = out["alliance_therapist"]
        out["alliance_patient_deviation"] = out["alliance_patient"]
    if "intake_score" in out:
        out["outcome_baseline"] = out["intake_score"]
    if patients is not None and "first_off_track_session" in patients:
        flagged = patients.set_index("patient")["first_off_track_session"].notna().astype(float)
        if "on_track" in out:
            # missing for patients never assessed (e.g. a single session)
            assessed = out["on_track"].notna().groupby(out["patient"], observed=True).any()
            flagged = flagged.where(assessed.reindex(flagged.index).fillna(False).astype(bool))
        out["off_track"] = _by_patient(out["patient"], flagged)
    if "rupture_detected" in out:
        _add_ruptures_so_far(out)
    named = dict(components) if isinstance(components, Mapping) else {}
    if not isinstance(components, Mapping):
        for column in components:
            name = column.rsplit("_", 1)[-1]
            if name in named:
                raise ValueError(
                    f"`components` {list(components)} give the component name {name!r} twice; "
                    "pass a mapping {name: column} instead."
                )
            named[name] = column
    codes = None  # the patients' codes, found once for every component
    for comp, column in named.items():
        name = f"alliance_{comp}"
        out[name] = out[column]
        check_columns(out, name, "patient")
        codes = codes or _id_codes(out["patient"]) or _NO_CODES
        _add_within_between(
            out,
            name,
            patient="patient",
            prefix=name,
            therapist=None,
            grand_mean=False,
            codes=codes,
        )
        lagged.append(f"{name}_within")
    check_columns(out, "patient", "session", *lagged)
    _add_lags(
        out,
        lagged,
        patient="patient",
        session="session",
        lag=1,
        across_gaps=lag_across_gaps,
        suffix="_lag",
    )


def informant_alliances(
    scored: pd.DataFrame,
    analysis: pd.DataFrame,
    *,
    alliance: str,
    informant: str = "informant",
    lag_across_gaps: bool = False,
) -> pd.DataFrame:
    """Each informant's alliance rating beside the analysis rows (multiple-informant designs).

    For every informant *i* in ``scored[informant]`` (e.g. patient, therapist, observer),
    the alliance score of that rater at the same patient and session is added as
    ``alliance_rater_<i>``, split into ``alliance_rater_<i>_within`` / ``_between``
    (:func:`within_between`) and lagged (``alliance_rater_<i>_within_lag``) with the
    study's gap rule. The ``informants`` model preset uses these, so patient- and
    therapist-rated alliance can predict the outcome side by side (e.g. Zilcha-Mano et
    al. 2015).

    The result is a new table with *analysis*'s rows in their order, numbered 0..n-1; it
    shares *analysis*'s columns (a shallow copy: change them in the result only by
    replacing them, ``out[c] = ...``). A rating has the type a left merge gives it (a
    nullable ``Float64`` stays one; whole numbers with an unrated session become float),
    and an ``alliance_rater_<i>`` column already there is replaced.

    Raises
    ------
    ValueError
        When an informant rates a patient's session twice.
    """
    check_columns(scored, "patient", "session", informant, alliance)
    check_columns(analysis, "patient", "session", name="analysis")
    # The ratings are added to a shallow copy: the analysis table's columns are shared,
    # not copied (at 10^6 sessions a copy is about a gigabyte, and the merge, split and lag
    # of each informant made three), and the caller's table is left as it is, since only
    # new columns are set. The rows keep their order, numbered 0..n-1 as a merge numbers them.
    out = analysis.copy(deep=False)
    out.index = pd.RangeIndex(len(out))
    keys = out[["patient", "session"]]
    for name in sorted(map(str, scored[informant].dropna().unique())):
        rows = scored.loc[scored[informant].astype(str) == name, ["patient", "session", alliance]]
        if rows.duplicated(["patient", "session"]).any():
            raise ValueError(
                f"informant {name!r} rates some sessions twice; "
                "one row per patient, session and informant is needed."
            )
        column = f"alliance_rater_{name}"
        # The rating of each analysis row's session: a left merge of the keys alone.
        rated = keys.merge(rows, on=["patient", "session"], how="left")
        out[column] = rated[alliance]  # both tables are numbered 0..n-1
        _add_within_between(
            out, column, patient="patient", prefix=column, therapist=None, grand_mean=False
        )
        _add_lags(
            out,
            [f"{column}_within"],
            patient="patient",
            session="session",
            lag=1,
            across_gaps=lag_across_gaps,
            suffix="_lag",
        )
    return out


class DerivedTables(NamedTuple):
    """The derive stage's outputs (see :func:`derive_tables`)."""

    analysis: pd.DataFrame
    patients: pd.DataFrame
    sudden_gains: pd.DataFrame
    expected_response: dict | None


#: Defaults of the ``derive:`` block of a study for in-memory use. The defaults' one place
#: is ``workflow/schemas/config.schema.yaml``, which the pipeline fills in; the package
#: cannot read the workflow's files once installed, so it keeps this copy, which the tests
#: hold equal to the schema's (``lag_across_gaps`` is :func:`derive_tables`' own argument).
DERIVE_DEFAULTS: dict[str, Any] = {
    "informant": None,
    "therapist_centring": True,
    "reliable_change": {"enabled": True},
    "on_track": {
        "enabled": True,
        "reference": "study",
        "reference_study": None,
        "coefficients": None,
        "tolerance": 0.10,
        "model": "fixed",
    },
    "sudden_gains": {
        "enabled": True,
        "events": ["gain", "loss"],
        "cutoff": None,
        "pct": 0.25,
        "crit3": True,
        "alpha": 0.05,
        "adjust": True,
        "critical_value": 2.776,
    },
    "ruptures": {
        "enabled": True,
        "method": "patient_sd",
        "threshold": 1.5,
        "repair_within": 3,
        "across_gaps": False,
    },
    "endings": {"gap_days": None, "planned_sessions": None, "early_alliance_sessions": 3},
}
_BLOCKS = ("reliable_change", "on_track", "sudden_gains", "ruptures", "endings")


def _settings(settings: Mapping | None) -> dict[str, Any]:
    import copy
    import difflib

    merged = copy.deepcopy(DERIVE_DEFAULTS)
    if settings is None:
        return merged
    if not isinstance(settings, Mapping):
        raise TypeError(
            "`settings` must be a mapping (the study's derive block); "
            f"got {type(settings).__name__}."
        )
    for key, value in settings.items():
        if key not in merged:
            close = difflib.get_close_matches(str(key), list(merged), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise KeyError(f"Unknown derive setting {key!r}{hint}; allowed: {', '.join(merged)}.")
        if key in _BLOCKS:
            if not isinstance(value, Mapping):
                raise TypeError(
                    f"Derive setting {key!r} must be a mapping; got {type(value).__name__}."
                )
            unknown = sorted(set(value) - set(merged[key]))
            if unknown:
                raise KeyError(
                    f"Unknown key {unknown[0]!r} in derive setting {key!r}; "
                    f"allowed: {', '.join(merged[key])}."
                )
            merged[key].update(value)
        else:
            merged[key] = value
    return merged


def derive_tables(
    scored: pd.DataFrame,
    *,
    alliance: str,
    outcome: str,
    direction: str,
    rci: float | None,
    cutoff: float | None = None,
    clinical_range: str | None = None,
    lag_across_gaps: bool = False,
    settings: Mapping | None = None,
    reference: pd.DataFrame | None = None,
    components: Sequence[str] = (),
) -> DerivedTables:
    """Every derived variable of one study: the analysis, patients and sudden-gains tables.

    The numbers come from the caller (the pipeline looks them up in the outcome's
    instrument file and the study's overrides); *settings* is the study's ``derive:``
    block (defaults in :data:`DERIVE_DEFAULTS`).

    Parameters
    ----------
    scored : pandas.DataFrame
        The scored sessions.
    alliance, outcome : str
        Score columns used as alliance and outcome.
    direction : {'higher_is_better', 'lower_is_better'}
        The outcome's direction of improvement (``Instrument.direction``).
    rci : float or None
        The outcome's reliable change value (``Instrument.rci``). Needed for reliable
        change and for the first sudden-gain criterion (unless ``sudden_gains.cutoff`` is
        set); None is allowed only when both are switched off or given otherwise.
    cutoff, clinical_range
        The outcome's clinical cut-off and clinical side (``Instrument.cutoff``,
        ``Instrument.clinical_range``); None: no recovery category.
    lag_across_gaps : bool
        The study's lag rule.
    settings : mapping, optional
        The ``derive:`` block. Endings are read from the clean stage's canonical ``ending``
        and ``followup_days`` columns, if the table has them.
    reference : pandas.DataFrame, optional
        A reference sample (scored, same outcome column) when
        ``on_track.reference`` is ``'reference'``.
    components : sequence of str
        Alliance component score columns for the ``alliance_components`` preset
        (see :func:`preset_variables`).

    Returns
    -------
    DerivedTables
        ``analysis`` (session level: :func:`derive_analysis` columns, plus the on-track
        columns of :func:`allianceflow.ontrack.on_track` and the rupture columns of
        :func:`allianceflow.ruptures.detect_ruptures` when enabled; ``ending`` is the
        patients table's, recorded or inferred, whenever one is known; with a ``system``
        column, the couple and family variables of
        :func:`allianceflow.couples.system_variables` and, with a ``role`` column, the
        role dummies of :func:`allianceflow.couples.role_dummies`), ``patients`` (one row
        per patient, :func:`allianceflow.clinical.derive_patients`; with a ``system``
        column, :func:`allianceflow.couples.system_patient_variables`), ``sudden_gains`` (one
        row per gain or loss, :func:`allianceflow.suddengains.sudden_gains`) and
        ``expected_response`` (the coefficients used, or None).
    """
    from .clinical import derive_patients
    from .ontrack import ExpectedResponse, fit_expected_response, on_track
    from .ruptures import detect_ruptures
    from .suddengains import EVENT_COLUMNS, sudden_gains

    cfg = _settings(settings)
    data = scored
    if cfg["informant"] is not None:
        check_columns(scored, "informant")
        data = scored[scored["informant"].astype(str) == str(cfg["informant"])]
        if data.empty:
            raise ValueError(
                f"Derive setting `informant` is {cfg['informant']!r} but no row has it; informants "
                f"in the data: {', '.join(map(str, pd.unique(scored['informant'])))}."
            )
    therapist = "therapist" if cfg["therapist_centring"] and "therapist" in data.columns else None
    analysis = derive_analysis(
        data,
        alliance=alliance,
        outcome=outcome,
        lag_across_gaps=lag_across_gaps,
        therapist=therapist,
    )
    if "informant" in scored and scored["informant"].nunique() > 1:
        analysis = informant_alliances(
            scored, analysis, alliance=alliance, lag_across_gaps=lag_across_gaps
        )

    model = None
    if cfg["on_track"]["enabled"]:
        ref = cfg["on_track"]["reference"]
        if ref == "coefficients":
            model = ExpectedResponse.from_mapping(cfg["on_track"]["coefficients"] or {})
        elif ref == "reference":
            if reference is None:
                raise ValueError(
                    "Derive setting `on_track.reference` is 'reference' "
                    "but no reference sample was given."
                )
            model = fit_expected_response(reference, score=outcome, model=cfg["on_track"]["model"])
        elif ref == "study":
            model = fit_expected_response(analysis, score="outcome", model=cfg["on_track"]["model"])
        else:
            raise ValueError(
                f"`on_track.reference` must be 'study', 'reference' or 'coefficients'; got {ref!r}."
            )
        analysis = on_track(
            analysis,
            model,
            score="outcome",
            direction=direction,
            tolerance=cfg["on_track"]["tolerance"],
            copy=False,  # `analysis` is this function's own table
        )

    if cfg["ruptures"]["enabled"]:
        r = cfg["ruptures"]
        analysis = detect_ruptures(
            analysis,
            alliance="alliance",
            method=r["method"],
            threshold=r["threshold"],
            repair_within=r["repair_within"],
            across_gaps=r["across_gaps"],
            copy=False,
        )

    sg_cfg = cfg["sudden_gains"]
    if sg_cfg["enabled"]:
        sg_cutoff = sg_cfg["cutoff"] if sg_cfg["cutoff"] is not None else rci
        if sg_cutoff is None:
            raise ValueError(
                "Sudden gains need a first-criterion cut-off: "
                "set the outcome instrument's `rci` for the "
                "study, or `derive: {sudden_gains: {cutoff: <points>}}`."
            )
        gains = sudden_gains(
            analysis,
            score="outcome",
            direction=direction,
            cutoff=sg_cutoff,
            pct=sg_cfg["pct"],
            crit3=sg_cfg["crit3"],
            alpha=sg_cfg["alpha"],
            adjust=sg_cfg["adjust"],
            critical_value=sg_cfg["critical_value"],
            events=sg_cfg["events"],
        )
    else:
        gains = pd.DataFrame({c: pd.Series(dtype=object) for c in EVENT_COLUMNS})

    if cfg["reliable_change"]["enabled"] and rci is None:
        raise ValueError(
            "Reliable change needs the outcome instrument's `rci`: set it for the study "
            "(config `instruments: {<id>: {rci: <points>}}`) or switch it off with "
            "`derive: {reliable_change: {enabled: false}}`."
        )
    e = cfg["endings"]
    # The clean stage's canonical columns, labels already mapped by the clean stage.
    ending_column = "ending" if "ending" in analysis.columns else None
    followup_column = "followup_days" if "followup_days" in analysis.columns else None
    if e["gap_days"] is not None and followup_column is None:
        raise ValueError(
            "Derive setting `endings.gap_days` infers endings from the time between "
            "the last session and the data extraction, but the data have no follow-up time: "
            "set the study's `extraction_date` (with session dates), "
            "or map a column of follow-up days to 'followup_days'."
        )
    patients = derive_patients(
        analysis,
        outcome="outcome",
        days="days" if "days" in analysis.columns else None,
        direction=direction,
        rci=rci if rci is not None else 1.0,
        cutoff=cutoff if cfg["reliable_change"]["enabled"] else None,
        clinical_range=clinical_range,
        ending=ending_column,
        followup=followup_column,
        gap_days=e["gap_days"],
        planned_sessions=e["planned_sessions"],
        ending_labels={},
        sudden_gains=gains if sg_cfg["enabled"] else None,
    )
    from .clinical import patient_outcomes

    patients = patient_outcomes(patients, analysis, early_sessions=e["early_alliance_sessions"])
    if not cfg["reliable_change"]["enabled"]:
        from .clinical import RELIABLE_CHANGE_COLUMNS

        drop = [c for c in RELIABLE_CHANGE_COLUMNS[1:] if c in patients.columns]
        patients = patients.drop(
            columns=drop + ["first_observed_session", "last_observed_session"], errors="ignore"
        )
        patients[["deteriorated", "improved"]] = np.nan
    if "ending" in analysis.columns or patients["ending"].astype(str).ne("unknown").any():
        # One ending per patient everywhere: the recorded one, or the one inferred from a gap.
        ending = _by_patient(
            analysis["patient"], patients.set_index("patient")["ending"].astype(object)
        )
        analysis["ending"] = pd.Categorical(ending, categories=patients["ending"].cat.categories)
    # `analysis` is this function's own table by now, so the preset variables are added
    # to it without a copy (at 10^6 sessions a copy is about a gigabyte).
    _add_preset_variables(
        analysis, patients, components=components, lag_across_gaps=lag_across_gaps
    )
    if "system" in analysis.columns:
        # Couple and family therapy: the system's mean alliance, split and partner effects.
        from .couples import role_dummies, system_patient_variables, system_variables

        analysis = system_variables(analysis, lag_across_gaps=lag_across_gaps)
        if "role" in analysis.columns:
            analysis = role_dummies(analysis)
        patients = system_patient_variables(
            patients, analysis, early_sessions=e["early_alliance_sessions"]
        )
    return DerivedTables(analysis, patients, gains, model.to_dict() if model is not None else None)
