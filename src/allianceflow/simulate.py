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
    "EXAMPLE_SEED",
    "simulate_study",
    "to_export",
    "write_example_study",
    "EXPORT_COLUMNS",
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
        Probability of ending after each session from session 2 on (completely at random),
        so patients have unequal numbers of sessions.
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

    def __post_init__(self) -> None:
        """Check the design: positive counts, probabilities in [0, 1], a valid correlation."""
        for name in ("n_therapists", "n_patients", "max_sessions"):
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
        ):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"`{name}` must lie in [0, 1]; got {value!r}.")
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


#: The design of the embedded example study in ``data/raw/example/``.
EXAMPLE_DESIGN = StudyDesign()
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
        ``true_alliance`` (WAI-SR item mean of the full item set) and
        ``true_outcome`` (the ORS total before item noise).

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

    # Attendance: everyone attends session 1; after that a constant dropout hazard --------
    ends = rng.random((n_p, n_s)) < design.dropout_hazard
    ends[:, 0] = False
    attended = np.cumsum(ends, axis=1) == 0  # attends until the first "end" draw
    recorded = attended & (rng.random((n_p, n_s)) >= design.p_unrecorded)
    recorded[:, 0] = attended[:, 0]  # the intake session is always recorded

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
    ending = np.where(attended[:, -1], "planned", np.where(unilateral, "unilateral", "dropout"))

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


def _readme(design: StudyDesign, seed: int, sessions: pd.DataFrame) -> str:
    rows = "\n".join(
        f"| `{f.name}` | {getattr(design, f.name)} |" for f in dataclasses.fields(design)
    )
    per_patient = sessions.groupby("patient").size()
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
**{design.between_effect}**. Dropout is completely at random; a share `unilateral_share` of
the patients who stop early is recorded as "Client ended", the rest as "No further contact".

| parameter | value |
| --- | --- |
{rows}
"""


def write_example_study(
    folder: str | Path, *, design: StudyDesign | None = None, seed: int = EXAMPLE_SEED
) -> Path:
    """Write the example study (``sessions_export.csv`` and ``README.md``) into *folder*.

    Returns the path of the CSV file. The output is byte-identical for the same design
    and seed.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    design = design or EXAMPLE_DESIGN
    sessions = simulate_study(design, seed=seed)
    export = to_export(sessions, seed=seed + 1)
    path = folder / "sessions_export.csv"
    export.to_csv(path, index=False, lineterminator="\n")
    (folder / "README.md").write_text(_readme(design, seed, sessions), encoding="utf-8")
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
ninth of the PHQ-9 total before each item is rounded to 0–3. Dropout is completely at random.

The export records no endings. It was made on {EXAMPLE2_EXTRACTION_DATE} (`read.extraction_date` in
`config.yaml`), so the pipeline infers them: a patient with no visit in the 8 weeks before
the export has ended (planned after all {design.max_sessions} sessions, otherwise a dropout);
one seen more recently is still in treatment. The simulation itself ended every patient
(planned after all sessions; early endings at random), so "ongoing" here is censoring by
the export date, as in a real service. A patient who attended all sessions but whose last
one went unrecorded (`p_unrecorded`) is inferred as a dropout: the dose rule sees only
recorded session numbers, and the early endings recorded as unilateral in the simulation
become dropouts too.

| parameter | value |
| --- | --- |
{rows}
"""


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
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    design = design or EXAMPLE2_DESIGN
    sessions = simulate_study(design, seed=seed, instruments="srs+phq9", modality=modality)
    export = to_export_srs_phq9(sessions, seed=seed + 1)
    path = folder / "visits.csv"
    export.to_csv(path, index=False, sep=";", lineterminator="\n")
    text = _readme2(design, seed, sessions)
    if modality is not None:
        text += _modality_readme(modality, design, sessions)
    (folder / "README.md").write_text(text, encoding="utf-8")
    return path


def _modality_readme(modality: Mapping[str, Any], design: StudyDesign, sessions) -> str:
    """The README's section on the simulated modality and its true moderation."""
    counts = sessions["modality"].value_counts().reindex(list(modality["shares"]))
    effects = modality.get("within_effect") or {}
    rows = "\n".join(
        f"| {lv} (`{MODALITY_LABELS.get(lv, lv)}`) | {share:g} | {int(counts[lv])} | "
        f"{effects.get(lv, design.within_effect):g} |"
        for lv, share in modality["shares"].items()
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
"""


if __name__ == "__main__":  # pragma: no cover - exercised through the CLI test
    import sys

    target = sys.argv[1] if len(sys.argv) > 1 else "data/raw/example"
    pair = sys.argv[2] if len(sys.argv) > 2 else "wai_sr+ors"
    writer = write_example2_study if _check_pair(pair).alliance == "srs" else write_example_study
    print(writer(target))
