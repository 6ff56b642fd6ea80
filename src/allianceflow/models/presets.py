"""lme4 formulas of the standard research questions (:func:`preset_formula`).

A preset names a question (growth, alliance -> outcome within and between patients,
therapist effects, feedback, rupture repair, alliance components, informants) and writes
the model for it in lme4 syntax from the variables the derive stage makes
(:func:`allianceflow.derive.preset_variables`).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "PRESETS",
    "PATIENT_PRESETS",
    "ALL_PRESETS",
    "preset_formula",
    "preset_level",
    "preset_family",
    "preset_rows",
    "COUPLE_PRESETS",
    "SYSTEM_PATIENT_PRESETS",
]

#: Presets fitted to the patients table, one row per patient, and the family of each:
#: binary outcomes are binomial (logit link), counts Poisson (log link).
PATIENT_PRESETS: dict[str, str] = {
    "deterioration": "binomial",
    "improvement": "binomial",
    "dropout": "binomial",
    "attendance": "poisson",
}
#: Patient-level presets of couple and family therapy, fitted to one client per system
#: (:func:`preset_rows`), and their family.
SYSTEM_PATIENT_PRESETS: dict[str, str] = {"split_dropout": "binomial"}

#: Session-level presets: linear mixed models of the analysis table (one row per session).
PRESETS: tuple[str, ...] = (
    "growth",
    "alliance_outcome",
    "therapist_effects",
    "feedback",
    "rupture_repair",
    "alliance_components",
    "informants",
)
#: Presets of couple and family therapy (:mod:`allianceflow.couples`): their data need a
#: ``system`` column, and their default random part has a system level.
COUPLE_PRESETS: tuple[str, ...] = (
    "couple_alliance_outcome",
    "split_alliance",
    "split_trajectory",
    "split_dropout",
)
#: Every preset name :func:`preset_formula` knows: the session-level ones, the couples
#: ones (session-level, then ``split_dropout``), then the patient-level ones.
ALL_PRESETS: tuple[str, ...] = (*PRESETS, *COUPLE_PRESETS, *PATIENT_PRESETS)


def _check_name(name: str) -> None:
    if name not in ALL_PRESETS:
        raise ValueError(
            f"`name` must be one of {', '.join(map(repr, ALL_PRESETS))}; got {name!r}."
        )


def preset_level(name: str) -> str:
    """The table a preset is fitted to: ``"patient"`` (the patients table) or ``"session"``.

    Examples
    --------
    >>> preset_level("dropout"), preset_level("growth")
    ('patient', 'session')
    """
    _check_name(name)
    return "patient" if name in PATIENT_PRESETS or name in SYSTEM_PATIENT_PRESETS else "session"


#: Values of the ``subgroup`` option of the deterioration and improvement presets, and the
#: ``off_track`` value of the rows each keeps.
SUBGROUPS = {"not_on_track": 1.0, "on_track": 0.0}


def preset_rows(name: str, **options: Any) -> dict[str, float]:
    """The rows a preset is fitted to, as ``{column: value}`` (empty: all rows).

    The system-level couples presets (``split_trajectory``, ``split_dropout``) keep one
    row per system session or per system (``system_row == 1``,
    :func:`allianceflow.couples.system_variables`). The deterioration and improvement
    presets restrict rows with their ``subgroup`` option: ``"not_on_track"`` keeps
    patients ever flagged (``off_track == 1``), ``"on_track"`` those assessed and never
    flagged.

    Examples
    --------
    >>> preset_rows("deterioration", subgroup="not_on_track")
    {'off_track': 1.0}
    >>> preset_rows("dropout")
    {}
    >>> preset_rows("split_dropout")
    {'system_row': 1.0}
    """
    _check_name(name)
    if name in ("split_trajectory", "split_dropout"):
        return {"system_row": 1.0}
    subgroup = options.get("subgroup")
    if name not in ("deterioration", "improvement") or subgroup is None:
        return {}
    _check_choice("subgroup", subgroup, (None, *SUBGROUPS))
    return {"off_track": SUBGROUPS[subgroup]}


def preset_family(name: str) -> str:
    """The response family of a preset: ``"binomial"``, ``"poisson"`` or ``"gaussian"``.

    Examples
    --------
    >>> preset_family("deterioration"), preset_family("attendance"), preset_family("growth")
    ('binomial', 'poisson', 'gaussian')
    """
    _check_name(name)
    return {**PATIENT_PRESETS, **SYSTEM_PATIENT_PRESETS}.get(name, "gaussian")


def _random_part(time: str, therapist: bool, random: str | None, slopes: str = "correlated") -> str:
    if random is not None:
        return random
    bar = "|" if slopes == "correlated" else "||"
    patient = f"(1 + {time} {bar} patient)"
    return f"(1 | therapist) + {patient}" if therapist else patient


#: Options of the moderated presets (alliance_outcome, alliance_components, informants).
_MODERATOR = {"moderator": None, "moderator_levels": None, "moderator_within": False}


def _moderator_part(o: dict, pairs: list[tuple[str, str]]) -> list[str]:
    """The moderator's terms (see :mod:`allianceflow.models.moderation`)."""
    from allianceflow.models.moderation import moderated_terms

    m = o["moderator"]
    if not isinstance(m, str) or not m:
        raise ValueError(f"`moderator` must be a column name; got {m!r}.")
    levels = o["moderator_levels"]
    if levels is not None and (isinstance(levels, str) or len(levels) < 2):
        raise ValueError(
            f"`moderator_levels` must list at least two levels (the reference first); "
            f"got {levels!r}."
        )
    _check_choice("moderator_within", o["moderator_within"], (False, True))
    return moderated_terms(pairs, m, levels, o["moderator_within"])


