r"""Couple and family therapy: system-level alliance, its split, and partner effects.

In conjoint therapy several clients (a couple, a family: a *system*) see one therapist
together, and each rates their own alliance at each session. Sessions nest in clients,
clients in systems and systems in therapists. This module derives, per session and per
system, the variables the couples presets use (:func:`allianceflow.models.preset_formula`):
the system's mean alliance, the *split* (how far the members disagree), each client's
partner's alliance (actor–partner interdependence model, APIM; Kenny, Kashy & Cook 2006),
their within- and between-system parts, lags, and the split's trajectory.

Which split measure
-------------------
Bartle-Haring, Glebova, Gangamma, Grafsky & Delaney (2012) compared ways of assessing the
discrepancy between partners' alliances in 72 couples of a university training clinic and
used them to predict termination status. What their abstract states (the full text was not
available to us): they demonstrate the **standard deviation** of the partners' alliances and
the **intraclass correlation** to assess discrepancies over time in the first sessions, and
differences between partners operationalised as categorical or continuous variables; the
differences, analysed separately at each time point, did not predict termination status,
while in a multilevel model the way the discrepancies *changed over time* did. Which exact
ICC they used (over items, over sessions, per couple) and how they categorised the
differences we could not confirm.

The candidate measures, as scores of one system at one session:

* the **absolute difference** of the two partners' scores, :math:`|a - b|` (dyads only;
  in the alliance's own units);
* the **standard deviation** of the members' scores (any system size; for a dyad
  :math:`|a - b|/\sqrt 2` with the sample SD, so it orders dyads exactly as the difference
  and only rescales a coefficient);
* an **ICC-based** index: the intraclass correlation of members' scores within systems
  describes a *sample* of systems (the share of variance between systems), and a per-couple
  agreement ICC needs several ratings (items or sessions) per partner, so it is not a
  session-level score in the alliance's units and cannot enter the outcome models as a
  time-varying predictor.

The choice here: the **absolute difference for dyads** and the **sample SD (ddof = 1) for
systems of three or more** (by the system's size, so a family's split keeps one scale when
a member misses a session), computed at each session from the members who rated it
(:func:`split_measures`, which also returns the SD and the range so a study can report
either). Because Bartle-Haring et al. found the *change* of the discrepancy, not its level
at one session, related to termination, the split's trajectory is kept too: its
within-system part over sessions, its least-squares slope per system
(``alliance_split_slope``) and the ``split_trajectory`` preset (split over sessions, with
a random slope per system).

Within and between systems
--------------------------
As for individual clients (Enders & Tofighi 2007; Curran & Bauer 2011), a time-varying
system variable :math:`x_{st}` is split into the system's mean over its sessions
:math:`\bar x_s` (centred on the grand mean of system means, each system weighing equally:
the *between* part) and the session's deviation from it (the *within* part). The
partner's parts are the other members' own within- and between-client parts, so the APIM
terms keep the actor's and the partner's person-mean centring apart.

References
----------
Anker, M. G., Owen, J., Duncan, B. L., & Sparks, J. A. (2010). The alliance in couple
therapy: Partner influence, early change, and alliance patterns in a naturalistic sample.
*Journal of Consulting and Clinical Psychology, 78*(5), 635–645.
https://doi.org/10.1037/a0020051

Bartle-Haring, S., Glebova, T., Gangamma, R., Grafsky, E., & Delaney, R. O. (2012).
Alliance and termination status in couple therapy: A comparison of methods for assessing
discrepancies. *Psychotherapy Research, 22*(5), 502–514.
https://doi.org/10.1080/10503307.2012.676985

Curran, P. J., & Bauer, D. J. (2011). The disaggregation of within-person and
between-person effects in longitudinal models of change. *Annual Review of Psychology,
62*, 583–619.

Enders, C. K., & Tofighi, D. (2007). Centering predictor variables in cross-sectional
multilevel models: A new look at an old issue. *Psychological Methods, 12*(2), 121–138.

Kenny, D. A., Kashy, D. A., & Cook, W. L. (2006). *Dyadic data analysis*. Guilford Press.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ._checks import check_columns

__all__ = [
    "SYSTEM_COLUMNS",
    "split_measures",
    "system_variables",
    "system_patient_variables",
    "role_dummies",
]

#: Columns :func:`system_variables` adds (with ``alliance`` as the prefix).
SYSTEM_COLUMNS = (
    "alliance_system_mean",
    "alliance_split",
    "alliance_partner",
    "alliance_partner_within",
    "alliance_partner_between",
    "alliance_system_mean_within",
    "alliance_system_mean_between",
    "alliance_split_within",
    "alliance_split_between",
    "alliance_split_slope",
    "alliance_partner_lag",
    "alliance_partner_within_lag",
    "alliance_system_mean_lag",
    "alliance_system_mean_within_lag",
    "alliance_split_lag",
    "alliance_split_within_lag",
    "system_members",
    "system_row",
)


def split_measures(
    data: pd.DataFrame,
    *,
    alliance: str = "alliance",
    system: str = "system",
    session: str = "session",
    patient: str = "patient",
) -> pd.DataFrame:
    r"""The system's mean alliance and its split at each session, from the members who rated it.

    Parameters
    ----------
    data : pandas.DataFrame
        Long format, one row per client × session, with a system id.
    alliance, system, session, patient : str
        Column names.

    Returns
    -------
    pandas.DataFrame
        One row per system × session with at least one rating, sorted by system and
        session, with columns ``system``, ``session`` (the names given), ``members``
        (clients of the system in *data*), ``n`` (members who rated the session),
        ``mean``, ``difference`` (:math:`\max - \min`, the absolute difference for two
        ratings), ``sd`` (sample SD, ddof = 1) and ``split``: the difference in a dyad
        (``members == 2``), the SD in a larger system, so a family's split keeps one
        scale when a member misses a session. ``mean`` and every split are missing when
        fewer than two members rated the session.

    Notes
    -----
    For a dyad with ratings :math:`a, b`: :math:`\mathrm{split} = |a - b|` and
    :math:`\mathrm{sd} = |a - b| / \sqrt 2`. For a system of three or more with
    :math:`n \ge 2` ratings at the session,
    :math:`\mathrm{split} = \sqrt{\sum_k (x_k - \bar x)^2 / (n - 1)}`. See the module
    notes for why these and not an ICC.

    Examples
    --------
    >>> import pandas as pd
    >>> d = pd.DataFrame({"system": ["c", "c", "f", "f", "f"], "session": [1] * 5,
    ...                   "patient": ["a", "b", "x", "y", "z"],
    ...                   "alliance": [30.0, 36.0, 20.0, 30.0, 40.0]})
    >>> split_measures(d)[["members", "n", "mean", "difference", "sd", "split"]].values.tolist()
    [[2.0, 2.0, 33.0, 6.0, 4.242640687119285, 6.0], [3.0, 3.0, 30.0, 20.0, 10.0, 10.0]]
    """
    check_columns(data, alliance, system, session, patient)
    members = data.groupby(system, observed=True)[patient].nunique()
    rated = data.loc[data[alliance].notna() & data[system].notna(), [system, session, alliance]]
    g = rated.groupby([system, session], sort=True, observed=True)[alliance]
    out = pd.DataFrame(
        {
            "n": g.count().astype(float),
            "mean": g.mean(),
            "difference": g.max() - g.min(),
            "sd": g.std(ddof=1),
        }
    ).reset_index()
    out.insert(2, "members", out[system].map(members).astype(float))
    two = out["n"] >= 2
    out.loc[~two, ["mean", "difference", "sd"]] = np.nan
    out["split"] = np.where(out["members"] == 2, out["difference"], out["sd"])
    out.loc[~two, "split"] = np.nan
    return out


def _centre(values: pd.Series, groups: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Within (value − group mean) and between (group mean − grand mean of group means)."""
    gmean = values.groupby(groups, observed=True).transform("mean")
    grand = values.groupby(groups, observed=True).mean().mean()
    return values - gmean, gmean - grand


