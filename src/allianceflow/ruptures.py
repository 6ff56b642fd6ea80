"""Alliance ruptures and their repair, coded or detected from session alliance ratings.

A rupture is a deterioration in the collaborative relationship between patient and
therapist (Safran & Muran, 2000; Eubanks, Muran & Safran, 2018). Observers code
*confrontation* ruptures (the patient moves against the therapist) and *withdrawal*
ruptures (the patient moves away); :func:`coded_ruptures` counts them when the data has a
``rupture`` column. Without coding, ruptures are commonly detected as a drop in the
patient's session alliance rating followed, or not, by a return to the earlier level (the
"V-shaped" rupture–repair sequence, Stiles et al., 2004): :func:`detect_ruptures` flags
them and :func:`rupture_summary` counts them per patient.

References
----------
Eubanks, C. F., Muran, J. C., & Safran, J. D. (2018). Alliance rupture repair: A
meta-analysis. *Psychotherapy*, 55(4), 508–519. https://doi.org/10.1037/pst0000185

Safran, J. D., & Muran, J. C. (2000). *Negotiating the therapeutic alliance: A relational
treatment guide*. Guilford Press.

Stiles, W. B., Glick, M. J., Osatuke, K., Hardy, G. E., Shapiro, D. A., Agnew-Davies, R.,
Rees, A., & Barkham, M. (2004). Patterns of alliance development and the rupture-repair
hypothesis: Are productive relationships U-shaped or V-shaped? *Journal of Counseling
Psychology*, 51(1), 81–92. https://doi.org/10.1037/0022-0167.51.1.81
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd

from ._derive_checks import (
    check_choice,
    check_columns,
    check_frame,
    check_int,
    check_number,
    check_sessions,
)
from ._derive_checks import neighbour_rows as _neighbour_rows

__all__ = [
    "detect_ruptures",
    "rupture_summary",
    "coded_ruptures",
    "RUPTURE_LABELS",
    "REPAIR_STATUS",
    "RUPTURE_COLUMNS",
]

Method = Literal["patient_sd", "fixed"]
_METHODS = ("patient_sd", "fixed")

#: Allowed values of a coded ``rupture`` column.
RUPTURE_LABELS = ("none", "confrontation", "withdrawal")
#: Values of ``rupture_repair``.
REPAIR_STATUS = ("repaired", "unrepaired", "censored")
#: Columns added by :func:`detect_ruptures`.
RUPTURE_COLUMNS = [
    "alliance_drop",
    "rupture_threshold",
    "rupture_detected",
    "rupture_repair",
    "rupture_repair_session",
]


def detect_ruptures(
    data: pd.DataFrame,
    *,
    alliance: str = "alliance",
    patient: str = "patient",
    session: str = "session",
    method: Method = "patient_sd",
    threshold: float = 1.5,
    repair_within: int = 3,
    across_gaps: bool = False,
    copy: bool = True,
) -> pd.DataFrame:
    r"""Detect alliance ruptures as drops in session alliance, and their repair.

    Parameters
    ----------
    data : pandas.DataFrame
        Long format, one row per patient and session (one informant).
    alliance : str
        The session alliance score (e.g. ``"alliance"`` or ``"wai_sr_total"``).
    patient, session : str
        Column names.
    method : {'patient_sd', 'fixed'}
        ``'patient_sd'``: the drop must reach *threshold* times the patient's own SD of
        alliance over their observed sessions. ``'fixed'``: the drop must reach
        *threshold* scale points.
    threshold : float
        Multiplier of the patient's SD, or scale points (see *method*).
    repair_within : int
        A rupture is repaired when the alliance returns to at least its pre-rupture level
        within this many sessions after the rupture session.
    across_gaps : bool
        False (default): the drop is measured from session :math:`s-1` only, so a missed
        session leaves no drop. True: from the previous recorded session.
    copy : bool
        False adds the columns to *data* itself instead of to a copy (the pipeline's
        own table, which at 10^6 sessions saves a copy of about a gigabyte).

    Returns
    -------
    pandas.DataFrame
        A copy of *data* (same rows and order) with :data:`RUPTURE_COLUMNS`:
        ``alliance_drop`` (previous minus current alliance; positive = drop),
        ``rupture_threshold`` (the drop needed, in scale points), ``rupture_detected``
        (nullable boolean; missing where no drop can be computed), ``rupture_repair``
        (on rupture sessions: ``repaired``, ``unrepaired``, or ``censored`` when the
        patient's data end before the window closes without a repair) and
        ``rupture_repair_session`` (the first session back at the pre-rupture level).

    Raises
    ------
    KeyError, ValueError
        Missing columns, bad settings, duplicated sessions.

    Notes
    -----
    With :math:`A_{s}` the alliance at session :math:`s`, :math:`p(s)` the previous
    session (:math:`s-1`, or the previous recorded one with *across_gaps*),

    .. math::

        D_s = A_{p(s)} - A_s, \qquad
        \text{rupture at } s \iff D_s \ge \tau_i, \qquad
        \tau_i = \begin{cases} k\,SD_i & \text{patient\_sd} \\ k & \text{fixed} \end{cases}

    and the rupture is repaired when some :math:`s < s' \le s + K` has
    :math:`A_{s'} \ge A_{p(s)}` (ties count as repaired). :math:`SD_i` is the sample SD
    (ddof 1) of the patient's observed alliance scores; a patient with fewer than two, or
    with constant ratings, has no detectable rupture under ``'patient_sd'``. A drop equal
    to the threshold is a rupture. Each qualifying drop is one rupture, so a slide over
    two sessions can count twice. The thresholds are the study's choice: the literature
    uses several (Eubanks et al., 2018, review the methods); report the one used.

    Examples
    --------
    >>> import pandas as pd
    >>> df = pd.DataFrame({"patient": "a", "session": [1, 2, 3, 4],
    ...                    "alliance": [5.0, 3.5, 4.0, 5.0]})
    >>> out = detect_ruptures(df, method="fixed", threshold=1.0)
    >>> out.rupture_detected.tolist(), out.rupture_repair.tolist()
    ([<NA>, True, False, False], [nan, 'repaired', nan, nan])
    """
    check_frame(data)
    check_columns(data, patient, session, alliance)
    check_sessions(data, patient, session)
    check_choice(method, _METHODS, "method")
    threshold = check_number(threshold, "threshold", minimum=0.0, strict_minimum=True)
    repair_within = check_int(repair_within, "repair_within", minimum=1)
    if not isinstance(across_gaps, bool):
        raise TypeError(f"`across_gaps` must be True or False; got {across_gaps!r}.")

    out = data.copy() if copy else data
    columns = list(dict.fromkeys([patient, session, alliance]))
    # A table sorted by patient and session (the analysis table) is used as it is: the
    # previous session is the row before, and the patients' codes group contiguous rows.
    neighbour = (
        _neighbour_rows(out, patient=patient, session=session, lag=1, across_gaps=False)
        if alliance not in (patient, session)
        else None
    )
    if neighbour is None:
        ordered = out[columns].sort_values([patient, session], kind="mergesort")
    else:
        ordered = out[columns]
    a = ordered[alliance].astype(float)
    if neighbour is not None and not across_gaps:
        prev = pd.Series(
            pd.api.extensions.take(a.to_numpy(), neighbour, allow_fill=True),
            index=ordered.index,
        )
    elif across_gaps:
        rec = ordered.loc[a.notna(), [patient, session]].copy()
        rec["prev"] = a[a.notna()].groupby(rec[patient], sort=False).shift(1)
        prev = rec["prev"].reindex(ordered.index)
    else:
        key = pd.MultiIndex.from_arrays([ordered[patient], ordered[session]])
        lookup = pd.Series(a.to_numpy(), index=key)
        prev_key = pd.MultiIndex.from_arrays([ordered[patient], ordered[session] - 1])
        prev = pd.Series(lookup.reindex(prev_key).to_numpy(), index=ordered.index)
    drop = prev - a
    codes = pd.factorize(ordered[patient])[0]
    if method == "patient_sd":
        sd = pd.Series(
            np.where(codes < 0, np.nan, _contiguous_group_sd(a.to_numpy(), codes)),
            index=ordered.index,
        )
        tau = threshold * sd
        tau = tau.where(tau > 0)
    else:
        tau = pd.Series(threshold, index=ordered.index)
    detected = pd.Series(pd.NA, index=ordered.index, dtype="boolean")
    ok = drop.notna() & tau.notna()
    detected[ok] = (drop[ok] >= tau[ok]).to_numpy()

    sessions = ordered[session].to_numpy()
    values = a.to_numpy()
    if neighbour is None:
        last_session = ordered.groupby(patient, sort=False)[session].transform("max").to_numpy()
    else:  # no id is missing, so the codes group the rows as the ids do
        last_session = ordered[session].groupby(codes, sort=False).transform("max").to_numpy()
    positions = np.flatnonzero(detected.fillna(False).to_numpy())
    # Look ahead up to repair_within rows from every rupture at once: sessions are unique and
    # increasing within a patient, so the window (s, s + repair_within] spans at most that
    # many of the patient's following rows. The first row back at the pre-rupture level wins.
    start, level = sessions[positions], prev.to_numpy()[positions]
    found = np.zeros(len(positions), dtype=bool)
    when = np.zeros(len(positions), dtype="int64")
    alive = np.ones(len(positions), dtype=bool)
    for step in range(1, repair_within + 1):
        j = positions + step
        alive &= j < len(sessions)
        jj = np.where(alive, j, 0)
        alive &= (codes[jj] == codes[positions]) & (sessions[jj] <= start + repair_within)
        if not alive.any():
            break
        with np.errstate(invalid="ignore"):
            hit = alive & ~found & (values[jj] >= level)
        when[hit] = sessions[jj][hit]
        found |= hit
    status = np.where(
        found,
        "repaired",
        np.where(last_session[positions] >= start + repair_within, "unrepaired", "censored"),
    )
    repair_values = np.full(len(sessions), np.nan, dtype=object)
    repair_values[positions] = status.astype(object)
    repair = pd.Series(repair_values, index=ordered.index, dtype=object)
    session_values = np.zeros(len(sessions), dtype="int64")
    session_mask = np.ones(len(sessions), dtype=bool)
    session_values[positions[found]] = when[found]
    session_mask[positions[found]] = False
    repair_session = pd.Series(
        pd.arrays.IntegerArray(session_values, session_mask), index=ordered.index
    )
    out["alliance_drop"] = drop.reindex(out.index)
    out["rupture_threshold"] = tau.reindex(out.index).astype(float)
    out["rupture_detected"] = detected.reindex(out.index)
    out["rupture_repair"] = repair.reindex(out.index)
    out["rupture_repair_session"] = repair_session.reindex(out.index)
    return out


def _contiguous_group_sd(values: np.ndarray, codes: np.ndarray) -> np.ndarray:
    r"""Sample SD (ddof 1, missing values skipped) of each run of equal *codes*, on every row.

    The rows of a group must be contiguous. Groups of equal length are stacked into one
    matrix and reduced along its rows with the two-pass formula of
    :meth:`pandas.Series.std`, so each SD is bit for bit the one ``Series.std`` gives for
    that group alone:

    .. math::

        SD = \sqrt{\frac{\sum_t (x_t - \bar x)^2}{n - 1}}, \quad n \ge 2 \text{ observed values.}
    """
    out = np.empty(len(values), dtype="float64")
    if len(values) == 0:
        return out
    starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
    sizes = np.diff(np.r_[starts, len(values)])
    for size in np.unique(sizes):
        first = starts[sizes == size]
        rows = first[:, None] + np.arange(size)
        block = values[rows]
        mask = np.isnan(block)
        count = (size - mask.sum(axis=1)).astype("float64")
        zeroed = np.where(mask, 0.0, block)
        with np.errstate(invalid="ignore", divide="ignore"):
            avg = zeroed.sum(axis=1, dtype=np.float64) / count
            sqr = (avg[:, None] - zeroed) ** 2
            sqr[mask] = 0.0
            var = sqr.sum(axis=1, dtype=np.float64) / (count - 1.0)
        var[count <= 1.0] = np.nan
        out[rows] = np.sqrt(var)[:, None]
    return out


def rupture_summary(data: pd.DataFrame, *, patient: str = "patient") -> pd.DataFrame:
    """Per patient: number of detected ruptures, repaired, unrepaired and censored.

    Parameters
    ----------
    data : pandas.DataFrame
        The output of :func:`detect_ruptures`.
    patient : str
        The patient column.

    Returns
    -------
    pandas.DataFrame
        One row per patient: *patient*, ``n_ruptures``, ``n_repaired``, ``n_unrepaired``,
        ``n_censored`` (ints; ``n_ruptures`` is the sum of the other three).
    """
    check_frame(data)
    check_columns(data, patient, "rupture_detected", "rupture_repair")
    ids = pd.Index(pd.unique(data[patient]), name=patient)
    out = pd.DataFrame(index=ids)
    detected = data["rupture_detected"].astype("boolean").fillna(False).astype(bool)
    out["n_ruptures"] = (
        detected.groupby(data[patient], sort=False).sum().reindex(ids).astype("int64")
    )
    for status in REPAIR_STATUS:
        hit = data["rupture_repair"].eq(status)
        out[f"n_{status}"] = (
            hit.groupby(data[patient], sort=False).sum().reindex(ids).astype("int64")
        )
    return out.reset_index()


def coded_ruptures(
    data: pd.DataFrame, *, rupture: str = "rupture", patient: str = "patient"
) -> pd.DataFrame:
    """Per patient: counts of coded confrontation and withdrawal ruptures.

    Parameters
    ----------
    data : pandas.DataFrame
        Long format with a coded rupture column (values in :data:`RUPTURE_LABELS`;
        missing = not coded).
    rupture, patient : str
        Column names.

    Returns
    -------
    pandas.DataFrame
        One row per patient: *patient*, ``n_confrontation``, ``n_withdrawal``,
        ``n_coded_ruptures`` (their sum) and ``n_coded_sessions`` (sessions with a code).

    Raises
    ------
    ValueError
        A value outside :data:`RUPTURE_LABELS`.

    Examples
    --------
    >>> import pandas as pd
    >>> df = pd.DataFrame({"patient": ["a", "a", "a", "b"],
    ...                    "rupture": ["none", "withdrawal", None, "confrontation"]})
    >>> out = coded_ruptures(df)
    >>> out[["n_withdrawal", "n_coded_ruptures", "n_coded_sessions"]].to_numpy().tolist()
    [[1, 1, 2], [0, 1, 1]]
    """
    check_frame(data)
    check_columns(data, patient, rupture)
    values = data[rupture].astype(object)
    coded = values.notna()
    bad = coded & ~values.isin(RUPTURE_LABELS)
    if bad.any():
        raise ValueError(
            f"Column {rupture!r} has value {values[bad].iloc[0]!r}; allowed: "
            f"{', '.join(map(repr, RUPTURE_LABELS))} (or missing when not coded)."
        )
    ids = pd.Index(pd.unique(data[patient]), name=patient)
    out = pd.DataFrame(index=ids)
    for label in ("confrontation", "withdrawal"):
        out[f"n_{label}"] = (
            values.eq(label).groupby(data[patient], sort=False).sum().reindex(ids).astype("int64")
        )
    out["n_coded_ruptures"] = out["n_confrontation"] + out["n_withdrawal"]
    out["n_coded_sessions"] = (
        coded.groupby(data[patient], sort=False).sum().reindex(ids).astype("int64")
    )
    return out.reset_index()
