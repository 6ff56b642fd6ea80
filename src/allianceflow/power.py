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
early-alliance effect on early ending (``dropout``). A moderated alliance–outcome model
(:func:`run_moderation_power_chunk`) draws session modalities with their own
within-patient alliance effects and tests the alliance × modality interactions. The four
analyses (:data:`ANALYSES`, run by :func:`run_analysis_chunk`) share one row builder and
summarise the same way. Every replication logs a progress line (logger ``allianceflow``),
which the pipeline's power jobs write to their log files.

Tests: the linear and moderated fits use Wald z with containment df by default, not the
Kenward–Roger df of the pipeline's fitted models, because Kenward–Roger costs about five
times as much per replication; ``ddf`` offers the pipeline's df (see
:func:`run_power_chunk`), and every row and the power table name the test used. The GLMMs
use Wald z on the Laplace likelihood, as ``glmer`` and the pipeline.

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
from collections.abc import Callable, Iterable, Mapping, Sequence
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
    "check_power_config",
    "design_from_model",
    "simulate_power_data",
    "ANALYSES",
    "ROW_COLUMNS",
    "SIZE_LABELS",
    "run_analysis_chunk",
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
        if not 0.0 <= self.deterioration_share <= 1.0:
            raise ValueError(
                f"`deterioration_share` must lie in [0, 1]; got {self.deterioration_share!r}."
            )
        e = self.early_sessions
        if (
            isinstance(e, bool)
            or not isinstance(e, (int, np.integer))
            or not 1 <= e < self.sessions
        ):
            raise ValueError(
                f"`early_sessions` must be a whole number from 1 to `sessions` - 1 "
                f"({self.sessions - 1}); got {e!r}."
            )

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


def check_power_config(
    power: Mapping[str, Any],
    *,
    source: str = "config.yaml",
    pool_model: tuple[str, Mapping[str, Any]] | None = None,
) -> dict[str, PowerDesign]:
    """Check what the schema cannot in a validated ``power:`` block; return its designs.

    The designs must be valid :class:`PowerDesign` s (:func:`designs_from_config`), and
    when ``analyses`` holds ``moderation`` the ``moderation`` block must give two or more
    modalities whose shares sum to 1 and true effects only for those modalities. With
    ``from_study``, *pool_model* (the name and spec of config ``pool.model``, whose fit
    supplies the effects) must not be moderated (see :func:`design_from_model`).

    Raises
    ------
    allianceflow.config.ConfigError
        A paragraph naming *source*, the key, what it holds and the fix.
    """
    from .config import ConfigError

    try:
        designs = designs_from_config(power)
    except (KeyError, ValueError) as error:
        text = error.args[0] if error.args else str(error)
        raise ConfigError(f"{source}: `power.design` is not a valid design: {text}") from None
    if power.get("from_study") and pool_model is not None:
        name, spec = pool_model
        moderator = ((spec or {}).get("options") or {}).get("moderator")
        if moderator:
            raise ConfigError(
                f"{source}: `power.from_study` plans from the fitted `pool.model` ({name!r}), "
                f"which is moderated by {moderator!r}: its alliance_within_lag is the slope at "
                "the moderator's reference level, not the study's within-patient effect. Set "
                "`pool.model` to an unmoderated alliance-outcome model, or `power.from_study: "
                "null`."
            )
    if "moderation" not in (power.get("analyses") or ()):
        return designs
    block = power.get("moderation") or {}
    shares = dict(block.get("shares") or {})
    total = sum(float(v) for v in shares.values())
    if len(shares) < 2 or not math.isclose(total, 1.0, abs_tol=1e-9):
        raise ConfigError(
            f"{source}: `power.moderation.shares` is {shares!r}; the moderation analysis needs "
            "two or more session modalities (the reference first) with shares that sum to 1, "
            "e.g. {in_person: 0.6, video: 0.4}."
        )
    extra = sorted(set(block.get("within_effect") or {}) - set(shares))
    if extra:
        raise ConfigError(
            f"{source}: `power.moderation.within_effect` names {extra}, which "
            f"`power.moderation.shares` does not list ({list(shares)}); give effects only for "
            "listed modalities (a modality left out has `power.design.within_effect`)."
        )
    return designs


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
    if result.get("moderation"):
        raise ValueError(
            f"`result` is a moderated model (moderator {result['moderation'].get('moderator')!r}"
            "): its alliance_within_lag is the slope at the moderator's reference level, not "
            "the study's within-patient effect. Plan from the unmoderated alliance_outcome "
            "model (config `pool.model`)."
        )
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


