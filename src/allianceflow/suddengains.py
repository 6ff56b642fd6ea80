"""Sudden gains and sudden losses (Tang & DeRubeis, 1999).

The criteria are applied as the R package ``suddengains`` (Wiedemann et al., 2020) does.

A *sudden gain* is a large improvement between two consecutive measurement points (the
pregain session :math:`n` and the postgain session :math:`n+1`) that is stable relative
to the surrounding sessions. A *sudden loss* is the same pattern in the worsening
direction. :func:`sudden_gain_intervals` checks every between-session interval of every
patient and reports each criterion; :func:`sudden_gains` returns one row per gain or loss
with its magnitude and whether it reversed; :func:`sudden_gains_by_patient` counts them.

References
----------
Tang, T. Z., & DeRubeis, R. J. (1999). Sudden gains and critical sessions in
cognitive-behavioral therapy for depression. *Journal of Consulting and Clinical
Psychology*, 67(6), 894–904. https://doi.org/10.1037/0022-006X.67.6.894

Wiedemann, M., Thew, G. R., Stott, R., & Ehlers, A. (2020). suddengains: An R package to
identify sudden gains in longitudinal data. *PLOS ONE*, 15(3), e0230276.
https://doi.org/10.1371/journal.pone.0230276 (R package suddengains, functions
``identify_sg``, ``identify_sl``, ``check_interval`` and ``create_bysg``.)

Lutz, W., Ehrlich, T., Rubel, J., Hallwachs, N., Röttger, M.-A., Jorasz, C., Mocanu, S.,
Vocks, S., Schulte, D., & Tschitsaz-Stucki, A. (2013). The ups and downs of
psychotherapy: Sudden gains and sudden losses identified with session reports.
*Psychotherapy Research*, 23(1), 14–24. https://doi.org/10.1080/10503307.2012.693837

Jacobson, N. S., & Truax, P. (1991). Clinical significance: A statistical approach to
defining meaningful change in psychotherapy research. *Journal of Consulting and Clinical
Psychology*, 59(1), 12–19. https://doi.org/10.1037/0022-006X.59.1.12
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
from scipy import special

from ._derive_checks import (
    DIRECTIONS,
    check_choice,
    check_columns,
    check_frame,
    check_int,
    check_number,
    check_sessions,
)

__all__ = [
    "critical_value",
    "check_interval",
    "sudden_gain_intervals",
    "sudden_gains",
    "sudden_gains_by_patient",
    "INTERVAL_COLUMNS",
    "EVENT_COLUMNS",
    "SUMMARY_COLUMNS",
]

Direction = Literal["higher_is_better", "lower_is_better"]
Event = Literal["gain", "loss"]
_EVENTS = ("gain", "loss")

#: Columns of :func:`sudden_gain_intervals`.
INTERVAL_COLUMNS = [
    "patient",
    "event",
    "pregain_session",
    "postgain_session",
    "pregain_score",
    "postgain_score",
    "change",
    "n_pre",
    "n_post",
    "mean_pre",
    "mean_post",
    "pooled_sd",
    "critical_value",
    "crit1",
    "crit2",
    "crit3",
    "is_event",
]
#: Columns of :func:`sudden_gains` (one row per gain or loss).
EVENT_COLUMNS = [
    "patient",
    "event",
    "pregain_session",
    "postgain_session",
    "pregain_score",
    "postgain_score",
    "magnitude",
    "n_pre",
    "n_post",
    "mean_pre",
    "mean_post",
    "critical_value",
    "total_change",
    "change_proportion",
    "reversal_value",
    "reversed",
]
#: Columns of :func:`sudden_gains_by_patient`.
SUMMARY_COLUMNS = [
    "patient",
    "n_sudden_gains",
    "n_sudden_gains_reversed",
    "first_sudden_gain_session",
    "n_sudden_losses",
    "n_sudden_losses_reversed",
    "first_sudden_loss_session",
]


def critical_value(n_pre: int, n_post: int, *, alpha: float = 0.05) -> float:
    r"""Two-tailed Student-t critical value of the third criterion.

    .. math::

        t_{crit} = t_{1-\alpha/2,\; n_{pre} + n_{post} - 2}

    With ``alpha = 0.05``: 2.776 with all six scores (df 4), 3.182 with one missing
    (df 3), 4.303 with one missing on each side (df 2), as in Lutz et al. (2013) and
    ``suddengains``.

    Examples
    --------
    >>> [round(critical_value(n_pre, n_post), 3) for n_pre, n_post in [(3, 3), (2, 3), (2, 2)]]
    [2.776, 3.182, 4.303]
    """
    n_pre = check_int(n_pre, "n_pre", minimum=2)
    n_post = check_int(n_post, "n_post", minimum=2)
    alpha = check_number(alpha, "alpha", minimum=0.0, maximum=1.0, strict_minimum=True)
    return float(special.stdtrit(n_pre + n_post - 2, 1.0 - alpha / 2.0))  # = t.ppf


def _check_criteria(cutoff, pct, crit3, alpha, adjust, fixed_critical):
    cutoff = check_number(cutoff, "cutoff", minimum=0.0, allow_none=True)
    pct = check_number(pct, "pct", minimum=0.0, allow_none=True)
    if not isinstance(crit3, bool):
        raise TypeError(f"`crit3` must be True or False; got {crit3!r}.")
    if not isinstance(adjust, bool):
        raise TypeError(f"`adjust` must be True or False; got {adjust!r}.")
    alpha = check_number(alpha, "alpha", minimum=0.0, maximum=1.0, strict_minimum=True)
    fixed_critical = check_number(
        fixed_critical, "critical_value", minimum=0.0, strict_minimum=True
    )
    if cutoff is None and pct is None and not crit3:
        raise ValueError(
            "At least one criterion must be applied: set `cutoff`, `pct` or `crit3=True`; "
            "got cutoff=None, pct=None, crit3=False."
        )
    return cutoff, pct, alpha, fixed_critical


def _nan_mean_var(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    r"""``np.nanmean(values, axis=-1)`` and ``np.nanvar(values, axis=-1, ddof=1)`` in one pass.

    The operations of numpy's own functions, in their order (missing values set to 0,
    sums over the last axis, :math:`\bar x = \sum x / n`, squared deviations with the
    missing ones set to 0, :math:`s^2 = \sum (x - \bar x)^2 / (n - 1)`, NaN where
    :math:`n \le 1`), sharing the mean: the same bits (tests/test_suddengains.py checks it).
    """
    mask = np.isnan(values)
    filled = np.where(mask, 0.0, values)
    count = (~mask).sum(axis=-1, dtype=np.intp, keepdims=True)
    mean = filled.sum(axis=-1, keepdims=True) / count
    deviation = filled - mean
    deviation[mask] = 0.0
    dof = count[..., 0] - 1
    var = (deviation * deviation).sum(axis=-1) / dof
    var[dof <= 0] = np.nan
    return mean[..., 0], var


def _moments(
    pre: np.ndarray, post: np.ndarray, *, alpha: float, adjust: bool, fixed_critical: float
) -> dict[str, np.ndarray]:
    """The direction-free parts of the criteria: counts, means, pooled SD, critical value.

    ``pre``/``post``: arrays (..., 3) of scores n-2..n and n+1..n+3. A gain and a loss
    share them, so :func:`sudden_gains` computes them once for both.
    """
    n_pre = (~np.isnan(pre)).sum(axis=-1)
    n_post = (~np.isnan(post)).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_pre, var_pre = _nan_mean_var(pre)
        mean_post, var_post = _nan_mean_var(post)
        enough = (n_pre >= 2) & (n_post >= 2)
        df = n_pre + n_post - 2
        pooled = np.sqrt(
            ((n_pre - 1) * var_pre + (n_post - 1) * var_post) / np.where(enough, df, 1)
        )
        if adjust:
            # the t quantile as scipy.stats.t.ppf computes it (scipy.special's stdtrit),
            # without importing scipy.stats in the derive job (~1 CPU-s)
            quantile = special.stdtrit(np.where(enough, df, 1), 1.0 - alpha / 2.0)
            crit = np.where(enough, quantile, np.nan)
        else:
            crit = np.where(enough, fixed_critical, np.nan)
    return {
        "n_pre": n_pre,
        "n_post": n_post,
        "raw_mean_pre": mean_pre,
        "raw_mean_post": mean_post,
        "raw_pooled": pooled,
        "enough": enough,
        "critical_value": crit,
    }


def _evaluate(
    pre: np.ndarray,
    post: np.ndarray,
    *,
    sign: float,
    cutoff,
    pct,
    crit3: bool,
    alpha: float,
    adjust: bool,
    fixed_critical: float,
    moments: dict[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Vectorised criteria. ``pre``/``post``: arrays (..., 3) of scores n-2..n and n+1..n+3.

    ``sign`` is +1 when the event is an increase of the score, -1 when a decrease.
    Criteria are float arrays: 1.0 met, 0.0 not met, NaN not assessable / not applied.
    *moments* are :func:`_moments` of the same arrays, when already computed.
    """
    if moments is None:
        moments = _moments(pre, post, alpha=alpha, adjust=adjust, fixed_critical=fixed_critical)
    y_n, y_n1 = pre[..., 2], post[..., 0]
    change = sign * (y_n1 - y_n)  # size of the step in the event's direction
    both = ~np.isnan(y_n) & ~np.isnan(y_n1)
    nan = np.full(change.shape, np.nan)
    c1 = (
        np.where(both, (change >= cutoff).astype(float), np.nan)
        if cutoff is not None
        else nan.copy()
    )
    c2 = (
        np.where(both, (change >= pct * y_n).astype(float), np.nan)
        if pct is not None
        else nan.copy()
    )
    n_pre, n_post, enough = moments["n_pre"], moments["n_post"], moments["enough"]
    mean_pre, mean_post = moments["raw_mean_pre"], moments["raw_mean_post"]
    pooled, crit = moments["raw_pooled"], moments["critical_value"]
    if crit3:
        with np.errstate(invalid="ignore"):
            c3 = np.where(
                enough, (sign * (mean_post - mean_pre) > crit * pooled).astype(float), np.nan
            )
    else:
        c3 = nan.copy()
    applied = [c for c, on in ((c1, cutoff is not None), (c2, pct is not None), (c3, crit3)) if on]
    is_event = np.ones(change.shape, dtype=bool)
    for c in applied:
        is_event &= c == 1.0  # NaN (not assessable) is not an event, as in create_bysg
    return {
        "change": change,
        "n_pre": n_pre,
        "n_post": n_post,
        "mean_pre": np.where(n_pre > 0, mean_pre, np.nan),
        "mean_post": np.where(n_post > 0, mean_post, np.nan),
        "pooled_sd": np.where(enough, pooled, np.nan),
        "critical_value": crit,
        "crit1": c1,
        "crit2": c2,
        "crit3": c3,
        "is_event": is_event,
    }


