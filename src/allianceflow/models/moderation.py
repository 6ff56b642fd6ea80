r"""Moderators of the alliance–outcome link: variables, formula terms and simple slopes.

Does the alliance–outcome link differ between groups of patients (a patient-level
moderator such as a diagnosis group) or between kinds of sessions (a session-level
moderator such as ``modality``: in person, video, telephone)? The presets
``alliance_outcome``, ``alliance_components`` and ``informants`` take ``moderator=<column>``
(:func:`allianceflow.models.preset_formula`); this module builds the columns those formulas
use (:func:`moderator_variables`), computes the simple slopes of the alliance at each level
of the moderator with their confidence intervals (:func:`simple_slopes`), and states the
cautions that go with them (:func:`moderation_notes`).

Columns
-------
A categorical moderator ``m`` with levels :math:`L_0, L_1, \dots` (the first is the
reference) becomes 0/1 columns ``m_<L_k>`` for :math:`k \ge 1`; a continuous one becomes
``m_c``, centred at the grand mean of patient means. When the moderator varies within
patients (a session-level moderator), each such column :math:`d` is also split into
``<d>_within`` (session value minus the patient's mean, for a dummy: minus the patient's
share of sessions at that level) and ``<d>_between`` (the patient's mean minus the grand
mean of patient means).

Model terms
-----------
With :math:`A^W` the within-patient (lagged) alliance and :math:`A^B` the between-patient
alliance, a patient-level moderator adds :math:`d`, :math:`A^W{:}d` and :math:`A^B{:}d`. A
session-level moderator adds its main effect as :math:`d^W + d^B` and the interactions
:math:`A^W{:}d`, :math:`A^W{:}d^B` and :math:`A^B{:}d^B`. Why the split: a predictor that
varies within patients carries a within-patient and a between-patient effect, and one
coefficient for it is an uninterpretable blend of the two (Enders & Tofighi 2007; Hoffman &
Stawski 2009). With :math:`A^W{:}d^B` in the model, the coefficient of :math:`A^W{:}d` is the
purely within-patient moderation (the same patient's video versus in-person sessions), since
:math:`d = d^W + d^B + \bar d`; the sum of the two is the moderation of the within-patient
slope between patients who differ in their share of the level (a cross-level interaction).

Simple slopes
-------------
For an alliance term with coefficient :math:`b_1` and its interaction with :math:`d` with
coefficient :math:`b_3`, the slope at moderator value :math:`m` (for a session-level
moderator: for a patient at the grand mean of the moderator, :math:`d^B = 0`) is

.. math::

    \hat\omega(m) = b_1 + b_3 m, \qquad
    \widehat{\mathrm{Var}}\,\hat\omega(m) = \mathrm{Var}(b_1) + m^2 \mathrm{Var}(b_3)
        + 2 m\, \mathrm{Cov}(b_1, b_3)

(Aiken & West 1991; Preacher, Curran & Bauer 2006), from the model's fixed-effect covariance
matrix. Levels: each level of a categorical moderator (:math:`m` = 0 or 1 on each dummy),
or −1, 0 and +1 standard deviation of a continuous one.

References
----------
Aiken, L. S., & West, S. G. (1991). *Multiple regression: Testing and interpreting
interactions*. Sage.
Enders, C. K., & Tofighi, D. (2007). Centering predictor variables in cross-sectional
multilevel models: A new look at an old issue. *Psychological Methods, 12*(2), 121–138.
Hoffman, L., & Stawski, R. S. (2009). Persons as contexts: Evaluating between-person and
within-person effects in longitudinal analysis. *Research in Human Development, 6*(2–3),
97–120.
Preacher, K. J., Curran, P. J., & Bauer, D. J. (2006). Computational tools for probing
interactions in multiple linear regression, multilevel modeling, and latent curve analysis.
*Journal of Educational and Behavioral Statistics, 31*(4), 437–448.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from allianceflow._checks import check_columns
from allianceflow.models.distributions import norm_ppf, norm_sf, t_ppf, t_sf

__all__ = [
    "ModeratorInfo",
    "fit_moderated",
    "moderated_formula",
    "moderator_terms",
    "moderated_terms",
    "moderator_variables",
    "simple_slopes",
    "moderation_notes",
    "SIMPLE_SLOPE_COLUMNS",
    "MODERATED_PRESETS",
]

#: Presets that take the ``moderator`` option.
MODERATED_PRESETS = ("alliance_outcome", "alliance_components", "informants")

#: Columns of :func:`simple_slopes`.
SIMPLE_SLOPE_COLUMNS = [
    "term",
    "moderator",
    "level",
    "value",
    "slope",
    "se",
    "ci_low",
    "ci_high",
    "df",
    "p",
]

_LEVEL = re.compile(r"[^A-Za-z0-9_]+")


def _level_name(level: Any) -> str:
    """A level as a column-name part: ``"in person"`` -> ``in_person``."""
    return _LEVEL.sub("_", str(level)).strip("_").lower() or "level"


def moderator_terms(
    moderator: str, levels: Sequence[Any] | None = None
) -> list[tuple[str, str, float]]:
    """The moderator's model columns: ``(column, level label, value at that level)``.

    Parameters
    ----------
    moderator : str
        The moderator column.
    levels : sequence, optional
        Levels of a categorical moderator, the reference first; None for a continuous one.

    Returns
    -------
    list of tuple
        For a categorical moderator one ``(f"{moderator}_{level}", level, 1.0)`` per
        non-reference level; for a continuous one ``[(f"{moderator}_c", "", 1.0)]``.

    Examples
    --------
    >>> moderator_terms("modality", ["in_person", "video", "telephone"])
    [('modality_video', 'video', 1.0), ('modality_telephone', 'telephone', 1.0)]
    >>> moderator_terms("age")
    [('age_c', '', 1.0)]
    """
    if levels is None:
        return [(f"{moderator}_c", "", 1.0)]
    levels = list(levels)
    if len(levels) < 2:
        raise ValueError(
            f"`moderator_levels` must list at least two levels (the reference first); "
            f"got {levels!r}."
        )
    return [(f"{moderator}_{_level_name(lv)}", str(lv), 1.0) for lv in levels[1:]]


def moderated_terms(
    alliance_pairs: Sequence[tuple[str, str]],
    moderator: str,
    levels: Sequence[Any] | None = None,
    within: bool = False,
) -> list[str]:
    """Fixed terms a moderator adds to an alliance–outcome formula.

    Parameters
    ----------
    alliance_pairs : sequence of (str, str)
        ``(within term, between term)`` of each alliance predictor in the model.
    moderator, levels
        As in :func:`moderator_terms`.
    within : bool
        True for a moderator that varies within patients: its main effect is split into
        ``_within`` and ``_between`` parts and the interactions follow the module notes.

    Returns
    -------
    list of str

    Examples
    --------
    >>> moderated_terms([("alliance_within_lag", "alliance_between")], "group", ["a", "b"])
    ['group_b', 'alliance_within_lag:group_b', 'alliance_between:group_b']
    >>> moderated_terms([("aw", "ab")], "video", None, within=True)
    ['video_c_within', 'video_c_between', 'aw:video_c', 'aw:video_c_between', 'ab:video_c_between']
    """
    out: list[str] = []
    for column, _, _ in moderator_terms(moderator, levels):
        if within:
            out += [f"{column}_within", f"{column}_between"]
            for aw, ab in alliance_pairs:
                out += [f"{aw}:{column}", f"{aw}:{column}_between", f"{ab}:{column}_between"]
        else:
            out.append(column)
            for aw, ab in alliance_pairs:
                out += [f"{aw}:{column}", f"{ab}:{column}"]
    return out


@dataclass(frozen=True)
class ModeratorInfo:
    """What :func:`moderator_variables` found out about a moderator.

    Attributes
    ----------
    moderator : str
        The column.
    kind : {'categorical', 'continuous'}
    levels : tuple or None
        Levels of a categorical moderator, the reference first.
    within : bool
        True when the moderator varies within at least one patient (session level).
    mean, sd : float or None
        Grand mean of patient means and the standard deviation used for the simple slopes
        of a continuous moderator (of the session values for a session-level moderator,
        of the patient values otherwise).
    n_patients_varying : int
        Patients whose moderator value changes across their sessions.
    counts : dict
        Rows per level (categorical) with the moderator recorded.
    """

    moderator: str
    kind: str
    levels: tuple | None
    within: bool
    mean: float | None = None
    sd: float | None = None
    n_patients_varying: int = 0
    counts: dict = field(default_factory=dict)

    def preset_options(self) -> dict[str, Any]:
        """The preset options that write this moderator's terms."""
        return {
            "moderator": self.moderator,
            "moderator_levels": list(self.levels) if self.levels is not None else None,
            "moderator_within": self.within,
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record."""
        d = asdict(self)
        d["levels"] = list(self.levels) if self.levels is not None else None
        return d


def moderator_variables(
    data: pd.DataFrame,
    moderator: str,
    *,
    patient: str = "patient",
    levels: Sequence[Any] | None = None,
    within: bool | None = None,
) -> tuple[pd.DataFrame, ModeratorInfo]:
    r"""Add the columns a moderated preset uses (see the module notes).

    Parameters
    ----------
    data : pandas.DataFrame
        The analysis table (one row per session).
    moderator : str
        The moderator column: categorical (text or category dtype) or numeric.
    patient : str
        Patient id column.
    levels : sequence, optional
        Levels of a categorical moderator, reference first. Default: the category order
        of a categorical column, else the sorted distinct values. Giving levels for a
        numeric column treats it as categorical.
    within : bool, optional
        Force (True) or refuse (False) the within/between split; None decides from the
        data (split when the moderator varies within any patient).

    Returns
    -------
    (pandas.DataFrame, ModeratorInfo)
        A copy of *data* with ``<m>_<level>`` dummies (categorical) or ``<m>_c``
        (continuous, minus the grand mean of patient means), and with the split
        ``_within`` / ``_between`` of each when the moderator is session-level; rows with
        the moderator missing get missing columns (and are dropped by the fit).

    Raises
    ------
    KeyError
        The moderator or patient column is missing.
    ValueError
        Fewer than two levels observed, a level that is not in the data, or
        ``within=False`` for a moderator that varies within patients.

    Examples
    --------
    >>> import pandas as pd
    >>> d = pd.DataFrame({"patient": ["a", "a", "b", "b"],
    ...                   "modality": ["in_person", "video", "video", "video"]})
    >>> out, info = moderator_variables(d, "modality")
    >>> info.kind, info.levels, info.within
    ('categorical', ('in_person', 'video'), True)
    >>> out[["modality_video", "modality_video_within", "modality_video_between"]].values.tolist()
    [[0.0, -0.5, -0.25], [1.0, 0.5, -0.25], [1.0, 0.0, 0.25], [1.0, 0.0, 0.25]]
    """
    if not isinstance(data, pd.DataFrame):
        raise TypeError(f"`data` must be a pandas DataFrame; got {type(data).__name__}.")
    check_columns(data, moderator, patient)
    if within not in (None, True, False):
        raise ValueError(f"`within` must be None, True or False; got {within!r}.")
    out = data.copy()
    values = out[moderator]
    recorded = values.notna()
    categorical = levels is not None or not pd.api.types.is_numeric_dtype(values)
    varying = (
        out.loc[recorded].groupby(patient, observed=True)[moderator].nunique(dropna=True).gt(1)
    )
    n_varying = int(varying.sum())
    if within is None:
        within = n_varying > 0
    elif within is False and n_varying > 0:
        who = varying[varying].index[0]
        raise ValueError(
            f"`within` is False but moderator {moderator!r} varies within {n_varying} "
            f"patient(s) (e.g. {who!r}); a session-level moderator needs its within/between "
            "split (within=None or True)."
        )
    info_kw: dict[str, Any] = {"n_patients_varying": n_varying}
    if categorical:
        if levels is None:
            if isinstance(values.dtype, pd.CategoricalDtype):
                observed = set(values.dropna().astype(str))
                levels = [str(c) for c in values.cat.categories if str(c) in observed]
            else:
                levels = sorted(values.dropna().astype(str).unique())
        levels = [str(lv) for lv in levels]
        text = (
            values.astype(object)
            .where(recorded)
            .map(
                lambda v: None if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)
            )
        )
        unknown = sorted(set(text.dropna()) - set(levels))
        if unknown:
            raise ValueError(
                f"Moderator {moderator!r} has value(s) {unknown} not among `moderator_levels` "
                f"{levels}; list every level (the reference first)."
            )
        if len(levels) < 2 or text.dropna().nunique() < 2:
            raise ValueError(
                f"Moderator {moderator!r} needs at least two observed levels; found "
                f"{sorted(text.dropna().unique())}."
            )
        counts = {lv: int((text == lv).sum()) for lv in levels}
        for column, level, _ in moderator_terms(moderator, levels):
            out[column] = (text == level).astype(float).where(recorded)
        info = ModeratorInfo(
            moderator, "categorical", tuple(levels), bool(within), counts=counts, **info_kw
        )
    else:
        x = values.astype(float)
        per_patient = x.groupby(out[patient], observed=True).mean()
        grand = float(per_patient.mean())
        sd = float(x.std(ddof=1)) if within else float(per_patient.dropna().std(ddof=1))
        if not np.isfinite(sd) or sd <= 0:
            raise ValueError(
                f"Moderator {moderator!r} has no spread (standard deviation {sd!r}); a "
                "moderator needs at least two different values."
            )
        out[f"{moderator}_c"] = x - grand
        info = ModeratorInfo(moderator, "continuous", None, bool(within), grand, sd, **info_kw)
    if within:
        for column, _, _ in moderator_terms(moderator, info.levels):
            pmean = out[column].groupby(out[patient], observed=True).transform("mean")
            grand = out[column].groupby(out[patient], observed=True).mean().mean()
            out[f"{column}_within"] = out[column] - pmean
            out[f"{column}_between"] = pmean - grand
    return out, info


def _fixed_lookup(record: Mapping[str, Any]):
    terms = list(record["vcov_fixed"]["terms"])
    cov = np.asarray(record["vcov_fixed"]["matrix"], dtype=float)
    est = {row["term"]: float(row["estimate"]) for row in record["fixed"]}
    dfs = {row["term"]: row.get("df") for row in record["fixed"]}
    return terms, cov, est, dfs


def simple_slopes(
    record: Mapping[str, Any] | Any, info: ModeratorInfo | Mapping[str, Any], *, level: float = 0.95
) -> pd.DataFrame:
    r"""Slopes of each moderated alliance term at each moderator level, with CIs.

    Parameters
    ----------
    record : dict or MixedModelResult
        The fitted model (its ``fixed`` rows and ``vcov_fixed``).
    info : ModeratorInfo or dict
        From :func:`moderator_variables` (or its ``to_dict()``).
    level : float, default 0.95
        Confidence level.

    Returns
    -------
    pandas.DataFrame
        :data:`SIMPLE_SLOPE_COLUMNS`: ``term`` (the alliance term), ``moderator``,
        ``level`` (the level's name; for a continuous moderator "-1 SD", "mean", "+1 SD"),
        ``value`` (the moderator value, for a continuous one in its own units), ``slope``,
        ``se``, ``ci_low``, ``ci_high``, ``df`` (the smallest df of the coefficients the slope
        combines when the model used *t* tests, else None: normal) and two-sided ``p``.

    Notes
    -----
    :math:`\hat\omega(m) = b_1 + b_3 m` with
    :math:`\mathrm{Var} = \mathrm{Var}(b_1) + m^2\mathrm{Var}(b_3) + 2m\,\mathrm{Cov}(b_1,b_3)`
    (Aiken & West 1991; Preacher, Curran & Bauer 2006), summed over the dummies of a
    categorical moderator (only one is 1 at a level). The covariance is the model's
    fixed-effect covariance matrix (not the Kenward–Roger adjusted one), so at the
    reference level the interval can differ slightly from the alliance row of a
    Kenward–Roger table. For a session-level moderator the slopes are those of a patient at
    the grand mean of the moderator (its ``_between`` part 0), and only the within-patient
    alliance terms are probed.
    """
    if hasattr(record, "to_dict"):
        record = record.to_dict()
    if isinstance(info, Mapping):
        info = ModeratorInfo(
            **{**info, "levels": tuple(info["levels"]) if info.get("levels") else None}
        )
    if not 0 < level < 1:
        raise ValueError(f"`level` must lie between 0 and 1; got {level!r}.")
    terms, cov, est, dfs = _fixed_lookup(record)
    index = {t: i for i, t in enumerate(terms)}
    columns = [c for c, _, _ in moderator_terms(info.moderator, info.levels)]
    first = columns[0]
    alliance = [t[: -len(f":{first}")] for t in terms if t.endswith(f":{first}")]
    if not alliance:
        raise ValueError(
            f"The model has no interaction with moderator column {first!r}; fit a preset with "
            f"`moderator: {info.moderator}` (fixed terms: {terms})."
        )
    if info.kind == "categorical":
        points = [(info.levels[0], 0.0, {})] + [
            (lv, 1.0, {col: 1.0}) for col, lv, _ in moderator_terms(info.moderator, info.levels)
        ]
    else:
        points = [
            (name, k * info.sd, {first: k * info.sd})
            for name, k in (("-1 SD", -1.0), ("mean", 0.0), ("+1 SD", 1.0))
        ]
    rows = []
    for a in alliance:
        for name, value, weights in points:
            w = np.zeros(len(terms))
            w[index[a]] = 1.0
            for col, m in weights.items():
                w[index[f"{a}:{col}"]] = m
            slope = float(w @ np.array([est[t] for t in terms]))
            se = float(math.sqrt(max(w @ cov @ w, 0.0)))
            df = None
            used = [a, *(f"{a}:{c}" for c in weights)]
            if record.get("ddf") in ("satterthwaite", "kenward-roger"):
                # the smallest df of the coefficients the slope combines
                df = min(float(dfs[t]) for t in used if dfs.get(t) is not None)
            crit = t_ppf(0.5 + level / 2, df) if df else norm_ppf(0.5 + level / 2)
            stat = slope / se if se > 0 else float("nan")
            p = 2 * (t_sf(abs(stat), df) if df else norm_sf(abs(stat)))
            shown = value if info.kind == "categorical" else (info.mean or 0.0) + value
            rows.append(
                {
                    "term": a,
                    "moderator": info.moderator,
                    "level": str(name),
                    "value": float(shown),
                    "slope": slope,
                    "se": se,
                    "ci_low": slope - crit * se,
                    "ci_high": slope + crit * se,
                    "df": df,
                    "p": float(p),
                }
            )
    return pd.DataFrame(rows, columns=SIMPLE_SLOPE_COLUMNS)


def moderation_notes(info: ModeratorInfo) -> list[str]:
    """The cautions that go with a moderated model, in words (for the JSON and summary)."""
    notes = [
        "Tests of interactions have low power: a moderation that is not significant is not "
        "evidence that the alliance-outcome link is the same at every level; plan the sample "
        "with a power simulation that includes the moderator.",
    ]
    if info.within:
        notes.append(
            f"{info.moderator!r} varies within {info.n_patients_varying} patient(s), so its "
            "effect is split into within- and between-patient parts (Enders & Tofighi 2007; "
            "Hoffman & Stawski 2009); the interaction of the within-patient alliance with the "
            "session's value is the within-patient moderation, and simple slopes are for a "
            "patient at the grand mean of the moderator."
        )
    else:
        notes.append(
            f"{info.moderator!r} is constant within patients (a patient-level moderator); its "
            "interactions compare patients, not sessions."
        )
    if info.kind == "categorical":
        small = {lv: n for lv, n in info.counts.items() if n < 30}
        if small:
            notes.append(f"Few sessions at level(s) {small}: their simple slopes are imprecise.")
    return notes


def fit_moderated(
    data: pd.DataFrame,
    preset: str,
    options: Mapping[str, Any],
    *,
    name: str = "model",
    patient: str = "patient",
    **fit_options: Any,
):
    """Fit a moderated preset: make the moderator's columns, fit, add simple slopes.

    Parameters
    ----------
    data : pandas.DataFrame
        The analysis table.
    preset : str
        One of :data:`MODERATED_PRESETS`.
    options : mapping
        The preset's options, with ``moderator``; ``moderator_levels`` and
        ``moderator_within`` are found from the data unless given.
    name : str
        The model's name.
    patient : str
        Patient id column.
    **fit_options
        Passed to :func:`allianceflow.models.fit_model` (``reml``, ``ddf``, ``min_levels``).

    Returns
    -------
    (MixedModelResult, dict)
        The fit, and its JSON record with a ``moderation`` block (the moderator's kind,
        levels, level of variation, spread), ``simple_slopes`` (rows of
        :func:`simple_slopes`) and ``notes`` (:func:`moderation_notes`).

    Raises
    ------
    ValueError
        A preset that takes no moderator, or no ``moderator`` option.
    """
    from allianceflow.models.fit import fit_model

    data, formula, info = moderated_formula(data, preset, options, patient=patient)
    result = fit_model(data, formula, name=name, **fit_options)
    record = result.to_dict()
    slopes = simple_slopes(record, info)
    record["moderation"] = info.to_dict()
    record["simple_slopes"] = [
        {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
        for row in slopes.to_dict(orient="records")
    ]
    record["notes"] = list(record.get("notes", [])) + moderation_notes(info)
    return result, record


def moderated_formula(
    data: pd.DataFrame, preset: str, options: Mapping[str, Any], *, patient: str = "patient"
) -> tuple[pd.DataFrame, str, ModeratorInfo]:
    """The data with the moderator's columns, and the moderated preset's formula.

    The levels and the level of variation of the moderator are found from *data* unless
    *options* give them (:func:`moderator_variables`); see :func:`fit_moderated`.

    Raises
    ------
    ValueError
        A preset that takes no moderator, or no ``moderator`` option.
    """
    from allianceflow.models.presets import preset_formula

    if preset not in MODERATED_PRESETS:
        raise ValueError(
            f"`preset` must be one of {', '.join(map(repr, MODERATED_PRESETS))} to take a "
            f"moderator; got {preset!r}."
        )
    options = dict(options)
    moderator = options.get("moderator")
    if not moderator:
        raise ValueError(f"`options` must name a `moderator` column; got {options!r}.")
    data, info = moderator_variables(
        data,
        moderator,
        patient=patient,
        levels=options.get("moderator_levels"),
        within=options.get("moderator_within"),
    )
    formula = preset_formula(preset, **{**options, **info.preset_options()})
    return data, formula, info
