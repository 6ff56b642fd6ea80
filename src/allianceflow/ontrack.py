"""Expected treatment response and on-track / not-on-track status.

The approach follows routine outcome monitoring (Lambert's clinical support tools).

:func:`fit_expected_response` fits the expected course of the outcome conditional on the
intake score, on the study's own data or on a reference sample; an
:class:`ExpectedResponse` can also be built from published coefficients.
:func:`on_track` compares every session with the expected course and its tolerance band;
:func:`first_off_track` gives each patient's first session off track.

References
----------
Finch, A. E., Lambert, M. J., & Schaalje, B. G. (2001). Psychotherapy quality control:
The statistical generation of recovery curves for integration into an early warning
system. *Clinical Psychology & Psychotherapy*, 8(4), 231–242.
https://doi.org/10.1002/cpp.286

Lambert, M. J., Whipple, J. L., Bishop, M. J., Vermeersch, D. A., Gray, G. V., & Finch,
A. E. (2002). Comparison of empirically-derived and rationally-derived methods for
identifying patients at risk for treatment failure. *Clinical Psychology &
Psychotherapy*, 9(3), 149–164. https://doi.org/10.1002/cpp.333

Lambert, M. J., Whipple, J. L., & Kleinstäuber, M. (2018). Collecting and delivering
progress feedback: A meta-analysis of routine outcome monitoring. *Psychotherapy*, 55(4),
520–537. https://doi.org/10.1037/pst0000167
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import pandas as pd
from scipy import stats

from ._derive_checks import (
    DIRECTIONS,
    check_choice,
    check_columns,
    check_frame,
    check_number,
    check_sessions,
)

__all__ = [
    "ExpectedResponse",
    "fit_expected_response",
    "on_track",
    "first_off_track",
    "TRACK_STATUS",
    "ON_TRACK_COLUMNS",
]

Direction = Literal["higher_is_better", "lower_is_better"]

#: Values of the ``track_status`` column.
TRACK_STATUS = ("intake", "on_track", "not_on_track", "missing")
#: Columns added by :func:`on_track`.
ON_TRACK_COLUMNS = [
    "intake_session",
    "intake_score",
    "etr_expected",
    "etr_lower",
    "etr_upper",
    "on_track",
    "track_status",
]


@dataclass(frozen=True)
class ExpectedResponse:
    r"""Coefficients of the expected treatment response.

    The expected score at the *t*-th session counted from intake (:math:`t = 1` at
    intake) of a patient with intake score :math:`x_0` is

    .. math::

        \hat x_t = x_0 + \bigl(\gamma_0 + \gamma_1 (x_0 - c)\bigr) \ln t .

    Attributes
    ----------
    gamma0 : float
        Change per unit of :math:`\ln t` for a patient at the centre intake score.
    gamma1 : float
        How that rate changes per point of intake score above the centre (usually of the
        opposite sign: patients who start worse improve faster).
    centre : float
        The centring intake score :math:`c` (the reference sample's mean intake).
    sigma : float
        Residual SD around the expected course; the width of the tolerance band.
    n_patients, n_observations : int
        Size of the sample the coefficients came from (0 when supplied by hand).
    """

    gamma0: float
    gamma1: float
    centre: float
    sigma: float
    n_patients: int = 0
    n_observations: int = 0

    def __post_init__(self) -> None:
        """Check that the coefficients are finite numbers and *sigma* is positive."""
        for name in ("gamma0", "gamma1", "centre"):
            check_number(getattr(self, name), name)
        check_number(self.sigma, "sigma", minimum=0.0, strict_minimum=True)

    @classmethod
    def from_mapping(cls, values: Mapping) -> ExpectedResponse:
        """Build from a config mapping ``{gamma0, gamma1, centre, sigma}``."""
        if not isinstance(values, Mapping):
            raise TypeError(f"`values` must be a mapping; got {type(values).__name__}.")
        needed = ("gamma0", "gamma1", "centre", "sigma")
        missing = [k for k in needed if k not in values]
        if missing:
            raise KeyError(
                f"Expected-response coefficients need {list(needed)}; missing {missing}."
            )
        extra = sorted(set(values) - set(needed) - {"n_patients", "n_observations"})
        if extra:
            raise KeyError(f"Unknown expected-response keys {extra}; allowed: {list(needed)}.")
        return cls(**{k: values[k] for k in values})

    def to_dict(self) -> dict:
        """Return the coefficients and counts as a plain dict (the inverse of from_mapping)."""
        return asdict(self)

    def expected(self, intake: np.ndarray | float, t: np.ndarray | float) -> np.ndarray:
        """Expected score at session count *t* (1 = intake) for intake score *intake*."""
        intake = np.asarray(intake, dtype=float)
        t = np.asarray(t, dtype=float)
        with np.errstate(invalid="ignore", divide="ignore"):
            log_t = np.where(t >= 1, np.log(np.where(t >= 1, t, 1.0)), np.nan)
        return intake + (self.gamma0 + self.gamma1 * (intake - self.centre)) * log_t


def _intake(data: pd.DataFrame, score: str, patient: str, session: str) -> pd.DataFrame:
    obs = data.loc[data[score].notna(), [patient, session, score]].sort_values(
        [patient, session], kind="mergesort"
    )
    first = obs.groupby(patient, sort=False).first()
    return first.rename(columns={session: "intake_session", score: "intake_score"})


def fit_expected_response(
    data: pd.DataFrame,
    *,
    score: str = "outcome",
    patient: str = "patient",
    session: str = "session",
) -> ExpectedResponse:
    r"""Fit the expected treatment response conditional on the intake score.

    Parameters
    ----------
    data : pandas.DataFrame
        Long format (one informant): the study itself, or a reference sample named in the
        config (read by the pipeline and passed here).
    score, patient, session : str
        Column names.

    Returns
    -------
    ExpectedResponse

    Raises
    ------
    ValueError
        Fewer than three follow-up scores, or all intakes equal (the intake slope is not
        identified).

    Notes
    -----
    The intake is each patient's first observed score :math:`x_{i0}` at session
    :math:`s_{i0}`; a later observed score at session :math:`s` has
    :math:`t = s - s_{i0} + 1`. The change from intake is regressed, without intercept
    (no change is expected at intake, :math:`\ln 1 = 0`), on :math:`\ln t` and
    :math:`(x_{i0} - c)\ln t` by ordinary least squares, with :math:`c` the mean intake
    of the patients contributing a follow-up score:

    .. math::

        x_{it} - x_{i0} = \gamma_0 \ln t + \gamma_1 (x_{i0} - c) \ln t + e_{it}, \qquad
        \hat\sigma^2 = \frac{\sum e_{it}^2}{n - 2}.

    This is a fixed-effects version of the log-linear recovery curves of Finch, Lambert &
    Schaalje (2001), who fitted them as multilevel models by intake severity. Fitting on
    the study's own data lets a patient's own scores shape the curve they are judged
    against; name a reference sample for an out-of-sample curve.

    Examples
    --------
    >>> import pandas as pd
    >>> df = pd.DataFrame({"patient": list("aabbcc"), "session": [1, 2] * 3,
    ...                    "ors_total": [10, 12, 20, 21, 15, 17]})
    >>> m = fit_expected_response(df, score="ors_total")
    >>> round(m.gamma0 * math.log(2), 6), round(m.centre, 6)
    (1.666667, 15.0)
    """
    check_frame(data)
    check_columns(data, patient, session, score)
    check_sessions(data, patient, session)
    intake = _intake(data, score, patient, session)
    obs = data.loc[data[score].notna(), [patient, session, score]]
    obs = obs.join(intake, on=patient)
    obs = obs[obs[session] > obs["intake_session"]]
    n = len(obs)
    if n < 3:
        raise ValueError(
            f"`data` has {n} follow-up score(s) after intake; "
            "the expected response needs at least 3."
        )
    centre = float(obs.groupby(patient, sort=False)["intake_score"].first().mean())
    log_t = np.log((obs[session] - obs["intake_session"] + 1).to_numpy(dtype=float))
    x0 = obs["intake_score"].to_numpy(dtype=float)
    y = obs[score].to_numpy(dtype=float) - x0
    X = np.column_stack([log_t, (x0 - centre) * log_t])
    if np.linalg.matrix_rank(X) < 2:
        raise ValueError(
            "The intake slope of the expected response is not identified: every patient with a "
            "follow-up score has the same intake score. Supply coefficients or a reference sample."
        )
    beta, *_ = np.linalg.lstsq(X, y, rcond=None)
    resid = y - X @ beta
    sigma = math.sqrt(float(resid @ resid) / (n - 2)) if n > 2 else float("nan")
    if not sigma > 0:
        sigma = float(np.finfo(float).eps)
    return ExpectedResponse(
        gamma0=float(beta[0]),
        gamma1=float(beta[1]),
        centre=centre,
        sigma=sigma,
        n_patients=int(obs[patient].nunique()),
        n_observations=int(n),
    )


def on_track(
    data: pd.DataFrame,
    model: ExpectedResponse,
    *,
    score: str = "outcome",
    patient: str = "patient",
    session: str = "session",
    direction: Direction,
    tolerance: float = 0.10,
) -> pd.DataFrame:
    r"""On-track / not-on-track status of every session against the expected response.

    Parameters
    ----------
    data : pandas.DataFrame
        Long format (one informant).
    model : ExpectedResponse
        From :func:`fit_expected_response` or :meth:`ExpectedResponse.from_mapping`.
    score, patient, session : str
        Column names.
    direction : {'higher_is_better', 'lower_is_better'}
        Direction of improvement; decides which edge of the band is the alarm.
    tolerance : float
        One-sided probability, for a patient following the expected course, of a score
        beyond the alarm edge (0.10 = the band's alarm edge is the 10th percentile of the
        expected course in the worsening direction).

    Returns
    -------
    pandas.DataFrame
        A copy of *data* (same rows and order) with :data:`ON_TRACK_COLUMNS`:
        ``intake_session``/``intake_score`` (the first observed score), ``etr_expected``,
        ``etr_lower``/``etr_upper`` (the band), ``on_track`` (nullable boolean; missing at
        intake and where the score is missing) and ``track_status`` (one of
        :data:`TRACK_STATUS`).

    Notes
    -----
    With :math:`z = \Phi^{-1}(1 - \text{tolerance})`,

    .. math::

        L_t = \hat x_t - z\hat\sigma, \qquad U_t = \hat x_t + z\hat\sigma,

    and a session is *not on track* when its score is worse than the alarm edge: below
    :math:`L_t` when higher is better, above :math:`U_t` when lower is better. A score on
    the edge is on track. Sessions before the intake (no score yet) are missing.

    Examples
    --------
    >>> import pandas as pd
    >>> m = ExpectedResponse(gamma0=3.0, gamma1=0.0, centre=20.0, sigma=2.0)
    >>> df = pd.DataFrame({"patient": "a", "session": [1, 2, 3], "ors_total": [20.0, 19.0, 25.0]})
    >>> on_track(df, m, score="ors_total", direction="higher_is_better").track_status.tolist()
    ['intake', 'not_on_track', 'on_track']
    """
    check_frame(data)
    check_columns(data, patient, session, score)
    check_sessions(data, patient, session)
    if not isinstance(model, ExpectedResponse):
        raise TypeError(f"`model` must be an ExpectedResponse; got {type(model).__name__}.")
    check_choice(direction, DIRECTIONS, "direction")
    tolerance = check_number(tolerance, "tolerance", minimum=0.0, maximum=0.5, strict_minimum=True)
    z = float(stats.norm.ppf(1.0 - tolerance))
    out = data.copy()
    intake = _intake(data, score, patient, session)
    out["intake_session"] = out[patient].map(intake["intake_session"]).astype("Int64")
    out["intake_score"] = out[patient].map(intake["intake_score"]).astype(float)
    t = (out[session] - out["intake_session"].astype(float) + 1).to_numpy(dtype=float)
    expected = model.expected(out["intake_score"].to_numpy(dtype=float), t)
    out["etr_expected"] = expected
    out["etr_lower"] = expected - z * model.sigma
    out["etr_upper"] = expected + z * model.sigma
    x = out[score].astype(float)
    if direction == "higher_is_better":
        off = x < out["etr_lower"]
    else:
        off = x > out["etr_upper"]
    at_intake = (out[session] == out["intake_session"]).fillna(False).astype(bool)
    assessable = x.notna() & ~at_intake & pd.Series(np.isfinite(expected), index=out.index)
    flag = pd.Series(pd.NA, index=out.index, dtype="boolean")
    flag[assessable] = ~off[assessable]
    out["on_track"] = flag
    status = np.select(
        [at_intake, assessable & off, assessable & ~off],
        ["intake", "not_on_track", "on_track"],
        default="missing",
    )
    out["track_status"] = pd.Categorical(status, categories=list(TRACK_STATUS))
    return out


def first_off_track(
    data: pd.DataFrame, *, patient: str = "patient", session: str = "session"
) -> pd.DataFrame:
    """Each patient's first session off track and number of sessions off track.

    Parameters
    ----------
    data : pandas.DataFrame
        The output of :func:`on_track`.
    patient, session : str
        Column names.

    Returns
    -------
    pandas.DataFrame
        One row per patient: *patient*, ``n_not_on_track`` (int) and
        ``first_off_track_session`` (nullable int; missing when never off track).

    Examples
    --------
    >>> import pandas as pd
    >>> df = pd.DataFrame({"patient": ["a", "a", "a", "b"], "session": [1, 2, 3, 1],
    ...                    "on_track": pd.array([pd.NA, True, False, pd.NA], dtype="boolean")})
    >>> first_off_track(df).first_off_track_session.tolist()
    [3, <NA>]
    """
    check_frame(data)
    check_columns(data, patient, session, "on_track")
    off = data["on_track"].astype("boolean").eq(False).fillna(False).astype(bool)
    ids = pd.Index(pd.unique(data[patient]), name=patient)
    sub = data.loc[off]
    out = pd.DataFrame(index=ids)
    out["n_not_on_track"] = (
        sub.groupby(patient, sort=False).size().reindex(ids).fillna(0).astype("int64")
    )
    out["first_off_track_session"] = (
        sub.groupby(patient, sort=False)[session].min().reindex(ids).astype("Int64")
    )
    return out.reset_index()