def _sign(event: str, direction: str) -> float:
    better = 1.0 if direction == "higher_is_better" else -1.0
    return better if event == "gain" else -better


def check_interval(
    pre_values: Sequence[float],
    post_values: Sequence[float],
    *,
    cutoff: float | None,
    pct: float | None = 0.25,
    crit3: bool = True,
    alpha: float = 0.05,
    adjust: bool = True,
    critical_value: float = 2.776,
    event: Event = "gain",
    direction: Direction = "lower_is_better",
) -> dict[str, float | bool | int]:
    """Check one between-session interval for a sudden gain or loss.

    The counterpart of ``suddengains::check_interval``.

    Parameters
    ----------
    pre_values : sequence of 3 floats
        Scores at sessions :math:`n-2, n-1, n` (NaN where missing).
    post_values : sequence of 3 floats
        Scores at sessions :math:`n+1, n+2, n+3`.
    cutoff, pct, crit3, alpha, adjust, critical_value, event, direction
        As in :func:`sudden_gain_intervals`.

    Returns
    -------
    dict
        ``change``, ``n_pre``, ``n_post``, ``mean_pre``, ``mean_post``, ``pooled_sd``,
        ``critical_value``, ``crit1``, ``crit2``, ``crit3`` (1.0 met, 0.0 not met, NaN not
        assessable or not applied) and ``is_event`` (bool).

    Examples
    --------
    >>> r = check_interval([32, 31, 33], [5, 6, 7], cutoff=7)
    >>> r["is_event"], r["change"], round(r["critical_value"], 3)
    (True, 28.0, 2.776)
    """
    cutoff, pct, alpha, critical_value = _check_criteria(
        cutoff, pct, crit3, alpha, adjust, critical_value
    )
    check_choice(event, _EVENTS, "event")
    check_choice(direction, DIRECTIONS, "direction")
    pre = np.asarray(pre_values, dtype=float)
    post = np.asarray(post_values, dtype=float)
    for name, arr in (("pre_values", pre), ("post_values", post)):
        if arr.shape != (3,):
            raise ValueError(
                f"`{name}` must hold exactly 3 values (NaN where missing); "
                f"got {arr.shape[0] if arr.ndim == 1 else arr.shape}."
            )
    out = _evaluate(
        pre[None, :],
        post[None, :],
        sign=_sign(event, direction),
        cutoff=cutoff,
        pct=pct,
        crit3=crit3,
        alpha=alpha,
        adjust=adjust,
        fixed_critical=critical_value,
    )
    result: dict[str, float | bool | int] = {}
    for key, value in out.items():
        v = value[0]
        result[key] = (
            bool(v) if key == "is_event" else (int(v) if key in ("n_pre", "n_post") else float(v))
        )
    return result