def _check_choice(name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(
            f"`{name}` must be {', '.join(map(repr, allowed[:-1]))} or {allowed[-1]!r}; "
            f"got {value!r}."
        )


def preset_formula(name: str, **options: Any) -> str:
    """lme4 formula of a standard research question, by name.

    Parameters
    ----------
    name : str
        One of :data:`ALL_PRESETS`. Options common to the session-level presets:
        ``outcome="outcome"``, ``time="session"``, ``therapist=True`` (add a therapist
        random intercept), ``slopes="correlated"`` (patient random intercepts and time
        slopes with their covariance, ``(1 + time | patient)``; ``"uncorrelated"`` fixes
        the covariance at 0, ``(1 + time || patient)``), ``random=None`` (a random part to
        use instead), ``covariates=()`` (extra fixed terms).

        Why correlated by default: fixing the intercept-slope covariance at 0 makes the
        model depend on where time is zero (session 1 or session 0, say), because the
        intercept variance and covariance change when time is shifted (Biesanz et al.
        2004); with the covariance free, a shift of time gives the same fit. statsmodels'
        MixedLM cannot fit the correlated version under a therapist level, so with
        ``engine="statsmodels"`` use ``slopes="uncorrelated"``; the default engine
        (:mod:`allianceflow.models.engine`) fits both.

        ``growth``
            ``time_shape="linear" | "log" | "quadratic"``. Log time uses the column
            ``log_<time>`` (= ln(session)), which must exist, for the fixed and random slope.
        ``alliance_outcome``
            Last session's within- and between-patient alliance predicting this session's
            outcome: ``alliance_within_lag + alliance_between + time``.
            ``previous_outcome=True`` adds ``outcome_lag`` (note: with a patient random
            intercept a lagged outcome is biased in short series; Nickell 1981).
            ``detrend="none" | "linear"``: "linear" uses ``alliance_within_detrended_lag``, the
            deviation from each patient's own linear alliance trajectory (Falkenström et al.
            2017), so that shared time trends do not masquerade as within-patient effects;
            "none" relies on the time covariate alone.
        ``therapist_effects``
            ``alliance_therapist_mean + alliance_patient_deviation + time``: the therapist's
            mean alliance across their patients and each patient's deviation from it
            (Baldwin, Wampold & Imel 2007). ``baseline=True`` adds ``outcome_baseline``.
        ``feedback``
            ``time * arm * off_track``: ``arm="condition"`` (study arm, as ``C(condition)``)
            and ``on_track="off_track"`` (1 when the patient was flagged not on track).
        ``rupture_repair``
            ``ruptures_before + repairs_before + alliance_within_lag + alliance_between +
            time``: the numbers of detected ruptures and of their repairs at the patient's
            earlier sessions, so ``repairs_before`` is a repaired versus a not (yet) repaired
            rupture, from information available before the session (Eubanks, Muran &
            Safran 2018).
        ``alliance_components``
            ``components=("task", "bond", "goal")``: ``alliance_<c>_within_lag`` and
            ``alliance_<c>_between`` for each component (WAI-SR subscales).
        ``informants``
            ``informants=("patient", "therapist")``: ``alliance_rater_<i>_within_lag`` and
            ``alliance_rater_<i>_between`` for each rater
            (:func:`allianceflow.derive.informant_alliances`).

        The couples presets (:data:`COUPLE_PRESETS`; variables from
        :func:`allianceflow.couples.system_variables`) model sessions in clients in systems
        (couples, families) in therapists. Their default random part is ``(1 | therapist)
        + (1 | system) + (1 | patient)``; ``slopes="none" | "correlated" |
        "uncorrelated"`` (default ``"none"``) adds a patient time slope.

        ``couple_alliance_outcome``
            The actor–partner interdependence model (APIM; Kenny, Kashy & Cook 2006):
            ``alliance_within_lag + alliance_between`` (actor: the client's own alliance)
            ``+ alliance_partner_within_lag + alliance_partner_between`` (partner: the other
            member's, the other members' mean in a family) ``+ time``.
            ``distinguishable=False``; ``True`` adds the role dummies ``role_<r>`` of the
            roles after the first of ``roles=("partner_a", "partner_b")`` and their
            interactions with the four alliance terms (the plain terms are then the first
            role's effects).
        ``split_alliance``
            ``alliance_system_mean_within_lag + alliance_system_mean_between +
            alliance_split_within_lag + alliance_split_between + time``: the system's mean
            alliance and its split (absolute difference of a dyad, SD of a family), each
            within (last session, around the system's mean) and between systems.
        ``split_trajectory``
            ``alliance_split ~ time + (1 | therapist) + (1 + time | system)`` on one row per
            system session (:func:`preset_rows`): how the split changes over sessions.
        ``split_dropout``
            ``dropout ~ early_alliance_split + early_alliance_system_mean + (1 | therapist)``
            on one row per system; binomial: the early split's log odds ratio of the system
            ending early (:func:`allianceflow.couples.system_patient_variables`).

        The patient-level presets (:data:`PATIENT_PRESETS`) model one row per patient of
        the patients table (:func:`allianceflow.clinical.patient_outcomes`) with a
        therapist random intercept; they take ``therapist``, ``random`` and
        ``covariates`` (not ``outcome``, ``time`` or ``slopes``), and are fitted with the
        family of :func:`preset_family`.

        ``deterioration``, ``improvement``
            ``deteriorated`` (reliable deterioration) or ``improved`` (reliable
            improvement, recovery included) ``~ arm + outcome_baseline``, with
            ``arm="feedback"`` (the 0/1 feedback-arm column, so treatment as usual is the
            reference) and ``by_track=False``; ``by_track=True`` gives the subgroup model
            ``arm * off_track + outcome_baseline``, whose ``arm`` term is the arm effect in
            patients never flagged and ``arm:off_track`` its change in patients flagged not
            on track (a post-randomisation subgroup: descriptive, see
            :func:`allianceflow.derive.preset_variables`). ``subgroup="not_on_track"`` (or
            ``"on_track"``) fits the main model to those patients only
            (:func:`preset_rows`): use it for deterioration, which a patient can hardly
            reach without being flagged, so that the interaction model has (almost) no
            deteriorations among on-track patients and its coefficients are not
            estimable (separation). Binomial, logit link: the coefficients are log odds
            ratios (Lambert, Whipple & Kleinstäuber 2018).
        ``dropout``
            ``dropout ~ early_alliance + outcome_baseline``: an early ending (unilateral or
            dropout vs planned) by the mean alliance of the first sessions and baseline
            severity; binomial (Sharf, Primavera & Diener 2010).
        ``attendance``
            ``sessions_attended ~ early_alliance``; Poisson, log link: the coefficient is a
            log rate ratio. Sessions attended are bounded by the planned number, so the
            counts are usually under-dispersed against the Poisson and its SEs
            conservative.

    Returns
    -------
    str
        The formula, ready for :func:`fit_model`.

        Moderators (``alliance_outcome``, ``alliance_components``, ``informants``)
            ``moderator=None``: a column whose levels may change the alliance–outcome link.
            It adds the moderator and its interactions with each within- and
            between-patient alliance term. ``moderator_levels=None``: the levels of a
            categorical moderator, the reference first, written as 0/1 columns
            ``<moderator>_<level>``; None: a continuous moderator, written as
            ``<moderator>_c`` (centred). ``moderator_within=False``: True for a moderator
            that varies within patients (e.g. ``modality`` of each session), whose main
            effect is then split into ``_within`` and ``_between`` parts and whose
            between part also moderates both alliance terms. The pipeline finds the
            levels and the level of the moderator from the data and makes these columns
            (:func:`allianceflow.models.moderation.moderator_variables`), and reports
            simple slopes at each level (or at -1/0/+1 SD) with their CIs.

            Cautions: a moderator that varies within patients needs its own
            within/between split, or its coefficient blends a within-patient and a
            between-patient effect (Enders & Tofighi 2007; Hoffman & Stawski 2009); and
            tests of interactions have low power, so a non-significant interaction is not
            evidence that the link is the same at every level (plan the sample with a power
            simulation that includes the moderator).

    Raises
    ------
    ValueError
        Unknown preset name, unknown option, or an option value outside its choices.

    Examples
    --------
    >>> preset_formula("alliance_outcome")  # doctest: +NORMALIZE_WHITESPACE
    'outcome ~ alliance_within_lag + alliance_between + session + (1 | therapist)
     + (1 + session | patient)'
    >>> preset_formula("growth", time_shape="quadratic", therapist=False, slopes="uncorrelated")
    'outcome ~ session + I(session^2) + (1 + session || patient)'
    >>> preset_formula("alliance_outcome", therapist=False, moderator="group",
    ...                moderator_levels=["a", "b"])  # doctest: +NORMALIZE_WHITESPACE
    'outcome ~ alliance_within_lag + alliance_between + session + group_b
     + alliance_within_lag:group_b + alliance_between:group_b + (1 + session | patient)'

    References
    ----------
    Baldwin, S. A., Wampold, B. E., & Imel, Z. E. (2007). Untangling the alliance-outcome
    correlation. *Journal of Consulting and Clinical Psychology, 75*(6), 842–852.
    Enders, C. K., & Tofighi, D. (2007). Centering predictor variables in cross-sectional
    multilevel models: A new look at an old issue. *Psychological Methods, 12*(2), 121–138.
    Kenny, D. A., Kashy, D. A., & Cook, W. L. (2006). *Dyadic data analysis*. Guilford Press.
    Hoffman, L., & Stawski, R. S. (2009). Persons as contexts: Evaluating between-person and
    within-person effects in longitudinal analysis. *Research in Human Development, 6*(2–3),
    97–120.
    Biesanz, J. C., Deeb-Sossa, N., Papadakis, A. A., Bollen, K. A., & Curran, P. J. (2004).
    The role of coding time in estimating and interpreting growth curve models.
    *Psychological Methods, 9*(1), 30–52.
    Eubanks, C. F., Muran, J. C., & Safran, J. D. (2018). Alliance rupture repair: A
    meta-analysis. *Psychotherapy, 55*(4), 508–519.
    Falkenström, F., Finkel, S., Sandell, R., Rubel, J. A., & Holmqvist, R. (2017). Dynamic
    models of individual change in psychotherapy process research. *Journal of Consulting
    and Clinical Psychology, 85*(6), 537–549.
    Lambert, M. J., Whipple, J. L., & Kleinstäuber, M. (2018). Collecting and delivering
    progress feedback: A meta-analysis of routine outcome monitoring. *Psychotherapy,
    55*(4), 520–537.
    Nickell, S. (1981). Biases in dynamic models with fixed effects. *Econometrica, 49*(6),
    1417–1426.
    Sharf, J., Primavera, L. H., & Diener, M. J. (2010). Dropout and therapeutic alliance:
    A meta-analysis of adult individual psychotherapy. *Psychotherapy, 47*(4), 637–645.
    """
    _check_name(name)
    if name in COUPLE_PRESETS:
        return _couple_formula(name, options)
    if name in PATIENT_PRESETS:
        return _patient_formula(name, options)
    specific = {
        "growth": {"time_shape": "linear"},
        "alliance_outcome": {"previous_outcome": False, "detrend": "none", **_MODERATOR},
        "therapist_effects": {"baseline": False},
        "feedback": {"arm": "condition", "on_track": "off_track"},
        "rupture_repair": {},
        "alliance_components": {"components": ("task", "bond", "goal"), **_MODERATOR},
        "informants": {"informants": ("patient", "therapist"), **_MODERATOR},
    }[name]
    common = {
        "outcome": "outcome",
        "time": "session",
        "therapist": True,
        "slopes": "correlated",
        "random": None,
        "covariates": (),
    }
    allowed = {**common, **specific}
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(
            f"preset {name!r} has no option {unknown[0]!r}; options are {sorted(allowed)}."
        )
    o = {**allowed, **options}
    y, t = o["outcome"], o["time"]
    if not isinstance(o["therapist"], bool):
        raise ValueError(f"`therapist` must be True or False; got {o['therapist']!r}.")
    _check_choice("slopes", o["slopes"], ("correlated", "uncorrelated"))
    covs = [o["covariates"]] if isinstance(o["covariates"], str) else list(o["covariates"])
    time_slope = t
    if name == "growth":
        _check_choice("time_shape", o["time_shape"], ("linear", "log", "quadratic"))
        if o["time_shape"] == "log":
            time_slope = f"log_{t}"
            fixed = [time_slope]
        elif o["time_shape"] == "quadratic":
            fixed = [t, f"I({t}^2)"]
        else:
            fixed = [t]
    elif name == "alliance_outcome":
        _check_choice("detrend", o["detrend"], ("none", "linear"))
        _check_choice("previous_outcome", o["previous_outcome"], (False, True))
        within = (
            "alliance_within_detrended_lag" if o["detrend"] == "linear" else "alliance_within_lag"
        )
        fixed = [within, "alliance_between", t] + ([f"{y}_lag"] if o["previous_outcome"] else [])
        pairs = [(within, "alliance_between")]
    elif name == "therapist_effects":
        _check_choice("baseline", o["baseline"], (False, True))
        fixed = ["alliance_therapist_mean", "alliance_patient_deviation", t]
        fixed += [f"{y}_baseline"] if o["baseline"] else []
    elif name == "feedback":
        fixed = [f"{t} * C({o['arm']}) * {o['on_track']}"]
    elif name == "rupture_repair":
        fixed = ["ruptures_before", "repairs_before", "alliance_within_lag", "alliance_between", t]
    elif name == "alliance_components":
        comps = o["components"]
        if isinstance(comps, str) or not comps:
            raise ValueError(f"`components` must be a non-empty list of names; got {comps!r}.")
        fixed = (
            [f"alliance_{c}_within_lag" for c in comps]
            + [f"alliance_{c}_between" for c in comps]
            + [t]
        )
        pairs = [(f"alliance_{c}_within_lag", f"alliance_{c}_between") for c in comps]
    else:  # informants
        infs = o["informants"]
        if isinstance(infs, str) or len(infs) < 1:
            raise ValueError(f"`informants` must be a non-empty list of names; got {infs!r}.")
        fixed = []
        for inf in infs:
            fixed += [f"alliance_rater_{inf}_within_lag", f"alliance_rater_{inf}_between"]
        fixed += [t]
        pairs = [
            (f"alliance_rater_{inf}_within_lag", f"alliance_rater_{inf}_between") for inf in infs
        ]
    if o.get("moderator") is not None:
        fixed += _moderator_part(o, pairs)
    fixed += covs
    rand = _random_part(time_slope, o["therapist"], o["random"], o["slopes"])
    return f"{y} ~ {' + '.join(fixed)} + {rand}"


def _patient_formula(name: str, options: dict[str, Any]) -> str:
    """Formula of a patient-level preset (see :func:`preset_formula`)."""
    specific = {
        "deterioration": {"arm": "feedback", "by_track": False, "subgroup": None},
        "improvement": {"arm": "feedback", "by_track": False, "subgroup": None},
        "dropout": {},
        "attendance": {},
    }[name]
    allowed = {"therapist": True, "random": None, "covariates": (), **specific}
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(
            f"preset {name!r} has no option {unknown[0]!r}; options are {sorted(allowed)}."
        )
    o = {**allowed, **options}
    if not isinstance(o["therapist"], bool):
        raise ValueError(f"`therapist` must be True or False; got {o['therapist']!r}.")
    covs = [o["covariates"]] if isinstance(o["covariates"], str) else list(o["covariates"])
    if name in ("deterioration", "improvement"):
        _check_choice("by_track", o["by_track"], (False, True))
        _check_choice("subgroup", o["subgroup"], (None, *SUBGROUPS))
        if o["by_track"] and o["subgroup"] is not None:
            raise ValueError(
                "`by_track` models arm × off_track in all patients and `subgroup` keeps one "
                f"subgroup; use one of them, got by_track=True and subgroup={o['subgroup']!r}."
            )
        y = "deteriorated" if name == "deterioration" else "improved"
        arm = o["arm"]
        fixed = [f"{arm} * off_track" if o["by_track"] else arm, "outcome_baseline"]
    elif name == "dropout":
        y, fixed = "dropout", ["early_alliance", "outcome_baseline"]
    else:
        y, fixed = "sessions_attended", ["early_alliance"]
    fixed += covs
    if o["random"] is not None:
        rand = o["random"]
    elif o["therapist"]:
        rand = "(1 | therapist)"
    else:
        return f"{y} ~ {' + '.join(fixed)}"
    return f"{y} ~ {' + '.join(fixed)} + {rand}"


#: The actor and partner terms of ``couple_alliance_outcome`` (within: last session).
APIM_TERMS = (
    "alliance_within_lag",
    "alliance_between",
    "alliance_partner_within_lag",
    "alliance_partner_between",
)
#: The system mean and split terms of ``split_alliance``.
SPLIT_TERMS = (
    "alliance_system_mean_within_lag",
    "alliance_system_mean_between",
    "alliance_split_within_lag",
    "alliance_split_between",
)


def _couple_formula(name: str, options: dict[str, Any]) -> str:
    r"""Formula of a couples preset (see :func:`preset_formula`).

    ``couple_alliance_outcome`` is the actor–partner interdependence model (APIM) with
    each client's own (actor) and the other members' (partner) alliance split into
    within-client (last session) and between-client parts. Indistinguishable members
    (``distinguishable=False``) share one actor and one partner effect. Distinguishable
    ones (``distinguishable=True``) get the interaction approach of Kenny, Kashy & Cook
    (2006, ch. 7): the role dummies after the reference role and their products with every
    alliance term, so the plain terms are the reference role's effects and each
    ``:role_<r>`` term is how role *r*'s effect differs.
    """
    common = {"outcome": "outcome", "time": "session", "therapist": True, "random": None}
    common["covariates"] = ()
    specific = {
        "couple_alliance_outcome": {
            "distinguishable": False,
            "roles": ("partner_a", "partner_b"),
            "slopes": "none",
        },
        "split_alliance": {"slopes": "none"},
        "split_trajectory": {"slopes": "correlated", "outcome": "alliance_split"},
        "split_dropout": {},
    }[name]
    allowed = {**common, **specific}
    if name == "split_dropout":
        allowed = {"therapist": True, "random": None, "covariates": ()}
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(
            f"preset {name!r} has no option {unknown[0]!r}; options are {sorted(allowed)}."
        )
    o = {**allowed, **options}
    if not isinstance(o["therapist"], bool):
        raise ValueError(f"`therapist` must be True or False; got {o['therapist']!r}.")
    covs = [o["covariates"]] if isinstance(o["covariates"], str) else list(o["covariates"])
    therapist = ["(1 | therapist)"] if o["therapist"] else []
    if name == "split_dropout":
        fixed = ["early_alliance_split", "early_alliance_system_mean", *covs]
        rand = o["random"] if o["random"] is not None else " + ".join(therapist)
        return f"dropout ~ {' + '.join(fixed)}" + (f" + {rand}" if rand else "")
    y, t = o["outcome"], o["time"]
    if name == "split_trajectory":
        _check_choice("slopes", o["slopes"], ("correlated", "uncorrelated"))
        bar = "|" if o["slopes"] == "correlated" else "||"
        fixed = [t, *covs]
        rand = o["random"] or " + ".join([*therapist, f"(1 + {t} {bar} system)"])
        return f"{y} ~ {' + '.join(fixed)} + {rand}"
    _check_choice("slopes", o["slopes"], ("none", "correlated", "uncorrelated"))
    if name == "couple_alliance_outcome":
        _check_choice("distinguishable", o["distinguishable"], (False, True))
        fixed = list(APIM_TERMS)
        if o["distinguishable"]:
            roles = o["roles"]
            if isinstance(roles, str) or len(roles) < 2 or len(set(roles)) != len(roles):
                raise ValueError(
                    "`roles` must list at least two distinct roles, the reference first; "
                    f"got {roles!r}."
                )
            from ..labels import identifier  # the role columns clean names (role_<id>)

            dummies = [f"role_{identifier(r, what='role')}" for r in roles[1:]]
            fixed += dummies + [f"{term}:{d}" for d in dummies for term in APIM_TERMS]
    else:
        fixed = list(SPLIT_TERMS)
    fixed = [*fixed[: len(APIM_TERMS)], t, *fixed[len(APIM_TERMS) :], *covs]
    if o["random"] is not None:
        rand = o["random"]
    else:
        patient = {
            "none": "(1 | patient)",
            "correlated": f"(1 + {t} | patient)",
            "uncorrelated": f"(1 + {t} || patient)",
        }[o["slopes"]]
        rand = " + ".join([*therapist, "(1 | system)", patient])
    return f"{y} ~ {' + '.join(fixed)} + {rand}"