def _slopes(values: pd.Series, time: pd.Series, groups: pd.Series) -> pd.Series:
    """Each group's least-squares slope of *values* on *time* (NaN with < 2 distinct times)."""
    ok = values.notna()
    t = time.astype(float).where(ok)
    tm = t.groupby(groups, observed=True).transform("mean")
    xm = values.groupby(groups, observed=True).transform("mean")
    sxy = ((t - tm) * (values - xm)).groupby(groups, observed=True).transform("sum")
    sxx = ((t - tm) ** 2).groupby(groups, observed=True).transform("sum")
    return sxy / sxx.where(sxx > 0)


def system_variables(
    analysis: pd.DataFrame,
    *,
    alliance: str = "alliance",
    system: str = "system",
    patient: str = "patient",
    session: str = "session",
    lag_across_gaps: bool = False,
) -> pd.DataFrame:
    r"""Add the system-level alliance variables of the couples presets.

    Parameters
    ----------
    analysis : pandas.DataFrame
        One row per client × session with *alliance* and its person-mean parts
        ``<alliance>_within`` and ``<alliance>_between``
        (:func:`allianceflow.derive.within_between`), a system id and a session number.
    alliance, system, patient, session : str
        Column names. The new columns are named after ``alliance`` (``alliance_split``
        for the default).
    lag_across_gaps : bool
        The study's lag rule (:func:`allianceflow.derive.lag_within_patient`).

    Returns
    -------
    pandas.DataFrame
        A new table that shares *analysis*'s columns (a shallow copy; change them in the
        result only by replacing them, ``out[c] = ...``) and adds (prefix ``alliance``):

        ``alliance_system_mean``, ``alliance_split``
            The system's mean alliance and its split at the session (:func:`split_measures`:
            the absolute difference in a dyad, the SD in a larger system; missing when fewer
            than two members rated it).
        ``alliance_partner``
            The mean alliance of the *other* members who rated the session (a dyad: the
            partner's alliance); missing when none did.
        ``alliance_partner_within``, ``alliance_partner_between``
            The mean of the other members' own within-client part at the session, and of
            their between-client parts (constant for a client).
        ``alliance_system_mean_within``, ``alliance_system_mean_between``,
        ``alliance_split_within``, ``alliance_split_between``
            Within- and between-system parts: the session value minus the system's mean over
            its sessions, and that mean minus the grand mean of system means.
        ``alliance_split_slope``
            The system's least-squares slope of the split on session number (the split's
            trajectory: negative when partners come to agree).
        ``<column>_lag``
            Last session's value for ``alliance_partner``, ``alliance_partner_within``,
            ``alliance_system_mean``, ``alliance_system_mean_within``, ``alliance_split``
            and ``alliance_split_within``, within the client with the study's gap rule.
        ``system_members``
            The number of clients of the system in the table.
        ``system_row``
            1.0 on one row per system × session (the member with the smallest id), 0.0 on
            the others: the rows of system-level models, so each system session counts once.

    Raises
    ------
    KeyError
        A named column is missing.
    ValueError
        A client in more than one system (the clean stage's ``system_change`` rule).

    Notes
    -----
    With members :math:`k = 1..n_{st}` of system *s* rating session *t*, client *i*'s
    partner value is :math:`p_{it} = (\sum_k x_{kt} - x_{it}) / (n_{st} - 1)`; the same
    formula on the within-client parts gives :math:`p^W_{it}`, and on the between-client
    parts of all the system's clients gives :math:`p^B_i`. With one system mean per
    session :math:`m_{st}`, :math:`m^B_s = \bar m_s - \frac1S\sum_{s'} \bar m_{s'}` and
    :math:`m^W_{st} = m_{st} - \bar m_s`; the split likewise.

    Examples
    --------
    >>> import pandas as pd
    >>> from allianceflow.derive import within_between
    >>> d = pd.DataFrame({"system": ["c"] * 4, "patient": ["a", "a", "b", "b"],
    ...                   "session": [1, 2, 1, 2], "alliance": [30.0, 34.0, 36.0, 36.0]})
    >>> out = system_variables(within_between(d, "alliance"))
    >>> out[["alliance_partner", "alliance_split", "alliance_split_within"]].values.tolist()
    [[36.0, 6.0, 2.0], [36.0, 2.0, -2.0], [30.0, 6.0, 2.0], [34.0, 2.0, -2.0]]
    """
    from .derive import _add_lags

    within, between = f"{alliance}_within", f"{alliance}_between"
    check_columns(analysis, alliance, within, between, system, patient, session)
    # A shallow copy: the table's columns are shared, not copied (at 10^6 sessions a copy
    # is most of a gigabyte); only new columns are set, so *analysis* is left as it is.
    out = analysis.copy(deep=False)
    pairs = out[[patient, system]].dropna().drop_duplicates()
    multi = pairs[pairs.duplicated(patient, keep=False)]
    if len(multi):
        who = multi[patient].iloc[0]
        raise ValueError(
            f"Client {who!r} belongs to more than one system "
            f"({', '.join(map(str, multi.loc[multi[patient] == who, system]))}); each client "
            "must belong to one system (the clean stage's `system_change` rule)."
        )
    keys = [system, session]
    per = split_measures(out, alliance=alliance, system=system, session=session, patient=patient)
    per = per.rename(columns={"mean": "_mean", "split": "_split"})[[*keys, "_mean", "_split"]]
    per["_mean_w"], per["_mean_b"] = _centre(per["_mean"], per[system])
    per["_split_w"], per["_split_b"] = _centre(per["_split"], per[system])
    per["_slope"] = _slopes(per["_split"], per[session], per[system])
    merged = out[keys].merge(per, on=keys, how="left")
    merged.index = out.index
    names = {
        "_mean": "system_mean",
        "_split": "split",
        "_mean_w": "system_mean_within",
        "_mean_b": "system_mean_between",
        "_split_w": "split_within",
        "_split_b": "split_between",
    }
    for source, name in names.items():
        out[f"{alliance}_{name}"] = merged[source].astype(float)
    # The slope and the between parts are system constants: fill the system's other rows.
    slope = per.groupby(system, observed=True)["_slope"].first()
    out[f"{alliance}_split_slope"] = out[system].map(slope).astype(float)
    for name, source in (("system_mean_between", "_mean_b"), ("split_between", "_split_b")):
        constant = per.dropna(subset=[source]).groupby(system, observed=True)[source].first()
        out[f"{alliance}_{name}"] = out[system].map(constant).astype(float)

    rated = out[alliance].notna() & out[system].notna()
    g = out.loc[rated].groupby(keys, observed=True)
    n = g[alliance].transform("count").reindex(out.index)
    total = g[alliance].transform("sum").reindex(out.index)
    total_w = g[within].transform("sum").reindex(out.index)
    others = (n - 1).where(n > 1)
    out[f"{alliance}_partner"] = (total - out[alliance]) / others
    out[f"{alliance}_partner_within"] = (total_w - out[within]) / others
    # Members who did not rate this session: the partner is everyone who did.
    present = out[keys].merge(
        out.loc[rated]
        .groupby(keys, observed=True)
        .agg(_n=(alliance, "count"), _s=(alliance, "sum"), _w=(within, "sum"))
        .reset_index(),
        on=keys,
        how="left",
    )
    present.index = out.index
    unrated = ~rated & present["_n"].gt(0)
    out.loc[unrated, f"{alliance}_partner"] = (present["_s"] / present["_n"])[unrated]
    out.loc[unrated, f"{alliance}_partner_within"] = (present["_w"] / present["_n"])[unrated]

    clients = out[[patient, system, between]].drop_duplicates(patient).dropna(subset=[system])
    have = clients[between].notna()
    s_sum = clients.loc[have].groupby(system, observed=True)[between].sum()
    s_n = clients.loc[have].groupby(system, observed=True)[between].count()
    own = clients[between].fillna(0.0)
    n_other = clients[system].map(s_n).fillna(0) - have.astype(float)
    partner_b = (clients[system].map(s_sum).fillna(0.0) - own) / n_other.where(n_other > 0)
    out[f"{alliance}_partner_between"] = (
        out[patient]
        .map(pd.Series(partner_b.to_numpy(), index=clients[patient].to_numpy()))
        .astype(float)
    )

    lagged = [
        f"{alliance}_partner",
        f"{alliance}_partner_within",
        f"{alliance}_system_mean",
        f"{alliance}_system_mean_within",
        f"{alliance}_split",
        f"{alliance}_split_within",
    ]
    _add_lags(
        out,
        lagged,
        patient=patient,
        session=session,
        lag=1,
        across_gaps=lag_across_gaps,
        suffix="_lag",
    )
    members = out.groupby(system, observed=True)[patient].nunique()
    out["system_members"] = out[system].map(members).astype("Int64")
    order = out[[system, session, patient]].sort_values(
        [system, session, patient], kind="mergesort"
    )
    first = ~order.duplicated([system, session])
    out["system_row"] = first.reindex(out.index).astype(float)
    out.loc[out[system].isna(), "system_row"] = 0.0
    return out


