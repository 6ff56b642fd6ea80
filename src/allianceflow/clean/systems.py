"""Couples and families: the clean stage's checks of systems (``system`` and ``role``).

In conjoint therapy the clients of one *system* (a couple, a family) see one therapist
together: sessions nest in clients, clients in systems, systems in therapists. The step
:func:`systems` checks that nesting and the roles, each with a rule of its own and a
policy from the study's ``clean.rules``:

=================  ==================================================  =================  =======
rule               what it finds                                       policies           default
=================  ==================================================  =================  =======
system_change      a client whose rows name more than one system, or   error exclude      error
                   none (a blank is filled from the client's other
                   rows when they name one: action ``altered``)
role_change        a client whose role differs between rows (a blank   error exclude      error
                   is filled from the client's other rows)
system_therapist   a system whose clients are seen by more than one    error exclude      error
                   therapist
system_size        a system with a single client (no partner)          error exclude      flag
                                                                       flag
system_roles       a client without a role, two clients of a system    error exclude      flag
                   in one role, or (``distinguishable: true``) a       flag
                   system whose roles differ from the other systems'
system_sessions    a client's session that no other client of the      error exclude      flag
                   system attended (members share sessions)            flag ignore
=================  ==================================================  =================  =======

Patient rules (``system_change``, ``role_change``) act on all of a client's rows; system
rules (``system_therapist``, ``system_size``, ``system_roles``) on all rows of the system's
clients concerned; ``system_sessions`` on single rows. Whether the roles are
*distinguishable* (every system has the same set of distinct roles, each held by one
client, e.g. partner_a and partner_b; Kenny, Kashy & Cook 2006, ch. 1) is found from the
kept rows and logged in ``flow.json`` (:func:`system_flow`); the study's
``clean.distinguishable`` (``auto``, the default; ``true``; ``false``) declares it.

References
----------
Kenny, D. A., Kashy, D. A., & Cook, W. L. (2006). *Dyadic data analysis*. Guilford Press.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from .state import CleanRun

__all__ = ["systems", "systems_read", "system_flow", "distinguishability", "DISTINGUISHABLE"]

#: Values of ``clean.distinguishable``.
DISTINGUISHABLE = ("auto", True, False)


def systems_read(run: CleanRun) -> None:
    """Count the systems the rows read name (after id spellings are merged).

    A ``role`` column needs a ``system`` column: a role (partner A, mother) is a role in a
    couple or family, and the checks of roles (``role_change``, ``system_roles``) and the
    couples presets read it within its system. Without one the stage stops.

    Raises
    ------
    DataError
        A column is mapped to ``role`` and none to ``system``.
    """
    if "role" in run.frame and "system" not in run.frame:
        from ..io import DataError

        raise DataError(
            f"{run.source}: column {run.raw('role')!r} is mapped to 'role', the client's role "
            "in a couple or family, but no column is mapped to 'system', the couple or family "
            "id, so the roles cannot be checked: a role is a role within one couple or family. "
            f"Map the column of couple or family ids to 'system' under "
            f"`{run.key}.read.columns` in {run.config}, or remove the mapping to 'role' if "
            "the clients were not seen together."
        )
    if "system" in run.frame:
        run.systems_read = int(run.frame["system"].nunique())


def _setting(run: CleanRun) -> Any:
    value = run.study.get("distinguishable", "auto")
    if value not in DISTINGUISHABLE or isinstance(value, int) and not isinstance(value, bool):
        from ..io import DataError

        raise DataError(
            f"{run.config}: `{run.key}.clean.distinguishable` is {value!r}; allowed values are "
            "'auto', true and false."
        )
    return value


def _listing(values) -> str:
    return ", ".join(map(str, pd.unique(pd.Series(list(values)).dropna())))


def _fill_patient_value(run: CleanRun, column: str, rule: str, fix: str) -> None:
    """One value of *column* per client: conflicts by *rule*, blanks filled from other rows."""
    f = run.frame
    named = f.loc[f[column].notna(), ["patient", column]]
    kinds = named.groupby("patient")[column].nunique()
    many = kinds.index[kinds > 1]
    label = "system" if column == "system" else "role"
    if len(many):
        listing = named[named["patient"].isin(many)].groupby("patient")[column].agg(_listing)
        if run.policies[rule] == "error":
            first = named.groupby("patient")[column].transform("first")
            target = named.index[named["patient"].isin(many) & named[column].ne(first)]
            mask = pd.Series(False, index=f.index)
            mask.loc[target] = True
        else:
            mask = f["patient"].isin(many)
        run.apply(
            rule,
            mask,
            column=column,
            reason=f.loc[mask, "patient"].map(
                lambda p: (
                    f"the client's {label} differs between rows ({listing[p]}); a client "
                    + ("belongs to one system" if column == "system" else "has one role")
                )
            ),
            fix=fix,
        )
    f = run.frame
    one = f.loc[f[column].notna()].groupby("patient")[column].first()
    blank = f[column].isna() & f["patient"].isin(one.index)
    if blank.any():
        values = f.loc[blank, "patient"].map(one)
        run.frame.loc[blank, column] = values.to_numpy()
        run.record(
            run.frame.loc[blank],
            rule,
            "altered",
            column,
            values.map(
                lambda v: (
                    f"{label} is blank; filled with the client's {label} "
                    + (run.shown_id(v) if column == "system" else repr(v))
                )  # roles are not ids
            ),
        )


def _system_rows(run: CleanRun, bad: pd.Index) -> pd.Series:
    return run.frame["system"].isin(bad)


def systems(run: CleanRun) -> None:
    """Check the nesting of clients in systems in therapists and the roles (see the module)."""
    if "system" not in run.value_cols:
        return
    setting = _setting(run)
    fix_system = "Record one system (couple or family id) on every row of a client."
    _fill_patient_value(run, "system", "system_change", fix_system)
    f = run.frame
    nameless = f["system"].isna()
    run.apply(
        "system_change",
        nameless,
        column="system",
        reason="the client's system is blank on every row",
        fix=fix_system,
    )
    has_role = "role" in run.value_cols
    if has_role:
        _fill_patient_value(
            run, "role", "role_change", "Record one role per client (e.g. partner_a, partner_b)."
        )

    if "therapist" in run.value_cols:
        f = run.frame
        kinds = f.loc[f["therapist"].notna()].groupby("system")["therapist"].nunique()
        many = kinds.index[kinds > 1]
        if len(many):
            listing = f[f["system"].isin(many)].groupby("system")["therapist"].agg(_listing)
            mask = _system_rows(run, many)
            run.apply(
                "system_therapist",
                mask,
                column="therapist",
                reason=f.loc[mask, "system"].map(
                    lambda s: (
                        f"the clients of system {run.shown_id(s)} are seen by more than "
                        f"one therapist ({listing[s]}); a system sees one therapist"
                    )
                ),
                fix="Record the system's one therapist on the rows of all its clients.",
            )

    f = run.frame
    size = f.groupby("system")["patient"].nunique()
    single = size.index[size == 1]
    mask = _system_rows(run, single)
    run.apply(
        "system_size",
        mask,
        column="system",
        reason=f.loc[mask, "system"].map(
            lambda s: f"system {run.shown_id(s)} has one client, so no partner's alliance"
        ),
        fix="Check the system ids, or exclude or flag systems with one client.",
    )

    if has_role and setting is not False:
        _check_roles(run, setting)

    f = run.frame
    sizes = f["system"].map(f.groupby("system")["patient"].nunique())
    attended = f.groupby(["system", "session"])["patient"].transform("nunique")
    alone = (sizes > 1) & (attended == 1)
    run.apply(
        "system_sessions",
        alone,
        column="session",
        reason=f.loc[alone, "system"].map(
            lambda s: f"no other client of system {run.shown_id(s)} has this session"
        ),
        fix="Members of a system attend its sessions together; check the session numbers.",
    )


def _check_roles(run: CleanRun, setting: Any) -> None:
    """``system_roles``: blank roles, a role held twice, and (declared) other role sets."""
    f = run.frame
    per_client = f.drop_duplicates("patient")[["patient", "system", "role"]]
    reasons: dict[Any, str] = {}
    for patient in per_client.loc[per_client["role"].isna(), "patient"]:
        reasons[patient] = "the client has no role"
    held = per_client.dropna(subset=["role"])
    twice = held[held.duplicated(["system", "role"], keep=False)]
    for patient, system, role in twice[["patient", "system", "role"]].itertuples(index=False):
        reasons.setdefault(
            patient, f"two clients of system {run.shown_id(system)} have the role {role!r}"
        )
    # Declared distinguishable: the usual set of roles, among systems whose roles are whole.
    whole = held[
        ~held["system"].isin(twice["system"])
        & ~held["system"].isin(per_client.loc[per_client["role"].isna(), "system"])
    ]
    if setting is True and len(whole):
        sets = whole.groupby("system")["role"].agg(lambda r: tuple(sorted(map(str, r))))
        counts = sets.map(sets.value_counts())
        usual = sets[counts == counts.max()].iloc[0]  # the most common; a tie: first system
        for system in sets.index[sets != usual]:
            for patient in per_client.loc[per_client["system"] == system, "patient"]:
                reasons.setdefault(
                    patient,
                    f"system {run.shown_id(system)} has the roles {', '.join(sets[system])}, "
                    f"not {', '.join(usual)} as the other systems (clean.distinguishable: true)",
                )
    mask = f["patient"].isin(list(reasons))
    run.apply(
        "system_roles",
        mask,
        column="role",
        reason=f.loc[mask, "patient"].map(reasons),
        fix=(
            "Give each client of a system its own role (map the export's labels under "
            "`read.labels.role`), or set `clean.distinguishable: false` when roles do not "
            "distinguish the clients."
        ),
    )


def distinguishability(sessions: pd.DataFrame, setting: Any = "auto") -> tuple[bool, str]:
    """Whether the systems' roles are distinguishable, and why, in words.

    Distinguishable: a ``role`` column, every system of two or more clients has the same
    set of distinct roles, each held by one client, and no client lacks a role.

    Examples
    --------
    >>> import pandas as pd
    >>> s = pd.DataFrame({"system": ["c", "c", "d", "d"], "patient": ["a", "b", "x", "y"],
    ...                   "role": ["partner_a", "partner_b", "partner_b", "partner_a"]})
    >>> distinguishability(s)
    (True, 'every system has the roles partner_a, partner_b, one client each')
    >>> distinguishability(s.assign(role=["partner_a"] * 4))[1]
    'some systems have two clients in one role (partner_a)'
    """
    if setting is False:
        return False, "declared indistinguishable (clean.distinguishable: false)"
    if "role" not in sessions:
        return False, "no column is mapped to 'role'"
    clients = sessions.drop_duplicates("patient")[["patient", "system", "role"]]
    clients = clients[clients["system"].map(clients.groupby("system").size()) > 1]
    if clients.empty:
        return False, "no system has two or more clients"
    if clients["role"].isna().any():
        return False, f"{int(clients['role'].isna().sum())} client(s) have no role"
    doubled = clients[clients.duplicated(["system", "role"], keep=False)]
    if len(doubled):
        return False, f"some systems have two clients in one role ({_listing(doubled['role'])})"
    sets = clients.groupby("system")["role"].agg(lambda r: tuple(sorted(map(str, r))))
    if sets.nunique() > 1:
        return False, f"the systems have {sets.nunique()} different sets of roles"
    return True, f"every system has the roles {', '.join(sets.iloc[0])}, one client each"


def system_flow(
    sessions: pd.DataFrame, read: int, system_rule: dict[Any, str], setting: Any = "auto"
) -> dict[str, Any]:
    """The ``systems`` block of ``flow.json``: counts that reconcile, sizes, roles, sharing.

    ``read``, ``kept``, ``excluded`` (systems), ``excluded_by_rule`` (the rule that removed
    a system's last row), ``members`` (systems by number of kept clients), ``roles``
    (sorted), ``distinguishable`` and its ``distinguishable_reason``
    (:func:`distinguishability`), and ``sessions_shared``: the share of kept client
    sessions that every client of the system attended.
    """
    kept = sessions["system"].nunique()
    by_rule = pd.Series(list(system_rule.values()), dtype=object).value_counts().sort_index()
    members = sessions.groupby("system")["patient"].nunique().value_counts().sort_index()
    size = sessions["system"].map(sessions.groupby("system")["patient"].nunique())
    attended = sessions.groupby(["system", "session"])["patient"].transform("nunique")
    shared = float((attended == size).mean()) if len(sessions) else 0.0
    verdict, why = distinguishability(sessions, setting)
    roles = sorted(map(str, sessions["role"].dropna().unique())) if "role" in sessions else []
    return {
        "read": int(read),
        "kept": int(kept),
        "excluded": int(read - kept),
        "excluded_by_rule": {str(k): int(v) for k, v in by_rule.items()},
        "members": {str(k): int(v) for k, v in members.items()},
        "roles": roles,
        "distinguishable": bool(verdict),
        "distinguishable_reason": why,
        "sessions_shared": round(shared, 4),
    }
