"""Expected treatment response and on-track / not-on-track status.

In the style of routine outcome monitoring (Lambert's clinical support tools).

:func:`fit_expected_response` fits the expected course of the outcome conditional on the
intake score, on the study's own data or on a reference sample, either as one log-linear
course per intake (:class:`ExpectedResponse`, which can also be built from published
coefficients) or as Finch, Lambert & Schaalje's (2001) multilevel model with each
patient's own intercept and slope (:class:`MultilevelExpectedResponse`).
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

from ._derive_checks import (
    DIRECTIONS,
    check_choice,
    check_columns,
    check_frame,
    check_number,
    check_sessions,
    sorted_by_patient,
)

__all__ = [
    "ExpectedResponse",
    "MultilevelExpectedResponse",
    "ETR_MODELS",
    "fit_expected_response",
    "on_track",
    "first_off_track",
    "TRACK_STATUS",
    "ON_TRACK_COLUMNS",
]

Direction = Literal["higher_is_better", "lower_is_better"]
EtrModel = Literal["fixed", "multilevel"]

#: Kinds of expected-response model :func:`fit_expected_response` fits.
ETR_MODELS = ("fixed", "multilevel")

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
        """Check that the coefficients are numbers and sigma positive."""
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
        """Return the coefficients as a plain dict (for JSON)."""
        return asdict(self)

    def expected(self, intake: np.ndarray | float, t: np.ndarray | float) -> np.ndarray:
        """Return the expected score at session count *t* (1 = intake) for intake *intake*."""
        intake = np.asarray(intake, dtype=float)
        t = np.asarray(t, dtype=float)
        with np.errstate(invalid="ignore", divide="ignore"):
            log_t = np.where(t >= 1, np.log(np.where(t >= 1, t, 1.0)), np.nan)
        return intake + (self.gamma0 + self.gamma1 * (intake - self.centre)) * log_t

    def band_sd(self, t: np.ndarray | float) -> np.ndarray:
        r"""SD of the scores around :meth:`expected`: :math:`\sigma` at every *t*."""
        return np.full(np.shape(t), self.sigma, dtype=float)


@dataclass(frozen=True)
class MultilevelExpectedResponse:
    r"""Coefficients of the multilevel expected treatment response (Finch et al. 2001).

    For a patient with intake score :math:`x_0`, at the *t*-th session counted from intake
    (:math:`t \ge 2`; :math:`t = 1` is the intake itself, expected to be :math:`x_0`),

    .. math::

        \hat x_t = x_0 + \beta_0 + \beta_1 (x_0 - c)
                   + \bigl(\gamma_0 + \gamma_1 (x_0 - c)\bigr) \ln t ,

    and a new patient's score varies around it with the SD

    .. math::

        s_t = \sqrt{\tau_{00} + 2\tau_{01}\ln t + \tau_{11}\ln^2 t + \sigma^2},

    the patient's own intercept and slope (random effects) plus the session's residual.

    Attributes
    ----------
    beta0, beta1 : float
        Change from intake at :math:`\ln t = 0` for a patient at the centre intake, and
        its change per intake point above the centre.
    gamma0, gamma1 : float
        Change per unit of :math:`\ln t` at the centre intake, and its change per intake
        point.
    centre : float
        The centring intake score *c*.
    tau00, tau01, tau11 : float
        Variance of the patients' intercepts, their covariance with the slopes, variance
        of the slopes.
    sigma : float
        Residual SD within patients.
    n_patients, n_observations : int
        Size of the sample the coefficients came from.
    """

    beta0: float
    beta1: float
    gamma0: float
    gamma1: float
    centre: float
    tau00: float
    tau01: float
    tau11: float
    sigma: float
    n_patients: int = 0
    n_observations: int = 0

    def __post_init__(self) -> None:
        """Check that the coefficients are numbers and the variances non-negative."""
        for name in ("beta0", "beta1", "gamma0", "gamma1", "centre", "tau01"):
            check_number(getattr(self, name), name)
        for name in ("tau00", "tau11"):
            check_number(getattr(self, name), name, minimum=0.0)
        check_number(self.sigma, "sigma", minimum=0.0, strict_minimum=True)

    def to_dict(self) -> dict:
        """Return the coefficients as a plain dict (for JSON)."""
        return {"kind": "multilevel", **asdict(self)}

    def expected(self, intake: np.ndarray | float, t: np.ndarray | float) -> np.ndarray:
        """Return the expected score at session count *t* (1 = intake) for intake *intake*."""
        intake = np.asarray(intake, dtype=float)
        t = np.asarray(t, dtype=float)
        with np.errstate(invalid="ignore", divide="ignore"):
            log_t = np.where(t >= 1, np.log(np.where(t >= 1, t, 1.0)), np.nan)
        centred = intake - self.centre
        course = (
            intake
            + self.beta0
            + self.beta1 * centred
            + (self.gamma0 + self.gamma1 * centred) * log_t
        )
        return np.where(t == 1, intake, course)

    def band_sd(self, t: np.ndarray | float) -> np.ndarray:
        """SD of a new patient's score around :meth:`expected` at session count *t*."""
        t = np.asarray(t, dtype=float)
        with np.errstate(invalid="ignore", divide="ignore"):
            log_t = np.where(t >= 1, np.log(np.where(t >= 1, t, 1.0)), np.nan)
        var = self.tau00 + 2 * self.tau01 * log_t + self.tau11 * log_t**2 + self.sigma**2
        return np.sqrt(np.maximum(var, 0.0))


