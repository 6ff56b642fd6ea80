"""Simulate three-level alliance–outcome studies with known true parameters.

Sessions are nested in patients, patients in therapists. Each session the patient rates
the alliance on the WAI-SR (12 items, 1–5) and their functioning on the ORS (4 items,
0–10, higher is better). The outcome at session *t* depends on the alliance reported at
session *t − 1*, split into a within-patient part (deviation from the patient's own mean)
and a between-patient part (the patient's mean, centred on the grand mean): the
disaggregation of Curran & Bauer (2011) that the pipeline estimates.

The simulator is the project's source of example and test data: no real patient data
enters the repository. The embedded example study in ``data/raw/example/`` is written by
:func:`write_example_study`, and a test regenerates it and compares the bytes.

References
----------
Curran, P. J., & Bauer, D. J. (2011). The disaggregation of within-person and
between-person effects in longitudinal models of change. *Annual Review of Psychology*,
62, 583–619. https://doi.org/10.1146/annurev.psych.093008.100356

Hatcher, R. L., & Gillaspy, J. A. (2006). Development and validation of a revised short
version of the Working Alliance Inventory. *Psychotherapy Research*, 16(1), 12–25.

Miller, S. D., Duncan, B. L., Brown, J., Sparks, J. A., & Claud, D. A. (2003). The
Outcome Rating Scale. *Journal of Brief Therapy*, 2(2), 91–100.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import pandas as pd

__all__ = [
    "StudyDesign",
    "INSTRUMENT_PAIRS",
    "EXAMPLE2_DESIGN",
    "EXAMPLE2_SEED",
    "EXAMPLE2_EXTRACTION_DATE",
    "EXPORT2_COLUMNS",
    "to_export_srs_phq9",
    "write_example2_study",
    "EXAMPLE_DESIGN",
    "EXAMPLE_FILE_DESIGN",
    "FORMER",
    "EXAMPLE_SEED",
    "simulate_study",
    "to_export",
    "write_example_study",
    "EXPORT_COLUMNS",
    "early_ending_intercept",
    "lasting_deterioration_share",
    "measured_deterioration_risks",
    "CoupleDesign",
    "EXAMPLE3_DESIGN",
    "EXAMPLE3_SEED",
    "EXPORT3_COLUMNS",
    "simulate_couples",
    "to_export_couples",
    "write_example3_study",
]

#: WAI-SR item numbers of each subscale (Hatcher & Gillaspy, 2006).
WAI_SR_SUBSCALES = {
    "task": (1, 2, 10, 12),
    "bond": (3, 5, 7, 9),
    "goal": (4, 6, 8, 11),
}


@dataclass(frozen=True)
class StudyDesign:
    """The design and true parameters of a simulated study.

    Alliance parameters are on the WAI-SR item-mean scale (1–5); outcome parameters are
    in ORS total points (0–40). Times are in sessions since the first session
    (``session - 1``).

    Attributes
    ----------
    n_therapists, n_patients, max_sessions
        Sizes. Patients are spread over therapists as evenly as possible.
    dropout_hazard
        Rate and timing of early endings: a patient whose early alliance equals
        ``alliance_mean`` ends early with probability
        :math:`1 - (1 - h)^{S - k}` (*h* this hazard, *S* = ``max_sessions``, *k* =
        ``early_sessions``), as a constant hazard *h* of ending after each session from
        session *k* on would give; an early ender's last session is drawn from that hazard
        (a geometric distribution from session *k*, truncated before ``max_sessions``).
    early_sessions
        Sessions every patient attends before an early ending can happen; the early
        alliance is the mean observed alliance of these sessions (of those recorded). With
        ``early_sessions=1``, ``dropout_alliance_effect=0`` and ``deterioration_share=0``
        the simulator draws exactly the studies of its former version (constant dropout
        hazard from session 2, no episodes).
    dropout_alliance_effect
        True effect of the early alliance on early ending (premature termination): the
        log-odds per alliance item-mean point above ``alliance_mean`` (negative: a better
        early alliance, fewer early endings). See :func:`simulate_study`, Notes.
    deterioration_share
        Probability that a patient has a deterioration episode (either arm).
    deterioration_drop
        Size of an episode: from its onset (session 2–5, uniformly) treatment stops working
        (the patient's change since the onset is undone) and the outcome is this many
        points worse (lower ORS, higher PHQ-9), for the rest of treatment.
    feedback_deterioration_effect
        True effect of feedback on lasting deterioration: the log odds ratio of a lasting
        episode, feedback vs treatment as usual (at most 0). In the feedback arm the
        therapist sees the alarm and repairs a share of the episodes: the outcome returns to
        its course two sessions after the onset, so the effect is concentrated in the
        patients who go off track.
    p_unrecorded
        Probability that an attended session has no questionnaire record (a gap in the
        session numbers of the export).
    p_item_missing
        Probability that a single item is left blank (exercises proration).
    feedback_share
        Share of patients randomised to the feedback arm.
    alliance_mean, alliance_slope
        Fixed intercept and per-session change of the latent alliance.
    alliance_sd_therapist, alliance_sd_patient, alliance_sd_slope, alliance_sd_session
        Standard deviations of therapist intercepts, patient intercepts, patient slopes and
        session-level deviations of the latent alliance.
    wai_item_noise
        SD of item-level noise around the latent alliance before rounding to 1–5.
    outcome_intercept, outcome_slope, feedback_slope
        ORS total at the first session, its per-session change under treatment as usual,
        and the extra per-session change in the feedback arm.
    outcome_sd_therapist, outcome_sd_patient, outcome_sd_slope, slope_intercept_corr
        Therapist and patient random intercepts, patient random slopes and the correlation
        of patient intercepts and slopes.
    outcome_sd_residual
        SD of the session-level residual of the ORS total.
    within_effect
        True within-patient effect: ORS points per WAI-SR item-mean point that last
        session's alliance lies above the patient's own mean.
    between_effect
        True between-patient effect: ORS points per WAI-SR item-mean point of the patient's
        mean alliance above the grand mean.
    ors_item_noise
        SD of item-level noise around a quarter of the ORS total (items are marks on a
        10 cm line, recorded to 0.1).
    unilateral_share
        Share of the patients who end before ``max_sessions`` whose ending is recorded as
        ``unilateral`` (the patient decided to stop); the others are ``dropout`` (no
        further contact). Patients who attend every session end ``planned``. Drawn from a
        separate random stream, so it changes no other value of the study.

    The endings, the episodes and their repair are drawn from random streams of their own,
    so that the other draws (alliance, outcome, items) are those of a study without them.
    """

    n_therapists: int = 30
    n_patients: int = 300
    max_sessions: int = 16
    dropout_hazard: float = 0.06
    p_unrecorded: float = 0.03
    p_item_missing: float = 0.01
    feedback_share: float = 0.5
    alliance_mean: float = 3.6
    alliance_slope: float = 0.03
    alliance_sd_therapist: float = 0.2
    alliance_sd_patient: float = 0.45
    alliance_sd_slope: float = 0.02
    alliance_sd_session: float = 0.3
    wai_item_noise: float = 0.45
    outcome_intercept: float = 19.0
    outcome_slope: float = 0.5
    feedback_slope: float = 0.15
    outcome_sd_therapist: float = 1.5
    outcome_sd_patient: float = 4.5
    outcome_sd_slope: float = 0.25
    slope_intercept_corr: float = -0.2
    outcome_sd_residual: float = 3.5
    within_effect: float = 2.0
    between_effect: float = 4.0
    ors_item_noise: float = 0.8
    unilateral_share: float = 0.4
    early_sessions: int = 3
    dropout_alliance_effect: float = -1.0
    deterioration_share: float = 0.15
    deterioration_drop: float = 12.0
    feedback_deterioration_effect: float = -1.2

    def __post_init__(self) -> None:
        """Check the design: positive counts, probabilities in [0, 1], a valid correlation."""
        for name in ("n_therapists", "n_patients", "max_sessions", "early_sessions"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer; got {value!r}.")
        if self.n_patients < self.n_therapists:
            raise ValueError(
                f"`n_patients` ({self.n_patients}) must be at least `n_therapists` "
                f"({self.n_therapists}) so every therapist has a patient."
            )
        for name in (
            "dropout_hazard",
            "p_unrecorded",
            "p_item_missing",
            "feedback_share",
            "unilateral_share",
            "deterioration_share",
        ):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"`{name}` must lie in [0, 1]; got {value!r}.")
        if self.deterioration_drop < 0:
            raise ValueError(
                f"`deterioration_drop` must be at least 0; got {self.deterioration_drop!r}."
            )
        if self.feedback_deterioration_effect > 0:
            raise ValueError(
                "`feedback_deterioration_effect` must be at most 0 (feedback repairs "
                f"episodes, it never causes them); got {self.feedback_deterioration_effect!r}."
            )
        if not -1.0 < self.slope_intercept_corr < 1.0:
            raise ValueError(
                f"`slope_intercept_corr` must lie in (-1, 1); got {self.slope_intercept_corr!r}."
            )


class _Pair(NamedTuple):
    alliance: str
    outcome: str


#: Alliance + outcome instrument pairs the simulator can write.
INSTRUMENT_PAIRS: dict[str, _Pair] = {
    "wai_sr+ors": _Pair("wai_sr", "ors"),
    "srs+phq9": _Pair("srs", "phq9"),
}
InstrumentPair = Literal["wai_sr+ors", "srs+phq9"]


def _check_pair(instruments: str) -> _Pair:
    if instruments not in INSTRUMENT_PAIRS:
        raise ValueError(f"`instruments` must be 'wai_sr+ors' or 'srs+phq9'; got {instruments!r}.")
    return INSTRUMENT_PAIRS[instruments]


#: The default design of :func:`simulate_study`, with early endings that depend on the
#: early alliance and feedback that repairs deterioration episodes.
EXAMPLE_DESIGN = StudyDesign()
#: Settings that switch the alliance-dependent endings and the episodes off: with them the
#: simulator draws exactly the studies of its former version (constant dropout hazard), as
#: tests written for that version use.
FORMER = {"early_sessions": 1, "dropout_alliance_effect": 0.0, "deterioration_share": 0.0}
#: The design of the embedded example study in ``data/raw/example/``: the default design,
#: every mechanism on (alliance-dependent early endings, deterioration episodes).
EXAMPLE_FILE_DESIGN = EXAMPLE_DESIGN
#: The seed of the embedded example study.
EXAMPLE_SEED = 20261125


def simulate_study(
    design: StudyDesign | None = None,
    *,
    seed: int,
    instruments: InstrumentPair = "wai_sr+ors",
    modality: Mapping[str, Any] | None = None,
    **overrides,
) -> pd.DataFrame:
    r"""Simulate one study in the canonical long format.

    Parameters
    ----------
    design : StudyDesign, optional
        Design and true parameters; :data:`EXAMPLE_DESIGN` when omitted.
    seed : int
        Seed of :func:`numpy.random.default_rng`; the same seed gives the same study.
    instruments : {'wai_sr+ors', 'srs+phq9'}, default 'wai_sr+ors'
        The alliance + outcome pair. ``'srs+phq9'``: the alliance is the SRS (4 items,
        0–10 to one decimal) and the outcome the PHQ-9 (9 items, integers 0–3, lower is
        better). The design's parameters are then read on those scales: alliance
        parameters on the SRS item-mean scale (0–10), ``wai_item_noise`` as the SRS item
        noise, outcome parameters in PHQ-9 total points (0–27; improvement is a negative
        slope and a beneficial alliance a negative effect) and ``ors_item_noise`` as the
        SD of the noise around a ninth of the total before rounding each item to 0–3.
        The default pair draws exactly the same numbers as before the option existed.
    modality : mapping, optional
        A true moderation by session modality: ``{"shares": {level: probability, ...},
        "within_effect": {level: effect, ...}}``. Each recorded session's modality is drawn
        with these probabilities (independently of everything else, from its own random
        stream) and the within-patient alliance effect of that session is the level's
        effect instead of ``within_effect`` (levels left out keep ``within_effect``), e.g.
        a weaker link in video sessions. Adds the columns ``modality`` and
        ``true_within_effect``; without it the study is exactly as before.
    **overrides
        Fields of :class:`StudyDesign` to replace, e.g. ``n_patients=2000``.

    Returns
    -------
    pandas.DataFrame
        One row per recorded session, sorted by patient and session, with columns
        ``therapist``, ``patient``, ``condition`` ("feedback" or "tau"), ``session``
        (1-based; gaps where a session went unrecorded), ``days`` (since the first
        session), ``ending`` (``planned`` when the patient attended every planned session,
        else ``unilateral`` or ``dropout``; see ``StudyDesign.unilateral_share``),
        ``wai_sr_1`` … ``wai_sr_12`` (1–5, NaN when blank), ``ors_1`` … ``ors_4`` (0–10 to
        one decimal, NaN when blank), and the latent truth columns
        ``true_alliance`` (WAI-SR item mean of the full item set),
        ``true_outcome`` (the ORS total before item noise), ``true_early_alliance`` (the
        patient's early alliance that the early ending depended on), ``true_episode`` and
        ``true_lasting_episode`` (a deterioration episode, and one that was not repaired).

    Notes
    -----
    With :math:`A_{it}` the WAI-SR item mean of patient *i* at session *t* (all 12
    items, before blanks), :math:`\bar A_i` its mean over the patient's recorded
    sessions and :math:`\bar A` the grand mean of the :math:`\bar A_i`, the latent
    outcome is

    .. math::

        Y_{it} = \beta_0 + v_{j} + u_{0i} + (\beta_1 + \beta_f F_i + u_{1i})(t - 1)
                 + \gamma_W (A_{i,t-1} - \bar A_i) + \gamma_B (\bar A_i - \bar A)
                 + \varepsilon_{it},

    without the :math:`\gamma_W` term at the first session. The four ORS items are
    :math:`\mathrm{clip}(Y_{it}/4 + e, 0, 10)` rounded to 0.1, so the observed total has
    the same expectation as :math:`Y_{it}` away from the floor and ceiling. Because the
    truth is defined on the observed alliance score, a correctly specified model recovers
    :math:`\gamma_W` and :math:`\gamma_B` without attenuation (apart from the few
    prorated scores).

    *Early endings.* With :math:`E_i` the mean of :math:`A_{it}` over the patient's
    recorded sessions among the first :math:`k` = ``early_sessions`` (which every patient
    attends), patient *i* ends treatment early (unilateral or dropout) with probability

    .. math::

        \Pr(D_i = 1) = \operatorname{expit}\bigl(\alpha + \beta_A (E_i - \mu_A)\bigr),
        \qquad \alpha = \operatorname{logit}\bigl(1 - (1 - h)^{S - k}\bigr),

    with :math:`\beta_A` = ``dropout_alliance_effect``, :math:`\mu_A` = ``alliance_mean``,
    *h* = ``dropout_hazard`` and *S* = ``max_sessions`` (:func:`early_ending_intercept`).
    Nothing else (arm, outcome, therapist) changes the odds, so a logistic model of early
    ending on the early alliance, with or without baseline severity and a therapist
    intercept, has the true slope :math:`\beta_A`. Because the truth is defined on the
    observed alliance score, it is recovered without attenuation (apart from prorated
    scores). Early enders leave after session :math:`k + G`, *G* geometric with
    parameter *h* truncated below :math:`S - k`; the others attend all *S* sessions.

    *Deterioration.* A patient has an episode with probability :math:`\pi_0` =
    ``deterioration_share``; from its onset (session 2–5) the patient's change stops (the
    slope term is held at its value at the onset) and the latent outcome is
    ``deterioration_drop`` points worse. In the feedback arm an episode is repaired two
    sessions after its onset with probability :math:`1 - \pi_F / \pi_0`, with
    :math:`\pi_F = \operatorname{expit}(\operatorname{logit}\pi_0 + \beta_D)`, so the
    true log odds ratio of a lasting episode (feedback vs treatment as usual) is
    :math:`\beta_D` = ``feedback_deterioration_effect``
    (:func:`lasting_deterioration_share`). Reliable deterioration as the pipeline
    measures it (first to last observed score) also counts patients whose scores fell by
    chance and misses episodes that begin after a patient's last session, so its odds
    ratio lies between :math:`e^{\beta_D}` and 1; with little session noise and no early
    endings it approaches :math:`e^{\beta_D}`. The episodes are independent of the
    alliance, so :math:`\gamma_W` and :math:`\gamma_B` keep their meaning.

    Examples
    --------
    >>> from allianceflow.simulate import simulate_study
    >>> df = simulate_study(seed=1, n_therapists=3, n_patients=12, max_sessions=5)
    >>> df.groupby("patient").session.min().eq(1).all()
    np.True_
    >>> sorted(df.condition.unique())
    ['feedback', 'tau']
    """
    pair = _check_pair(instruments)
    design = dataclasses.replace(design or EXAMPLE_DESIGN, **overrides)
    rng = np.random.default_rng(seed)
    n_t, n_p, n_s = design.n_therapists, design.n_patients, design.max_sessions

    # Therapists and patients ------------------------------------------------------------
    therapist_of = rng.permutation(np.arange(n_p) % n_t)
    feedback = rng.random(n_p) < design.feedback_share
    ther_alliance = rng.normal(0.0, design.alliance_sd_therapist, n_t)
    ther_outcome = rng.normal(0.0, design.outcome_sd_therapist, n_t)
    pat_alliance = rng.normal(0.0, design.alliance_sd_patient, n_p)
    pat_alliance_slope = rng.normal(0.0, design.alliance_sd_slope, n_p)
    cov = design.slope_intercept_corr * design.outcome_sd_patient * design.outcome_sd_slope
    pat_outcome = rng.multivariate_normal(
        [0.0, 0.0],
        [[design.outcome_sd_patient**2, cov], [cov, design.outcome_sd_slope**2]],
        size=n_p,
    )

    # Attendance is decided after the alliance (early endings depend on it). Without an
    # alliance effect the endings come from these per-session hazard draws, as the former
    # constant-hazard simulator drew them (early_sessions=1 and no episodes give its studies).
    ends = rng.random((n_p, n_s)) < design.dropout_hazard
    on_record = rng.random((n_p, n_s)) >= design.p_unrecorded
    on_record[:, 0] = True  # the intake session is always recorded

    # Alliance items ----------------------------------------------------------------------
    time = np.arange(n_s, dtype=float)[None, :]
    latent_alliance = (
        design.alliance_mean
        + ther_alliance[therapist_of][:, None]
        + pat_alliance[:, None]
        + (design.alliance_slope + pat_alliance_slope[:, None]) * time
        + rng.normal(0.0, design.alliance_sd_session, (n_p, n_s))
    )
    if pair.alliance == "wai_sr":
        wai = np.clip(
            np.rint(
                latent_alliance[:, :, None] + rng.normal(0.0, design.wai_item_noise, (n_p, n_s, 12))
            ),
            1,
            5,
        )
    else:  # SRS: four 10 cm lines, marked to 0.1 cm
        wai = np.round(
            np.clip(
                latent_alliance[:, :, None] + rng.normal(0.0, design.wai_item_noise, (n_p, n_s, 4)),
                0.0,
                10.0,
            ),
            1,
        )
    alliance = wai.mean(axis=2)  # the observed alliance item mean, before any blanks

    # Early endings depend on the early alliance; the last session follows the hazard ------
    early_alliance, ended_early, last = _endings(design, alliance, on_record, ends, seed)
    attended = np.arange(n_s)[None, :] < last[:, None]
    recorded = attended & on_record
    alliance_rec = np.where(recorded, alliance, np.nan)
    patient_mean = np.nanmean(alliance_rec, axis=1)
    grand_mean = patient_mean.mean()

    # Outcome -----------------------------------------------------------------------------
    lag_within = np.full((n_p, n_s), 0.0)
    lag_within[:, 1:] = alliance[:, :-1] - patient_mean[:, None]
    slope = design.outcome_slope + design.feedback_slope * feedback + pat_outcome[:, 1]
    session_effect = np.full((n_p, n_s), float(design.within_effect))
    session_modality = None
    if modality is not None:
        session_modality, session_effect = _draw_modality(modality, design, seed, (n_p, n_s))
    outcome = (
        design.outcome_intercept
        + ther_outcome[therapist_of][:, None]
        + pat_outcome[:, 0][:, None]
        + slope[:, None] * time
        + session_effect * lag_within
        + design.between_effect * (patient_mean - grand_mean)[:, None]
        + rng.normal(0.0, design.outcome_sd_residual, (n_p, n_s))
    )
    worse = -1.0 if pair.outcome == "ors" else 1.0
    episode, lasting, onset = _episodes(design, feedback, seed)
    under_way = _episode_course(episode, lasting, onset, n_s)
    # during an episode treatment stops working (no further change from the onset on) and
    # the outcome is `deterioration_drop` points worse
    stalled = slope[:, None] * np.maximum(time - onset[:, None], 0.0)
    outcome = outcome + under_way * (worse * design.deterioration_drop - stalled)
    if pair.outcome == "ors":
        ors = np.clip(
            outcome[:, :, None] / 4.0 + rng.normal(0.0, design.ors_item_noise, (n_p, n_s, 4)),
            0.0,
            10.0,
        )
        ors = np.round(ors, 1)
    else:  # PHQ-9: nine items 0-3 whose sum has the expectation of the latent total
        ors = np.clip(
            np.rint(
                outcome[:, :, None] / 9.0 + rng.normal(0.0, design.ors_item_noise, (n_p, n_s, 9))
            ),
            0.0,
            3.0,
        )

    # Blank items, then keep recorded sessions only ---------------------------------------
    wai = np.where(rng.random(wai.shape) < design.p_item_missing, np.nan, wai)
    ors = np.where(rng.random(ors.shape) < design.p_item_missing, np.nan, ors)
    gaps = rng.integers(5, 10, (n_p, n_s)).astype(float)  # days between sessions
    gaps[:, 0] = 0.0
    days = np.cumsum(gaps, axis=1)
    # Endings: planned after the last planned session; otherwise unilateral or dropout,
    # drawn from their own stream so that adding them left every other value unchanged.
    unilateral = np.random.default_rng([seed, 1]).random(n_p) < design.unilateral_share
    ending = np.where(~ended_early, "planned", np.where(unilateral, "unilateral", "dropout"))

    pid, sid = np.nonzero(recorded)
    width = len(str(n_p))
    frame = pd.DataFrame(
        {
            "therapist": [f"T{j + 1:0{len(str(n_t))}d}" for j in therapist_of[pid]],
            "patient": [f"P{i + 1:0{width}d}" for i in pid],
            "condition": np.where(feedback[pid], "feedback", "tau"),
            "session": sid + 1,
            "days": days[pid, sid],
            "ending": ending[pid],
        }
    )
    for k in range(wai.shape[2]):
        frame[f"{pair.alliance}_{k + 1}"] = wai[pid, sid, k]
    for k in range(ors.shape[2]):
        frame[f"{pair.outcome}_{k + 1}"] = ors[pid, sid, k]
    frame["true_alliance"] = alliance[pid, sid]
    frame["true_outcome"] = outcome[pid, sid]
    if session_modality is not None:
        levels = list(modality["shares"])
        frame.insert(5, "modality", pd.Categorical(session_modality[pid, sid], categories=levels))
        frame["true_within_effect"] = session_effect[pid, sid]
    frame["true_early_alliance"] = early_alliance[pid]
    frame["true_episode"] = episode[pid]
    frame["true_lasting_episode"] = lasting[pid]
    return frame.reset_index(drop=True)


def _draw_modality(
    modality: Mapping[str, Any], design: StudyDesign, seed: int, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Session modalities and each session's true within-patient alliance effect."""
    if not isinstance(modality, Mapping) or "shares" not in modality:
        raise ValueError(
            "`modality` must be a mapping with `shares` ({level: probability}) and optionally "
            f"`within_effect` ({{level: effect}}); got {modality!r}."
        )
    unknown = sorted(set(modality) - {"shares", "within_effect"})
    if unknown:
        raise ValueError(
            f"`modality` has unknown key(s) {unknown}; allowed: 'shares', 'within_effect'."
        )
    shares = dict(modality["shares"])
    p = np.array(list(shares.values()), dtype=float)
    if len(p) < 2 or np.any(p < 0) or not np.isclose(p.sum(), 1.0):
        raise ValueError(
            f"`modality['shares']` must give two or more levels with probabilities that sum "
            f"to 1; got {shares!r}."
        )
    effects = dict(modality.get("within_effect") or {})
    extra = sorted(set(effects) - set(shares))
    if extra:
        raise ValueError(
            f"`modality['within_effect']` names level(s) {extra} that are not in `shares` "
            f"({list(shares)})."
        )
    levels = np.array(list(shares), dtype=object)
    drawn = np.random.default_rng([seed, 2]).choice(len(levels), size=shape, p=p)
    effect_of = np.array([float(effects.get(lv, design.within_effect)) for lv in levels])
    return levels[drawn], effect_of[drawn]


def _logit(p: float) -> float:
    with np.errstate(divide="ignore"):
        return float(np.log(p) - np.log1p(-p))


def _expit(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, dtype=float)))


