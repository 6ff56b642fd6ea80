"""Simulation-based power for a planned alliance–outcome / feedback study.

A planned design (therapists, patients per therapist, sessions, effect sizes, ICCs) is
simulated many times with :func:`allianceflow.simulate.simulate_study`; each replication
is fitted with the alliance–outcome model extended by the feedback × time interaction
(:func:`allianceflow.models.fit_model`), and the estimates of the two effects of interest
are compared with the truth:

* ``alliance_within_lag``: the within-patient effect of last session's alliance;
* ``session:feedback``: the extra per-session change in the feedback arm.

Replications are independent, so they are split into chunks (one Snakemake job each,
:func:`run_power_chunk`) and merged at the end (:func:`summarise_power`), which gives
power, bias and 95% CI coverage with their Monte Carlo standard errors (Morris, White &
Crowther 2019).

The binary presets have their own replications (:func:`run_binary_power_chunk`): each
simulated study is reduced to its patients table (:func:`simulate_patients`) and fitted
with the preset's GLMM, for the feedback effect on deterioration (``deterioration``) or the
early-alliance effect on early ending (``dropout``); their rows summarise the same way.
Every replication logs a progress line (logger ``allianceflow``), which the pipeline's
power jobs write to their log files.

References
----------
Arend, M. G., & Schäfer, T. (2019). Statistical power in two-level models: A tutorial based
on Monte Carlo simulation. *Psychological Methods, 24*(1), 1–19.
Morris, T. P., White, I. R., & Crowther, M. J. (2019). Using simulation studies to evaluate
statistical methods. *Statistics in Medicine, 38*(11), 2074–2102.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .simulate import EXAMPLE_DESIGN, StudyDesign, simulate_study

log = logging.getLogger("allianceflow")

__all__ = [
    "PowerDesign",
    "DEFAULT_FORMULA",
    "TERMS",
    "replication_seeds",
    "chunk_seeds",
    "designs_from_config",
    "design_from_model",
    "simulate_power_data",
    "run_power_chunk",
    "run_moderation_power_chunk",
    "BINARY_TERMS",
    "simulate_patients",
    "run_binary_power_chunk",
    "summarise_power",
    "plot_power_curve",
    "power_markdown",
]

#: The model fitted to each replication: the alliance_outcome model plus the feedback x
#: time interaction, with correlated patient intercepts and slopes as in the generating
#: model (``slope_intercept_corr``) and the analysis presets.
DEFAULT_FORMULA = (
    "outcome ~ alliance_within_lag + alliance_between + session + session:feedback"
    " + (1 | therapist) + (1 + session | patient)"
)
#: Model term -> design field holding its true value.
TERMS: dict[str, str] = {
    "alliance_within_lag": "within_effect",
    "session:feedback": "feedback_effect",
}

_E = EXAMPLE_DESIGN
_OUTCOME_VAR = _E.outcome_sd_therapist**2 + _E.outcome_sd_patient**2 + _E.outcome_sd_residual**2


@dataclass(frozen=True)
class PowerDesign:
    """A planned study: sizes, effects and variance shares of the outcome.

    Effects are on the simulator's scales (:class:`allianceflow.simulate.StudyDesign`):
    ORS total points per WAI-SR item-mean point for the alliance, ORS points per session
    for the feedback effect. Parameters not listed keep the example study's values.

    Attributes
    ----------
    n_therapists, patients_per_therapist, sessions
        Sizes; ``sessions`` is the planned maximum number of sessions (dropout shortens it).
    within_effect, between_effect
        True within- and between-patient alliance effects.
    feedback_effect
        True extra per-session improvement in the feedback arm (arm share 1/2).
    icc_therapist, icc_patient
        Shares of the outcome variance (therapist + patient intercept + residual) at the
        therapist and patient level; the residual gets the rest.
    outcome_variance
        That total variance (ORS points²).
    dropout_hazard
        Rate and timing of early endings (see :class:`allianceflow.simulate.StudyDesign`).
    early_sessions, dropout_alliance_effect
        Sessions before an early ending can happen (the early alliance's sessions), and the
        true log-odds of an early ending per WAI-SR item-mean point of early alliance.
    deterioration_share, feedback_deterioration_effect
        Probability of a deterioration episode, and the true log odds ratio of a lasting
        one, feedback vs treatment as usual.
    """

    n_therapists: int = 20
    patients_per_therapist: int = 10
    sessions: int = _E.max_sessions
    within_effect: float = _E.within_effect
    between_effect: float = _E.between_effect
    feedback_effect: float = _E.feedback_slope
    icc_therapist: float = _E.outcome_sd_therapist**2 / _OUTCOME_VAR
    icc_patient: float = _E.outcome_sd_patient**2 / _OUTCOME_VAR
    outcome_variance: float = _OUTCOME_VAR
    dropout_hazard: float = _E.dropout_hazard
    early_sessions: int = _E.early_sessions
    dropout_alliance_effect: float = _E.dropout_alliance_effect
    deterioration_share: float = _E.deterioration_share
    feedback_deterioration_effect: float = _E.feedback_deterioration_effect

    def __post_init__(self) -> None:
        """Check the sizes and ICCs, so a bad design fails before any simulation."""
        for name in ("n_therapists", "patients_per_therapist", "sessions"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer; got {value!r}.")
        if self.sessions < 3:
            raise ValueError(
                "`sessions` must be at least 3 (a lagged alliance needs two); "
                f"got {self.sessions!r}."
            )
        for name in ("icc_therapist", "icc_patient"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"`{name}` must lie in [0, 1); got {value!r}.")
        if self.icc_therapist + self.icc_patient >= 1.0:
            raise ValueError(
                f"`icc_therapist` + `icc_patient` must be below 1 (the residual needs a share); "
                f"got {self.icc_therapist!r} + {self.icc_patient!r}."
            )
        if not self.outcome_variance > 0:
            raise ValueError(f"`outcome_variance` must be positive; got {self.outcome_variance!r}.")
        if not 0.0 <= self.dropout_hazard < 1.0:
            raise ValueError(f"`dropout_hazard` must lie in [0, 1); got {self.dropout_hazard!r}.")

    @property
    def n_patients(self) -> int:
        """Total number of patients."""
        return self.n_therapists * self.patients_per_therapist

    def truth(self, term: str) -> float:
        """The true value of a model term in :data:`TERMS`."""
        if term not in TERMS:
            raise KeyError(f"`term` must be one of {list(TERMS)}; got {term!r}.")
        return float(getattr(self, TERMS[term]))

    def to_study_design(self) -> StudyDesign:
        """The :class:`StudyDesign` the simulator draws from."""
        v = self.outcome_variance
        return dataclasses.replace(
            EXAMPLE_DESIGN,
            n_therapists=self.n_therapists,
            n_patients=self.n_patients,
            max_sessions=self.sessions,
            within_effect=self.within_effect,
            between_effect=self.between_effect,
            feedback_slope=self.feedback_effect,
            outcome_sd_therapist=math.sqrt(self.icc_therapist * v),
            outcome_sd_patient=math.sqrt(self.icc_patient * v),
            outcome_sd_residual=math.sqrt((1.0 - self.icc_therapist - self.icc_patient) * v),
            dropout_hazard=self.dropout_hazard,
            early_sessions=self.early_sessions,
            dropout_alliance_effect=self.dropout_alliance_effect,
            deterioration_share=self.deterioration_share,
            feedback_deterioration_effect=self.feedback_deterioration_effect,
        )


def _check_design(design: Any) -> PowerDesign:
    if isinstance(design, PowerDesign):
        return design
    if isinstance(design, Mapping):
        fields = {f.name for f in dataclasses.fields(PowerDesign)}
        unknown = sorted(set(design) - fields)
        if unknown:
            raise KeyError(
                f"`design` has no parameter {unknown[0]!r}; parameters are {sorted(fields)}."
            )
        return PowerDesign(**design)
    raise TypeError(
        "`design` must be a PowerDesign or a mapping of its parameters; "
        f"got {type(design).__name__}."
    )


# --------------------------------------------------------------------------- seeds and designs


def replication_seeds(seed: int, replications: int) -> list[int]:
    """One independent seed per replication, from :class:`numpy.random.SeedSequence`.

    The same (seed, replications) gives the same list; the first *m* seeds do not depend
    on *replications*. Every design uses the same seeds (common random numbers), which makes
    power curves smoother than independent draws would.
    """
    if (
        isinstance(replications, bool)
        or not isinstance(replications, (int, np.integer))
        or replications < 1
    ):
        raise ValueError(f"`replications` must be a positive integer; got {replications!r}.")
    children = np.random.SeedSequence(int(seed)).spawn(int(replications))
    return [int(c.generate_state(1, dtype=np.uint32)[0]) for c in children]


def chunk_seeds(seed: int, replications: int, chunk_size: int, chunk: int) -> list[int]:
    """The seeds of chunk number *chunk* (0-based) of ``ceil(replications / chunk_size)``."""
    if (
        isinstance(chunk_size, bool)
        or not isinstance(chunk_size, (int, np.integer))
        or chunk_size < 1
    ):
        raise ValueError(f"`chunk_size` must be a positive integer; got {chunk_size!r}.")
    n_chunks = math.ceil(replications / chunk_size)
    if not 0 <= chunk < n_chunks:
        raise ValueError(
            f"`chunk` must lie in 0..{n_chunks - 1} for {replications} replications in chunks "
            f"of {chunk_size}; got {chunk!r}."
        )
    return replication_seeds(seed, replications)[chunk * chunk_size : (chunk + 1) * chunk_size]


def designs_from_config(power: Mapping[str, Any]) -> dict[str, PowerDesign]:
    """The designs of a config ``power:`` block: ``design`` varied along ``vary``.

    ``power["design"]`` holds :class:`PowerDesign` parameters; ``power["vary"]`` (optional)
    is ``{"parameter": name, "values": [...]}``. Each value gives one design named
    ``"<parameter>-<value>"``; without ``vary`` the single design is named ``"design"``.
    """
    base = dict(power.get("design") or {})
    _check_design(base)
    vary = power.get("vary")
    if not vary:
        return {"design": _check_design(base)}
    name = vary.get("parameter")
    fields = [f.name for f in dataclasses.fields(PowerDesign)]
    if name not in fields:
        raise KeyError(f"`power.vary.parameter` must be one of {fields}; got {name!r}.")
    values = list(vary.get("values") or [])
    if not values:
        raise ValueError("`power.vary.values` must list at least one value.")
    return {
        f"{name}-{value:g}" if isinstance(value, float) else f"{name}-{value}": _check_design(
            {**base, name: value}
        )
        for value in values
    }


def design_from_model(
    result: Mapping[str, Any],
    *,
    alliance_items: int = 12,
    base: Mapping[str, Any] | None = None,
    **overrides: Any,
) -> PowerDesign:
    """A design whose effects and variance shares come from a fitted study.

    Parameters
    ----------
    result : dict
        A :func:`allianceflow.models.fit_model` result with ``alliance_within_lag`` (and,
        if present, ``alliance_between`` and ``session:feedback``) fixed effects, an ICC per
        ``therapist`` and ``patient`` and the residual variance.
    alliance_items : int, default 12
        Items in the alliance total score: the model's effects per total-score point are
        multiplied by it to get effects per item-mean point (the simulator's scale).
    base : mapping, optional
        :class:`PowerDesign` parameters that the fitted model does not supply (sizes,
        dropout, and the feedback effect when the model has no ``session:feedback``).
        Values from the model win over *base*.
    **overrides
        Parameters that win over the model (e.g. a smaller effect to plan for).

    Notes
    -----
    ``outcome_variance`` = residual variance / (1 − ICC_therapist − ICC_patient). With
    random slopes the patient ICC of :func:`fit_model` is the patient-level variance averaged
    over the observed times, slope variance and intercept-slope covariance included (Johnson
    2014), so the planned intercept variance differs from the fitted one: higher through the
    slope variance, lower through a negative covariance (the example study's slopes model:
    patient ICC .49, or .56 when its covariance term is left out).
    """
    fixed = {row["term"]: row["estimate"] for row in result["fixed"]}
    if "alliance_within_lag" not in fixed:
        raise KeyError(f"`result` has no 'alliance_within_lag' effect; it has {list(fixed)}.")
    icc = result.get("icc") or {}
    icc_t = float(icc.get("therapist") or 0.0)
    icc_p = float(icc.get("patient") or 0.0)
    params: dict[str, Any] = {
        "within_effect": float(fixed["alliance_within_lag"]) * alliance_items,
        "icc_therapist": icc_t,
        "icc_patient": icc_p,
        "outcome_variance": float(result["residual_variance"]) / (1.0 - icc_t - icc_p),
    }
    if "alliance_between" in fixed:
        params["between_effect"] = float(fixed["alliance_between"]) * alliance_items
    if "session:feedback" in fixed:
        params["feedback_effect"] = float(fixed["session:feedback"])
    return _check_design({**dict(base or {}), **params, **overrides})


# --------------------------------------------------------------------------- replications


def simulate_power_data(
    design: PowerDesign | Mapping[str, Any],
    *,
    seed: int,
    modality: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """One simulated replication, ready for the model.

    Returns the derive stage's analysis table of a study drawn from *design*, with the
    alliance as the prorated WAI-SR item mean, the outcome as the ORS total (item mean × 4)
    and ``feedback`` = 1 in the feedback arm, 0 otherwise. *modality* adds session
    modalities with a true moderation (see :func:`allianceflow.simulate.simulate_study`).

    Deterioration episodes are switched off (``deterioration_share`` = 0) whatever the
    design says: feedback repairs some of them, which adds a benefit of feedback that the
    linear presets' feedback × session term does not measure, so that term's truth
    (``feedback_effect``) would no longer be the effect the model estimates. The binary
    presets' power (:func:`run_binary_power_chunk`) keeps them.
    """
    import dataclasses

    from .derive import derive_analysis

    design = _check_design(design)
    study = dataclasses.replace(design.to_study_design(), deterioration_share=0.0)
    sim = simulate_study(study, seed=seed, modality=modality)
    sim["alliance_score"] = sim.filter(regex=r"^wai_sr_\d+$").mean(axis=1)
    sim["outcome_score"] = sim.filter(regex=r"^ors_\d+$").mean(axis=1) * 4.0
    data = derive_analysis(sim, alliance="alliance_score", outcome="outcome_score")
    data["feedback"] = (data["condition"] == "feedback").astype(float)
    return data


_ROW_COLUMNS = [
    "design",
    "seed",
    "term",
    "truth",
    "estimate",
    "se",
    "ci_low",
    "ci_high",
    "p",
    "significant",
    "covered",
    "converged",
    "n_obs",
    "n_patients",
    "error",
]


def run_power_chunk(
    design: PowerDesign | Mapping[str, Any],
    seeds: Sequence[int],
    *,
    formula: str = DEFAULT_FORMULA,
    alpha: float = 0.05,
    label: str = "design",
) -> pd.DataFrame:
    """Simulate and fit one replication per seed; one tidy row per seed and term.

    Parameters
    ----------
    design : PowerDesign or mapping
        The planned design.
    seeds : sequence of int
        One seed per replication (see :func:`chunk_seeds`).
    formula : str, default :data:`DEFAULT_FORMULA`
        Must contain the terms of :data:`TERMS`.
    alpha : float, default 0.05
        Significance level for ``significant``.
    label : str, default "design"
        Written to the ``design`` column.

    Returns
    -------
    pandas.DataFrame
        ``design, seed, term, truth, estimate, se, ci_low, ci_high, p, significant,
        covered, converged, n_obs, n_patients, error``. ``covered``: the 95% Wald interval
        holds the truth. A replication whose fit fails keeps its rows with missing
        estimates, ``converged`` False and the message in ``error``; one that the
        convergence check rejects keeps its estimates with ``converged`` False.
    """
    from .models import fit_model

    design = _check_design(design)
    if not isinstance(alpha, (int, float)) or not 0.0 < alpha < 1.0:
        raise ValueError(f"`alpha` must lie in (0, 1); got {alpha!r}.")
    missing = [t for t in TERMS if t not in formula]
    if missing:
        raise ValueError(
            f"`formula` must contain the terms {list(TERMS)}; {missing} missing from {formula!r}."
        )
    rows = []
    for i, seed in enumerate(seeds, start=1):
        _progress(label, i, len(seeds), int(seed))
        data = simulate_power_data(design, seed=int(seed))
        try:
            result = fit_model(data, formula, reml=True, name=label, min_levels=2).to_dict()
        except (ValueError, np.linalg.LinAlgError) as error:
            for term in TERMS:
                rows.append(
                    {
                        "design": label,
                        "seed": int(seed),
                        "term": term,
                        "truth": design.truth(term),
                        "converged": False,
                        "n_patients": design.n_patients,
                        "error": str(error),
                    }
                )
            continue
        fixed = {row["term"]: row for row in result["fixed"]}
        for term in TERMS:
            f = fixed[term]
            truth = design.truth(term)
            rows.append(
                {
                    "design": label,
                    "seed": int(seed),
                    "term": term,
                    "truth": truth,
                    "estimate": f["estimate"],
                    "se": f["se"],
                    "ci_low": f["ci_low"],
                    "ci_high": f["ci_high"],
                    "p": f["p"],
                    "significant": bool(f["p"] is not None and f["p"] < alpha),
                    "covered": bool(f["ci_low"] <= truth <= f["ci_high"]),
                    "converged": bool(result["convergence"]["converged"]),
                    "n_obs": int(result["n_obs"]),
                    "n_patients": design.n_patients,
                    "error": "",
                }
            )
    frame = pd.DataFrame(rows, columns=_ROW_COLUMNS)
    return frame.astype({"seed": "int64", "n_patients": "int64"})


def _progress(label: str, i: int, n: int, seed: int) -> None:
    log.info("power %s: replication %d of %d (seed %d)", label, i, n, seed)


#: Binary preset -> (model term, :class:`PowerDesign` field holding its true value).
BINARY_TERMS: dict[str, tuple[str, str]] = {
    "deterioration": ("feedback", "feedback_deterioration_effect"),
    "dropout": ("early_alliance", "dropout_alliance_effect"),
}


def simulate_patients(
    design: PowerDesign | Mapping[str, Any], *, seed: int, rci: float = 5.0
) -> pd.DataFrame:
    """One simulated replication as its patients table, ready for the binary presets.

    The alliance is the prorated WAI-SR item mean (so the dropout effect is per item-mean
    point, the simulator's scale) and the outcome the ORS total, missing when an item is
    blank; reliable change uses *rci* ORS points; the patient-level outcomes are those of
    :func:`allianceflow.clinical.patient_outcomes` (early alliance of the design's first
    ``early_sessions`` sessions). No on-track status is derived.
    """
    from .clinical import derive_patients, patient_outcomes

    design = _check_design(design)
    sim = simulate_study(design.to_study_design(), seed=seed)
    sim["alliance"] = sim.filter(regex=r"^wai_sr_\d+$").mean(axis=1)
    sim["outcome"] = sim.filter(regex=r"^ors_\d+$").sum(axis=1, min_count=4)
    patients = derive_patients(
        sim, direction="higher_is_better", rci=rci, ending="ending", days="days"
    )
    return patient_outcomes(patients, sim, early_sessions=EXAMPLE_DESIGN.early_sessions)


def run_binary_power_chunk(
    design: PowerDesign | Mapping[str, Any],
    seeds: Sequence[int],
    *,
    preset: str = "dropout",
    alpha: float = 0.05,
    label: str = "design",
    rci: float = 5.0,
) -> pd.DataFrame:
    """Simulate and fit a binary preset's GLMM once per seed; one row per seed.

    Parameters
    ----------
    design : PowerDesign or mapping
        The planned design.
    seeds : sequence of int
        One seed per replication (see :func:`chunk_seeds`).
    preset : {'deterioration', 'dropout'}
        The preset fitted (:func:`allianceflow.models.preset_formula`, binomial GLMM with
        a therapist random intercept) and its term of :data:`BINARY_TERMS`.
    alpha : float
        Significance level for ``significant``.
    label : str
        Written to the ``design`` column.
    rci : float
        Reliable change value of the ORS total, for deterioration.

    Returns
    -------
    pandas.DataFrame
        The columns of :func:`run_power_chunk`, for :func:`summarise_power`. The truth of
        ``deterioration`` is the log odds ratio of a *lasting episode*; reliable
        deterioration as measured also counts chance falls, so its bias and coverage show
        how much the measured outcome dilutes the effect (see
        :func:`allianceflow.simulate.measured_deterioration_risks`). The dropout truth is
        exact.
    """
    from .models import fit_model
    from .models.presets import preset_family, preset_formula

    design = _check_design(design)
    if preset not in BINARY_TERMS:
        raise ValueError(
            f"`preset` must be {' or '.join(map(repr, BINARY_TERMS))}; got {preset!r}."
        )
    if not isinstance(alpha, (int, float)) or not 0.0 < alpha < 1.0:
        raise ValueError(f"`alpha` must lie in (0, 1); got {alpha!r}.")
    term, field = BINARY_TERMS[preset]
    truth = float(getattr(design, field))
    formula = preset_formula(preset)
    rows = []
    for i, seed in enumerate(seeds, start=1):
        _progress(label, i, len(seeds), int(seed))
        data = simulate_patients(design, seed=int(seed), rci=rci)
        base = {"design": label, "seed": int(seed), "term": term, "truth": truth}
        try:
            result = fit_model(
                data, formula, family=preset_family(preset), name=label, min_levels=2
            ).to_dict()
        except (ValueError, np.linalg.LinAlgError) as error:
            rows.append(
                {**base, "converged": False, "n_patients": design.n_patients, "error": str(error)}
            )
            continue
        f = next(row for row in result["fixed"] if row["term"] == term)
        rows.append(
            {
                **base,
                "estimate": f["estimate"],
                "se": f["se"],
                "ci_low": f["ci_low"],
                "ci_high": f["ci_high"],
                "p": f["p"],
                "significant": bool(f["p"] is not None and f["p"] < alpha),
                "covered": bool(f["ci_low"] <= truth <= f["ci_high"]),
                "converged": bool(result["convergence"]["converged"]),
                "n_obs": int(result["n_obs"]),
                "n_patients": design.n_patients,
                "error": "",
            }
        )
    frame = pd.DataFrame(rows, columns=_ROW_COLUMNS)
    return frame.astype({"seed": "int64", "n_patients": "int64"})


def summarise_power(
    chunks: pd.DataFrame | Iterable[pd.DataFrame],
    *,
    designs: Mapping[str, PowerDesign] | None = None,
) -> pd.DataFrame:
    r"""Merge chunk results and summarise each design and term.

    Parameters
    ----------
    chunks : DataFrame or iterable of DataFrames
        Outputs of :func:`run_power_chunk` (any split of the replications).
    designs : mapping of str to PowerDesign, optional
        Adds the design's sizes (``n_therapists, patients_per_therapist, sessions``) as
        columns, for power curves.

    Returns
    -------
    pandas.DataFrame
        Sorted by design and term: ``design, term, n_patients, replications, converged,
        failure_rate, truth, power, power_mcse, power_converged, power_converged_mcse,
        mean_estimate, bias, relative_bias, empirical_se, mean_se, coverage,
        coverage_mcse`` (+ the design sizes when *designs* is given).

        ``power`` is over **all** replications, a failed or non-converged fit counting as
        not significant (what a study that cannot be analysed delivers); ``failure_rate``
        is the share of replications not converged. ``power_converged`` and the columns
        from ``mean_estimate`` on use the converged replications only.

    Raises
    ------
    ValueError
        No rows, or the same seed twice for a design and term (a chunk merged twice).

    Notes
    -----
    With *n* replications, *m* of them converged, :math:`\hat\theta_i` the converged
    estimates and θ the truth: power = (converged replications with p < α) / *n*;
    power_converged = the same count / *m*; bias :math:`= \bar{\hat\theta} - \theta`;
    empirical SE = SD of the :math:`\hat\theta_i`; coverage = share of the *m* 95%
    intervals holding θ; the Monte Carlo SE of a share *s* of *n* is
    :math:`\sqrt{s(1-s)/n}` (Morris et al. 2019, Table 6).
    """
    frame = (
        chunks if isinstance(chunks, pd.DataFrame) else pd.concat(list(chunks), ignore_index=True)
    )
    if frame.empty:
        raise ValueError("`chunks` holds no replications.")
    dup = frame.duplicated(["design", "term", "seed"])
    if dup.any():
        first = frame.loc[dup].iloc[0]
        raise ValueError(
            f"seed {first['seed']} appears twice for design {first['design']!r} and term "
            f"{first['term']!r}: was a chunk merged twice?"
        )
    out = []
    for (design, term), g in frame.groupby(["design", "term"], sort=True):
        converged = g["converged"].eq(True)
        ok = g[converged]
        n = len(g)
        m = len(ok)
        truth = float(g["truth"].iloc[0])
        est = ok["estimate"].astype(float)
        hits = int(ok["significant"].eq(True).sum())
        power = hits / n
        power_converged = hits / m if m else float("nan")
        coverage = float(ok["covered"].astype(bool).mean()) if m else float("nan")
        row = {
            "design": design,
            "term": term,
            "n_patients": int(g["n_patients"].iloc[0]),
            "replications": int(n),
            "converged": int(m),
            "failure_rate": (n - m) / n,
            "truth": truth,
            "power": power,
            "power_mcse": math.sqrt(power * (1 - power) / n),
            "power_converged": power_converged,
            "power_converged_mcse": math.sqrt(power_converged * (1 - power_converged) / m)
            if m
            else float("nan"),
            "mean_estimate": float(est.mean()) if m else float("nan"),
            "bias": float(est.mean() - truth) if m else float("nan"),
            "relative_bias": float((est.mean() - truth) / truth)
            if m and truth != 0
            else float("nan"),
            "empirical_se": float(est.std(ddof=1)) if m > 1 else float("nan"),
            "mean_se": float(ok["se"].astype(float).mean()) if m else float("nan"),
            "coverage": coverage,
            "coverage_mcse": math.sqrt(coverage * (1 - coverage) / m) if m else float("nan"),
        }
        if designs is not None and design in designs:
            d = designs[design]
            row.update(
                n_therapists=d.n_therapists,
                patients_per_therapist=d.patients_per_therapist,
                sessions=d.sessions,
            )
        out.append(row)
    return pd.DataFrame(out)


_TERM_LABELS = {
    "alliance_within_lag": "within-patient alliance effect",
    "session:feedback": "feedback × session",
    "feedback": "feedback on deterioration (log OR)",
    "early_alliance": "early alliance on early ending (log OR)",
}


def plot_power_curve(
    summary: pd.DataFrame, *, x: str = "n_patients", target: float = 0.8, xlabel: str | None = None
):
    """Power (± 1.96 Monte Carlo SE) against a design size, one line per effect.

    Parameters
    ----------
    summary : pandas.DataFrame
        From :func:`summarise_power`.
    x : str, default "n_patients"
        The column on the horizontal axis (e.g. ``patients_per_therapist`` when the
        summary was made with ``designs``).
    target : float, default 0.8
        Drawn as a dashed reference line.

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt

    from .figures import ONE_COLUMN, TWO_COLUMNS, style

    if x not in summary.columns:
        raise KeyError(
            f"`x` must be a column of `summary`; got {x!r}, columns are {list(summary.columns)}."
        )
    colours = ["#0072B2", "#D55E00", "#009E73", "#CC79A7"]
    with style():
        fig, ax = plt.subplots(figsize=(TWO_COLUMNS * 0.7, ONE_COLUMN))
        for colour, (term, g) in zip(colours, summary.groupby("term", sort=True)):
            g = g.sort_values(x)
            ax.errorbar(
                g[x],
                g["power"],
                yerr=1.96 * g["power_mcse"],
                marker="o",
                color=colour,
                capsize=2,
                label=_TERM_LABELS.get(term, term),
            )
        ax.axhline(target, color="#999999", ls="--", lw=0.8)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel(xlabel or x.replace("_", " "))
        ax.set_ylabel("power (α = .05)")
        ax.legend(frameon=False, fontsize="small", loc="best")
        fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- rendering


def power_markdown(summary: pd.DataFrame) -> str:
    """The power table as Markdown (power and coverage with Monte Carlo SEs)."""
    shown = pd.DataFrame(
        {
            "Design": summary["design"],
            "Effect": summary["term"].map(lambda t: _TERM_LABELS.get(t, t)),
            "Patients": summary["n_patients"].map(str),
            "Converged": [
                f"{c}/{r}" for c, r in zip(summary["converged"], summary["replications"])
            ],
            "Failed (%)": summary["failure_rate"].map(lambda f: f"{100 * f:.1f}"),
            "Truth": summary["truth"].map("{:.3g}".format),
            "Bias": summary["bias"].map("{:.3f}".format),
            "Emp. SE": summary["empirical_se"].map("{:.3f}".format),
            "Mean SE": summary["mean_se"].map("{:.3f}".format),
            "Power": [
                f"{p:.2f} ({m:.2f})" for p, m in zip(summary["power"], summary["power_mcse"])
            ],
            "Power (converged)": [
                f"{p:.2f} ({m:.2f})"
                for p, m in zip(summary["power_converged"], summary["power_converged_mcse"])
            ],
            "Coverage": [
                f"{c:.2f} ({m:.2f})" for c, m in zip(summary["coverage"], summary["coverage_mcse"])
            ],
        }
    )
    note = (
        "*Note.* Power: share of all replications with p < .05, a failed or non-converged fit "
        "counting as not significant (Monte Carlo SE); power (converged): the same share among "
        "converged replications only; failed: replications whose fit failed or did not converge. "
        "Bias, SEs and coverage (share of 95% Wald intervals holding the true value) use the "
        "converged replications."
    )
    return (
        "**Simulation-based power**\n\n"
        + shown.to_markdown(index=False, disable_numparse=True)
        + "\n\n"
        + note
        + "\n"
    )


def run_moderation_power_chunk(
    design: PowerDesign | Mapping[str, Any],
    seeds: Sequence[int],
    *,
    modality: Mapping[str, Any],
    alpha: float = 0.05,
    label: str = "design",
) -> pd.DataFrame:
    """Power to detect a moderation of the within-patient alliance effect by modality.

    Each replication is drawn from *design* with session modalities and their true
    within-patient effects (*modality*, as in :func:`allianceflow.simulate.simulate_study`)
    and fitted with the ``alliance_outcome`` preset moderated by ``modality``
    (:func:`allianceflow.models.moderation.fit_moderated`, Wald tests). The terms are the
    interactions ``alliance_within_lag:modality_<level>`` of each non-reference level (the
    first level of ``modality["shares"]`` is the reference), whose truth is the level's
    effect minus the reference level's.

    Returns
    -------
    pandas.DataFrame
        The columns of :func:`run_power_chunk`, one row per seed and interaction, ready for
        :func:`summarise_power`.

    Notes
    -----
    Interactions need far larger samples than main effects of the same size: the SE of a
    difference between two slopes is at least the larger of their SEs, and the rarer level
    has few sessions.
    """
    from .models.moderation import fit_moderated, moderator_terms

    design = _check_design(design)
    if not isinstance(alpha, (int, float)) or not 0.0 < alpha < 1.0:
        raise ValueError(f"`alpha` must lie in (0, 1); got {alpha!r}.")
    if not isinstance(modality, Mapping) or "shares" not in modality:
        raise ValueError(f"`modality` must be a mapping with `shares`; got {modality!r}.")
    levels = [str(lv) for lv in modality["shares"]]
    effects = dict(modality.get("within_effect") or {})
    reference = float(effects.get(levels[0], design.within_effect))
    terms = {
        f"alliance_within_lag:{column}": float(effects.get(level, design.within_effect)) - reference
        for column, level, _ in moderator_terms("modality", levels)
    }
    options = {"moderator": "modality", "moderator_levels": levels, "moderator_within": True}
    rows = []
    for seed in seeds:
        data = simulate_power_data(design, seed=int(seed), modality=modality)
        base = {"design": label, "seed": int(seed), "n_patients": design.n_patients}
        try:
            _, record = fit_moderated(
                data, "alliance_outcome", options, name=label, reml=True, min_levels=2
            )
        except (ValueError, np.linalg.LinAlgError) as error:
            for term, truth in terms.items():
                rows.append(
                    {**base, "term": term, "truth": truth, "converged": False, "error": str(error)}
                )
            continue
        fixed = {row["term"]: row for row in record["fixed"]}
        for term, truth in terms.items():
            f = fixed[term]
            rows.append(
                {
                    **base,
                    "term": term,
                    "truth": truth,
                    "estimate": f["estimate"],
                    "se": f["se"],
                    "ci_low": f["ci_low"],
                    "ci_high": f["ci_high"],
                    "p": f["p"],
                    "significant": bool(f["p"] is not None and f["p"] < alpha),
                    "covered": bool(f["ci_low"] <= truth <= f["ci_high"]),
                    "converged": bool(record["convergence"]["converged"]),
                    "n_obs": int(record["n_obs"]),
                    "error": "",
                }
            )
    frame = pd.DataFrame(rows, columns=_ROW_COLUMNS)
    return frame.astype({"seed": "int64", "n_patients": "int64"})