#: Columns of a chunk (one row per replication and effect), for :func:`summarise_power`.
ROW_COLUMNS = [
    "analysis",
    "design",
    "seed",
    "term",
    "effect",
    "units",
    "truth",
    "estimate",
    "se",
    "ci_low",
    "ci_high",
    "p",
    "test",
    "alpha",
    "significant",
    "covered",
    "converged",
    "n_obs",
    "n_patients",
    "error",
]

#: The power analyses a config can ask for (``power.analyses``), in words.
ANALYSES: dict[str, str] = {
    "alliance_outcome": (
        "within-patient alliance effect and feedback × session (linear mixed model, "
        ":data:`DEFAULT_FORMULA`)"
    ),
    "deterioration": "feedback on reliable deterioration (binomial GLMM, preset deterioration)",
    "dropout": "early alliance on early ending (binomial GLMM, preset dropout)",
    "moderation": (
        "moderation of the within-patient alliance effect by session modality "
        "(alliance_outcome preset with moderator: modality)"
    ),
}

#: Denominator df of the linear fits (:func:`allianceflow.models.fit_model`'s ``ddf``).
DDF_CHOICES = ("containment", "satterthwaite", "kenward-roger")

_ALLIANCE_UNITS = "ORS points per WAI-SR item-mean point"
#: Model term -> (effect in words, units of its estimate).
_EFFECT_WORDS: dict[str, tuple[str, str]] = {
    "alliance_within_lag": ("within-patient alliance effect", _ALLIANCE_UNITS),
    "session:feedback": ("feedback × session", "ORS points per session"),
    "feedback": (
        "feedback on reliable deterioration",
        "log odds ratio, feedback vs treatment as usual",
    ),
    "early_alliance": (
        "early alliance on early ending",
        "log odds ratio per WAI-SR item-mean point",
    ),
}


def _effect_words(term: str) -> tuple[str, str]:
    """The effect of *term* in words and its units (the term itself when unknown)."""
    return _EFFECT_WORDS.get(term, (term, ""))


def _test_words(record: Mapping[str, Any]) -> str:
    """The test a fit's p-values and intervals come from, in words."""
    if record.get("family", "gaussian") != "gaussian":
        return "Wald z (Laplace GLMM, as glmer)"
    return {
        "satterthwaite": "t on Satterthwaite df",
        "kenward-roger": "t on Kenward–Roger df",
    }.get(record.get("ddf"), "Wald z (containment df)")


def _check_alpha(alpha: Any) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 < alpha < 1.0:
        raise ValueError(f"`alpha` must lie in (0, 1); got {alpha!r}.")
    return float(alpha)


def _check_ddf(ddf: Any) -> str:
    if ddf not in DDF_CHOICES:
        raise ValueError(
            f"`ddf` must be {', '.join(map(repr, DDF_CHOICES[:-1]))} or {DDF_CHOICES[-1]!r}; "
            f"got {ddf!r}."
        )
    return str(ddf)


def _progress(label: str, i: int, n: int, seed: int) -> None:
    log.info("power %s: replication %d of %d (seed %d)", label, i, n, seed)


@dataclass(frozen=True)
class _Effect:
    """One effect a replication is scored on: its model term, truth and words."""

    term: str
    truth: float
    effect: str
    units: str


