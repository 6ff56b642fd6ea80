"""Couple and family variables, presets and the couples simulator (hand-computed values)."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest

from allianceflow.couples import (
    role_dummies,
    split_measures,
    system_patient_variables,
    system_variables,
)
from allianceflow.derive import within_between
from allianceflow.models import preset_formula
from allianceflow.models.presets import preset_family, preset_level, preset_rows
from allianceflow.simulate import (
    EXAMPLE3_DESIGN,
    CoupleDesign,
    simulate_couples,
    to_export_couples,
    write_example3_study,
)


@pytest.fixture
def two_systems() -> pd.DataFrame:
    """A couple (a, b) and a family (x, y, z) over two sessions; z misses a rating."""
    rows = [
        ("c", "a", 1, 30.0),
        ("c", "a", 2, 34.0),
        ("c", "b", 1, 36.0),
        ("c", "b", 2, 36.0),
        ("f", "x", 1, 10.0),
        ("f", "x", 2, 14.0),
        ("f", "y", 1, 20.0),
        ("f", "y", 2, 20.0),
        ("f", "z", 1, 30.0),
        ("f", "z", 2, np.nan),
    ]
    d = pd.DataFrame(rows, columns=["system", "patient", "session", "alliance"])
    return system_variables(within_between(d, "alliance"))


def _at(out: pd.DataFrame, patient: str, session: int, column: str) -> float:
    row = out[(out["patient"] == patient) & (out["session"] == session)]
    return float(row[column].iloc[0])


def test_split_is_the_difference_in_dyads_and_the_sd_in_families(two_systems):
    # Family at session 1: 10, 20, 30 -> SD 10; at session 2 only x and y rated (14, 20):
    # still the SD (the family's scale), 6 / sqrt(2).
    assert _at(two_systems, "a", 1, "alliance_split") == 6.0
    assert _at(two_systems, "a", 2, "alliance_split") == 2.0
    assert _at(two_systems, "x", 1, "alliance_split") == pytest.approx(10.0)
    assert _at(two_systems, "z", 2, "alliance_split") == pytest.approx(6 / math.sqrt(2))
    assert _at(two_systems, "y", 2, "alliance_system_mean") == 17.0


def test_the_documented_columns_are_the_added_ones(two_systems):
    from allianceflow.couples import SYSTEM_COLUMNS

    given = {"system", "patient", "session", "alliance"}
    given |= {"alliance_pmean", "alliance_within", "alliance_between"}  # within_between's
    assert set(two_systems.columns) - given == set(SYSTEM_COLUMNS)


def test_partner_values_by_hand(two_systems):
    # Partner: the other members who rated the session (everyone who rated, for z at 2).
    assert _at(two_systems, "a", 1, "alliance_partner") == 36.0
    assert _at(two_systems, "x", 1, "alliance_partner") == 25.0
    assert _at(two_systems, "x", 2, "alliance_partner") == 20.0
    assert _at(two_systems, "z", 2, "alliance_partner") == 17.0
    # Person means: a 32, b 36, x 12, y 20, z 30; grand mean 26; within parts x -2, +2.
    assert _at(two_systems, "y", 1, "alliance_partner_within") == -1.0
    assert _at(two_systems, "y", 2, "alliance_partner_within") == 2.0
    assert _at(two_systems, "z", 2, "alliance_partner_within") == 1.0
    between = {"a": 10.0, "b": 6.0, "x": -1.0, "y": -5.0, "z": -10.0}
    for patient, value in between.items():
        assert _at(two_systems, patient, 1, "alliance_partner_between") == pytest.approx(value)
    assert np.isnan(_at(two_systems, "x", 1, "alliance_partner_lag"))
    assert _at(two_systems, "x", 2, "alliance_partner_lag") == 25.0


def test_system_within_between_slope_and_rows_by_hand(two_systems):
    # System means by session: c 33, 35 (mean 34); f 20, 17 (mean 18.5); grand 26.25.
    assert _at(two_systems, "b", 2, "alliance_system_mean_between") == pytest.approx(7.75)
    assert _at(two_systems, "z", 1, "alliance_system_mean_between") == pytest.approx(-7.75)
    assert _at(two_systems, "a", 1, "alliance_system_mean_within") == pytest.approx(-1.0)
    assert _at(two_systems, "x", 2, "alliance_system_mean_within") == pytest.approx(-1.5)
    # Splits: c 6, 2 (mean 4); f 10, 4.2426 (mean 7.1213); grand 5.5607.
    f_mean = (10 + 6 / math.sqrt(2)) / 2
    grand = (4 + f_mean) / 2
    assert _at(two_systems, "a", 1, "alliance_split_between") == pytest.approx(4 - grand)
    assert _at(two_systems, "y", 1, "alliance_split_within") == pytest.approx(10 - f_mean)
    assert _at(two_systems, "y", 2, "alliance_split_within_lag") == pytest.approx(10 - f_mean)
    assert _at(two_systems, "b", 2, "alliance_split_lag") == 6.0
    assert _at(two_systems, "a", 1, "alliance_split_slope") == pytest.approx(-4.0)
    assert _at(two_systems, "z", 1, "alliance_split_slope") == pytest.approx(6 / math.sqrt(2) - 10)
    assert two_systems.groupby("system")["system_members"].first().to_dict() == {"c": 2, "f": 3}
    rows = two_systems.loc[two_systems["system_row"] == 1.0, ["patient", "session"]]
    assert rows.values.tolist() == [["a", 1], ["a", 2], ["x", 1], ["x", 2]]


def test_a_client_in_two_systems_is_refused():
    d = pd.DataFrame(
        {
            "system": ["c", "d"],
            "patient": ["a", "a"],
            "session": [1, 2],
            "alliance": [30.0, 31.0],
        }
    )
    with pytest.raises(ValueError, match=r"Client 'a' belongs to more than one system \(c, d\)"):
        system_variables(within_between(d, "alliance"))


def test_early_split_and_system_rows_of_the_patients_table(two_systems):
    patients = pd.DataFrame({"patient": ["a", "b", "x", "y", "z"]})
    p = system_patient_variables(patients, two_systems, early_sessions=1)
    assert p["early_alliance_split"].tolist() == pytest.approx([6, 6, 10, 10, 10])
    assert p["early_alliance_system_mean"].tolist() == pytest.approx([33, 33, 20, 20, 20])
    assert p["system_row"].tolist() == [1.0, 0.0, 1.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="`early_sessions` must be at least 1; got 0"):
        system_patient_variables(patients, two_systems, early_sessions=0)


def test_role_dummies_are_named_in_snake_case():
    d = pd.DataFrame({"role": ["Mère", "Père", "Beau-père", "Enfant (2)", None]})
    out = role_dummies(d)
    made = [c for c in out.columns if c.startswith("role_")]
    assert made == ["role_beau_pere", "role_enfant_2", "role_mere", "role_pere"]
    assert all(c.isidentifier() for c in made)
    assert out["role_mere"].tolist()[:4] == [1.0, 0.0, 0.0, 0.0]
    assert np.isnan(out["role_pere"].iloc[4])
    capitals = role_dummies(pd.DataFrame({"role": ["Partner A", "Partner B"]}))
    assert capitals["role_partner_b"].tolist() == [0.0, 1.0]


@pytest.mark.parametrize(
    ("roles", "message"),
    [
        (
            ["Partner A", "partner_a"],
            "the roles 'Partner A' and 'partner_a' both give the column 'role_partner_a'; map "
            "them to distinct roles under `read.labels.role`.",
        ),
        (["?"], "the role '?' has no letter or digit to name a column by; give it a name"),
    ],
)
def test_role_dummies_refuse_roles_that_name_no_column_of_their_own(roles, message):
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        role_dummies(pd.DataFrame({"role": roles}))


def test_role_dummies_follow_category_order():
    d = pd.DataFrame(
        {"role": pd.Categorical(["mother", "child", None], categories=["mother", "child"])}
    )
    out = role_dummies(d)
    assert out["role_child"].tolist()[:2] == [0.0, 1.0]
    assert np.isnan(out["role_mother"].iloc[2])


def test_split_measures_of_a_session_rated_by_one_member_is_missing():
    d = pd.DataFrame(
        {"system": ["c", "c"], "patient": ["a", "b"], "session": [1, 2], "alliance": [1.0, 2.0]}
    )
    out = split_measures(d)
    assert out["n"].tolist() == [1.0, 1.0]
    assert out[["mean", "split"]].isna().all().all()


# ------------------------------------------------------------------------------ presets
def test_couple_presets_formulas():
    assert preset_formula("couple_alliance_outcome") == (
        "outcome ~ alliance_within_lag + alliance_between + alliance_partner_within_lag"
        " + alliance_partner_between + session + (1 | therapist) + (1 | system) + (1 | patient)"
    )
    distinguishable = preset_formula(
        "couple_alliance_outcome", distinguishable=True, therapist=False
    )
    assert distinguishable == (
        "outcome ~ alliance_within_lag + alliance_between + alliance_partner_within_lag"
        " + alliance_partner_between + session + role_partner_b"
        " + alliance_within_lag:role_partner_b + alliance_between:role_partner_b"
        " + alliance_partner_within_lag:role_partner_b + alliance_partner_between:role_partner_b"
        " + (1 | system) + (1 | patient)"
    )
    # roles as the export spells them name the columns clean makes (role_<snake_case>)
    spelled = preset_formula(
        "couple_alliance_outcome", distinguishable=True, roles=["Mère", "Beau-père"]
    )
    assert " + role_beau_pere + alliance_within_lag:role_beau_pere + " in spelled
    assert preset_formula("split_alliance", slopes="correlated") == (
        "outcome ~ alliance_system_mean_within_lag + alliance_system_mean_between"
        " + alliance_split_within_lag + alliance_split_between + session"
        " + (1 | therapist) + (1 | system) + (1 + session | patient)"
    )
    assert preset_formula("split_trajectory") == (
        "alliance_split ~ session + (1 | therapist) + (1 + session | system)"
    )
    assert preset_formula("split_dropout") == (
        "dropout ~ early_alliance_split + early_alliance_system_mean + (1 | therapist)"
    )
    assert preset_level("split_dropout") == "patient"
    assert preset_family("split_dropout") == "binomial"
    assert preset_level("split_alliance") == "session"
    assert preset_rows("split_trajectory") == {"system_row": 1.0}
    assert preset_rows("couple_alliance_outcome") == {}


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        (
            "couple_alliance_outcome",
            {"distinguishable": "yes"},
            "`distinguishable` must be False or True; got 'yes'.",
        ),
        (
            "couple_alliance_outcome",
            {"distinguishable": True, "roles": ["partner_a"]},
            "`roles` must list at least two distinct roles, the reference first; "
            "got ['partner_a'].",
        ),
        (
            "split_alliance",
            {"distinguishable": True},
            "preset 'split_alliance' has no option 'distinguishable'",
        ),
        (
            "split_alliance",
            {"slopes": "random"},
            "`slopes` must be 'none', 'correlated' or 'uncorrelated'; got 'random'.",
        ),
        ("split_dropout", {"time": "session"}, "preset 'split_dropout' has no option 'time'"),
        (
            "split_trajectory",
            {"slopes": "none"},
            "`slopes` must be 'correlated' or 'uncorrelated'; got 'none'.",
        ),
    ],
)
def test_couple_preset_options_are_checked(name, options, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        preset_formula(name, **options)


# ---------------------------------------------------------------------------- simulator
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"members": 1}, "`members` must be an integer of at least 2; got 1."),
        ({"roles": ("a", "a")}, "`roles` must name 2 distinct roles, one per member"),
        ({"n_systems": 5}, "`n_systems` (5) must be at least `n_therapists` (20)"),
        ({"p_unrecorded": 1.5}, "`p_unrecorded` must lie in [0, 1]; got 1.5."),
        ({"early_sessions": 12}, "`early_sessions` (12) must be below `max_sessions` (12)."),
    ],
)
def test_couple_design_is_checked(overrides, message):
    import re

    with pytest.raises(ValueError, match=re.escape(message)):
        CoupleDesign(**overrides)


def test_simulated_couples_are_nested_and_end_together():
    s = simulate_couples(seed=5, n_systems=40, n_therapists=8)
    assert s.groupby("patient")["system"].nunique().max() == 1
    assert s.groupby("system")["therapist"].nunique().max() == 1
    assert s.groupby("system")["ending"].nunique().max() == 1
    roles = s.groupby("system")["role"].agg(lambda r: tuple(sorted(set(r))))
    assert set(roles) == {("partner_a", "partner_b")}
    assert s["session"].min() == 1 and s["session"].max() <= 12
    assert s.groupby("patient")["days"].min().eq(0).all()
    items = s[[f"srs_{k}" for k in range(1, 5)] + [f"ors_{k}" for k in range(1, 5)]]
    assert items.min().min() >= 0 and items.max().max() <= 10
    family = simulate_couples(
        seed=5, n_systems=20, n_therapists=4, members=3, roles=("m", "f", "c")
    )
    assert family.groupby("system")["patient"].nunique().max() == 3


def test_example3_files_are_reproducible_and_state_the_truths(tmp_path):
    first = write_example3_study(tmp_path / "a")
    second = write_example3_study(tmp_path / "b")
    assert first.name == "couple_sessions.csv"
    assert first.read_bytes() == second.read_bytes()
    export = pd.read_csv(first, dtype=str, keep_default_na=False)
    assert list(export.columns[:6]) == [
        "couple_id",
        "client_id",
        "partner",
        "therapist_id",
        "session",
        "session_date",
    ]
    assert set(export["partner"]) == {"A", "B"}
    assert set(export["discharge"]) == {"completed", "stopped early"}
    assert export["couple_id"].nunique() == EXAMPLE3_DESIGN.n_systems == 150
    assert export["therapist_id"].nunique() == 20
    readme = (tmp_path / "a" / "README.md").read_text(encoding="utf-8")
    assert "| actor (own alliance) | **0.4** | **0.6** |" in readme
    assert "| partner (the other's alliance) | **0.2** | **0.3** |" in readme
    assert "| split (partners' disagreement) | **-0.3** | **-0.5** |" in readme
    assert "seed `20261129`" in readme


def test_export_dates_follow_days():
    s = simulate_couples(seed=3, n_systems=20, n_therapists=4)
    e = to_export_couples(s, seed=4)
    dates = pd.to_datetime(e["session_date"])
    first = dates.groupby(e["client_id"]).transform("min")
    assert ((dates - first).dt.days.to_numpy() == s["days"].to_numpy()).all()


def test_the_module_writes_example3_from_the_command_line(tmp_path):
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "allianceflow.simulate", str(tmp_path), "couples"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip() == str(tmp_path / "couple_sessions.csv")
    assert (
        (tmp_path / "README.md")
        .read_text(encoding="utf-8")
        .startswith("# The couples example study (simulated): SRS + ORS")
    )


def test_system_variables_and_role_dummies_add_columns_without_copying_the_table():
    """Both leave the table handed in as it was and share its columns with the result.

    The unrated member's partner value is written into the result's own column after it
    is set; run again on a table that has the columns already, that write must not reach
    the caller's table either.
    """
    rows = [
        ("c", "a", 1, 30.0, "partner_a"),
        ("c", "a", 2, 34.0, "partner_a"),
        ("c", "b", 1, 36.0, "partner_b"),
        ("c", "b", 2, np.nan, "partner_b"),
    ]
    d = pd.DataFrame(rows, columns=["system", "patient", "session", "alliance", "role"])
    analysis = within_between(d, "alliance")
    before = analysis.copy()
    out = role_dummies(system_variables(analysis))
    pd.testing.assert_frame_equal(analysis, before)
    assert np.shares_memory(out["alliance"].to_numpy(), analysis["alliance"].to_numpy())
    # b did not rate session 2: a's rating is b's partner value there
    assert _at(out, "b", 2, "alliance_partner") == 34.0
    assert out["role_partner_b"].tolist() == [0.0, 0.0, 1.0, 1.0]
    once = system_variables(analysis)
    once.loc[once["patient"] == "b", "alliance_partner"] = -1.0  # to be recomputed
    kept = once.copy()
    again = system_variables(once)
    pd.testing.assert_frame_equal(once, kept)
    assert _at(again, "b", 2, "alliance_partner") == 34.0