def _wide(data, score, patient, session, first_session, last_session):
    check_frame(data)
    check_columns(data, patient, session, score)
    check_sessions(data, patient, session)
    first = check_int(first_session, "first_session", minimum=1)
    last = (
        int(data[session].max())
        if last_session is None
        else check_int(last_session, "last_session", minimum=1)
    )
    if len(data) and last < first:
        raise ValueError(f"`last_session` ({last}) must not be before `first_session` ({first}).")
    keep = data.loc[
        (data[session] >= first) & (data[session] <= last),
        list(dict.fromkeys([patient, session, score])),
    ]
    patients = pd.Index(pd.unique(data[patient]))
    sessions = np.arange(first, last + 1) if len(data) else np.arange(first, first)
    values = np.full((len(patients), len(sessions)), np.nan)
    if len(keep):
        rows = patients.get_indexer(keep[patient])
        cols = keep[session].astype(int).to_numpy() - first
        values[rows, cols] = pd.to_numeric(keep[score], errors="raise").astype(float).to_numpy()
    return patients, sessions, values


def sudden_gain_intervals(
    data: pd.DataFrame,
    *,
    score: str = "outcome",
    patient: str = "patient",
    session: str = "session",
    direction: Direction = "lower_is_better",
    event: Event = "gain",
    cutoff: float | None,
    pct: float | None = 0.25,
    crit3: bool = True,
    alpha: float = 0.05,
    adjust: bool = True,
    critical_value: float = 2.776,
    first_session: int = 1,
    last_session: int | None = None,
) -> pd.DataFrame:
    r"""Check every between-session interval of every patient for a sudden gain or loss.

    Parameters
    ----------
    data : pandas.DataFrame
        Long format, one row per patient and session (one informant). Sessions without a
        row, and rows with a missing score, are missing measurement points.
    score : str
        The outcome score, e.g. ``"phq9_total"`` or ``"outcome"``.
    patient, session : str
        Column names.
    direction : {'lower_is_better', 'higher_is_better'}
        Direction of improvement of the score (from the instrument file).
    event : {'gain', 'loss'}
        Look for sudden gains (improvements) or sudden losses (worsenings).
    cutoff : float or None
        Criterion 1, the absolute size of the step (use the instrument's reliable change
        value, :func:`allianceflow.clinical.reliable_change_index`). Positive for both
        gains and losses. None skips the criterion.
    pct : float or None
        Criterion 2, the step as a share of the pregain score (0.25 = 25%). None skips it.
    crit3 : bool
        Apply criterion 3 (the means of the three sessions before and after differ).
    alpha : float
        Two-tailed significance level of criterion 3.
    adjust : bool
        True: the critical value follows the number of available scores
        (:func:`critical_value`); False: ``critical_value`` is used throughout.
    critical_value : float
        The fixed critical value used when ``adjust`` is False.
    first_session, last_session : int
        The span of measurement points (``sg_var_list`` in ``suddengains``). The default
        last session is the highest session number in *data*, the same for every patient,
        as a wide data set has the same columns for everyone.

    Returns
    -------
    pandas.DataFrame
        One row per patient and interval, columns :data:`INTERVAL_COLUMNS`: ``event``,
        ``pregain_session`` (:math:`n`), ``postgain_session`` (:math:`n+1`), their scores,
        ``change`` (size of the step in the event's direction), ``n_pre``/``n_post``
        (available scores among :math:`n-2..n` and :math:`n+1..n+3`), ``mean_pre``,
        ``mean_post``, ``pooled_sd``, ``critical_value``, ``crit1``/``crit2``/``crit3``
        (1.0 met, 0.0 not met, NaN not assessable or not applied) and ``is_event``.

    Raises
    ------
    KeyError
        A named column is missing.
    ValueError
        Bad criteria settings, duplicated or non-integer sessions.

    Notes
    -----
    With :math:`d = +1` for an increase and :math:`-1` for a decrease in the event's
    direction (a gain on a lower-is-better score is a decrease), the step
    :math:`\Delta = d\,(x_{n+1} - x_n)` is an event when

    .. math::

        \Delta \ge \text{cutoff}, \qquad \Delta \ge \text{pct}\cdot x_n, \qquad
        d\,(\bar x_{post} - \bar x_{pre}) > t_{crit}\,
        \sqrt{\frac{(n_{pre}-1)s_{pre}^2 + (n_{post}-1)s_{post}^2}{n_{pre}+n_{post}-2}}

    where :math:`\bar x_{pre}, s_{pre}` are the mean and SD of the available scores at
    :math:`n-2, n-1, n` and :math:`\bar x_{post}, s_{post}` those at
    :math:`n+1, n+2, n+3`. Note that the right-hand side is the pooled SD, not the
    standard error of the difference: this is how ``suddengains`` (and Tang & DeRubeis)
    apply the criterion. Ties meet criteria 1 and 2 (``>=``) but not criterion 3 (``>``).

    Missing data, as in ``suddengains``: criteria 1 and 2 need both :math:`x_n` and
    :math:`x_{n+1}`; criterion 3 needs at least two scores on each side (the data
    patterns of Wiedemann et al., 2020, Table 1). An interval that cannot be assessed is
    not an event. The intervals checked are pregain sessions ``first_session + 1`` to
    ``last_session - 2`` (``sg_2to3`` … in ``suddengains``): the earliest possible gain
    is from session 2 to 3, with sessions 1–2 as its pre-gain scores. A study whose
    session 1 is an intake assessment before therapy gets the same intervals as
    ``identify_sg_1to2 = TRUE`` with ``s0`` as that assessment.

    For sudden gains on a lower-is-better score (the package's case) the criteria are
    exactly those of ``identify_sg``. On a higher-is-better score, and for sudden losses,
    the criteria are mirrored (criterion 2 asks for a step of at least ``pct`` times the
    pregain score in the event's direction). The stored ``identify_sl`` source tests
    criterion 2 as ``x_n - x_{n+1} <= pct * x_n``, which any worsening meets; the mirror
    used here applies the 25% rule to losses as well.

    Examples
    --------
    >>> import pandas as pd
    >>> df = pd.DataFrame({"patient": "a", "session": range(1, 7),
    ...                    "phq9_total": [20, 21, 20, 10, 9, 10]})
    >>> iv = sudden_gain_intervals(df, score="phq9_total", cutoff=6)
    >>> gain = iv[iv.is_event]
    >>> gain.pregain_session.tolist(), gain.postgain_session.tolist(), gain.change.tolist()
    ([3], [4], [10.0])
    """
    cutoff, pct, alpha, critical_value = _check_criteria(
        cutoff, pct, crit3, alpha, adjust, critical_value
    )
    check_choice(direction, DIRECTIONS, "direction")
    check_choice(event, _EVENTS, "event")
    patients, sessions, values = _wide(data, score, patient, session, first_session, last_session)
    positions, pre, post = _windows(sessions, values)
    if len(patients) == 0 or len(positions) == 0:
        return pd.DataFrame({c: pd.Series(dtype=_dtype(c)) for c in INTERVAL_COLUMNS})
    res = _evaluate(
        pre,
        post,
        sign=_sign(event, direction),
        cutoff=cutoff,
        pct=pct,
        crit3=crit3,
        alpha=alpha,
        adjust=adjust,
        fixed_critical=critical_value,
    )
    n_pat, n_int = len(patients), len(positions)
    out = pd.DataFrame(
        {
            "patient": np.repeat(patients.to_numpy(), n_int),
            "event": event,
            "pregain_session": np.tile(sessions[positions], n_pat).astype("int64"),
            "postgain_session": np.tile(sessions[positions + 1], n_pat).astype("int64"),
            "pregain_score": pre[..., 2].ravel(),
            "postgain_score": post[..., 0].ravel(),
        }
    )
    for key in INTERVAL_COLUMNS[6:]:
        arr = res[key].ravel()
        out[key] = arr.astype("int64") if key in ("n_pre", "n_post") else arr
    return out[INTERVAL_COLUMNS]


