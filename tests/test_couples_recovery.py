"""The couples presets recover the simulator's true actor, partner and split effects.

The simulated study is the couples example's design (:data:`EXAMPLE3_DESIGN`: 150 couples,
20 therapists, up to 12 sessions, SRS + ORS) drawn with the example's seed 20261129
(:data:`EXAMPLE3_SEED`), taken through the package's score and derive functions as the
pipeline does. Each test asserts that the 95% interval of an estimate contains its truth.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from allianceflow.couples import role_dummies, system_variables
from allianceflow.derive import derive_tables, lag_within_patient, within_between
from allianceflow.models import fit_model, preset_formula
from allianceflow.models.presets import preset_family, preset_rows
from allianceflow.score import score_sessions
from allianceflow.simulate import EXAMPLE3_DESIGN, EXAMPLE3_SEED, simulate_couples

D = EXAMPLE3_DESIGN
#: Truths, in ORS points per SRS point (the split_dropout slope in log-odds per SRS point).
TRUTH = {
    "alliance_within_lag": D.actor_within,
    "alliance_between": D.actor_between,
    "alliance_partner_within_lag": D.partner_within,
    "alliance_partner_between": D.partner_between,
    "alliance_system_mean_within_lag": D.actor_within + D.partner_within,
    "alliance_system_mean_between": D.actor_between + D.partner_between,
    "alliance_split_within_lag": D.split_within,
    "alliance_split_between": D.split_between,
}
APIM = list(TRUTH)[:4]
SPLIT = list(TRUTH)[4:]
QUIET = {"on_track": {"enabled": False}, "sudden_gains": {"enabled": False}}


def scored(seed: int) -> pd.DataFrame:
    sessions = simulate_couples(seed=seed)
    raw = sessions.drop(columns=[c for c in sessions if c.startswith("true_")])
    with pytest.warns(UserWarning, match="at most 0 may be missing"):
        return score_sessions(raw, ["srs", "ors"])


@pytest.fixture(scope="module")
def example():
    tables = derive_tables(
        scored(EXAMPLE3_SEED),
        alliance="srs_total",
        outcome="ors_total",
        direction="higher_is_better",
        rci=5.0,
        settings={**QUIET, "ruptures": {"enabled": False}},
    )
    return tables.analysis, tables.patients


def fit(data: pd.DataFrame, name: str, **options):
    for column, value in preset_rows(name, **options).items():
        data = data[data[column] == value]
    result = fit_model(data, preset_formula(name, **options), family=preset_family(name))
    assert result.convergence["converged"]
    return result.fixed.set_index("term")


def covered(fixed: pd.DataFrame, term: str, truth: float) -> bool:
    return bool(fixed.loc[term, "ci_low"] <= truth <= fixed.loc[term, "ci_high"])


def test_actor_and_partner_effects_are_recovered(example):
    analysis, _ = example
    fixed = fit(analysis, "couple_alliance_outcome")
    for term in APIM:
        assert covered(fixed, term, TRUTH[term]), (term, fixed.loc[term].to_dict())
    # the partner effects are there: their intervals exclude 0
    assert fixed.loc["alliance_partner_within_lag", "ci_low"] > 0
    assert fixed.loc["alliance_partner_between", "ci_low"] > 0


def test_distinguishable_model_finds_no_role_difference_when_there_is_none(example):
    # The roles are exchangeable in the simulation: partner_b's effects differ by 0.
    analysis, _ = example
    fixed = fit(analysis, "couple_alliance_outcome", distinguishable=True)
    for term in APIM:
        assert covered(fixed, f"{term}:role_partner_b", 0.0), term


def test_mean_and_split_effects_are_recovered(example):
    analysis, _ = example
    fixed = fit(analysis, "split_alliance")
    for term in SPLIT:
        assert covered(fixed, term, TRUTH[term]), (term, fixed.loc[term].to_dict())
    assert fixed.loc["alliance_split_between", "ci_high"] < 0


def test_early_split_predicts_stopping_early(example):
    _, patients = example
    fixed = fit(patients, "split_dropout")
    assert covered(fixed, "early_alliance_split", D.split_dropout_effect)
    assert fixed.loc["early_alliance_split", "ci_low"] > 0


def test_split_trajectory_is_flat_when_partners_drift_alike(example):
    # Partners' alliances share one slope (alliance_slope), so the split has no trend.
    analysis, _ = example
    fixed = fit(analysis, "split_trajectory")
    assert covered(fixed, "session", 0.0)


def test_interval_coverage_over_seeds():
    """Over four more seeds, at least 57 of the 64 intervals (95% each) hold their truth.

    Per seed: the four actor and partner effects, the four mean and split effects, and the
    distinguishable model's eight (partner_a's four effects and four role differences of
    0). 64 intervals with 95% coverage miss 3.2 on average; 8 or more misses have
    probability 0.012.
    """
    hits = []
    for seed in (1, 2, 3, 4):
        data = scored(seed)
        data = data.assign(alliance=data["srs_total"], outcome=data["ors_total"])
        data = lag_within_patient(within_between(data, "alliance"), ["alliance_within"])
        data = role_dummies(system_variables(data))
        for name, terms in (("couple_alliance_outcome", APIM), ("split_alliance", SPLIT)):
            fixed = fit(data, name)
            hits += [covered(fixed, term, TRUTH[term]) for term in terms]
        fixed = fit(data, "couple_alliance_outcome", distinguishable=True)
        hits += [covered(fixed, term, TRUTH[term]) for term in APIM]
        hits += [covered(fixed, f"{term}:role_partner_b", 0.0) for term in APIM]
    assert len(hits) == 64
    assert int(np.sum(hits)) >= 57, hits


def test_fit_stage_keeps_one_row_per_system_session_for_the_trajectory(example, tmp_path):
    import json

    from allianceflow import io
    from allianceflow.stages import fit_stage

    analysis, _ = example
    io.write_table(analysis, tmp_path / "analysis.parquet")
    fit_stage(
        tmp_path / "analysis.parquet",
        {"preset": "split_trajectory", "ddf": "containment"},
        name="split_trajectory",
        json=tmp_path / "m.json",
        txt=tmp_path / "m.txt",
    )
    record = json.loads((tmp_path / "m.json").read_text())
    rows = analysis[analysis["system_row"] == 1.0].dropna(subset=["alliance_split"])
    per_session = analysis.drop_duplicates(["system", "session"])["alliance_split"]
    assert record["n_obs"] == len(rows) == per_session.notna().sum()