def early_ending_intercept(design: StudyDesign) -> float:
    r"""True log-odds of an early ending for a patient whose early alliance is ``alliance_mean``.

    .. math:: \alpha = \operatorname{logit}\bigl(1 - (1 - h)^{S - k}\bigr)

    with *h* = ``dropout_hazard``, *S* = ``max_sessions`` and *k* = ``early_sessions``
    (:math:`-\infty` when no early ending is possible, :math:`+\infty` when *h* = 1).

    Examples
    --------
    >>> round(early_ending_intercept(EXAMPLE_DESIGN), 4)
    0.2113
    """
    chances = max(design.max_sessions - design.early_sessions, 0)
    return _logit(1.0 - (1.0 - design.dropout_hazard) ** chances)


def _endings(
    design: StudyDesign, alliance: np.ndarray, on_record: np.ndarray, ends: np.ndarray, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Early alliance, early ending and number of sessions attended, per patient.

    With ``dropout_alliance_effect == 0`` the ending is the first of the per-session hazard
    draws *ends* from session ``early_sessions`` on (a constant hazard: the same
    distribution as below, with the former simulator's draws).
    """
    n_p, n_s = alliance.shape
    k = min(design.early_sessions, n_s)
    early = np.where(on_record[:, :k], alliance[:, :k], np.nan)
    early_alliance = np.nanmean(early, axis=1)  # session 1 is always on record
    if design.dropout_alliance_effect == 0:
        later = ends[:, k:]
        ended_early = later.any(axis=1)
        last = np.where(ended_early, k + later.argmax(axis=1), n_s)
        return early_alliance, ended_early, last
    rng = np.random.default_rng([seed, 4])  # its own stream ([seed, 2] draws modalities)
    u_end, u_when = rng.random(n_p), rng.random(n_p)
    alpha = early_ending_intercept(design)
    if not np.isfinite(alpha):
        p_end = np.full(n_p, 1.0 if alpha > 0 else 0.0)
    else:
        eta = alpha + design.dropout_alliance_effect * (early_alliance - design.alliance_mean)
        p_end = _expit(eta)
    ended_early = u_end < p_end
    last = np.full(n_p, n_s)
    h, chances = design.dropout_hazard, n_s - k
    if ended_early.any():
        if h >= 1.0:
            extra = np.zeros(n_p, dtype=int)
        else:  # inverse CDF of the geometric number of further sessions, truncated
            reach = 1.0 - (1.0 - h) ** chances
            extra = np.floor(np.log1p(-u_when * reach) / np.log1p(-h)).astype(int)
            extra = np.minimum(extra, chances - 1)
        last = np.where(ended_early, k + extra, n_s)
    return early_alliance, ended_early, last


#: Sessions from the onset of a deterioration episode to its repair (feedback arm).
_REPAIR_AFTER = 2
#: Sessions at which an episode can begin (uniformly).
_ONSET_SESSIONS = (2, 5)


def lasting_deterioration_share(design: StudyDesign, *, feedback: bool) -> float:
    r"""True probability of a lasting deterioration episode in one arm.

    Treatment as usual: ``deterioration_share`` (:math:`\pi_0`); feedback:
    :math:`\operatorname{expit}(\operatorname{logit}\pi_0 + \beta_D)` with
    :math:`\beta_D` = ``feedback_deterioration_effect``.

    Examples
    --------
    >>> round(lasting_deterioration_share(EXAMPLE_DESIGN, feedback=True), 4)
    0.0505
    """
    pi0 = design.deterioration_share
    if not feedback or pi0 in (0.0, 1.0):
        return float(pi0)
    return float(_expit(_logit(pi0) + design.feedback_deterioration_effect))


def measured_deterioration_risks(
    design: StudyDesign | None = None,
    *,
    rci: float,
    n_patients: int = 100_000,
    seed: int = 1,
) -> dict[str, float]:
    r"""True risks of *measured* reliable deterioration per arm, by Monte Carlo.

    The pipeline measures reliable deterioration from the observed outcome total (first to
    last observed score, :func:`allianceflow.clinical.reliable_change`), which also counts
    chance falls and misses episodes after a patient's last session; its population risks
    are not a closed-form function of the design. This simulates *n_patients* patients of
    *design* (therapists scaled to keep the patients per therapist), totals the outcome
    items of each session (missing when an item is blank, as the ORS and PHQ-9 score without
    proration) and applies :func:`~allianceflow.clinical.reliable_change`.

    Parameters
    ----------
    design : StudyDesign, optional
        :data:`EXAMPLE_DESIGN` when omitted (WAI-SR + ORS).
    rci : float
        The reliable change value in outcome points (the study's ``rci``).
    n_patients : int
        Simulated patients; the Monte Carlo SE of a risk is at most
        :math:`0.5/\sqrt{n/2}`.
    seed : int
        Seed of the simulation.

    Returns
    -------
    dict
        ``tau`` and ``feedback`` (risks), ``risk_difference`` (feedback − tau) and
        ``log_odds_ratio``.
    """
    from .clinical import reliable_change

    design = design or EXAMPLE_DESIGN
    per = max(1, design.n_patients // design.n_therapists)
    big = dataclasses.replace(design, n_patients=n_patients, n_therapists=max(1, n_patients // per))
    sim = simulate_study(big, seed=seed)
    items = sim.filter(regex=r"^ors_\d+$")
    sim["total"] = items.sum(axis=1, min_count=items.shape[1]).where(items.notna().all(axis=1))
    rc = reliable_change(sim, score="total", direction="higher_is_better", rci=rci)
    arm = sim.groupby("patient", sort=False)["condition"].first()
    det = rc.set_index("patient")["reliable_deterioration"].astype("Float64")
    risks = det.groupby(arm.reindex(det.index)).mean()
    tau, fb = float(risks["tau"]), float(risks["feedback"])
    return {
        "tau": tau,
        "feedback": fb,
        "risk_difference": fb - tau,
        "log_odds_ratio": _logit(fb) - _logit(tau),
    }


def _episodes(
    design: StudyDesign, feedback: np.ndarray, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Who has an episode, whether it lasts, and its onset (0-based session index)."""
    n_p = feedback.size
    rng = np.random.default_rng([seed, 3])
    u_episode, u_repair = rng.random(n_p), rng.random(n_p)
    onset = rng.integers(_ONSET_SESSIONS[0] - 1, _ONSET_SESSIONS[1], n_p)
    episode = u_episode < design.deterioration_share
    pi0 = design.deterioration_share
    # P(lasting | episode, feedback) = pi_F / pi_0, so that P(lasting | feedback) = pi_F
    keep = lasting_deterioration_share(design, feedback=True) / pi0 if pi0 > 0 else 0.0
    lasting = episode & (~feedback | (u_repair < keep))
    return episode, lasting, onset


def _episode_course(
    episode: np.ndarray, lasting: np.ndarray, onset: np.ndarray, n_s: int
) -> np.ndarray:
    """1 at the sessions an episode is under way, else 0 (patients x sessions)."""
    t = np.arange(n_s)[None, :]
    started = episode[:, None] & (t >= onset[:, None])
    repaired = (episode & ~lasting)[:, None] & (t >= onset[:, None] + _REPAIR_AFTER)
    return (started & ~repaired).astype(float)


#: Raw column names of the example export, by canonical name.
EXPORT_COLUMNS = {
    "patient": "ClientCode",
    "therapist": "Clinician",
    "condition": "Arm",
    "session": "SessionNo",
    "date": "SessionDate",
    **{f"wai_sr_{k}": f"WAI_SR_{k:02d}" for k in range(1, 13)},
    "ors_1": "ORS_Individual",
    "ors_2": "ORS_Interpersonal",
    "ors_3": "ORS_Social",
    "ors_4": "ORS_Overall",
    "ending": "Discharge",
}
_ARM_LABELS = {"feedback": "ROM feedback", "tau": "TAU"}
#: How the example export writes endings, on the patient's last recorded row only.
ENDING_LABELS = {
    "planned": "Completed",
    "unilateral": "Client ended",
    "dropout": "No further contact",
}
_MISSING_CODE = -9


def to_export(sessions: pd.DataFrame, *, seed: int) -> pd.DataFrame:
    """Turn a simulated study into a spreadsheet export as a clinic's system writes it.

    Calendar dates replace ``days`` (each patient starts on a seeded day in 2023–2024,
    written day/month/year), columns get the export's own names
    (:data:`EXPORT_COLUMNS`), arms get their labels ("ROM feedback", "TAU"), and blank
    items are written as the missing-value code -9. The ending goes into a "Discharge"
    column on the patient's last recorded row only (:data:`ENDING_LABELS`; blank on the
    other rows), as a discharge form would fill it. Truth columns are dropped.
    """
    rng = np.random.default_rng(seed)
    patients = sessions["patient"].unique()
    start = pd.Timestamp("2023-01-02") + pd.to_timedelta(
        rng.integers(0, 700, len(patients)), unit="D"
    )
    first_day = pd.Series(start, index=patients)
    dates = first_day.loc[sessions["patient"]].to_numpy() + pd.to_timedelta(
        sessions["days"].to_numpy(), unit="D"
    )
    out = pd.DataFrame(
        {
            EXPORT_COLUMNS["patient"]: sessions["patient"],
            EXPORT_COLUMNS["therapist"]: sessions["therapist"],
            EXPORT_COLUMNS["condition"]: sessions["condition"].map(_ARM_LABELS),
            EXPORT_COLUMNS["session"]: sessions["session"],
            EXPORT_COLUMNS["date"]: pd.DatetimeIndex(dates).strftime("%d/%m/%Y"),
        }
    )
    for k in range(1, 13):
        values = sessions[f"wai_sr_{k}"]
        out[EXPORT_COLUMNS[f"wai_sr_{k}"]] = values.fillna(_MISSING_CODE).astype(int)
    for k in range(1, 5):
        values = sessions[f"ors_{k}"].map(
            lambda v: f"{v:.1f}" if pd.notna(v) else str(_MISSING_CODE)
        )
        out[EXPORT_COLUMNS[f"ors_{k}"]] = values
    last = ~sessions["patient"].duplicated(keep="last")
    out[EXPORT_COLUMNS["ending"]] = sessions["ending"].map(ENDING_LABELS).where(last, "")
    return out


#: What the example pipeline recovers of these truths (the example README's last section):
#: benchmarks/example_truths.py (100 replications of the design, its results file) and the
#: configured models fitted to the committed files (a test checks the quoted draw).
_EXAMPLE_RECOVERY = """
## What the example pipeline recovers

The deterioration models estimate the log odds ratio of *measured* reliable deterioration
(first to last ORS total, reliable change 5) given the baseline ORS, not the
lasting-episode truth above. Their true values, by Monte Carlo (one simulated study of
20,000 patients of this design, derived as the pipeline derives it; Monte Carlo SE in
brackets): **−0.88** (0.05) for `deterioration` (all patients) and **−1.01** (0.06) for
`deterioration_not_on_track` (patients ever flagged, a post-randomisation subgroup).

Over 100 replications of this design (`benchmarks/example_truths.py`; Monte Carlo SE in
brackets) the configured models' 95% intervals covered the within-patient effect in 89%
(3%) of the replications, the between-patient effect in 92% (3%), the early-alliance
effect on early ending in 93% (3%), and the feedback effect on measured deterioration in
96% (2%), in not-on-track patients in 96% (2%). Mean biases were within 2.5 Monte Carlo SEs
of 0 (within-patient −2.3%, early alliance +6%, i.e. toward 0). The random-intercept
`alliance_outcome` model leaves out the patients' outcome slopes, so its SEs are about 10%
smaller than the estimates' spread and its intervals cover slightly less than 95%.

Fitted to these files, with the configured models (linear: Kenward–Roger df), per WAI-SR
item-mean point: the within-patient effect is 1.28 [0.77, 1.80], which **misses its truth
2.0** (the kind of miss a 95% interval makes about 1 time in 20, or 1 in 9 here); the
between-patient effect 2.94 [1.66, 4.22] (truth 4.0); the early alliance on early ending
−1.00 [−1.47, −0.52] log-odds (truth −1.0); feedback on deterioration −0.66 [−1.48, 0.16]
(truth −0.88), in not-on-track patients −0.58 [−1.56, 0.39] (truth −1.01).
"""


def _readme(design: StudyDesign, seed: int, sessions: pd.DataFrame) -> str:
    rows = "\n".join(
        f"| `{f.name}` | {getattr(design, f.name)} |" for f in dataclasses.fields(design)
    )
    per_patient = sessions.groupby("patient").size()
    measured = measured_deterioration_risks(design, rci=5.0)
    former = design.dropout_alliance_effect == 0 and design.deterioration_share == 0
    lasting_difference = lasting_deterioration_share(
        design, feedback=True
    ) - lasting_deterioration_share(design, feedback=False)
    if former:
        binary = f"""Early endings are completely at random (constant hazard `dropout_hazard` from
session 2): the true effect of the alliance on early ending is **0**. There are no
deterioration episodes (`deterioration_share` 0), so feedback changes deterioration only
through `feedback_slope`. The simulator's alliance-dependent endings and deterioration
episodes (`simulate.EXAMPLE_DESIGN`) are switched off for these files (`simulate.FORMER`).
The true risks of reliable deterioration (first to last ORS total, reliable change value 5
as in `config.yaml`), by Monte Carlo over 100,000 simulated patients
(`measured_deterioration_risks`): TAU **{measured["tau"]:.3f}**, feedback
**{measured["feedback"]:.3f}**, a risk difference of **{measured["risk_difference"]:.3f}**.
"""
    else:
        binary = f"""Early endings depend on the early alliance (the mean WAI-SR item mean of the \
first {design.early_sessions} sessions, `early_sessions`):

    logit P(ends early) = {early_ending_intercept(design):.4f} \
+ dropout_alliance_effect · (early WAI − {design.alliance_mean})

so the true effect of the early alliance on early ending ("Client ended" or "No further
contact") is **{design.dropout_alliance_effect}** log-odds per WAI-SR item-mean point
(odds ratio {math.exp(design.dropout_alliance_effect):.3f}; \
**{design.dropout_alliance_effect / 12:.5g}** per WAI-SR total point, odds ratio \
{math.exp(design.dropout_alliance_effect / 12):.4f}). The
intercept is logit(1 − (1 − dropout_hazard)^(max_sessions − early_sessions)); early enders
leave after session {design.early_sessions} + a geometric number of further sessions
(`dropout_hazard`). A share `unilateral_share` of the patients who stop early is recorded
as "Client ended", the rest as "No further contact".

A patient has a deterioration episode with probability {design.deterioration_share} in either
arm: from its onset (session 2–5) the patient stops improving and the ORS total is
{design.deterioration_drop} points lower. In
the feedback arm the therapist sees the alarm and repairs a share of the episodes (the ORS
returns to its course two sessions after the onset), so that the true log odds ratio of a
lasting episode, feedback vs TAU, is **{design.feedback_deterioration_effect}** (odds ratio
{math.exp(design.feedback_deterioration_effect):.3f}; lasting episodes in \
{lasting_deterioration_share(design, feedback=False):.4f} of TAU and \
{lasting_deterioration_share(design, feedback=True):.4f} of feedback patients, a risk
difference of {lasting_difference:.4f}).
The effect works through the patients who go off track. Reliable deterioration as measured
(first to last ORS total, reliable change value 5 as in `config.yaml`) also counts chance
falls and misses episodes after a patient's last session, so its odds ratio lies between
this truth and 1. Its true risks, by Monte Carlo over 100,000 simulated patients
(`measured_deterioration_risks`): TAU **{measured["tau"]:.3f}**, feedback
**{measured["feedback"]:.3f}**, a risk difference of **{measured["risk_difference"]:.3f}**
(log odds ratio {measured["log_odds_ratio"]:.3f}); the pipeline's risk difference in
`tables/binary_effects` estimates this difference.
"""
    return f"""# The example study (simulated)

This folder holds a **simulated** study; no real patient contributed to it. It was written
by `allianceflow.simulate.write_example_study` with seed `{seed}`:

```
python -m allianceflow.simulate data/raw/example
```

and a test regenerates it and checks that the bytes are the same.

`sessions_export.csv` looks like a routine-outcome-monitoring export: one row per recorded
session, the clinic's own column names (mapped to the canonical table in `config.yaml`),
session dates as day/month/year, arm labels "ROM feedback" and "TAU", and `-9` for an item
the patient left blank. It has {len(sessions)} rows: {sessions.patient.nunique()} patients
of {sessions.therapist.nunique()} therapists, {per_patient.min()}–{per_patient.max()}
recorded sessions per patient (median {per_patient.median():g}).

| column | meaning |
| --- | --- |
| `ClientCode` | pseudonymous patient code |
| `Clinician` | pseudonymous therapist code |
| `Arm` | "ROM feedback" or "TAU" (treatment as usual) |
| `SessionNo` | session number (gaps where a session went unrecorded) |
| `SessionDate` | date of the session, dd/mm/yyyy |
| `WAI_SR_01` … `WAI_SR_12` | WAI-SR items, 1–5 \
(task 1, 2, 10, 12; bond 3, 5, 7, 9; goal 4, 6, 8, 11) |
| `ORS_Individual`, `ORS_Interpersonal`, `ORS_Social`, `ORS_Overall` | ORS items, 0–10 |
| `Discharge` | how treatment ended, on the patient's last recorded row only \
(blank on the others): "Completed" (attended all {design.max_sessions} planned sessions), \
"Client ended" (the patient decided to stop) or "No further contact" |

## Generating parameters

Alliance parameters are on the WAI-SR item-mean scale (1–5), outcome parameters in ORS
total points (0–40); time is `session − 1`. The outcome at session *t* is

    ORS_t = outcome_intercept + therapist + patient \
+ (outcome_slope + feedback_slope·feedback + patient slope)·(t − 1)
            + within_effect · (WAI_{{t−1}} − patient mean WAI) \
+ between_effect · (patient mean WAI − grand mean) + residual

so the true within-patient effect of last session's alliance is **{design.within_effect}** ORS
points per WAI-SR item-mean point, and the true between-patient effect is
**{design.between_effect}**.

{binary}
| parameter | value |
| --- | --- |
{rows}
{_EXAMPLE_RECOVERY if (design, seed) == (EXAMPLE_DESIGN, EXAMPLE_SEED) else ""}"""


def write_example_study(
    folder: str | Path, *, design: StudyDesign | None = None, seed: int = EXAMPLE_SEED
) -> Path:
    """Write the example study (``sessions_export.csv`` and ``README.md``) into *folder*.

    Returns the path of the CSV file. The output is byte-identical for the same design
    and seed.
    """
    design = design or EXAMPLE_FILE_DESIGN
    sessions = simulate_study(design, seed=seed)
    export = to_export(sessions, seed=seed + 1)
    return _write_study(folder, "sessions_export.csv", export, _readme(design, seed, sessions))


def _write_study(folder: str | Path, name: str, export, readme: str, *, sep: str = ",") -> Path:
    r"""Write an example study's export *name* and its ``README.md`` into *folder*.

    Returns the export's path. ``\n`` line endings and no index, so the bytes depend only on
    the export and the README text.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    export.to_csv(path, index=False, sep=sep, lineterminator="\n")
    (folder / "README.md").write_text(readme, encoding="utf-8")
    return path


#: The design of the second example study in ``data/raw/example2/`` (SRS + PHQ-9): a
#: smaller service, shorter treatments, parameters on the SRS item-mean (0–10) and PHQ-9
#: total (0–27, lower is better) scales.
EXAMPLE2_DESIGN = StudyDesign(
    n_therapists=12,
    n_patients=120,
    max_sessions=12,
    dropout_hazard=0.08,
    p_unrecorded=0.04,
    p_item_missing=0.01,
    feedback_share=0.5,
    alliance_mean=8.0,
    alliance_slope=0.05,
    alliance_sd_therapist=0.4,
    alliance_sd_patient=0.9,
    alliance_sd_slope=0.03,
    alliance_sd_session=0.6,
    wai_item_noise=0.6,
    outcome_intercept=15.0,
    outcome_slope=-0.5,
    feedback_slope=-0.1,
    outcome_sd_therapist=1.0,
    outcome_sd_patient=4.0,
    outcome_sd_slope=0.2,
    slope_intercept_corr=-0.3,
    outcome_sd_residual=2.5,
    within_effect=-1.0,
    between_effect=-1.5,
    ors_item_noise=0.5,
)
#: The second example's sessions took place in person, by video or by telephone, and the
#: within-patient alliance link is weaker in video sessions (-0.4 PHQ-9 points per SRS
#: item-mean point instead of the design's -1.0): the truth its moderated model recovers.
EXAMPLE2_MODALITY = {
    "shares": {"in_person": 0.6, "video": 0.3, "telephone": 0.1},
    "within_effect": {"video": -0.4},
}
#: The seed of the second example study.
EXAMPLE2_SEED = 20261126
#: The day the second example's export was made (its ``extraction_date`` in config.yaml):
#: after the last visit, so patients seen in the weeks before it count as still in treatment.
EXAMPLE2_EXTRACTION_DATE = "2025-08-15"

#: Raw column names of the second example's export, by canonical name.
EXPORT2_COLUMNS = {
    "patient": "client_id",
    "therapist": "counsellor",
    "condition": "group",
    "session": "visit",
    "date": "visit_date",
    **{f"srs_{k}": f"srs_q{k}" for k in range(1, 5)},
    **{f"phq9_{k}": f"phq_{k:02d}" for k in range(1, 10)},
}
_GROUP_LABELS = {"feedback": "FIT", "tau": "usual care"}
#: How the second example's export writes each session's modality (column ``mode``).
MODALITY_LABELS = {"in_person": "in person", "video": "video", "telephone": "phone"}


def to_export_srs_phq9(sessions: pd.DataFrame, *, seed: int) -> pd.DataFrame:
    """Turn a simulated SRS + PHQ-9 study into the second example's export layout.

    Unlike :func:`to_export`: ISO dates (year-month-day), the export's own lower-case
    column names (:data:`EXPORT2_COLUMNS`), arm labels "FIT" and "usual care", and blank
    cells (not a code) for items left blank. Written semicolon-delimited by
    :func:`write_example2_study`.
    """
    rng = np.random.default_rng(seed)
    patients = sessions["patient"].unique()
    start = pd.Timestamp("2024-01-08") + pd.to_timedelta(
        rng.integers(0, 500, len(patients)), unit="D"
    )
    first_day = pd.Series(start, index=patients)
    dates = first_day.loc[sessions["patient"]].to_numpy() + pd.to_timedelta(
        sessions["days"].to_numpy(), unit="D"
    )
    out = pd.DataFrame(
        {
            EXPORT2_COLUMNS["patient"]: sessions["patient"].str.replace("P", "C-", regex=False),
            EXPORT2_COLUMNS["therapist"]: sessions["therapist"].str.replace("T", "K", regex=False),
            EXPORT2_COLUMNS["condition"]: sessions["condition"].map(_GROUP_LABELS),
            EXPORT2_COLUMNS["session"]: sessions["session"],
            EXPORT2_COLUMNS["date"]: pd.DatetimeIndex(dates).strftime("%Y-%m-%d"),
        }
    )
    if "modality" in sessions:
        out["mode"] = sessions["modality"].astype(str).map(MODALITY_LABELS)
    for k in range(1, 5):
        out[EXPORT2_COLUMNS[f"srs_{k}"]] = sessions[f"srs_{k}"].map(
            lambda v: f"{v:.1f}" if pd.notna(v) else ""
        )
    for k in range(1, 10):
        out[EXPORT2_COLUMNS[f"phq9_{k}"]] = sessions[f"phq9_{k}"].map(
            lambda v: f"{v:.0f}" if pd.notna(v) else ""
        )
    return out


def _readme2(design: StudyDesign, seed: int, sessions: pd.DataFrame) -> str:
    rows = "\n".join(
        f"| `{f.name}` | {getattr(design, f.name)} |" for f in dataclasses.fields(design)
    )
    per_patient = sessions.groupby("patient").size()
    return f"""# The second example study (simulated): SRS + PHQ-9

This folder holds a **simulated** study; no real patient contributed to it. It was written
by `allianceflow.simulate.write_example2_study` with seed `{seed}`:

```
python -m allianceflow.simulate data/raw/example2 srs+phq9
```

and a test regenerates it and checks that the bytes are the same. It differs from
`data/raw/example/` on purpose, so that the pipeline shows it handles several studies with
different designs: another instrument pair (alliance: Session Rating Scale; outcome:
PHQ-9, where **lower is better**), a smaller service, and another export layout.

`visits.csv` is **semicolon-delimited**, one row per recorded visit, with ISO dates
(year-month-day), arm labels "FIT" (feedback-informed treatment) and "usual care", and an
**empty cell** for an item the patient left blank. It has {len(sessions)} rows:
{sessions.patient.nunique()} patients of {sessions.therapist.nunique()} counsellors,
{per_patient.min()}–{per_patient.max()} recorded visits per patient \
(median {per_patient.median():g}).

| column | meaning |
| --- | --- |
| `client_id` | pseudonymous patient code |
| `counsellor` | pseudonymous therapist code |
| `group` | "FIT" or "usual care" |
| `visit` | session number (gaps where a session went unrecorded) |
| `visit_date` | date of the session, yyyy-mm-dd |
| `srs_q1` … `srs_q4` | SRS items (relationship, goals and topics, approach or method, \
overall), 0–10 to one decimal |
| `phq_01` … `phq_09` | PHQ-9 items, 0–3 |

## Generating parameters

Alliance parameters are on the SRS item-mean scale (0–10), outcome parameters in PHQ-9
total points (0–27, lower is better); time is `session − 1`. The outcome at session *t* is

    PHQ9_t = outcome_intercept + therapist + patient \
+ (outcome_slope + feedback_slope·feedback + patient slope)·(t − 1)
             + within_effect · (SRS_{{t−1}} − patient mean SRS) \
+ between_effect · (patient mean SRS − grand mean) + residual

with SRS the item mean. So the true within-patient effect of last session's alliance is
**{design.within_effect}** PHQ-9 points per SRS item-mean point \
(**{design.within_effect / 4:g}** per
SRS total point), and the true between-patient effect is **{design.between_effect}**
(**{design.between_effect / 4:g}** per total point): a better alliance goes with fewer
symptoms. `wai_item_noise` is the SRS item noise and `ors_item_noise` the noise around a
ninth of the PHQ-9 total before each item is rounded to 0–3.

{_binary_readme2(design)}

The export records no endings. It was made on {EXAMPLE2_EXTRACTION_DATE} (`read.extraction_date` in
`config.yaml`), so the pipeline infers them: a patient with no visit in the 8 weeks before
the export has ended (planned after all {design.max_sessions} sessions, otherwise a dropout);
one seen more recently is still in treatment. The simulation itself ended every patient
(planned after all sessions, or early as above), so "ongoing" here is censoring by
the export date, as in a real service. A patient who attended all sessions but whose last
one went unrecorded (`p_unrecorded`) is inferred as a dropout: the dose rule sees only
recorded session numbers, and the early endings recorded as unilateral in the simulation
become dropouts too.

| parameter | value |
| --- | --- |
{rows}
"""


#: What the pipeline recovers of the second example's truths (its README's last section):
#: benchmarks/example_truths.py (100 replications) and the configured models fitted to the
#: committed files; effects per SRS total point (item-mean truths / 4).
_EXAMPLE2_RECOVERY = """
## What the example pipeline recovers

Over 100 replications of this design (`benchmarks/example_truths.py`; Monte Carlo SE in
brackets) the configured models' 95% intervals covered the within-patient effect
(`alliance_outcome`, truth −0.205 per SRS total point) in 91% (3%) of the replications, the
between-patient effect in 95% (2%), and the modality simple slopes in 95% (2%, in person),
94% (2%, video) and 96% (2%, telephone), their difference video − in person in 95% (2%).
The alliance estimates are **attenuated by about 10%** (within-patient: mean −0.183 against
−0.205, bias +0.022 (0.006); in person: +0.026 (0.007); between-patient: +0.044 (0.012)).
The cause is the PHQ-9's bounded items (0–3): the truths hold for the latent total, and a
linear model of the capped, rounded total estimates less. About half of it is there
without deterioration episodes (same seeds: within-patient bias +0.011 (0.005); with the
former files' settings +0.010 (0.005)); the deterioration episodes double it, most likely
because their 12-point rise (`deterioration_drop`, a size chosen for the ORS's 0–40 range)
takes PHQ-9 totals to the ceiling of 27.

Fitted to these files with the configured models (Kenward–Roger df), per SRS total point,
every truth lies inside its interval: within-patient −0.313 [−0.421, −0.204] (truth
−0.205, just inside), between-patient −0.210 [−0.456, 0.036] (truth −0.375); simple slopes
in person −0.320 [−0.456, −0.184] (truth −0.25), video −0.215 [−0.403, −0.027] (truth
−0.10), telephone −0.173 [−0.565, 0.220] (truth −0.25); video − in person 0.105
[−0.139, 0.349] (truth 0.15).
"""


def _binary_readme2(design: StudyDesign) -> str:
    """The second example README's paragraph on early endings and deterioration episodes."""
    effect = design.dropout_alliance_effect
    return f"""Early endings depend on the early alliance (the mean SRS item mean of the first \
{design.early_sessions} sessions, `early_sessions`):

    logit P(ends early) = {early_ending_intercept(design):.4f} \
+ dropout_alliance_effect · (early SRS − {design.alliance_mean})

so the true effect of the early alliance on ending early is **{effect}** log-odds per SRS
item-mean point (odds ratio {math.exp(effect):.3f}; **{effect / 4:g}** per SRS total point).
A patient has a deterioration episode with probability {design.deterioration_share} in either
arm: from its onset (session 2–5) the patient stops improving and the PHQ-9 total is
{design.deterioration_drop} points higher (items are capped at 3). In the feedback arm the
counsellor repairs a share of the episodes (the PHQ-9 returns to its course two sessions
after the onset), so that the true log odds ratio of a lasting episode, feedback vs usual
care, is **{design.feedback_deterioration_effect}** (lasting episodes in \
{lasting_deterioration_share(design, feedback=False):.4f} of usual-care and \
{lasting_deterioration_share(design, feedback=True):.4f} of FIT patients). The
configuration fits no dropout or deterioration model to this study (its endings are
inferred from the export date, below); the mechanisms make its outcome courses and
treatment lengths those of the first example's design."""


def write_example2_study(
    folder: str | Path,
    *,
    design: StudyDesign | None = None,
    seed: int = EXAMPLE2_SEED,
    modality: Mapping[str, Any] | None = EXAMPLE2_MODALITY,
) -> Path:
    """Write the second example study (``visits.csv`` and ``README.md``) into *folder*.

    SRS + PHQ-9, semicolon-delimited (:func:`to_export_srs_phq9`), with each visit's
    modality (column ``mode``; see :data:`EXAMPLE2_MODALITY`, None leaves it out). Returns
    the path of the CSV file; the output is byte-identical for the same design and seed.
    """
    design = design or EXAMPLE2_DESIGN
    sessions = simulate_study(design, seed=seed, instruments="srs+phq9", modality=modality)
    export = to_export_srs_phq9(sessions, seed=seed + 1)
    text = _readme2(design, seed, sessions)
    if modality is not None:
        text += _modality_readme(modality, design, sessions)
    if (design, seed, modality) == (EXAMPLE2_DESIGN, EXAMPLE2_SEED, EXAMPLE2_MODALITY):
        text += _EXAMPLE2_RECOVERY
    return _write_study(folder, "visits.csv", export, text, sep=";")


def _modality_readme(modality: Mapping[str, Any], design: StudyDesign, sessions) -> str:
    """The README's section on the simulated modality and its true moderation."""
    counts = sessions["modality"].value_counts().reindex(list(modality["shares"]))
    effects = modality.get("within_effect") or {}
    rows = "\n".join(
        f"| {lv} (`{MODALITY_LABELS.get(lv, lv)}`) | {share:g} | {int(counts[lv])} | "
        f"{effects.get(lv, design.within_effect):g} |"
        for lv, share in modality["shares"].items()
    )
    mixed = sum(
        share * effects.get(lv, design.within_effect) for lv, share in modality["shares"].items()
    )
    per_total = ", ".join(
        f"{lv} {effects.get(lv, design.within_effect) / 4:g}" for lv in modality["shares"]
    )
    return f"""
## Modality: a true moderation

Each visit took place in person, by video or by telephone (column `mode`), drawn at random
with the shares below, independently of everything else. The within-patient effect of last
visit's alliance on this visit's PHQ-9 depends on this visit's modality: the design's
`within_effect` in person, weaker by video. The pipeline's moderated model
(`alliance_outcome_modality` in `config.yaml`) estimates these slopes; with 120 patients
their intervals are wide (interaction tests have low power).

| modality (export label) | share | visits | true within-patient effect |
| --- | --- | --- | --- |
{rows}

The effects are per SRS item-mean point; the pipeline's models use the SRS total (the sum of
the 4 items), so its simple slopes estimate a quarter of them ({per_total}). The unmoderated
`alliance_outcome` model estimates their mixture: with the modality drawn independently of
the alliance, the share-weighted mean **{mixed:g}** per item-mean point
(**{mixed / 4:g}** per total point).
"""


# --------------------------------------------------------------------------- couples
@dataclass(frozen=True)
class CoupleDesign:
    r"""The design and true parameters of a simulated couple (or family) therapy study.

    Every client of a *system* (a couple; a family when ``members > 2``) sees the system's
    therapist together with the others and rates the alliance on the SRS and their own
    functioning on the ORS at each session. Alliance parameters are in **SRS total**
    points (0–40), outcome parameters in **ORS total** points (0–40); time is
    ``session - 1``.

    Attributes
    ----------
    n_therapists, n_systems, members, max_sessions
        Sizes: systems are spread over therapists as evenly as possible; each system has
        ``members`` clients, who hold the ``roles`` (one each).
    roles
        The clients' roles, one per member (``partner_a``, ``partner_b`` for couples).
    early_sessions
        Sessions every system attends before an early ending can happen; the early split
        and mean are averaged over the system's recorded sessions among these.
    dropout_intercept, split_dropout_effect, mean_dropout_effect
        The log-odds that a system ends early (premature termination):
        ``dropout_intercept + split_dropout_effect · (early split − split_centre) +
        mean_dropout_effect · (early mean − alliance_mean)``; the slopes are the truths of
        the ``split_dropout`` preset.
    split_centre
        The early split at which the log-odds are ``dropout_intercept`` (when the early
        mean is ``alliance_mean``).
    dropout_hazard
        Timing of an early ending: the last session is ``early_sessions`` plus a
        geometric number (≥ 0) of further sessions with this per-session hazard,
        truncated before ``max_sessions``.
    p_unrecorded
        Probability that a system's session (after the first) has no record for anyone.
    p_member_absent
        Probability that one member misses a session (after the first) the others attend.
    p_item_missing
        Probability that a single item is left blank (a blank SRS item leaves the session
        without an SRS total: the SRS is not prorated).
    alliance_mean, alliance_slope
        Mean SRS total at the first session and its change per session.
    alliance_sd_therapist, alliance_sd_system, alliance_sd_member
        SDs of the therapist, system and client (around the system) parts of the alliance:
        ``alliance_sd_member`` makes partners disagree lastingly (the split between systems).
    alliance_sd_system_session, alliance_sd_session
        SDs of a session's shock shared by the members and of each member's own session
        deviation (which makes the split vary within systems).
    srs_item_noise, ors_item_noise
        SD of the item noise (items 0–10, recorded to 0.1) around a quarter of the total.
    outcome_intercept, outcome_slope
        ORS total at the first session and its change per session.
    outcome_sd_therapist, outcome_sd_system, outcome_sd_patient, outcome_sd_residual
        SDs of the therapist, system and client intercepts of the outcome and of its
        session residual.
    actor_within, actor_between
        True actor effects: ORS points per SRS point of the client's own alliance at the
        previous session above their own mean (within), and of their own mean above the
        grand mean (between).
    partner_within, partner_between
        True partner effects: the same for the other member's alliance (the mean of the
        other members in a family).
    split_within, split_between
        True split effects: ORS points per SRS point of the system's split at the previous
        session above the system's mean split (within), and of the system's mean split
        above the grand mean (between).
    """

    n_therapists: int = 20
    n_systems: int = 150
    members: int = 2
    roles: tuple[str, ...] = ("partner_a", "partner_b")
    max_sessions: int = 12
    early_sessions: int = 3
    dropout_intercept: float = -1.2
    split_dropout_effect: float = 0.3
    mean_dropout_effect: float = -0.1
    split_centre: float = 4.0
    dropout_hazard: float = 0.25
    p_unrecorded: float = 0.03
    p_member_absent: float = 0.03
    p_item_missing: float = 0.003
    alliance_mean: float = 32.0
    alliance_slope: float = 0.25
    alliance_sd_therapist: float = 1.0
    alliance_sd_system: float = 2.0
    alliance_sd_member: float = 2.5
    alliance_sd_system_session: float = 1.0
    alliance_sd_session: float = 2.0
    srs_item_noise: float = 0.4
    outcome_intercept: float = 20.0
    outcome_slope: float = 0.6
    outcome_sd_therapist: float = 1.0
    outcome_sd_system: float = 2.0
    outcome_sd_patient: float = 3.0
    outcome_sd_residual: float = 3.0
    ors_item_noise: float = 0.5
    actor_within: float = 0.4
    actor_between: float = 0.6
    partner_within: float = 0.2
    partner_between: float = 0.3
    split_within: float = -0.3
    split_between: float = -0.5

    def __post_init__(self) -> None:
        """Check the design: positive counts, one role per member, probabilities in [0, 1]."""
        for name in ("n_therapists", "n_systems", "max_sessions", "early_sessions"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer; got {value!r}.")
        if not isinstance(self.members, (int, np.integer)) or self.members < 2:
            raise ValueError(f"`members` must be an integer of at least 2; got {self.members!r}.")
        if self.n_systems < self.n_therapists:
            raise ValueError(
                f"`n_systems` ({self.n_systems}) must be at least `n_therapists` "
                f"({self.n_therapists}) so every therapist has a system."
            )
        if len(self.roles) != self.members or len(set(self.roles)) != self.members:
            raise ValueError(
                f"`roles` must name {self.members} distinct roles, one per member; "
                f"got {self.roles!r}."
            )
        if self.early_sessions >= self.max_sessions:
            raise ValueError(
                f"`early_sessions` ({self.early_sessions}) must be below `max_sessions` "
                f"({self.max_sessions})."
            )
        for name in ("dropout_hazard", "p_unrecorded", "p_member_absent", "p_item_missing"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"`{name}` must lie in [0, 1]; got {value!r}.")
        if self.dropout_hazard == 0:
            raise ValueError("`dropout_hazard` must be above 0 (it times the early endings).")


#: The design of the couples example study in ``data/raw/example3/``.
EXAMPLE3_DESIGN = CoupleDesign()
#: The seed of the couples example study.
EXAMPLE3_SEED = 20261129


def simulate_couples(design: CoupleDesign | None = None, *, seed: int, **overrides) -> pd.DataFrame:
    r"""Simulate a couple (or family) therapy study in the canonical long format.

    Parameters
    ----------
    design : CoupleDesign, optional
        Design and true parameters; :data:`EXAMPLE3_DESIGN` when omitted.
    seed : int
        Seed of :func:`numpy.random.default_rng`; the same seed gives the same study.
    **overrides
        Fields of :class:`CoupleDesign` to replace, e.g. ``n_systems=300``.

    Returns
    -------
    pandas.DataFrame
        One row per client × recorded session, sorted by patient and session, with
        ``therapist``, ``system``, ``patient``, ``role``, ``session``, ``days`` (since the
        system's first session), ``ending`` (``planned`` after all sessions, else
        ``dropout``; the same for every member), ``srs_1`` … ``srs_4`` and ``ors_1`` …
        ``ors_4`` (0–10 to one decimal, NaN when blank), and the truth columns
        ``true_alliance`` (latent SRS total), ``true_outcome`` (ORS total before item
        noise), ``true_early_split`` and ``true_early_mean`` (what the ending depended on).

    Notes
    -----
    With :math:`A_{it}` client *i*'s observed SRS total at session *t* (missing when an
    item is blank), its within- and between-client parts
    :math:`A^W_{it} = A_{it} - \bar A_i` and :math:`A^B_i = \bar A_i - \bar A`
    (:func:`allianceflow.derive.within_between`), the partner's parts :math:`P^W_{it},
    P^B_i` and the split's within- and between-system parts :math:`S^W_{st}, S^B_s`
    (:func:`allianceflow.couples.system_variables`), all computed from the recorded data
    exactly as the pipeline computes them, the latent outcome is

    .. math::

        Y_{it} = \beta_0 + v_j + w_s + u_i + \beta_1 (t - 1)
          + a_W A^W_{i,t-1} + a_B A^B_i + p_W P^W_{i,t-1} + p_B P^B_i
          + \delta_W S^W_{s,t-1} + \delta_B S^B_s + \varepsilon_{it},

    with a lagged term left out where its value at *t − 1* is missing (such rows have no
    predictor in the model). The truths are therefore those of the analysis variables,
    and a model with all six terms recovers them. For dyads whose members rate the same
    sessions the system mean is the members' average, so the ``split_alliance`` preset's
    system-mean effects are ``actor + partner`` (within and between). The presets each
    leave some terms out: ``couple_alliance_outcome`` the split, ``split_alliance`` the
    members' deviations from the system mean. With normal scores and exchangeable partners
    the left-out terms are uncorrelated with the ones kept, but the SRS has a ceiling
    (items clipped at 10), so the split shrinks as both partners' alliance rises (for the
    within parts at the previous session, r ≈ −0.09 in the example's design) and the APIM
    preset's within effects come out slightly high: in 1,000 simulated couples of 50
    therapists (seed 99) the partner's within effect is 0.234 (SE 0.012; truth 0.2), and
    0.215 with the split terms added as ``covariates``, a bias of about 0.02, under one
    standard error at the example's 150 couples.
    """
    from scipy.special import expit

    from .couples import split_measures, system_variables
    from .derive import lag_within_patient, within_between

    d = design or EXAMPLE3_DESIGN
    if overrides:
        d = dataclasses.replace(d, **overrides)
    rng = np.random.default_rng(seed)
    n_s, n_m, n_t = d.n_systems, d.members, d.max_sessions
    therapist_of = np.sort(np.arange(n_s) % d.n_therapists)
    t = np.arange(n_t, dtype=float)

    v = rng.normal(0.0, d.alliance_sd_therapist, d.n_therapists)
    w = rng.normal(0.0, d.alliance_sd_system, n_s)
    u = rng.normal(0.0, d.alliance_sd_member, (n_s, n_m))
    shared = rng.normal(0.0, d.alliance_sd_system_session, (n_s, n_t))
    own = rng.normal(0.0, d.alliance_sd_session, (n_s, n_m, n_t))
    latent = (
        d.alliance_mean
        + (v[therapist_of] + w)[:, None, None]
        + u[:, :, None]
        + d.alliance_slope * t[None, None, :]
        + shared[:, None, :]
        + own
    )
    srs = np.clip(
        latent[..., None] / 4 + rng.normal(0.0, d.srs_item_noise, (*latent.shape, 4)), 0, 10
    )
    srs = np.round(srs, 1)
    srs[rng.random(srs.shape) < d.p_item_missing] = np.nan
    recorded = rng.random((n_s, n_t)) >= d.p_unrecorded
    absent = rng.random((n_s, n_m, n_t)) < d.p_member_absent
    recorded[:, 0] = True
    absent[:, :, 0] = False
    present = recorded[:, None, :] & ~absent

    s_idx, m_idx, t_idx = np.meshgrid(np.arange(n_s), np.arange(n_m), np.arange(n_t), indexing="ij")
    grid = pd.DataFrame(
        {
            "therapist": [f"T{j + 1:02d}" for j in therapist_of[s_idx.ravel()]],
            "system": [f"C{s + 1:03d}" for s in s_idx.ravel()],
            "patient": [
                f"P{s * n_m + m + 1:04d}" for s, m in zip(s_idx.ravel(), m_idx.ravel(), strict=True)
            ],
            "role": [d.roles[m] for m in m_idx.ravel()],
            "session": t_idx.ravel() + 1,
            "_s": s_idx.ravel(),
            "_present": present.ravel(),
            "true_alliance": latent.ravel(),
        }
    )
    for k in range(4):
        grid[f"srs_{k + 1}"] = srs[..., k].ravel()
    grid["alliance"] = grid[[f"srs_{k}" for k in range(1, 5)]].sum(axis=1, min_count=4)

    # Early endings: from the split and mean of the early sessions as recorded.
    early = grid[grid["_present"] & (grid["session"] <= d.early_sessions)]
    per = split_measures(early, alliance="alliance")
    early_split = per.groupby("system")["split"].mean().reindex(grid["system"].unique())
    early_mean = per.groupby("system")["mean"].mean().reindex(grid["system"].unique())
    ends = np.random.default_rng([seed, 17])
    logit = (
        d.dropout_intercept
        + d.split_dropout_effect * (early_split.fillna(d.split_centre).to_numpy() - d.split_centre)
        + d.mean_dropout_effect * (early_mean.fillna(d.alliance_mean).to_numpy() - d.alliance_mean)
    )
    early_end = ends.random(n_s) < expit(logit)
    further = ends.geometric(d.dropout_hazard, n_s) - 1
    last = np.where(early_end, np.minimum(d.early_sessions + further, n_t - 1), n_t)
    grid["ending"] = np.where(early_end, "dropout", "planned")[grid["_s"]]
    grid["true_early_split"] = early_split.to_numpy()[grid["_s"]]
    grid["true_early_mean"] = early_mean.to_numpy()[grid["_s"]]
    kept = grid[grid["_present"] & (grid["session"] <= last[grid["_s"]])].copy()
    kept = kept.sort_values(["patient", "session"], kind="mergesort").reset_index(drop=True)

    # The outcome, from the analysis variables as the pipeline derives them.
    x = lag_within_patient(within_between(kept, "alliance"), ["alliance_within"])
    x = system_variables(x, alliance="alliance")

    def term(name: str) -> np.ndarray:
        return x[name].fillna(0.0).to_numpy()

    vo = rng.normal(0.0, d.outcome_sd_therapist, d.n_therapists)
    wo = rng.normal(0.0, d.outcome_sd_system, n_s)
    uo = rng.normal(0.0, d.outcome_sd_patient, n_s * n_m)
    client = x["patient"].str[1:].astype(int).to_numpy() - 1
    s_of = x["_s"].to_numpy()
    y = (
        d.outcome_intercept
        + vo[therapist_of[s_of]]
        + wo[s_of]
        + uo[client]
        + d.outcome_slope * (x["session"].to_numpy() - 1)
        + d.actor_within * term("alliance_within_lag")
        + d.actor_between * term("alliance_between")
        + d.partner_within * term("alliance_partner_within_lag")
        + d.partner_between * term("alliance_partner_between")
        + d.split_within * term("alliance_split_within_lag")
        + d.split_between * term("alliance_split_between")
        + rng.normal(0.0, d.outcome_sd_residual, len(x))
    )
    ors = np.round(
        np.clip(y[:, None] / 4 + rng.normal(0.0, d.ors_item_noise, (len(x), 4)), 0, 10), 1
    )
    ors[rng.random(ors.shape) < d.p_item_missing] = np.nan
    gaps = rng.integers(5, 10, (n_s, n_t))
    gaps[:, 0] = 0
    day_of = np.cumsum(gaps, axis=1)
    out = kept[["therapist", "system", "patient", "role", "session"]].copy()
    out["days"] = day_of[s_of, out["session"].to_numpy() - 1].astype(float)
    out["days"] -= out.groupby("patient")["days"].transform("min")
    out["ending"] = kept["ending"]
    for k in range(1, 5):
        out[f"srs_{k}"] = kept[f"srs_{k}"]
    for k in range(4):
        out[f"ors_{k + 1}"] = ors[:, k]
    out["true_alliance"] = kept["true_alliance"]
    out["true_outcome"] = y
    out["true_early_split"] = kept["true_early_split"]
    out["true_early_mean"] = kept["true_early_mean"]
    return out


#: Raw column names of the couples example's export, by canonical name.
EXPORT3_COLUMNS = {
    "system": "couple_id",
    "patient": "client_id",
    "role": "partner",
    "therapist": "therapist_id",
    "session": "session",
    "date": "session_date",
    **{f"srs_{k}": f"srs_{k}" for k in range(1, 5)},
    **{f"ors_{k}": f"ors_{k}" for k in range(1, 5)},
    "ending": "discharge",
}
#: How the couples export writes roles and endings.
ROLE_LABELS3 = {"partner_a": "A", "partner_b": "B"}
ENDING_LABELS3 = {"planned": "completed", "dropout": "stopped early"}


def to_export_couples(sessions: pd.DataFrame, *, seed: int) -> pd.DataFrame:
    """Turn a simulated couples study into the third example's export layout.

    ISO dates (each couple starts on a seeded day in 2024), partners written ``A``/``B``
    (other roles as they are), the ending on every row of a client ("completed" or
    "stopped early"), blank cells for blank items; truth columns are dropped.
    """
    rng = np.random.default_rng(seed)
    systems = sessions["system"].unique()
    start = pd.Series(
        pd.Timestamp("2024-01-08") + pd.to_timedelta(rng.integers(0, 400, len(systems)), unit="D"),
        index=systems,
    )
    # Both members attend a couple's first session, so a client's days count from it.
    dates = start.loc[sessions["system"]].to_numpy() + pd.to_timedelta(
        sessions["days"].to_numpy(), unit="D"
    )
    c = EXPORT3_COLUMNS
    out = pd.DataFrame(
        {
            c["system"]: sessions["system"],
            c["patient"]: sessions["patient"],
            c["role"]: sessions["role"].map(lambda r: ROLE_LABELS3.get(r, r)),
            c["therapist"]: sessions["therapist"],
            c["session"]: sessions["session"],
            c["date"]: pd.DatetimeIndex(dates).strftime("%Y-%m-%d"),
        }
    )
    for name in [f"srs_{k}" for k in range(1, 5)] + [f"ors_{k}" for k in range(1, 5)]:
        out[c[name]] = sessions[name].map(lambda v: f"{v:.1f}" if pd.notna(v) else "")
    out[c["ending"]] = sessions["ending"].map(ENDING_LABELS3)
    return out


def _readme3(design: CoupleDesign, seed: int, sessions: pd.DataFrame) -> str:
    rows = "\n".join(
        f"| `{f.name}` | {getattr(design, f.name)} |" for f in dataclasses.fields(design)
    )
    per_client = sessions.groupby("patient").size()
    systems = sessions.drop_duplicates("system")
    dropouts = int(systems["ending"].eq("dropout").sum())
    mean_within = design.actor_within + design.partner_within
    mean_between = design.actor_between + design.partner_between
    return f"""# The couples example study (simulated): SRS + ORS

This folder holds a **simulated** couple therapy study; no real client contributed to it.
It was written by `allianceflow.simulate.write_example3_study` with seed `{seed}`:

```
python -m allianceflow.simulate data/raw/example3 couples
```

and a test regenerates it and checks that the bytes are the same.

Each couple sees one therapist together; at each session both partners rate the alliance
on the Session Rating Scale (SRS, 4 items 0–10) and their own functioning on the Outcome
Rating Scale (ORS, 4 items 0–10, higher is better). `couple_sessions.csv` has one row per
client and recorded session: {len(sessions)} rows, {sessions.patient.nunique()} clients in
{sessions.system.nunique()} couples of {sessions.therapist.nunique()} therapists,
{per_client.min()}–{per_client.max()} recorded sessions per client (median
{per_client.median():g}). {dropouts} couples stopped early.

| column | meaning |
| --- | --- |
| `couple_id` | pseudonymous couple code (the system) |
| `client_id` | pseudonymous client code |
| `partner` | the client's role in the couple: `A` or `B` |
| `therapist_id` | pseudonymous therapist code |
| `session` | session number (gaps where a session went unrecorded) |
| `session_date` | date of the session, yyyy-mm-dd |
| `srs_1` … `srs_4` | SRS items (relationship, goals and topics, approach or method, \
overall), 0–10 |
| `ors_1` … `ors_4` | ORS items (individually, interpersonally, socially, overall), 0–10 |
| `discharge` | how the couple's treatment ended, on every row: "completed" \
(all {design.max_sessions} sessions) or "stopped early" |

A blank item cell is an item left blank (the SRS and ORS are not prorated, so that session
has no total). Occasionally one partner misses a session the other attends.

## True effects

Alliance parameters are in SRS total points (0–40), outcome parameters in ORS total points
(0–40); time is `session − 1`. The ORS total of client *i* at session *t* is

    ORS_it = outcome_intercept + therapist + couple + client + outcome_slope·(t − 1)
             + actor_within · (own SRS at t−1 − own mean SRS)
             + actor_between · (own mean SRS − grand mean)
             + partner_within · (partner's SRS at t−1 − partner's mean SRS)
             + partner_between · (partner's mean SRS − grand mean)
             + split_within · (couple's split at t−1 − couple's mean split)
             + split_between · (couple's mean split − grand mean split) + residual

where the split is the absolute difference of the partners' SRS totals at a session, and
every term is computed from the recorded data as the pipeline derives it
(`allianceflow.couples.system_variables`). The true effects, in ORS points per SRS point:

| effect | within (last session) | between (mean) |
| --- | --- | --- |
| actor (own alliance) | **{design.actor_within}** | **{design.actor_between}** |
| partner (the other's alliance) | **{design.partner_within}** | **{design.partner_between}** |
| split (partners' disagreement) | **{design.split_within}** | **{design.split_between}** |
| couple's mean alliance (= actor + partner) | **{mean_within:g}** | **{mean_between:g}** |

The `couple_alliance_outcome` preset estimates the actor and partner effects (its terms
`alliance_within_lag`, `alliance_between`, `alliance_partner_within_lag`,
`alliance_partner_between`); the `split_alliance` preset the couple's mean and split
(`alliance_system_mean_within_lag`, `alliance_system_mean_between`,
`alliance_split_within_lag`, `alliance_split_between`). The roles are exchangeable: the
true effects are the same for partners A and B. Each preset leaves the other's terms out;
because the SRS has a ceiling, the split shrinks as both partners' alliance rises, so the
actor and partner preset's within effects come out slightly high (by about 0.02 ORS points
per SRS point in 1,000 simulated couples, under one standard error at 150 couples); adding
the split terms as covariates removes this.

A couple stops early (after session {design.early_sessions} + a geometric number of further
sessions) with log-odds `dropout_intercept + split_dropout_effect · (early split −
split_centre) + mean_dropout_effect · (early mean SRS − alliance_mean)`, where the early split
and mean are averaged over the couple's recorded sessions among the first
{design.early_sessions}: the true effect of the early split on stopping early is
**{design.split_dropout_effect}** log-odds per SRS point (odds ratio
{math.exp(design.split_dropout_effect):.3f}), of the early mean **{design.mean_dropout_effect}**
(the `split_dropout` preset's `early_alliance_split` and `early_alliance_system_mean`).

| parameter | value |
| --- | --- |
{rows}
"""


def write_example3_study(
    folder: str | Path, *, design: CoupleDesign | None = None, seed: int = EXAMPLE3_SEED
) -> Path:
    """Write the couples example study (``couple_sessions.csv`` and ``README.md``) into *folder*.

    Returns the path of the CSV file; the output is byte-identical for the same design and
    seed.
    """
    design = design or EXAMPLE3_DESIGN
    sessions = simulate_couples(design, seed=seed)
    export = to_export_couples(sessions, seed=seed + 1)
    return _write_study(folder, "couple_sessions.csv", export, _readme3(design, seed, sessions))


if __name__ == "__main__":  # pragma: no cover - exercised through the CLI test
    import sys

    target = sys.argv[1] if len(sys.argv) > 1 else "data/raw/example"
    pair = sys.argv[2] if len(sys.argv) > 2 else "wai_sr+ors"
    if pair == "couples":
        print(write_example3_study(target))
    else:
        writer = (
            write_example2_study if _check_pair(pair).alliance == "srs" else write_example_study
        )
        print(writer(target))
