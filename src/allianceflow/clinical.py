"""Patient-level clinical variables and the patients table that gathers them.

Reliable change, clinical significance, endings and treatment dose.

:func:`reliable_change_index` and :func:`clinical_cutoffs` turn published norms into the
numbers that :func:`reliable_change` applies (Jacobson & Truax, 1991).
:func:`endings_and_dose` records how and when treatment ended and how much of it there
was. :func:`derive_patients` builds the one-row-per-patient table
(``data/processed/<study>/patients.parquet``) from the session-level analysis table and
the sudden-gains table.

References
----------
Jacobson, N. S., & Truax, P. (1991). Clinical significance: A statistical approach to
defining meaningful change in psychotherapy research. *Journal of Consulting and Clinical
Psychology*, 59(1), 12–19. https://doi.org/10.1037/0022-006X.59.1.12

Swift, J. K., & Greenberg, R. P. (2012). Premature discontinuation in adult
psychotherapy: A meta-analysis. *Journal of Consulting and Clinical Psychology*, 80(4),
547–559. https://doi.org/10.1037/a0028226
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd

from ._derive_checks import (
    CLINICAL_RANGES,
    DIRECTIONS,
    check_choice,
    check_columns,
    check_frame,
    check_number,
    check_sessions,
)
from .contract import ENDING_TYPES

__all__ = [
    "reliable_change_index",
    "clinical_cutoffs",
    "reliable_change",
    "endings_and_dose",
    "derive_patients",
    "patient_outcomes",
    "PATIENT_OUTCOME_COLUMNS",
    "EARLY_ALLIANCE_SESSIONS",
    "RC_CATEGORIES",
    "ENDINGS",
    "RELIABLE_CHANGE_COLUMNS",
    "ENDING_COLUMNS",
]

Direction = Literal["higher_is_better", "lower_is_better"]
ClinicalRange = Literal["below", "at_or_above"]

#: Categories of :func:`reliable_change`, in order: Jacobson & Truax's (1991) four with
#: "harmed" split off "deteriorated", with the names and order of the R package
#: clinicalsignificance (Claus et al., 2024), whose ``cs_combined`` reports Recovered,
#: Improved, Unchanged, Deteriorated, Harmed.
RC_CATEGORIES = ("recovered", "improved", "unchanged", "deteriorated", "harmed")
#: Ending types of :func:`endings_and_dose`.
#: ``ended``: inferred from a gap without a dose rule (over, but not known how).
ENDINGS = (*ENDING_TYPES, "ended", "unknown")

#: Columns of :func:`reliable_change`.
RELIABLE_CHANGE_COLUMNS = [
    "patient",
    "n_observed",
    "first_session",
    "last_session",
    "score_first",
    "score_last",
    "change",
    "improvement",
    "reliable_improvement",
    "reliable_deterioration",
    "clinical_first",
    "clinical_last",
    "rc_category",
]
#: Columns of :func:`endings_and_dose`.
ENDING_COLUMNS = [
    "patient",
    "n_sessions",
    "first_session",
    "last_session",
    "first_days",
    "last_days",
    "weeks",
    "longest_gap_days",
    "ending",
    "ending_source",
]


# --------------------------------------------------------------------------- numbers


def reliable_change_index(sd: float, reliability: float, *, z: float = 1.96) -> float:
    r"""Compute the reliable change value of a scale (Jacobson & Truax, 1991).

    Parameters
    ----------
    sd : float
        Standard deviation of the score in a pre-treatment (or normative) sample.
    reliability : float
        Reliability of the score (test–retest or internal consistency), in [0, 1).
    z : float
        Two-sided normal quantile; 1.96 for 95%.

    Returns
    -------
    float
        The smallest change in points that counts as reliable.

    Notes
    -----
    .. math::

        RC = z\,\sqrt{2}\,SD\,\sqrt{1 - r} = z\, S_{diff},\qquad
        S_{diff} = \sqrt{2\,SE^2},\; SE = SD\sqrt{1-r}

    Examples
    --------
    >>> round(reliable_change_index(10.5, 0.931), 3)  # the suddengains vignette's BDI
    7.645
    """
    sd = check_number(sd, "sd", minimum=0.0, strict_minimum=True)
    reliability = check_number(reliability, "reliability", minimum=0.0, maximum=1.0)
    if reliability >= 1.0:
        raise ValueError(
            "`reliability` must be below 1 (perfect reliability has no measurement error); "
            f"got {reliability:g}."
        )
    z = check_number(z, "z", minimum=0.0, strict_minimum=True)
    return z * math.sqrt(2.0) * sd * math.sqrt(1.0 - reliability)


def clinical_cutoffs(
    clinical_mean: float,
    clinical_sd: float,
    functional_mean: float | None = None,
    functional_sd: float | None = None,
    *,
    direction: Direction,
) -> dict[str, float | None]:
    r"""Cut-offs *a*, *b* and *c* of clinical significance (Jacobson & Truax, 1991).

    Parameters
    ----------
    clinical_mean, clinical_sd : float
        Mean and SD of the score in a clinical (dysfunctional) sample.
    functional_mean, functional_sd : float, optional
        Mean and SD in a functional (non-clinical) sample; without them only *a* is given.
    direction : {'higher_is_better', 'lower_is_better'}

    Returns
    -------
    dict
        ``{"a": ..., "b": ..., "c": ...}`` (None where the norms needed are missing).

    Notes
    -----
    With :math:`s = +1` when higher is better and :math:`-1` when lower is better:

    .. math::

        a = M_{clin} + 2 s\,SD_{clin}, \qquad
        b = M_{func} - 2 s\,SD_{func}, \qquad
        c = \frac{SD_{clin} M_{func} + SD_{func} M_{clin}}{SD_{clin} + SD_{func}}

    *a*: two SDs beyond the clinical mean in the direction of functioning; *b*: within two
    SDs of the functional mean; *c*: the point equally likely to belong to either
    distribution (preferred when both norms exist).

    Examples
    --------
    >>> clinical_cutoffs(30, 8, 10, 5, direction="lower_is_better")
    {'a': 14.0, 'b': 20.0, 'c': 17.692307692307693}
    """
    check_choice(direction, DIRECTIONS, "direction")
    m_c = check_number(clinical_mean, "clinical_mean")
    sd_c = check_number(clinical_sd, "clinical_sd", minimum=0.0, strict_minimum=True)
    m_f = check_number(functional_mean, "functional_mean", allow_none=True)
    sd_f = check_number(
        functional_sd, "functional_sd", minimum=0.0, strict_minimum=True, allow_none=True
    )
    s = 1.0 if direction == "higher_is_better" else -1.0
    a = m_c + 2.0 * s * sd_c
    b = c = None
    if m_f is not None and sd_f is not None:
        b = m_f - 2.0 * s * sd_f
        c = (sd_c * m_f + sd_f * m_c) / (sd_c + sd_f)
    return {"a": a, "b": b, "c": c}


# --------------------------------------------------------------------------- reliable change


def _clinical(values: pd.Series, cutoff: float | None, clinical_range: str | None) -> pd.Series:
    if cutoff is None:
        return pd.Series(pd.NA, index=values.index, dtype="boolean")
    out = (values < cutoff) if clinical_range == "below" else (values >= cutoff)
    out = out.astype("boolean")
    out[values.isna()] = pd.NA
    return out


def reliable_change(
    data: pd.DataFrame,
    *,
    score: str = "outcome",
    patient: str = "patient",
    session: str = "session",
    direction: Direction,
    rci: float,
    cutoff: float | None = None,
    clinical_range: ClinicalRange | None = None,
) -> pd.DataFrame:
    r"""Reliable and clinically significant change per patient, first to last observed score.

    Parameters
    ----------
    data : pandas.DataFrame
        Long format, one row per patient and session (one informant).
    score : str
        The outcome score column.
    patient, session : str
        Column names.
    direction : {'higher_is_better', 'lower_is_better'}
        Direction of improvement (``Instrument.direction``).
    rci : float
        Reliable change value in score points (``Instrument.rci`` or
        :func:`reliable_change_index`).
    cutoff : float, optional
        Clinical cut-off (``Instrument.cutoff``, or *a*, *b* or *c* of
        :func:`clinical_cutoffs` from the study's norms). Without it nobody is
        "recovered": reliable improvement is "improved".
    clinical_range : {'below', 'at_or_above'}
        Which side of the cut-off is the clinical range (``Instrument.clinical_range``);
        required with *cutoff*.

    Returns
    -------
    pandas.DataFrame
        One row per patient (order of first appearance), columns
        :data:`RELIABLE_CHANGE_COLUMNS`: ``n_observed`` (sessions with a score),
        ``first_session``/``last_session`` and ``score_first``/``score_last`` (first and
        last *observed* score), ``change`` (last − first), ``improvement`` (change signed
        so that positive is better), ``reliable_improvement``,
        ``reliable_deterioration``, ``clinical_first``, ``clinical_last`` (nullable
        booleans) and ``rc_category`` (one of :data:`RC_CATEGORIES`; missing with fewer
        than two observed scores).

    Raises
    ------
    KeyError, ValueError
        Missing columns, bad settings, duplicated sessions.

    Notes
    -----
    With :math:`s = +1` when higher is better, :math:`-1` otherwise, and
    :math:`x_{first}, x_{last}` the first and last observed scores,

    .. math::

        I = s\,(x_{last} - x_{first}), \qquad
        \text{reliable improvement: } I \ge RC, \qquad
        \text{reliable deterioration: } I \le -RC

    A change of exactly *RC* points counts as reliable. A score is in the clinical range
    when it is below the cut-off (``'below'``) or at or above it (``'at_or_above'``), so
    a score equal to the cut-off is clinical only for ``'at_or_above'``. Categories:
    *recovered* = reliable improvement, clinical at the first score and not at the last;
    *improved* = any other reliable improvement; *harmed* = reliable deterioration,
    not clinical at the first score and clinical at the last (the mirror image of
    recovery); *deteriorated* = any other reliable deterioration; *unchanged* = neither.
    A patient who starts outside the clinical range cannot recover (Jacobson & Truax's
    criterion needs movement from the clinical into the functional range), and one who
    starts inside it cannot be harmed. Without a cut-off nobody is recovered or harmed.
    These are the definitions of the R package clinicalsignificance (its internal
    ``.calc_recovered``: ``recovered = clinical_pre & functional_post & improved``,
    ``harmed = !clinical_pre & !functional_post & deteriorated``, each taken out of
    improved and deteriorated), in its order. Sessions with a missing score are skipped.

    References
    ----------
    Claus, B. B., et al. (2024). The R package clinicalsignificance. *Journal of
    Statistical Software, 111*(1). https://doi.org/10.18637/jss.v111.i01
    Jacobson, N. S., & Truax, P. (1991). Clinical significance: A statistical approach to
    defining meaningful change in psychotherapy research. *Journal of Consulting and
    Clinical Psychology, 59*(1), 12–19.

    Examples
    --------
    >>> import pandas as pd
    >>> df = pd.DataFrame({"patient": ["a", "a", "b", "b"], "session": [1, 5, 1, 4],
    ...                    "phq9_total": [18, 8, 12, 10]})
    >>> reliable_change(df, score="phq9_total", direction="lower_is_better", rci=6,
    ...                 cutoff=10, clinical_range="at_or_above").rc_category.tolist()
    ['recovered', 'unchanged']
    """
    check_frame(data)
    check_columns(data, patient, session, score)
    check_sessions(data, patient, session)
    check_choice(direction, DIRECTIONS, "direction")
    rci = check_number(rci, "rci", minimum=0.0, strict_minimum=True)
    cutoff = check_number(cutoff, "cutoff", allow_none=True)
    if cutoff is not None:
        check_choice(clinical_range, CLINICAL_RANGES, "clinical_range")
    sign = 1.0 if direction == "higher_is_better" else -1.0

    ids = pd.Index(pd.unique(data[patient]), name=patient)
    obs = data.loc[data[score].notna(), [patient, session, score]].sort_values(
        [patient, session], kind="mergesort"
    )
    grouped = obs.groupby(patient, sort=False)
    first = grouped.first()
    last = grouped.last()
    out = pd.DataFrame(index=ids)
    out["n_observed"] = grouped.size().reindex(ids).fillna(0).astype("int64")
    out["first_session"] = first[session].reindex(ids).astype("Int64")
    out["last_session"] = last[session].reindex(ids).astype("Int64")
    out["score_first"] = first[score].reindex(ids).astype(float)
    out["score_last"] = last[score].reindex(ids).astype(float)
    two = out["n_observed"] >= 2
    out["change"] = np.where(two, out["score_last"] - out["score_first"], np.nan)
    out["improvement"] = sign * out["change"]
    rel_imp = (out["improvement"] >= rci).astype("boolean")
    rel_det = (out["improvement"] <= -rci).astype("boolean")
    rel_imp[~two] = pd.NA
    rel_det[~two] = pd.NA
    out["reliable_improvement"] = rel_imp
    out["reliable_deterioration"] = rel_det
    out["clinical_first"] = _clinical(out["score_first"], cutoff, clinical_range)
    out["clinical_last"] = _clinical(out["score_last"], cutoff, clinical_range)
    recovered = (
        rel_imp.fillna(False)
        & out["clinical_first"].fillna(False)
        & ~out["clinical_last"].fillna(True)
    )
    harmed = (
        rel_det.fillna(False)
        & ~out["clinical_first"].fillna(True)
        & out["clinical_last"].fillna(False)
    )
    category = np.select(
        [~two, recovered, rel_imp.fillna(False), harmed, rel_det.fillna(False)],
        [None, "recovered", "improved", "harmed", "deteriorated"],
        default="unchanged",
    )
    out["rc_category"] = pd.Categorical(category, categories=list(RC_CATEGORIES))
    return out.reset_index()[[patient] + RELIABLE_CHANGE_COLUMNS[1:]]


# --------------------------------------------------------------------------- endings


def endings_and_dose(
    data: pd.DataFrame,
    *,
    patient: str = "patient",
    session: str = "session",
    days: str | None = "days",
    ending: str | None = None,
    followup: str | None = None,
    gap_days: float | None = None,
    planned_sessions: int | None = None,
    labels: dict[str, str] | None = None,
) -> pd.DataFrame:
    r"""How treatment ended, and how much of it there was, per patient.

    Parameters
    ----------
    data : pandas.DataFrame
        Long format, one row per recorded session.
    patient, session : str
        Column names.
    days : str or None
        Days since the patient's first session; None when the data has no dates (then
        weeks and gaps are missing and no ending can be inferred).
    ending : str, optional
        A patient-level column (constant within patient) recording the ending: values
        ``planned``, ``unilateral``, ``dropout`` or ``ongoing`` (after *labels*).
    followup : str, optional
        A patient-level column: days from the patient's first session to the date the data
        were extracted. Needed to infer an ending from a gap.
    gap_days : float, optional
        Infer the ending when none is recorded: ``ended`` when the patient had no session
        for at least *gap_days* days before the extraction date, else ``ongoing``.
    planned_sessions : int, optional
        With *gap_days*: split the inferred endings by dose. After at least this many
        sessions (the highest session number, which counts attended sessions when
        sessions are numbered by attendance) the ending is ``planned``, before it
        ``dropout`` -- the "failed to complete a predetermined number of sessions"
        definition of premature termination in Swift & Greenberg (2012). A completer
        whose last session went unrecorded is then counted as a dropout.
    labels : dict, optional
        Raw ending label -> one of the ending types, e.g. ``{"DNA": "dropout"}``.

    Returns
    -------
    pandas.DataFrame
        One row per patient (order of first appearance), columns :data:`ENDING_COLUMNS`:
        ``n_sessions`` (recorded sessions), ``first_session``/``last_session`` (session
        numbers; the last is the number of sessions attended when sessions are numbered
        by attendance), ``first_days``/``last_days``, ``weeks`` (time in treatment),
        ``longest_gap_days`` (longest interval between consecutive recorded sessions),
        ``ending`` (category, one of :data:`ENDINGS`) and ``ending_source``
        (``recorded``, ``inferred`` or ``none``).

    Raises
    ------
    KeyError
        A named column is missing.
    ValueError
        An ending label outside the allowed values, an ending that differs between rows of
        one patient, a *gap_days* without *followup*.

    Notes
    -----
    .. math::

        \text{weeks}_i = \frac{d_{i,last} - d_{i,first}}{7}, \qquad
        \text{ending}_i = \begin{cases}
        \text{recorded value} & \text{if recorded} \\
        \text{ended} & \text{if } F_i - d_{i,last} \ge G \text{ and no } P \\
        \text{planned} & \text{if } F_i - d_{i,last} \ge G \text{ and } s_{i,last} \ge P \\
        \text{dropout} & \text{if } F_i - d_{i,last} \ge G \text{ and } s_{i,last} < P \\
        \text{ongoing} & \text{if } F_i - d_{i,last} < G \\
        \text{unknown} & \text{otherwise}
        \end{cases}

    with :math:`F_i` the follow-up days, :math:`G` = *gap_days*, :math:`s_{i,last}` the
    last session number and :math:`P` = *planned_sessions*. A gap of exactly *G* days
    counts as an ending. A gap alone says that treatment is over, not how it ended, so
    without *P* an inferred ending is ``ended``, never ``dropout``: calling every patient
    who stopped coming a dropout would count the completers too. *Unilateral* endings (the
    patient ends without the therapist's agreement) can only be recorded, never inferred.
    Swift & Greenberg (2012) found the rate of premature termination to depend strongly on
    its definition (therapist judgement, a dose criterion, a missed last appointment), so
    report the one used; their premature termination covers both unilateral endings and
    dropouts. Time in treatment (``weeks``, ``n_sessions``) of ``ongoing`` patients is
    censored at the extraction.

    Examples
    --------
    >>> import pandas as pd
    >>> df = pd.DataFrame({"patient": ["a", "a", "b"], "session": [1, 2, 1],
    ...                    "days": [0.0, 7.0, 0.0], "followup": [100.0, 100.0, 30.0]})
    >>> endings_and_dose(df, followup="followup", gap_days=60).ending.tolist()
    ['ended', 'ongoing']
    >>> endings_and_dose(df, followup="followup", gap_days=60, planned_sessions=2).ending.tolist()
    ['planned', 'ongoing']
    """
    check_frame(data)
    check_columns(data, patient, session, *(c for c in (days, ending, followup) if c))
    check_sessions(data, patient, session)
    gap_days = check_number(gap_days, "gap_days", minimum=0.0, strict_minimum=True, allow_none=True)
    planned_sessions = check_number(
        planned_sessions, "planned_sessions", minimum=1.0, allow_none=True
    )
    if planned_sessions is not None and gap_days is None:
        raise ValueError(
            "`planned_sessions` only applies to endings inferred from a gap; set `gap_days` too."
        )
    if gap_days is not None and (followup is None or days is None):
        raise ValueError(
            "`gap_days` needs `followup` (days from the first session to data extraction) "
            f"and `days`; got followup={followup!r}, days={days!r}."
        )
    labels = dict(labels or {})
    needed = list(dict.fromkeys(c for c in (patient, session, days, ending, followup) if c))
    ordered = data[needed].sort_values([patient, session], kind="mergesort")
    ids = pd.Index(pd.unique(data[patient]), name=patient)
    grouped = ordered.groupby(patient, sort=False)
    out = pd.DataFrame(index=ids)
    out["n_sessions"] = grouped.size().reindex(ids).astype("int64")
    out["first_session"] = grouped[session].min().reindex(ids).astype("int64")
    out["last_session"] = grouped[session].max().reindex(ids).astype("int64")
    if days is not None:
        d = ordered[days].astype(float)
        out["first_days"] = d.groupby(ordered[patient], sort=False).min().reindex(ids)
        out["last_days"] = d.groupby(ordered[patient], sort=False).max().reindex(ids)
        out["weeks"] = (out["last_days"] - out["first_days"]) / 7.0
        gaps = d.groupby(ordered[patient], sort=False).diff()
        out["longest_gap_days"] = gaps.groupby(ordered[patient], sort=False).max().reindex(ids)
    else:
        for c in ("first_days", "last_days", "weeks", "longest_gap_days"):
            out[c] = np.nan

    recorded = pd.Series(pd.NA, index=ids, dtype=object)
    if ending is not None:
        raw = ordered[[patient, ending]].dropna()
        mapped = raw[ending].map(lambda v: labels.get(v, labels.get(str(v), v)))
        allowed = ENDINGS[:4]
        bad = ~mapped.isin(allowed)
        if bad.any():
            value = raw.loc[bad, ending].iloc[0]
            raise ValueError(
                f"Column {ending!r} has ending {value!r} "
                f"(patient {raw.loc[bad, patient].iloc[0]!r}); "
                f"allowed: {', '.join(map(repr, allowed))}, or map it with `labels`."
            )
        by_patient = mapped.groupby(raw[patient], sort=False)
        kinds = by_patient.nunique()
        if (kinds > 1).any():
            first = kinds.index[kinds > 1][0]
            raise ValueError(
                f"Column {ending!r} must be constant within patient; patient {first!r} "
                f"has {sorted(set(mapped[raw[patient] == first]))}."
            )
        recorded = by_patient.first().reindex(ids)
    source = pd.Series("none", index=ids, dtype=object)
    result = pd.Series("unknown", index=ids, dtype=object)
    has = recorded.notna()
    result[has] = recorded[has]
    source[has] = "recorded"
    if gap_days is not None:
        fu = ordered.groupby(patient, sort=False)[followup].max().reindex(ids).astype(float)
        since = fu - out["last_days"]
        can = ~has & since.notna()
        ended = can & (since >= gap_days)
        if planned_sessions is None:
            result[ended] = "ended"
        else:
            result[ended] = np.where(out["last_session"] >= planned_sessions, "planned", "dropout")[
                ended.to_numpy()
            ]
        result[can & (since < gap_days)] = "ongoing"
        source[can] = "inferred"
    out["ending"] = pd.Categorical(result, categories=list(ENDINGS))
    out["ending_source"] = pd.Categorical(source, categories=["recorded", "inferred", "none"])
    return out.reset_index()[[patient] + ENDING_COLUMNS[1:]]


# --------------------------------------------------------------------------- patients table


def derive_patients(
    analysis: pd.DataFrame,
    *,
    outcome: str = "outcome",
    patient: str = "patient",
    session: str = "session",
    days: str | None = "days",
    carry: Sequence[str] = ("therapist", "condition"),
    direction: Direction,
    rci: float,
    cutoff: float | None = None,
    clinical_range: ClinicalRange | None = None,
    ending: str | None = None,
    followup: str | None = None,
    gap_days: float | None = None,
    planned_sessions: int | None = None,
    ending_labels: dict[str, str] | None = None,
    sudden_gains: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Build the patients table: one row per patient with every patient-level variable.

    Parameters
    ----------
    analysis : pandas.DataFrame
        The session-level analysis table (:func:`allianceflow.derive.derive_analysis`),
        optionally with the on-track columns (:func:`allianceflow.ontrack.on_track`) and
        rupture columns (:func:`allianceflow.ruptures.detect_ruptures`) already added.
    outcome : str
        The outcome score column.
    patient, session, days : str
        Column names (*days* None when there are no dates).
    carry : sequence of str
        Patient-level columns copied from the first session when present
        (``therapist``, ``condition``, baseline covariates).
    direction, rci, cutoff, clinical_range
        Passed to :func:`reliable_change`.
    ending, followup, gap_days, planned_sessions, ending_labels
        Passed to :func:`endings_and_dose` (*ending_labels* as ``labels``).
    sudden_gains : pandas.DataFrame, optional
        The table of :func:`allianceflow.suddengains.sudden_gains`; adds the counts of
        :func:`allianceflow.suddengains.sudden_gains_by_patient`.

    Returns
    -------
    pandas.DataFrame
        One row per patient, sorted by patient id: *patient*, the *carry* columns present,
        :data:`ENDING_COLUMNS`, :data:`RELIABLE_CHANGE_COLUMNS` (session columns renamed
        ``first_observed_session``/``last_observed_session``), then when available the
        on-track summary (``n_not_on_track``, ``first_off_track_session``), sudden-gain
        counts (``n_sudden_gains`` …), detected-rupture counts (``n_ruptures``,
        ``n_repaired``, ``n_unrepaired``, ``n_censored``) and coded-rupture counts
        (``n_confrontation``, ``n_withdrawal``, ``n_coded_ruptures``).

    Examples
    --------
    >>> import pandas as pd
    >>> df = pd.DataFrame({"patient": ["a", "a", "b"], "session": [1, 2, 1],
    ...                    "days": [0.0, 7.0, 0.0], "outcome": [10.0, 20.0, 15.0]})
    >>> p = derive_patients(
    ...     df, direction="higher_is_better", rci=5, cutoff=25, clinical_range="below"
    ... )
    >>> p[["patient", "n_sessions", "weeks", "rc_category"]].to_numpy().tolist()
    [['a', 2, 1.0, 'improved'], ['b', 1, 0.0, nan]]
    """
    check_frame(analysis, "analysis")
    check_columns(analysis, patient, session, outcome, name="analysis")
    settings = dict(
        outcome=outcome,
        patient=patient,
        session=session,
        days=days,
        carry=carry,
        direction=direction,
        rci=rci,
        cutoff=cutoff,
        clinical_range=clinical_range,
        ending=ending,
        followup=followup,
        gap_days=gap_days,
        planned_sessions=planned_sessions,
        ending_labels=ending_labels,
    )
    coded = _patient_codes(analysis[patient], sudden_gains)
    if coded is None:
        return _patients_table(analysis, sudden_gains=sudden_gains, **settings)
    # The steps group, sort and merge by patient a dozen times. Integer codes that sort as
    # the ids do give the same groups, order and rows without hashing every text id again
    # (about 1.5 CPU-s at 10^6 sessions); the ids are put back at the end.
    codes, uniques, gains = coded
    work = analysis.copy(deep=False)
    work[patient] = codes
    try:
        out = _patients_table(work, sudden_gains=gains, **settings)
    except ValueError:  # the same error, naming the patients by their own ids
        return _patients_table(analysis, sudden_gains=sudden_gains, **settings)
    out[patient] = uniques.take(out[patient].to_numpy()).to_numpy()
    return out


def _patient_codes(ids: pd.Series, gains: pd.DataFrame | None):
    """Codes of text patient ids that sort as the ids, the ids, and *gains* recoded; or None.

    None (the ids are used as they are) unless the ids are text without a missing one and
    every patient of *gains* (the sudden-gains table) is among them.
    """
    # only text: factorize "sorts" text mixed with numbers (numbers first) where sorting the
    # ids themselves raises, and a missing id has no code
    if ids.dtype != object or pd.api.types.infer_dtype(ids, skipna=False) != "string":
        return None
    codes, uniques = pd.factorize(ids, sort=True)
    uniques = pd.Index(uniques, dtype=object)
    if gains is not None:
        gains = gains.copy(deep=False)
        gains["patient"] = uniques.get_indexer(gains["patient"])
        if len(gains) and gains["patient"].min() < 0:
            return None
    return codes, uniques, gains


def _patients_table(
    analysis: pd.DataFrame,
    *,
    outcome: str,
    patient: str,
    session: str,
    days: str | None,
    carry: Sequence[str],
    direction: Direction,
    rci: float,
    cutoff: float | None,
    clinical_range: ClinicalRange | None,
    ending: str | None,
    followup: str | None,
    gap_days: float | None,
    planned_sessions: int | None,
    ending_labels: dict[str, str] | None,
    sudden_gains: pd.DataFrame | None,
) -> pd.DataFrame:
    """:func:`derive_patients` on checked input (patient ids or their integer codes)."""
    from .ontrack import first_off_track
    from .ruptures import coded_ruptures, rupture_summary
    from .suddengains import sudden_gains_by_patient

    ids = pd.unique(analysis[patient])
    present = [c for c in carry if c in analysis.columns and c != patient]
    ordered = analysis[list(dict.fromkeys([patient, session, *present]))].sort_values(
        [patient, session], kind="mergesort"
    )
    base = pd.DataFrame({patient: ids})
    if present:
        firsts = ordered.groupby(patient, sort=False)[present].first()
        base = base.merge(firsts, left_on=patient, right_index=True, how="left")
    ends = endings_and_dose(
        analysis,
        patient=patient,
        session=session,
        days=days,
        ending=ending,
        followup=followup,
        gap_days=gap_days,
        planned_sessions=planned_sessions,
        labels=ending_labels,
    )
    rc = reliable_change(
        analysis,
        score=outcome,
        patient=patient,
        session=session,
        direction=direction,
        rci=rci,
        cutoff=cutoff,
        clinical_range=clinical_range,
    )
    rc = rc.rename(
        columns={"first_session": "first_observed_session", "last_session": "last_observed_session"}
    )
    out = base.merge(ends, on=patient, how="left").merge(rc, on=patient, how="left")
    if "on_track" in analysis.columns:
        out = out.merge(
            first_off_track(analysis, patient=patient, session=session), on=patient, how="left"
        )
    if sudden_gains is not None:
        sg = sudden_gains_by_patient(sudden_gains, ids, patient=patient)
        out = out.merge(sg, on=patient, how="left")
    if "rupture_detected" in analysis.columns:
        out = out.merge(rupture_summary(analysis, patient=patient), on=patient, how="left")
    if "rupture" in analysis.columns:
        out = out.merge(coded_ruptures(analysis, patient=patient), on=patient, how="left")
    return out.sort_values(patient, kind="mergesort").reset_index(drop=True)


# --------------------------------------------------------------------------- patient outcomes

#: Columns of :func:`patient_outcomes`: the outcomes and predictors of the patient-level
#: presets (``deterioration``, ``improvement``, ``dropout``, ``attendance``).
PATIENT_OUTCOME_COLUMNS = [
    "feedback",
    "deteriorated",
    "improved",
    "dropout",
    "sessions_attended",
    "early_alliance",
    "early_alliance_n",
    "outcome_baseline",
    "off_track",
]
#: Default number of first sessions whose alliance is averaged into the early alliance.
EARLY_ALLIANCE_SESSIONS = 3


def patient_outcomes(
    patients: pd.DataFrame,
    analysis: pd.DataFrame,
    *,
    alliance: str = "alliance",
    patient: str = "patient",
    session: str = "session",
    early_sessions: int = EARLY_ALLIANCE_SESSIONS,
) -> pd.DataFrame:
    r"""Add the patient-level outcomes and predictors of the binary and count presets.

    Parameters
    ----------
    patients : pandas.DataFrame
        The patients table of :func:`derive_patients` (reliable-change, endings, the
        ``condition`` column and, when derived, on-track columns).
    analysis : pandas.DataFrame
        The session-level analysis table, with the *alliance* column (and ``on_track``
        when derived).
    alliance, patient, session : str
        Column names.
    early_sessions : int, default 3
        The early alliance is the mean alliance of the sessions numbered within the first
        *early_sessions* from the patient's first session.

    Returns
    -------
    pandas.DataFrame
        A copy of *patients* with :data:`PATIENT_OUTCOME_COLUMNS` (floats, NaN when not
        known):

        ``feedback``
            1 for the feedback arm (``condition`` is ``"feedback"``), 0 for any other arm;
            NaN without a ``condition`` column or a ``"feedback"`` arm. A 0/1 column makes
            treatment as usual the reference of the presets' arm effect.
        ``deteriorated``, ``improved``
            1/0: reliable deterioration; reliable improvement (which includes recovery,
            since a recovered patient has improved reliably). NaN with fewer than two
            observed scores.
        ``dropout``
            1 for an early ending (``unilateral`` or ``dropout``: premature termination,
            which covers both in Swift & Greenberg 2012), 0 for ``planned``; NaN for
            ``ongoing``, ``ended`` (over, not known how) and ``unknown``.
        ``sessions_attended``
            The last session number (the number of sessions attended when sessions are
            numbered by attendance).
        ``early_alliance``, ``early_alliance_n``
            Mean alliance over the patient's sessions numbered below
            ``first_session + early_sessions``, and how many scores it averages (fewer
            than *early_sessions* for a patient who left earlier or missed a rating).
        ``outcome_baseline``
            The first observed outcome score (baseline severity).
        ``off_track``
            1 for a patient flagged not on track at any session, 0 for one assessed and
            never flagged, NaN for one never assessed; only when the on-track status was
            derived.

    Notes
    -----
    Why three sessions: "early alliance" is the alliance of the first sessions, most often
    rated at the third (Horvath & Symonds, 1991; Horvath, Del Re, Flückiger & Symonds,
    2011), and the mean of three ratings is less noisy than one. A patient who ends
    before the *k*-th session has an early alliance from fewer sessions, which lies closer
    in time to the ending; report ``early_alliance_n`` or restrict to patients with
    ``early_alliance_n == k`` when that matters.

    References
    ----------
    Horvath, A. O., & Symonds, B. D. (1991). Relation between working alliance and outcome
    in psychotherapy: A meta-analysis. *Journal of Counseling Psychology, 38*(2), 139–149.
    Horvath, A. O., Del Re, A. C., Flückiger, C., & Symonds, D. (2011). Alliance in
    individual psychotherapy. *Psychotherapy, 48*(1), 9–16.
    Swift, J. K., & Greenberg, R. P. (2012). Premature discontinuation in adult
    psychotherapy: A meta-analysis. *Journal of Consulting and Clinical Psychology,
    80*(4), 547–559.

    Examples
    --------
    >>> import pandas as pd
    >>> a = pd.DataFrame({"patient": ["a", "a", "a", "a"], "session": [1, 2, 3, 4],
    ...                   "alliance": [40.0, 44.0, 48.0, 60.0], "outcome": [10, 12, 20, 22]})
    >>> p = derive_patients(a, direction="higher_is_better", rci=5, days=None)
    >>> patient_outcomes(p, a)[["improved", "early_alliance", "early_alliance_n"]].values.tolist()
    [[1.0, 44.0, 3.0]]
    """
    check_frame(patients, "patients")
    check_frame(analysis, "analysis")
    check_columns(patients, patient, "last_session", "first_session", name="patients")
    check_columns(analysis, patient, session, alliance, name="analysis")
    if isinstance(early_sessions, bool) or not isinstance(early_sessions, (int, np.integer)):
        raise TypeError(f"`early_sessions` must be an integer; got {early_sessions!r}.")
    if early_sessions < 1:
        raise ValueError(f"`early_sessions` must be at least 1; got {early_sessions!r}.")
    out = patients.copy()
    arm = out["condition"].astype(object) if "condition" in out else None
    if arm is not None and arm.eq("feedback").any():
        out["feedback"] = np.where(arm.isna(), np.nan, arm.eq("feedback").astype(float))
    else:
        out["feedback"] = np.nan
    for column, source in (
        ("deteriorated", "reliable_deterioration"),
        ("improved", "reliable_improvement"),
    ):
        if source in out:
            out[column] = out[source].astype("Float64").astype(float)
        else:
            out[column] = np.nan
    if "ending" in out:
        ending = out["ending"].astype(object)
        out["dropout"] = np.select(
            [ending.isin(["unilateral", "dropout"]), ending.eq("planned")], [1.0, 0.0], np.nan
        )
    else:
        out["dropout"] = np.nan
    out["sessions_attended"] = out["last_session"].astype(float)
    first = out.set_index(patient)["first_session"]
    rows = analysis[[patient, session, alliance]]
    early = rows[rows[session] < rows[patient].map(first) + early_sessions]
    grouped = early.groupby(patient, sort=False)[alliance]
    out["early_alliance"] = out[patient].map(grouped.mean()).astype(float)
    out["early_alliance_n"] = out[patient].map(grouped.count()).fillna(0).astype(float)
    out["outcome_baseline"] = out["score_first"].astype(float) if "score_first" in out else np.nan
    if "first_off_track_session" in out and "on_track" in analysis:
        flagged = out["first_off_track_session"].notna().astype(float)
        assessed = analysis["on_track"].notna().groupby(analysis[patient], observed=True).any()
        known = out[patient].map(assessed).fillna(False).astype(bool)
        out["off_track"] = flagged.where(known.to_numpy())
    else:
        out["off_track"] = np.nan
    return out