def role_dummies(
    data: pd.DataFrame, *, role: str = "role", levels: list[str] | None = None
) -> pd.DataFrame:
    """Add a 0/1 column ``role_<level>`` for each role (NaN where the role is blank).

    The distinguishable ``couple_alliance_outcome`` preset uses the columns of the roles
    after the reference (e.g. ``role_partner_b``). *levels* defaults to the category order
    of a categorical column, else the sorted distinct roles. A level is named by its
    snake_case :func:`allianceflow.labels.identifier` ("Partner B" gives ``role_partner_b``,
    "Mère" ``role_mere``), so every column is a formula name; the labels read it back as
    the role's words. The result is a new table that shares *data*'s columns (a shallow
    copy): change them in it only by replacing them, ``out[c] = ...``.

    Raises
    ------
    ValueError
        A role has no letter or digit, or two roles give one column name.

    Examples
    --------
    >>> import pandas as pd
    >>> d = pd.DataFrame({"role": ["partner_a", "Partner B", None]})
    >>> role_dummies(d)["role_partner_b"].tolist()
    [0.0, 1.0, nan]
    """
    from .labels import identifier

    check_columns(data, role)
    out = data.copy(deep=False)  # shares the columns of *data*; only new ones are set
    if levels is None:
        column = out[role]
        if isinstance(column.dtype, pd.CategoricalDtype):
            levels = [str(c) for c in column.cat.categories]
        else:
            levels = sorted(map(str, column.dropna().unique()))
    text = out[role].astype(object)
    named: dict[str, str] = {}
    for level in levels:
        name = f"{role}_{identifier(level, what='role')}"
        if name in named:
            raise ValueError(
                f"the roles {named[name]!r} and {level!r} both give the column {name!r}; "
                "map them to distinct roles under `read.labels.role`."
            )
        named[name] = level
        out[name] = np.where(text.isna(), np.nan, text.eq(level).astype(float))
    return out


