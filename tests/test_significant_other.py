"""A significant other's alliance rating, through clean → score → derive → the informants preset.

In individual therapy a significant other (partner, parent, friend) can rate the alliance
too; whether their view of the treatment predicts the patient's outcome is a question of
its own. Here a study is simulated in the test with numpy (fixed seed): each patient and
their significant other fill in the WAI-SR after every session, the patient also the ORS,
and the patient's ORS total at a session depends on the significant other's WAI-SR total at
the previous session (within the patient) with a known slope. The raw export is written as
a CSV with the rater in a column of its own, cleaned with the study's labels, scored,
derived, and fitted with the ``informants`` preset; the estimate must recover the slope.
"""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest

from allianceflow.config import load_config
from allianceflow.labels import Labels
from allianceflow.models import fit_model, preset_formula
from allianceflow.stages import prepare_study

N_THERAPISTS, PER_THERAPIST, N_SESSIONS = 12, 10, 10
#: ORS total points per WAI-SR total point of the significant other's rating at the
#: previous session (within patient), and of the patient's own rating.
SO_WITHIN, PATIENT_WITHIN = 0.25, 0.10


def _simulate(seed: int = 2026) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The raw export (two rows per session: client and significant other) and the truth."""
    rng = np.random.default_rng(seed)
    rows, truth = [], []
    for t in range(N_THERAPISTS):
        for k in range(PER_THERAPIST):
            pid = f"C{t:02d}{k:02d}"
            u_patient, u_other = rng.normal(0, 0.5, 2)  # rater-specific usual level
            intercept, slope = 20 + rng.normal(0, 2.5), 0.4 + rng.normal(0, 0.15)
            levels = {
                "Client": 3.3 + u_patient + rng.normal(0, 0.45, N_SESSIONS),
                "Significant other": 3.0 + u_other + rng.normal(0, 0.45, N_SESSIONS),
            }
            # Integer answers 1-5 around each rater's level; totals from the answers.
            items = {
                who: np.clip(np.rint(lv[:, None] + rng.normal(0, 0.6, (N_SESSIONS, 12))), 1, 5)
                for who, lv in levels.items()
            }
            totals = {who: x.sum(axis=1) for who, x in items.items()}
            dev = {who: v - v.mean() for who, v in totals.items()}
            for s in range(N_SESSIONS):
                ors = intercept + slope * (s + 1) + rng.normal(0, 1.5)
                if s > 0:
                    ors += SO_WITHIN * dev["Significant other"][s - 1]
                    ors += PATIENT_WITHIN * dev["Client"][s - 1]
                ors_items = np.clip(np.round(np.full(4, ors / 4), 1), 0, 10)
                for who in ("Client", "Significant other"):
                    row = {"Client": pid, "Clinician": f"T{t:02d}", "Session": s + 1}
                    row["Rater"] = who
                    row.update({f"WAI_{j + 1:02d}": int(items[who][s, j]) for j in range(12)})
                    for j, name in enumerate(["Ind", "Inter", "Soc", "All"]):
                        row[f"ORS_{name}"] = ors_items[j] if who == "Client" else ""
                    rows.append(row)
                truth.append(
                    {
                        "pid": pid,
                        "session": s + 1,
                        "so_total": totals["Significant other"][s],
                        "patient_total": totals["Client"][s],
                    }
                )
    return pd.DataFrame(rows), pd.DataFrame(truth)


@pytest.fixture(scope="module")
def prepared(root, tmp_path_factory):
    raw, truth = _simulate()
    folder = tmp_path_factory.mktemp("significant_other")
    raw.to_csv(folder / "sessions.csv", index=False)
    study = copy.deepcopy(load_config(root / "config.yaml")["studies"]["example"])
    columns = {"Client": "patient", "Clinician": "therapist", "Session": "session"}
    columns["Rater"] = "informant"
    columns.update({f"WAI_{j:02d}": f"wai_sr_{j}" for j in range(1, 13)})
    columns.update(
        {f"ORS_{n}": f"ors_{j}" for j, n in enumerate(["Ind", "Inter", "Soc", "All"], 1)}
    )
    study["read"].update(
        raw="sessions.csv",
        columns=columns,
        labels={"informant": {"Client": "patient", "Significant other": "significant_other"}},
    )
    study["derive"]["informant"] = "patient"
    return prepare_study(study, root=folder, name="so"), study, truth


def test_every_row_of_both_raters_is_kept(prepared):
    result, _, _ = prepared
    n = N_THERAPISTS * PER_THERAPIST * N_SESSIONS
    assert result.flow["source_rows_read"] == 2 * n
    assert result.flow["sessions"]["read"] == result.flow["sessions"]["kept"] == 2 * n
    assert result.flow["sessions"]["excluded"] == 0
    assert len(result.sessions) == 2 * n and result.exclusions.empty
    counts = result.sessions["informant"].value_counts()
    assert counts.to_dict() == {"patient": n, "significant_other": n}


def test_the_significant_other_rates_the_alliance_but_not_the_outcome(prepared):
    result, _, _ = prepared
    other = result.scored[result.scored["informant"] == "significant_other"]
    assert other["ors_total"].isna().all()
    assert other["wai_sr_total"].notna().all()


def test_the_significant_others_rating_sits_beside_the_patients_session(prepared):
    result, _, truth = prepared
    analysis = result.analysis
    assert len(analysis) == N_THERAPISTS * PER_THERAPIST * N_SESSIONS
    got = analysis.set_index(["patient", "session"])["alliance_rater_significant_other"]
    want = truth.set_index(["pid", "session"])["so_total"].rename_axis(["patient", "session"])
    pd.testing.assert_series_equal(got.sort_index(), want.sort_index(), check_names=False)
    # The lag is the previous session's within-patient deviation: none at session 1.
    first = analysis[analysis["session"] == 1]
    assert first["alliance_rater_significant_other_within_lag"].isna().all()
    later = analysis[analysis["session"] > 1]
    assert later["alliance_rater_significant_other_within_lag"].notna().all()


def test_the_informants_preset_recovers_the_significant_others_effect(prepared):
    result, _, _ = prepared
    formula = preset_formula("informants", informants=("patient", "significant_other"))
    fit = fit_model(result.analysis, formula, name="significant_other").to_dict()
    assert fit["convergence"]["converged"]
    fixed = {row["term"]: row for row in fit["fixed"]}
    other = fixed["alliance_rater_significant_other_within_lag"]
    assert other["ci_low"] < SO_WITHIN < other["ci_high"]
    assert other["ci_low"] > 0  # the significant other's view predicts the outcome
    own = fixed["alliance_rater_patient_within_lag"]
    assert own["ci_low"] < PATIENT_WITHIN < own["ci_high"]


def test_the_significant_other_is_labelled_in_words(prepared):
    _, study, _ = prepared
    labels = Labels.from_config(study)
    assert labels.informant("significant_other") == "significant other"
    assert labels.variable("alliance_rater_significant_other_within_lag") == (
        "Significant other's alliance (WAI-SR total) at the previous session, within-patient "
        "(deviation from the patient's mean)"
    )
    assert labels.variable("alliance_rater_significant_other_between") == (
        "Significant other's alliance (WAI-SR total), patient mean"
    )
    # A one-word informant keeps the short form.
    assert labels.variable("alliance_rater_patient_between") == (
        "WAI-SR total (patient-rated), patient mean"
    )


def test_a_study_label_for_the_significant_other_is_used():
    study = {
        "measures": {"instruments": ["wai_sr", "ors"], "alliance": "wai_sr_total"},
        "report": {"labels": {"informants": {"so": "partner or close relative"}}},
    }
    study["measures"]["outcome"] = "ors_total"
    labels = Labels.from_config(study)
    assert labels.variable("alliance_rater_so") == (
        "Partner or close relative's alliance (WAI-SR total)"
    )