def _intake(data: pd.DataFrame, score: str, patient: str, session: str) -> pd.DataFrame:
    obs = data.loc[data[score].notna(), [patient, session, score]]
    if sorted_by_patient(data, patient=patient, session=session) is None:
        # (rows already sorted by patient and session are in the order this sort gives)
        obs = obs.sort_values([patient, session], kind="mergesort")
    first = obs.groupby(patient, sort=False).first()
    return first.rename(columns={session: "intake_session", score: "intake_score"})


def fit_expected_response(
    data: pd.DataFrame,
    *,
    score: str = "outcome",
    patient: str = "patient",
    session: str = "session",
    model: EtrModel = "fixed",
) -> ExpectedResponse | MultilevelExpectedResponse:
    r"""Fit the expected treatment response conditional on the intake score.

    Parameters
    ----------
    data : pandas.DataFrame
        Long format (one informant): the study itself, or a reference sample named in the
        config (read by the pipeline and passed here).
    score, patient, session : str
        Column names.
    model : {'fixed', 'multilevel'}, default 'fixed'
        ``'fixed'``: one log-linear course per intake score, fitted by least squares, with
        one residual SD (:class:`ExpectedResponse`). ``'multilevel'``: the multilevel
        model of Finch, Lambert & Schaalje (2001), with each patient's own intercept and
        slope around that course (:class:`MultilevelExpectedResponse`), whose band widens
        with :math:`\ln t` as the patients' slopes spread.

    Returns
    -------
    ExpectedResponse or MultilevelExpectedResponse

    Raises
    ------
    ValueError
        Fewer than three follow-up scores, or all intakes equal (the intake slope is not
        identified); a bad ``model``.

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

    With ``model = "multilevel"`` the change from intake of the follow-up scores is fitted
    by REML (:func:`allianceflow.models.fit_model`) as

    .. math::

        x_{it} - x_{i0} = \beta_0 + \beta_1 (x_{i0} - c) + \bigl(\gamma_0 + \gamma_1
        (x_{i0} - c)\bigr) \ln t + u_{0i} + u_{1i} \ln t + e_{it},

    :math:`(u_{0i}, u_{1i}) \sim N(0, T)`, :math:`e_{it} \sim N(0, \sigma^2)` — the
    random-intercept-and-slope growth model of Finch et al. with intake as the level-2
    predictor of both. The differences from the fixed model: (1) the course is not forced
    through the intake (:math:`\beta_0, \beta_1` absorb a first-session drop and
    regression to the mean); (2) the band is that of a *new* patient with this intake,
    :math:`\hat x_t \pm z\, s_t` with :math:`s_t^2 = \tau_{00} + 2\tau_{01}\ln t +
    \tau_{11}\ln^2 t + \sigma^2`, so it separates between- from within-patient
    variation and widens (or narrows) with time as the patients' courses fan out, where
    the fixed model's band has one width pooled over all sessions; (3) the coefficients
    are estimated with each patient's repeated scores weighted as correlated, not as
    independent rows.

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
    check_choice(model, ETR_MODELS, "model")
    intake = _intake(data, score, patient, session)
    obs = data.loc[data[score].notna(), [patient, session, score]]
    obs = obs.join(intake, on=patient)
    obs = obs[obs[session] > obs["intake_session"]]
    n = len(obs)
    if n < 3:
        raise ValueError(
            f"`data` has {n} follow-up score(s) after intake; the expected response needs at "
            "least 3."
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
    if model == "multilevel":
        return _fit_multilevel(obs, log_t, x0, y, centre, patient)
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


def _fit_multilevel(obs, log_t, x0, y, centre, patient) -> MultilevelExpectedResponse:
    """Fit the multilevel expected response (see :func:`fit_expected_response`)."""
    from .models import fit_model

    frame = pd.DataFrame(
        {
            "etr_change": y,
            "intake_c": x0 - centre,
            "log_t": log_t,
            "patient": obs[patient].astype(str).to_numpy(),
        }
    )
    res = fit_model(
        frame, "etr_change ~ intake_c * log_t + (1 + log_t | patient)", reml=True, name="etr"
    ).to_dict()
    fixed = {row["term"]: float(row["estimate"]) for row in res["fixed"]}
    var = {row["term"]: float(row["variance"]) for row in res["random"]}
    cov = [float(row["covariance"]) for row in res.get("covariances") or []]
    return MultilevelExpectedResponse(
        beta0=fixed["Intercept"],
        beta1=fixed["intake_c"],
        gamma0=fixed["log_t"],
        gamma1=fixed["intake_c:log_t"],
        centre=centre,
        tau00=var["(Intercept)"],
        tau01=cov[0] if cov else 0.0,
        tau11=var["log_t"],
        sigma=math.sqrt(float(res["residual_variance"])),
        n_patients=int(frame["patient"].nunique()),
        n_observations=len(frame),
    )


def on_track(
    data: pd.DataFrame,
    model: ExpectedResponse | MultilevelExpectedResponse,
    *,
    score: str = "outcome",
    patient: str = "patient",
    session: str = "session",
    direction: Direction,
    tolerance: float = 0.10,
    copy: bool = True,
) -> pd.DataFrame:
    r"""On-track / not-on-track status of every session against the expected response.

    Parameters
    ----------
    data : pandas.DataFrame
        Long format (one informant).
    model : ExpectedResponse or MultilevelExpectedResponse
        From :func:`fit_expected_response` or :meth:`ExpectedResponse.from_mapping`.
    score, patient, session : str
        Column names.
    direction : {'higher_is_better', 'lower_is_better'}
        Direction of improvement; decides which edge of the band is the alarm.
    tolerance : float
        One-sided probability, for a patient following the expected course, of a score
        beyond the alarm edge (0.10 = the band's alarm edge is the 10th percentile of the
        expected course in the worsening direction).
    copy : bool
        False adds the columns to *data* itself instead of to a copy (the pipeline's
        own table, which at 10^6 sessions saves a copy of about a gigabyte).

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

        L_t = \hat x_t - z\hat s_t, \qquad U_t = \hat x_t + z\hat s_t,

    with :math:`\hat s_t = \hat\sigma` for the fixed model and the SD of a new
    patient's score at *t* for the multilevel one (:meth:`MultilevelExpectedResponse.band_sd`),

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
    if not isinstance(model, (ExpectedResponse, MultilevelExpectedResponse)):
        raise TypeError(
            "`model` must be an ExpectedResponse or a MultilevelExpectedResponse; "
            f"got {type(model).__name__}."
        )
    check_choice(direction, DIRECTIONS, "direction")
    tolerance = check_number(tolerance, "tolerance", minimum=0.0, maximum=0.5, strict_minimum=True)
    from .models.distributions import norm_ppf  # scipy.special's ndtri, not scipy.stats

    z = norm_ppf(1.0 - tolerance)
    out = data.copy() if copy else data
    intake = _intake(data, score, patient, session)
    out["intake_session"] = out[patient].map(intake["intake_session"]).astype("Int64")
    out["intake_score"] = out[patient].map(intake["intake_score"]).astype(float)
    t = (out[session] - out["intake_session"].astype(float) + 1).to_numpy(dtype=float)
    expected = model.expected(out["intake_score"].to_numpy(dtype=float), t)
    out["etr_expected"] = expected
    sd = model.band_sd(t)
    out["etr_lower"] = expected - z * sd
    out["etr_upper"] = expected + z * sd
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
    # Codes of TRACK_STATUS (intake, on_track, not_on_track, missing), not 10^6 strings.
    status = np.select(
        [at_intake, assessable & off, assessable & ~off],
        [TRACK_STATUS.index(s) for s in ("intake", "not_on_track", "on_track")],
        default=TRACK_STATUS.index("missing"),
    )
    out["track_status"] = pd.Categorical.from_codes(status, categories=list(TRACK_STATUS))
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