def _windows(sessions: np.ndarray, values: np.ndarray):
    """Pregain positions and the (patients, intervals, 3) scores before and after each.

    The pregain positions are 1 .. ``len(sessions) - 3`` (0-based), i.e. sessions
    ``first + 1`` .. ``last - 2``; ``pre`` holds the scores at n-2, n-1, n and ``post``
    those at n+1, n+2, n+3 (NaN beyond the span).
    """
    positions = np.arange(1, max(len(sessions) - 2, 1))
    padded = np.pad(values, ((0, 0), (2, 3)), constant_values=np.nan)
    # padded index of session position p is p + 2
    pre = np.stack([padded[:, positions + 2 + k] for k in (-2, -1, 0)], axis=-1)
    post = np.stack([padded[:, positions + 2 + k] for k in (1, 2, 3)], axis=-1)
    return positions, pre, post


def _dtype(column: str):
    if column in ("patient", "event"):
        return object
    if column in ("pregain_session", "postgain_session", "n_pre", "n_post"):
        return "int64"
    if column in ("is_event", "reversed"):
        return bool
    return float


def sudden_gains(
    data: pd.DataFrame,
    *,
    score: str = "outcome",
    patient: str = "patient",
    session: str = "session",
    direction: Direction = "lower_is_better",
    cutoff: float | None,
    pct: float | None = 0.25,
    crit3: bool = True,
    alpha: float = 0.05,
    adjust: bool = True,
    critical_value: float = 2.776,
    events: Sequence[Event] = ("gain", "loss"),
    first_session: int = 1,
    last_session: int | None = None,
) -> pd.DataFrame:
    r"""One row per sudden gain or sudden loss, with its magnitude and reversal.

    Parameters
    ----------
    data, score, patient, session, direction, cutoff, pct, crit3, alpha, adjust
        As in :func:`sudden_gain_intervals`.
    critical_value, first_session, last_session
        As in :func:`sudden_gain_intervals`.
    events : sequence of {'gain', 'loss'}
        Which events to look for.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`EVENT_COLUMNS`, sorted by patient, event and pregain session:
        ``magnitude`` (the step in the event's direction, positive), ``total_change``
        (change from the first to the last observed score, positive in the event's
        direction), ``change_proportion`` (magnitude / total change; NaN when the total is
        0), ``reversal_value`` and ``reversed`` (bool). The sudden-gains table of the
        pipeline (``sudden_gains.csv``).

    Notes
    -----
    Reversal, as ``suddengains::create_bysg``: with magnitude :math:`m` and postgain
    score :math:`x_{n+1}`, the reversal value is the score halfway back,

    .. math::

        r = x_{n+1} - d\,\frac{m}{2},

    and the event reversed when any observed score from session :math:`n+2` on lies
    strictly beyond :math:`r` (for a gain: worse than :math:`r`, i.e. more than half the
    gain was lost again; for a loss, mirrored: better than :math:`r`). Missing later
    sessions are skipped; a score equal to :math:`r` is not a reversal.

    Examples
    --------
    >>> import pandas as pd
    >>> df = pd.DataFrame({"patient": "a", "session": range(1, 8),
    ...                    "phq9_total": [20, 21, 20, 10, 9, 10, 16]})
    >>> g = sudden_gains(df, score="phq9_total", cutoff=6, events=["gain"])
    >>> g[["pregain_session", "magnitude", "reversal_value", "reversed"]].to_numpy().tolist()
    [[3, 10.0, 15.0, True]]
    """
    if isinstance(events, str):
        events = [events]
    events = list(events)
    if not events:
        raise ValueError("`events` must name 'gain', 'loss' or both; got an empty list.")
    for e in events:
        check_choice(e, _EVENTS, "events")
    check_choice(direction, DIRECTIONS, "direction")
    frames = []
    # One wide table, one set of windows and one set of means and SDs for both events;
    # only the intervals that are events become rows (the rows and values are those of
    # sudden_gain_intervals(...)[is_event], which tests/test_suddengains.py checks).
    patients, sessions, values = _wide(data, score, patient, session, first_session, last_session)
    cutoff, pct, alpha, critical_value = _check_criteria(
        cutoff, pct, crit3, alpha, adjust, critical_value
    )
    positions, pre, post = _windows(sessions, values)
    if len(patients) == 0 or len(positions) == 0:
        return pd.DataFrame({c: pd.Series(dtype=_dtype(c)) for c in EVENT_COLUMNS})
    moments = _moments(pre, post, alpha=alpha, adjust=adjust, fixed_critical=critical_value)
    n_int = len(positions)
    observed = ~np.isnan(values)
    for ev in events:
        sign = _sign(ev, direction)
        res = _evaluate(
            pre,
            post,
            sign=sign,
            cutoff=cutoff,
            pct=pct,
            crit3=crit3,
            alpha=alpha,
            adjust=adjust,
            fixed_critical=critical_value,
            moments=moments,
        )
        hit = np.flatnonzero(res["is_event"].ravel())
        rows, cols = np.divmod(hit, n_int)
        found = pd.DataFrame(
            {
                "patient": patients.to_numpy()[rows],
                "event": ev,
                "pregain_session": sessions[positions][cols].astype("int64"),
                "postgain_session": sessions[positions + 1][cols].astype("int64"),
                "pregain_score": pre[..., 2].ravel()[hit],
                "postgain_score": post[..., 0].ravel()[hit],
            }
        )
        for key in ("n_pre", "n_post", "mean_pre", "mean_post", "critical_value"):
            arr = res[key].ravel()[hit]
            found[key] = arr.astype("int64") if key in ("n_pre", "n_post") else arr
        found["magnitude"] = res["change"].ravel()[hit]
        found["reversal_value"] = found["postgain_score"] - sign * found["magnitude"] / 2.0
        # Reversed: an observed score from session n + 2 on strictly beyond the reversal
        # value; total change: last observed score minus the first, in the event's direction.
        series = values[rows]
        later = observed[rows] & (
            sessions[None, :] >= found["pregain_session"].to_numpy()[:, None] + 2
        )
        with np.errstate(invalid="ignore"):
            beyond = sign * (series - found["reversal_value"].to_numpy()[:, None]) < 0
        found["reversed"] = (later & beyond).any(axis=1)
        seen = observed[rows]
        first = seen.argmax(axis=1)
        last = seen.shape[1] - 1 - seen[:, ::-1].argmax(axis=1)
        index = np.arange(len(rows))
        found["total_change"] = sign * (series[index, last] - series[index, first])
        with np.errstate(divide="ignore", invalid="ignore"):
            found["change_proportion"] = np.where(
                found["total_change"] != 0, found["magnitude"] / found["total_change"], np.nan
            )
        frames.append(found)
    if not frames or all(len(f) == 0 for f in frames):
        return pd.DataFrame({c: pd.Series(dtype=_dtype(c)) for c in EVENT_COLUMNS})
    out = pd.concat([f for f in frames if len(f)], ignore_index=True)
    out = out.sort_values(["patient", "event", "pregain_session"], kind="mergesort").reset_index(
        drop=True
    )
    return out[EVENT_COLUMNS]