def _replicate(
    seeds: Sequence[int],
    *,
    simulate: Callable[[int], pd.DataFrame],
    fit: Callable[[pd.DataFrame], Mapping[str, Any]],
    effects: Sequence[_Effect],
    analysis: str,
    label: str,
    n_patients: int,
    alpha: float,
) -> pd.DataFrame:
    """Simulate, fit and score each seed: the one row builder of every chunk runner.

    For each seed: log a progress line, draw the data (*simulate*), fit it (*fit*, which
    returns a :func:`allianceflow.models.fit_model` record) and write one row per effect
    (:data:`ROW_COLUMNS`). A fit that raises ``ValueError``, ``OverflowError`` or
    ``LinAlgError`` keeps its rows with missing estimates, ``converged`` False and the
    message in ``error``.
    """
    rows = []
    for i, seed in enumerate(seeds, start=1):
        seed = int(seed)
        _progress(label, i, len(seeds), seed)
        data = simulate(seed)
        base = {"analysis": analysis, "design": label, "seed": seed, "alpha": alpha}
        base["n_patients"] = n_patients
        try:
            record = fit(data)
        except (ValueError, OverflowError, np.linalg.LinAlgError) as error:
            # OverflowError: a GLMM whose odds ratio interval overflows (separation, with a
            # huge SE) is a replication that cannot be analysed, not a failed job
            for e in effects:
                rows.append(
                    {
                        **base,
                        "term": e.term,
                        "effect": e.effect,
                        "units": e.units,
                        "truth": e.truth,
                        "test": "",
                        "converged": False,
                        "error": str(error),
                    }
                )
            continue
        fixed = {row["term"]: row for row in record["fixed"]}
        for e in effects:
            f = fixed[e.term]
            rows.append(
                {
                    **base,
                    "term": e.term,
                    "effect": e.effect,
                    "units": e.units,
                    "truth": e.truth,
                    "estimate": f["estimate"],
                    "se": f["se"],
                    "ci_low": f["ci_low"],
                    "ci_high": f["ci_high"],
                    "p": f["p"],
                    "test": _test_words(record),
                    "significant": bool(f["p"] is not None and f["p"] < alpha),
                    "covered": bool(f["ci_low"] <= e.truth <= f["ci_high"]),
                    "converged": bool(record["convergence"]["converged"]),
                    "n_obs": int(record["n_obs"]),
                    "error": "",
                }
            )
    frame = pd.DataFrame(rows, columns=ROW_COLUMNS)
    return frame.astype({"seed": "int64", "n_patients": "int64"})


