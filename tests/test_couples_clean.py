"""The clean stage's checks of couples and families (system and role), on the bad-input corpus."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from allianceflow import io
from allianceflow.clean import DataError, clean_sessions, reconcile
from allianceflow.config import flat_study, group_study, validate_config

ROOT = Path(__file__).resolve().parents[1]
BAD = ROOT / "tests" / "data" / "bad"
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"


def run(name: str, rules: dict | None = None, env: dict | None = None, **settings):
    """Clean a file of the couples corpus with the couples mapping (defaults from the schema)."""
    study = {
        "raw": f"tests/data/bad/{name}",
        "columns": {
            "ClientCode": "patient",
            "Clinician": "therapist",
            "Couple": "system",
            "Partner": "role",
            "SessionNo": "session",
            "SessionDate": "date",
            **{f"ORS_{k}": f"ors_{k}" for k in range(1, 5)},
        },
        "labels": {"role": {"A": "partner_a", "B": "partner_b"}},
        "date_format": "%d/%m/%Y",
        "instruments": {"ors": {"rci": 5}},
        "alliance": "ors_total",
        "outcome": "ors_total",
        "models": ["m"],
        "rules": rules or {},
        **settings,
    }
    config = {"studies": {"t": group_study(study)}, "models": {"m": {"formula": "outcome ~ 1"}}}
    study = flat_study(validate_config(config, SCHEMA)["studies"]["t"])
    raw = io.read_raw(BAD / name)
    return clean_sessions(raw, study, source=name, name="t", env=env)


def logged(result) -> list[tuple]:
    cols = ["source_row", "patient", "rule", "action", "column", "reason"]
    return [tuple(r) for r in result.exclusions[cols].itertuples(index=False)]


def test_good_couples_are_distinguishable_and_reconcile():
    result = run("couple_good.csv")
    s = result.sessions
    assert list(s.columns[:5]) == ["patient", "therapist", "system", "role", "session"]
    assert s["role"].dtype == "category"
    assert result.exclusions.empty
    assert result.flow["systems"] == {
        "read": 2,
        "kept": 2,
        "excluded": 0,
        "excluded_by_rule": {},
        "members": {"2": 2},
        "roles": ["partner_a", "partner_b"],
        "distinguishable": True,
        "distinguishable_reason": (
            "every system has the roles partner_a, partner_b, one client each"
        ),
        "sessions_shared": 1.0,
    }
    assert reconcile(result.flow) == []
    declared = run("couple_good.csv", distinguishable=False).flow["systems"]
    assert declared["distinguishable"] is False
    assert declared["distinguishable_reason"] == (
        "declared indistinguishable (clean.distinguishable: false)"
    )


ERRORS = {
    "couple_two_systems.csv": (
        "couple_two_systems.csv, row 5, column 'Couple': the client's system differs between "
        "rows (C1, C2); a client belongs to one system. Record one system (couple or family "
        "id) on every row of a client. Or set `studies.t.clean.rules.system_change` to "
        "'exclude' in config.yaml."
    ),
    "couple_two_therapists.csv": (
        "couple_two_therapists.csv, row 2, column 'Clinician': the clients of system 'C1' are "
        "seen by more than one therapist (T1, T3); a system sees one therapist (3 more row(s) "
        "have the same problem). Record the system's one therapist on the rows of all its "
        "clients. Or set `studies.t.clean.rules.system_therapist` to 'exclude' in config.yaml."
    ),
    "couple_role_change.csv": (
        "couple_role_change.csv, row 3, column 'Partner': the client's role differs between "
        "rows (partner_a, partner_b); a client has one role. Record one role per client "
        "(e.g. partner_a, partner_b). Or set `studies.t.clean.rules.role_change` to 'exclude' "
        "in config.yaml."
    ),
}


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_system_errors_name_file_row_column_and_fix(name):
    with pytest.raises(DataError) as info:
        run(name)
    assert str(info.value) == ERRORS[name]


REASON_SAME = "two clients of system 'C1' have the role 'partner_a'"
REASON_ONE = "system 'C2' has one client, so no partner's alliance"


def test_flags_and_fills_are_logged_with_their_reasons():
    same = run("couple_same_role.csv")
    assert logged(same) == [
        (row, patient, "system_roles", "flagged", "Partner", REASON_SAME)
        for row, patient in [(2, "P01"), (3, "P01"), (4, "P02"), (5, "P02")]
    ]
    assert same.flow["systems"]["distinguishable"] is False
    assert same.flow["systems"]["distinguishable_reason"] == (
        "some systems have two clients in one role (partner_a)"
    )
    single = run("couple_single_client.csv")
    assert logged(single) == [
        (6, "P03", "system_size", "flagged", "Couple", REASON_ONE),
        (7, "P03", "system_size", "flagged", "Couple", REASON_ONE),
    ]
    assert single.flow["systems"]["members"] == {"1": 1, "2": 1}
    alone = run("couple_session_alone.csv")
    assert logged(alone) == [
        (
            10,
            "P04",
            "system_sessions",
            "flagged",
            "SessionNo",
            "no other client of system 'C2' has this session",
        )
    ]
    assert alone.flow["systems"]["sessions_shared"] == round(8 / 9, 4)
    blank = run("couple_blank_system.csv")
    assert logged(blank) == [
        (
            3,
            "P01",
            "system_change",
            "altered",
            "Couple",
            "system is blank; filled with the client's system 'C1'",
        )
    ]
    assert blank.sessions["system"].tolist() == ["C1"] * 4 + ["C2"] * 4


def test_exclude_policies_reconcile_sessions_patients_and_systems():
    moved = run("couple_two_systems.csv", rules={"system_change": "exclude"})
    assert moved.flow["patients"]["excluded_by_rule"] == {"system_change": 1}
    assert moved.flow["sessions"]["excluded"] == 2
    # P01 is left alone in C1, which the default policy flags
    assert set(moved.exclusions["rule"]) == {"system_change", "system_size"}
    assert moved.flow["systems"]["read"] == 2 and moved.flow["systems"]["kept"] == 2
    assert reconcile(moved.flow) == []
    split = run("couple_two_therapists.csv", rules={"system_therapist": "exclude"})
    systems = split.flow["systems"]
    assert (systems["read"], systems["kept"], systems["excluded"]) == (2, 1, 1)
    assert systems["excluded_by_rule"] == {"system_therapist": 1}
    assert split.flow["patients"]["excluded_by_rule"] == {"system_therapist": 2}
    assert reconcile(split.flow) == []
    dropped = run("couple_same_role.csv", rules={"system_roles": "exclude"})
    assert dropped.sessions["system"].unique().tolist() == ["C2"]
    assert dropped.flow["systems"]["excluded_by_rule"] == {"system_roles": 1}
    assert reconcile(dropped.flow) == []


def test_declared_distinguishable_roles_are_required():
    with pytest.raises(DataError) as info:
        run("couple_same_role.csv", distinguishable=True, rules={"system_roles": "error"})
    assert str(info.value) == (
        "couple_same_role.csv, row 2, column 'Partner': two clients of system 'C1' have the "
        "role 'partner_a' (3 more row(s) have the same problem). Give each client of a system "
        "its own role (map the export's labels under `read.labels.role`), or set "
        "`clean.distinguishable: false` when roles do not distinguish the clients. Or set "
        "`studies.t.clean.rules.system_roles` to 'exclude' or 'flag' in config.yaml."
    )


def test_hashed_ids_hide_system_ids_in_reasons_and_flow():
    salt = {"ALLIANCEFLOW_SALT": "s" * 32}
    result = run("couple_single_client.csv", hash_ids=True, env=salt)
    assert "C2" not in " ".join(result.exclusions["reason"])
    assert not set(result.sessions["system"]) & {"C1", "C2"}
    assert "C2" not in json.dumps(result.flow)
    assert result.flow["systems"]["kept"] == 2


def test_split_variables_from_a_cleaned_couple_file():
    from allianceflow.couples import system_variables
    from allianceflow.derive import within_between
    from allianceflow.score import score_sessions

    s = score_sessions(run("couple_good.csv").sessions, ["ors"])
    out = system_variables(within_between(s, "ors_total"), alliance="ors_total")
    first = out[out["session"] == 1].set_index("patient")
    # session 1: C1's totals are 20 and 22, C2's 24 and 26
    assert first["ors_total_split"].to_dict() == {"P01": 2.0, "P02": 2.0, "P03": 2.0, "P04": 2.0}
    assert first["ors_total_partner"].to_dict() == {
        "P01": 22.0,
        "P02": 20.0,
        "P03": 26.0,
        "P04": 24.0,
    }
    assert isinstance(out, pd.DataFrame)


def test_declared_distinguishable_flags_a_system_with_other_roles():
    result = run("couple_other_roles.csv", distinguishable=True)
    reason = (
        "system 'C2' has the roles C, partner_a, not partner_a, partner_b as the other "
        "systems (clean.distinguishable: true)"
    )
    assert logged(result) == [
        (row, patient, "system_roles", "flagged", "Partner", reason)
        for row, patient in [(6, "P03"), (7, "P03"), (8, "P04"), (9, "P04")]
    ]
    assert result.flow["systems"]["distinguishable_reason"] == (
        "the systems have 2 different sets of roles"
    )
    # auto: found, logged, not flagged
    assert run("couple_other_roles.csv").exclusions.empty


def test_a_blank_role_is_filled_from_the_clients_other_rows_even_with_hashed_ids():
    salt = {"ALLIANCEFLOW_SALT": "s" * 32}
    result = run("couple_blank_role.csv", hash_ids=True, env=salt)
    assert result.exclusions[
        ["source_row", "rule", "action", "column", "reason"]
    ].values.tolist() == [
        [
            9,
            "role_change",
            "altered",
            "Partner",
            "role is blank; filled with the client's role 'partner_b'",
        ]
    ]
    assert result.sessions["role"].value_counts().to_dict() == {"partner_a": 4, "partner_b": 4}


def test_a_role_without_a_system_is_refused():
    columns = {
        "ClientCode": "patient",
        "Clinician": "therapist",
        "Partner": "role",
        "SessionNo": "session",
        "SessionDate": "date",
        **{f"ORS_{k}": f"ors_{k}" for k in range(1, 5)},
    }
    with pytest.raises(DataError) as info:
        run("couple_role_without_system.csv", columns=columns)
    assert str(info.value) == (
        "couple_role_without_system.csv: column 'Partner' is mapped to 'role', the client's "
        "role in a couple or family, but no column is mapped to 'system', the couple or "
        "family id, so the roles cannot be checked: a role is a role within one couple or "
        "family. Map the column of couple or family ids to 'system' under "
        "`studies.t.read.columns` in config.yaml, or remove the mapping to 'role' if the "
        "clients were not seen together."
    )