def system_patient_variables(
    patients: pd.DataFrame,
    analysis: pd.DataFrame,
    *,
    alliance: str = "alliance",
    system: str = "system",
    patient: str = "patient",
    session: str = "session",
    early_sessions: int = 3,
) -> pd.DataFrame:
    r"""Add the system-level predictors of the ``split_dropout`` preset to the patients table.

    Parameters
    ----------
    patients : pandas.DataFrame
        One row per client (:func:`allianceflow.clinical.patient_outcomes`).
    analysis : pandas.DataFrame
        The session table with :func:`system_variables`' columns.
    early_sessions : int, default 3
        The early split and mean are averaged over the system's sessions numbered below
        the system's first session + *early_sessions* (as the early alliance of
        :func:`allianceflow.clinical.patient_outcomes`).

    Returns
    -------
    pandas.DataFrame
        A copy with ``system``, ``role`` (when the analysis has it), ``system_members``,
        ``early_alliance_system_mean``, ``early_alliance_split`` (the same for all
        members of a system) and ``system_row`` (1.0 for the member with the smallest id,
        so a system-level model counts each system once).

    Examples
    --------
    >>> import pandas as pd
    >>> from allianceflow.derive import within_between
    >>> d = pd.DataFrame({"system": ["c"] * 4, "patient": ["a", "a", "b", "b"],
    ...                   "session": [1, 2, 1, 2], "alliance": [30.0, 34.0, 36.0, 36.0]})
    >>> a = system_variables(within_between(d, "alliance"))
    >>> p = system_patient_variables(pd.DataFrame({"patient": ["a", "b"]}), a)
    >>> p[["early_alliance_split", "early_alliance_system_mean", "system_row"]].values.tolist()
    [[4.0, 34.0, 1.0], [4.0, 34.0, 0.0]]
    """
    check_columns(analysis, system, patient, session, f"{alliance}_split")
    check_columns(patients, patient, name="patients")
    if isinstance(early_sessions, bool) or not isinstance(early_sessions, (int, np.integer)):
        raise TypeError(f"`early_sessions` must be an integer; got {early_sessions!r}.")
    if early_sessions < 1:
        raise ValueError(f"`early_sessions` must be at least 1; got {early_sessions!r}.")
    out = patients.copy()
    rows = analysis.loc[analysis["system_row"].eq(1.0)] if "system_row" in analysis else analysis
    per = rows[[system, session, f"{alliance}_split", f"{alliance}_system_mean"]]
    per = per.drop_duplicates([system, session])
    first = analysis.groupby(system, observed=True)[session].min()
    early = per[per[session] < per[system].map(first) + early_sessions]
    means = early.groupby(system, observed=True)[
        [f"{alliance}_split", f"{alliance}_system_mean"]
    ].mean()
    of = analysis[[patient, system]].drop_duplicates(patient).set_index(patient)[system]
    out[system] = out[patient].map(of)
    if "role" in analysis:
        roles = analysis[[patient, "role"]].drop_duplicates(patient).set_index(patient)["role"]
        out["role"] = out[patient].map(roles.astype(object))
    members = analysis.groupby(system, observed=True)[patient].nunique()
    out["system_members"] = out[system].map(members).astype("Int64")
    out[f"early_{alliance}_system_mean"] = (
        out[system].map(means[f"{alliance}_system_mean"]).astype(float)
    )
    out[f"early_{alliance}_split"] = out[system].map(means[f"{alliance}_split"]).astype(float)
    ordered = out[[system, patient]].sort_values([system, patient], kind="mergesort")
    out["system_row"] = (~ordered.duplicated(system)).reindex(out.index).astype(float)
    out.loc[out[system].isna(), "system_row"] = 0.0
    return out