def run_power_chunk(
    design: PowerDesign | Mapping[str, Any],
    seeds: Sequence[int],
    *,
    formula: str = DEFAULT_FORMULA,
    alpha: float = 0.05,
    label: str = "design",
    ddf: str = "containment",
) -> pd.DataFrame:
    r"""Simulate and fit one replication per seed; one tidy row per seed and term.

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
    ddf : {'containment', 'satterthwaite', 'kenward-roger'}, default 'containment'
        Denominator df of the tests (:func:`allianceflow.models.fit_model`); see Notes.

    Returns
    -------
    pandas.DataFrame
        :data:`ROW_COLUMNS`: ``analysis`` ("alliance_outcome"), ``design, seed, term``,
        ``effect`` and ``units`` (the term in words), ``truth, estimate, se, ci_low,
        ci_high, p``, ``test`` (the test in words), ``alpha, significant, covered,
        converged, n_obs, n_patients, error``. ``covered``: the 95% interval holds the
        truth. A replication whose fit fails keeps its rows with missing estimates,
        ``converged`` False and the message in ``error``; one that the convergence check
        rejects keeps its estimates with ``converged`` False.

    Notes
    -----
    *Which test.* By default each replication is tested with the Wald statistic
    :math:`z = \hat\beta/\mathrm{SE}` against the normal distribution (containment df,
    ``ddf='containment'``), while the pipeline's fitted models default to Kenward–Roger
    (``models.<name>.ddf``): *t* on Kenward & Roger's (1997) df with their adjusted SE.
    The reason is cost: on a design of 200 patients × 12 sessions a Kenward–Roger fit took
    0.7–1.2 s of CPU against 0.15–0.19 s for the Wald fit (about five times as long, for
    every replication of every design), and there the two agreed to 0.3% in SE (df 1476
    vs 1477). With few therapists or patients z tests are liberal (Luke 2017), so power
    from z tests is optimistic where the pipeline's Kenward–Roger analysis is
    conservative; pass ``ddf='kenward-roger'`` (config ``power.ddf``) to simulate the
    analysis the pipeline will run. The ``test`` column records what each fit used (a
    Kenward–Roger computation that fails falls back to Wald z, with a warning).
    """
    from .models import fit_model

    design = _check_design(design)
    alpha = _check_alpha(alpha)
    ddf = _check_ddf(ddf)
    missing = [t for t in TERMS if t not in formula]
    if missing:
        raise ValueError(
            f"`formula` must contain the terms {list(TERMS)}; {missing} missing from {formula!r}."
        )
    return _replicate(
        seeds,
        simulate=lambda seed: simulate_power_data(design, seed=seed),
        fit=lambda data: fit_model(
            data, formula, reml=True, ddf=ddf, name=label, min_levels=2
        ).to_dict(),
        effects=[_Effect(t, design.truth(t), *_effect_words(t)) for t in TERMS],
        analysis="alliance_outcome",
        label=label,
        n_patients=design.n_patients,
        alpha=alpha,
    )


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
    ``early_sessions`` sessions, the sessions before an early ending can happen). No
    on-track status is derived.
    """
    from .clinical import derive_patients, patient_outcomes

    design = _check_design(design)
    sim = simulate_study(design.to_study_design(), seed=seed)
    sim["alliance"] = sim.filter(regex=r"^wai_sr_\d+$").mean(axis=1)
    sim["outcome"] = sim.filter(regex=r"^ors_\d+$").sum(axis=1, min_count=4)
    patients = derive_patients(
        sim, direction="higher_is_better", rci=rci, ending="ending", days="days"
    )
    return patient_outcomes(patients, sim, early_sessions=design.early_sessions)


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
        :data:`ROW_COLUMNS` (see :func:`run_power_chunk`), ``analysis`` the preset. The
        truth of ``deterioration`` is the log odds ratio of a *lasting episode*; reliable
        deterioration as measured also counts chance falls, so its bias and coverage show
        how much the measured outcome dilutes the effect (see
        :func:`allianceflow.simulate.measured_deterioration_risks`). The dropout truth is
        exact. Tests are Wald z on the Laplace likelihood, as ``glmer`` and the pipeline's
        binary presets.
    """
    from .models import fit_model
    from .models.presets import preset_family, preset_formula

    design = _check_design(design)
    if preset not in BINARY_TERMS:
        raise ValueError(
            f"`preset` must be {' or '.join(map(repr, BINARY_TERMS))}; got {preset!r}."
        )
    alpha = _check_alpha(alpha)
    term, field = BINARY_TERMS[preset]
    formula = preset_formula(preset)
    family = preset_family(preset)
    return _replicate(
        seeds,
        simulate=lambda seed: simulate_patients(design, seed=seed, rci=rci),
        fit=lambda data: fit_model(
            data, formula, family=family, name=label, min_levels=2
        ).to_dict(),
        effects=[_Effect(term, float(getattr(design, field)), *_effect_words(term))],
        analysis=preset,
        label=label,
        n_patients=design.n_patients,
        alpha=alpha,
    )


