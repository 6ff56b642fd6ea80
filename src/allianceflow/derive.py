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

from typing import Sequence

import numpy as np
import pandas as pd

__all__ = ["within_between", "lag_within_patient", "derive_analysis"]


def _check_columns(data: pd.DataFrame, *columns: str) -> None:
    import difflib

    for column in columns:
        if column not in data.columns:
            close = difflib.get_close_matches(column, [str(c) for c in data.columns], n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise KeyError(
                f"Column {column!r} is not in the data; columns are {', '.join(map(str, data.columns))}.{hint}"
            )


def within_between(data: pd.DataFrame, column: str, *, patient: str = "patient", prefix: str | None = None) -> pd.DataFrame:
    """Split a time-varying predictor into within- and between-patient parts.

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

    Returns
    -------
    pandas.DataFrame
        A copy of *data* with ``<prefix>_pmean`` (the patient's mean over their non-missing
        sessions), ``<prefix>_between`` (that mean minus the grand mean of patient means)
        and ``<prefix>_within`` (the session value minus the patient's mean).

    Notes
    -----
    .. math::

        x^{B}_i = \\bar x_i - \\frac{1}{N}\\sum_{i'} \\bar x_{i'}, \\qquad
        x^{W}_{it} = x_{it} - \\bar x_i

    (person-mean centring, Enders & Tofighi 2007; Curran & Bauer 2011). The grand mean
    weighs every patient equally, whatever their number of sessions. Patients with no
    observed value get missing parts.

    Examples
    --------
    >>> import pandas as pd
    >>> df = pd.DataFrame({"patient": ["a", "a", "b", "b"], "x": [1.0, 3.0, 5.0, 7.0]})
    >>> within_between(df, "x")[["x_within", "x_between"]].to_numpy().tolist()
    [[-1.0, -2.0], [1.0, -2.0], [-1.0, 2.0], [1.0, 2.0]]
    """
    _check_columns(data, column, patient)
    prefix = prefix or column
    out = data.copy()
    pmean = out.groupby(patient, sort=False, observed=True)[column].transform("mean")
    grand = out.groupby(patient, sort=False, observed=True)[column].mean().mean()
    out[f"{prefix}_pmean"] = pmean
    out[f"{prefix}_between"] = pmean - grand
    out[f"{prefix}_within"] = out[column] - pmean
    return out


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
    _check_columns(data, patient, session, *columns)
    if not isinstance(lag, (int, np.integer)) or lag == 0:
        raise ValueError(f"`lag` must be a non-zero integer; got {lag!r}.")
    if suffix is None:
        suffix = ("_lag" if lag > 0 else "_lead") + (str(abs(lag)) if abs(lag) > 1 else "")
    out = data.copy()
    order = out.sort_values([patient, session], kind="mergesort").index
    ordered = out.loc[order]
    if across_gaps:
        shifted = ordered.groupby(patient, sort=False, observed=True)[list(columns)].shift(lag)
    else:
        source = ordered[[patient, session, *columns]].copy()
        source[session] = source[session] + lag
        shifted = ordered[[patient, session]].merge(source, on=[patient, session], how="left")[list(columns)]
        shifted.index = ordered.index
    for column in columns:
        out[f"{column}{suffix}"] = shifted[column].reindex(out.index)
    return out


def derive_analysis(scored: pd.DataFrame, *, alliance: str, outcome: str, lag_across_gaps: bool = False) -> pd.DataFrame:
    """Build the session-level analysis table from the scored sessions.

    Adds ``alliance`` and ``outcome`` (copies of the configured score columns), their
    within/between parts (:func:`within_between`), ``alliance_within_lag`` and
    ``alliance_lag`` (last session's values) and ``outcome_lag`` (:func:`lag_within_patient`).
    The model presets use these names.
    """
    _check_columns(scored, alliance, outcome)
    out = scored.copy()
    out["alliance"] = out[alliance]
    out["outcome"] = out[outcome]
    out = within_between(out, "alliance")
    out = within_between(out, "outcome")
    out = lag_within_patient(out, ["alliance", "alliance_within", "outcome"], across_gaps=lag_across_gaps)
    return out.sort_values(["patient", "session"], kind="mergesort").reset_index(drop=True)