def sudden_gains_by_patient(
    gains: pd.DataFrame, patients: Sequence | None = None, *, patient: str = "patient"
) -> pd.DataFrame:
    """Count sudden gains and losses per patient (for the patients table).

    Parameters
    ----------
    gains : pandas.DataFrame
        The output of :func:`sudden_gains`.
    patients : sequence, optional
        Every patient id, so patients without any event get zero counts.
    patient : str
        Name of the patient column in the output.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`SUMMARY_COLUMNS` (``patient`` renamed to *patient*): counts of
        gains and losses, how many reversed, and the pregain session of the first of each
        (missing when none).
    """
    check_frame(gains, "gains")
    check_columns(gains, "patient", "event", "pregain_session", "reversed", name="gains")
    ids = (
        pd.unique(pd.Series(list(patients)))
        if patients is not None
        else pd.unique(gains["patient"])
    )
    out = pd.DataFrame({"patient": ids})
    for ev, label in (("gain", "gains"), ("loss", "losses")):
        singular = ev
        sub = gains[gains["event"] == ev]
        grouped = sub.groupby("patient", sort=False)
        n = grouped.size()
        n_rev = grouped["reversed"].sum()
        first = grouped["pregain_session"].min()
        out[f"n_sudden_{label}"] = out["patient"].map(n).fillna(0).astype("int64")
        out[f"n_sudden_{label}_reversed"] = out["patient"].map(n_rev).fillna(0).astype("int64")
        out[f"first_sudden_{singular}_session"] = out["patient"].map(first).astype("Int64")
    out = out[SUMMARY_COLUMNS]
    return out.rename(columns={"patient": patient})