def run_moderation_power_chunk(
    design: PowerDesign | Mapping[str, Any],
    seeds: Sequence[int],
    *,
    modality: Mapping[str, Any],
    alpha: float = 0.05,
    label: str = "design",
    ddf: str = "containment",
) -> pd.DataFrame:
    """Power to detect a moderation of the within-patient alliance effect by modality.

    Each replication is drawn from *design* with session modalities and their true
    within-patient effects (*modality*, as in :func:`allianceflow.simulate.simulate_study`)
    and fitted with the ``alliance_outcome`` preset moderated by ``modality``
    (:func:`allianceflow.models.moderation.fit_moderated`). The terms are the
    interactions ``alliance_within_lag:modality_<level>`` of each non-reference level (the
    first level of ``modality["shares"]`` is the reference), whose truth is the level's
    effect minus the reference level's (a level without an effect in
    ``modality["within_effect"]`` has the design's ``within_effect``).

    Parameters
    ----------
    design, seeds, alpha, label, ddf
        As in :func:`run_power_chunk` (its Notes say why ``ddf`` defaults to containment).
    modality : mapping
        ``{"shares": {level: probability}, "within_effect": {level: effect}}``.

    Returns
    -------
    pandas.DataFrame
        :data:`ROW_COLUMNS` (see :func:`run_power_chunk`), ``analysis`` "moderation", one
        row per seed and interaction, ready for :func:`summarise_power`.

    Notes
    -----
    Interactions need far larger samples than main effects of the same size: the SE of a
    difference between two slopes is at least the larger of their SEs, and the rarer level
    has few sessions.
    """
    from .models.moderation import fit_moderated, moderator_terms

    design = _check_design(design)
    alpha = _check_alpha(alpha)
    ddf = _check_ddf(ddf)
    if not isinstance(modality, Mapping) or "shares" not in modality:
        raise ValueError(f"`modality` must be a mapping with `shares`; got {modality!r}.")
    levels = [str(lv) for lv in modality["shares"]]
    within = dict(modality.get("within_effect") or {})
    reference = float(within.get(levels[0], design.within_effect))
    effects = [
        _Effect(
            f"alliance_within_lag:{column}",
            float(within.get(level, design.within_effect)) - reference,
            f"within-patient alliance effect, {level.replace('_', ' ')} minus "
            f"{levels[0].replace('_', ' ')} sessions",
            f"{_ALLIANCE_UNITS} (difference of slopes)",
        )
        for column, level, _ in moderator_terms("modality", levels)
    ]
    options = {"moderator": "modality", "moderator_levels": levels, "moderator_within": True}

    def fit(data: pd.DataFrame) -> Mapping[str, Any]:
        _, record = fit_moderated(
            data, "alliance_outcome", options, name=label, reml=True, ddf=ddf, min_levels=2
        )
        return record

    return _replicate(
        seeds,
        simulate=lambda seed: simulate_power_data(design, seed=seed, modality=modality),
        fit=fit,
        effects=effects,
        analysis="moderation",
        label=label,
        n_patients=design.n_patients,
        alpha=alpha,
    )


def run_analysis_chunk(
    analysis: str,
    design: PowerDesign | Mapping[str, Any],
    seeds: Sequence[int],
    *,
    alpha: float = 0.05,
    label: str = "design",
    formula: str = DEFAULT_FORMULA,
    ddf: str = "containment",
    rci: float = 5.0,
    modality: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """Run one chunk of the power analysis *analysis* (a key of :data:`ANALYSES`).

    ``alliance_outcome`` runs :func:`run_power_chunk` (with *formula* and *ddf*),
    ``deterioration`` and ``dropout`` :func:`run_binary_power_chunk` (with *rci*),
    ``moderation`` :func:`run_moderation_power_chunk` (with *modality* and *ddf*); settings
    an analysis does not use are ignored.

    Raises
    ------
    ValueError
        An unknown analysis, or ``moderation`` without *modality*.
    """
    if analysis not in ANALYSES:
        raise ValueError(
            f"`analysis` must be one of {', '.join(map(repr, ANALYSES))}; got {analysis!r}."
        )
    if analysis == "alliance_outcome":
        return run_power_chunk(design, seeds, formula=formula, alpha=alpha, label=label, ddf=ddf)
    if analysis in BINARY_TERMS:
        return run_binary_power_chunk(
            design, seeds, preset=analysis, alpha=alpha, label=label, rci=rci
        )
    if modality is None:
        raise ValueError(
            "`modality` must be given for the 'moderation' analysis (config "
            "`power.moderation`: the shares of the session modalities and their true "
            "within-patient effects); got None."
        )
    return run_moderation_power_chunk(
        design, seeds, modality=modality, alpha=alpha, label=label, ddf=ddf
    )


def _first(g: pd.DataFrame, column: str, default: Any) -> Any:
    if column not in g.columns:
        return default
    values = g[column].dropna()
    return values.iloc[0] if len(values) else default


def summarise_power(
    chunks: pd.DataFrame | Iterable[pd.DataFrame],
    *,
    designs: Mapping[str, PowerDesign] | None = None,
) -> pd.DataFrame:
    r"""Merge chunk results and summarise each design and term.

    Parameters
    ----------
    chunks : DataFrame or iterable of DataFrames
        Outputs of the chunk runners (:func:`run_analysis_chunk`; any split of the
        replications, any mix of analyses).
    designs : mapping of str to PowerDesign, optional
        Adds the design's sizes (``n_therapists, patients_per_therapist, sessions``) as
        columns, for power curves.

    Returns
    -------
    pandas.DataFrame
        Sorted by analysis, design and term: ``analysis, design, term, effect, units,
        test, alpha, n_patients, replications, converged, failure_rate, truth, power,
        power_mcse, power_converged, power_converged_mcse, mean_estimate, bias,
        relative_bias, empirical_se, mean_se, coverage, coverage_mcse`` (+ the design
        sizes when *designs* is given). ``test`` lists the tests the fits used (several,
        joined by " / ", when a Kenward–Roger computation fell back to z in some).

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
    frame = frame.copy()
    if "analysis" not in frame.columns:
        frame["analysis"] = ""
    frame["analysis"] = frame["analysis"].fillna("")
    dup = frame.duplicated(["design", "term", "seed"])
    if dup.any():
        first = frame.loc[dup].iloc[0]
        raise ValueError(
            f"seed {first['seed']} appears twice for design {first['design']!r} and term "
            f"{first['term']!r}: was a chunk merged twice?"
        )
    out = []
    for (analysis, design, term), g in frame.groupby(["analysis", "design", "term"], sort=True):
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
        words, units = _effect_words(term)
        tests = (
            sorted({str(t) for t in ok["test"].dropna() if str(t)}) if "test" in ok.columns else []
        )
        row = {
            "analysis": analysis,
            "design": design,
            "term": term,
            "effect": _first(g, "effect", words),
            "units": _first(g, "units", units),
            "test": " / ".join(tests),
            "alpha": float(_first(g, "alpha", 0.05)),
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


#: Words for the design sizes a power curve can have on its x axis.
SIZE_LABELS: dict[str, str] = {
    "n_patients": "patients (all therapists)",
    "n_therapists": "therapists",
    "patients_per_therapist": "patients per therapist",
    "sessions": "sessions per patient (planned maximum)",
}

#: Okabe–Ito colours and markers, one pair per effect on the power curve.
_COLOURS = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000"]
_MARKERS = ["o", "s", "^", "D", "v", "P", "X"]


def _legend_label(g: pd.DataFrame, term: str) -> str:
    """An effect in words, with its true size and units when every design shares them."""
    words, units = _effect_words(term)
    words = _first(g, "effect", words)
    units = _first(g, "units", units)
    truths = g["truth"].dropna().unique() if "truth" in g.columns else []
    if len(truths) == 1 and units:
        return f"{words} ({float(truths[0]):.3g} {units})"
    return str(words)


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
    xlabel : str, optional
        The x axis in words; default :data:`SIZE_LABELS` of *x*.

    Returns
    -------
    matplotlib.figure.Figure
        The legend names each effect in words, with its true size and units when every
        design has the same truth; the y axis names α.

    Raises
    ------
    KeyError
        *x* is not a column of *summary*.

    Notes
    -----
    Effects take the seven Okabe–Ito colours in turn, each with its own marker; from the
    eighth on the colours repeat with dashed lines.
    """
    import matplotlib.pyplot as plt

    from .figures import ONE_COLUMN, TWO_COLUMNS, style

    if x not in summary.columns:
        raise KeyError(
            f"`x` must be a column of `summary`; got {x!r}, columns are {list(summary.columns)}."
        )
    keys = ["analysis", "term"] if "analysis" in summary.columns else ["term"]
    groups = list(summary.groupby(keys, sort=True))
    alphas = summary["alpha"].dropna().unique() if "alpha" in summary.columns else [0.05]
    alpha = f"{float(alphas[0]):g}".lstrip("0") if len(alphas) == 1 else "α of each effect"
    with style():
        fig, ax = plt.subplots(figsize=(TWO_COLUMNS * 0.7, ONE_COLUMN))
        for i, (key, g) in enumerate(groups):
            term = key[-1] if isinstance(key, tuple) else key
            g = g.sort_values(x)
            ax.errorbar(
                g[x],
                g["power"],
                yerr=1.96 * g["power_mcse"],
                marker=_MARKERS[i % len(_MARKERS)],
                ls="-" if i < len(_COLOURS) else "--",
                color=_COLOURS[i % len(_COLOURS)],
                capsize=2,
                label=_legend_label(g, term),
            )
        ax.axhline(target, color="#999999", ls="--", lw=0.8)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel(xlabel or SIZE_LABELS.get(x, x.replace("_", " ")))
        ax.set_ylabel(f"power (p < {alpha})" if len(alphas) == 1 else "power (share significant)")
        ax.legend(frameon=False, fontsize="small", loc="best")
        fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- rendering


def _note_on_tests(tests: Iterable[str]) -> str:
    """The Markdown table's sentence on the tests used, next to the pipeline's."""
    tests = {t for test in tests for t in str(test).split(" / ") if t and t != "nan"}
    parts = []
    if any(t.startswith("Wald z (containment") for t in tests):
        parts.append(
            "The linear fits are tested with Wald z (containment df), while the pipeline's "
            "fitted models use Kenward–Roger df by default (`models.<name>.ddf`): z tests "
            "cost about a fifth of the time per replication and agree with Kenward–Roger "
            "when there are many patients and therapists, but are liberal with few, so "
            "there this power is optimistic; set `power.ddf: kenward-roger` to simulate "
            "the pipeline's test."
        )
    if any(t.startswith("t on") for t in tests):
        parts.append(
            "The linear fits are tested as the column Test says, with the df of "
            "`power.ddf` (the pipeline's models: `models.<name>.ddf`)."
        )
    if any(t.startswith("Wald z (Laplace") for t in tests):
        parts.append(
            "Binary outcomes: Wald z on the Laplace likelihood, as glmer and the pipeline's "
            "binary presets; the deterioration truth is the log odds ratio of a lasting "
            "episode, which reliable deterioration as measured dilutes (see Bias)."
        )
    return " ".join(parts)


def power_markdown(summary: pd.DataFrame) -> str:
    """The power table as Markdown, with a note on the tests used.

    Effects are in words with their units; power and coverage carry their Monte Carlo SEs.
    """
    alphas = summary["alpha"].dropna().unique() if "alpha" in summary.columns else [0.05]
    alpha = f"{float(alphas[0]):g}".lstrip("0") if len(alphas) == 1 else "α"
    words = [_effect_words(t) for t in summary["term"]]
    effect = summary["effect"] if "effect" in summary.columns else [w for w, _ in words]
    units = summary["units"] if "units" in summary.columns else [u for _, u in words]
    shown = pd.DataFrame(
        {
            "Design": summary["design"],
            "Effect": list(effect),
            "Units": list(units),
            "Test": list(summary["test"]) if "test" in summary.columns else "",
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
        f"*Note.* Power: share of all replications with p < {alpha}, a failed or "
        "non-converged fit counting as not significant (Monte Carlo SE); power (converged): "
        "the same share among converged replications only; failed: replications whose fit "
        "failed or did not converge. Bias, SEs and coverage (share of 95% intervals holding "
        "the true value) use the converged replications; truth, bias and SEs are in the "
        "effect's units. "
    )
    note += _note_on_tests(summary["test"] if "test" in summary.columns else [])
    return (
        "**Simulation-based power**\n\n"
        + shown.to_markdown(index=False, disable_numparse=True)
        + "\n\n"
        + note.rstrip()
        + "\n"
    )
