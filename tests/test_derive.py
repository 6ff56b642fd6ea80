"""Within/between parts, lags and leads, the analysis table and derive_tables."""

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import EXAMPLE_ORS, random_session_keys
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from allianceflow.derive import (
    DERIVE_DEFAULTS,
    derive_analysis,
    derive_tables,
    lag_within_patient,
    within_between,
)


def _three_level():
    # T1: a (1, 3) mean 2; b (5) mean 5 -> T1 mean (2 + 5)/2 = 3.5
    # T2: c (6, 8, 10) mean 8                -> T2 mean 8
    # grand mean of patient means (2 + 5 + 8)/3 = 5
    return pd.DataFrame(
        {
            "patient": ["a", "a", "b", "c", "c", "c"],
            "therapist": ["T1", "T1", "T1", "T2", "T2", "T2"],
            "session": [1, 2, 1, 1, 2, 3],
            "x": [1.0, 3.0, 5.0, 6.0, 8.0, 10.0],
        }
    )


def test_within_between_default_unchanged():
    out = within_between(_three_level(), "x")
    assert out["x_between"].tolist() == [-3.0, -3.0, 0.0, 3.0, 3.0, 3.0]
    assert out["x_within"].tolist() == [-1.0, 1.0, 0.0, -2.0, 0.0, 2.0]
    assert "x_gmc" not in out and "x_therapist" not in out


def test_within_between_therapist_and_grand_mean():
    out = within_between(_three_level(), "x", therapist="therapist", grand_mean=True)
    assert out["x_tmean"].tolist() == [3.5, 3.5, 3.5, 8.0, 8.0, 8.0]
    assert out["x_therapist"].tolist() == [-1.5, -1.5, -1.5, 3.0, 3.0, 3.0]
    # patient part: a 2 - 3.5 = -1.5, b 5 - 3.5 = 1.5, c 8 - 8 = 0
    assert out["x_patient"].tolist() == [-1.5, -1.5, 1.5, 0.0, 0.0, 0.0]
    np.testing.assert_allclose(out["x_between"], out["x_therapist"] + out["x_patient"])
    # gmc = x - 5 = within + between
    assert out["x_gmc"].tolist() == [-4.0, -2.0, 0.0, 1.0, 3.0, 5.0]
    np.testing.assert_allclose(out["x_gmc"], out["x_within"] + out["x_between"])


def test_within_between_patient_with_two_therapists_refused():
    df = _three_level()
    df.loc[1, "therapist"] = "T2"
    with pytest.raises(
        ValueError, match="Patient 'a' is seen by more than one therapist \\(T1, T2\\)"
    ):
        within_between(df, "x", therapist="therapist")


def test_lead_respects_gaps():
    df = pd.DataFrame({"patient": ["a"] * 3, "session": [1, 2, 4], "x": [1.0, 2.0, 4.0]})
    lead = lag_within_patient(df, ["x"], lag=-1)["x_lead"]
    assert lead.iloc[0] == 2.0 and math.isnan(lead.iloc[1]) and math.isnan(lead.iloc[2])
    lead = lag_within_patient(df, ["x"], lag=-1, across_gaps=True)["x_lead"]
    assert lead.tolist()[:2] == [2.0, 4.0] and math.isnan(lead.iloc[2])


def test_lag_validation():
    df = pd.DataFrame({"patient": ["a"], "session": [1], "x": [1.0]})
    with pytest.raises(ValueError, match="`lag` must be a non-zero integer; got 0"):
        lag_within_patient(df, ["x"], lag=0)


def test_derive_analysis_columns_and_values():
    df = _three_level().rename(columns={"x": "wai"})
    df["ors"] = [10.0, 12.0, 20.0, 15.0, 17.0, 19.0]
    out = derive_analysis(df, alliance="wai", outcome="ors", therapist="therapist")
    for col in (
        "alliance_within",
        "alliance_between",
        "alliance_gmc",
        "alliance_therapist",
        "alliance_patient",
        "alliance_within_lag",
        "alliance_lag",
        "outcome_lag",
        "outcome_next",
        "outcome_within",
    ):
        assert col in out.columns
    c = out[out.patient == "c"]
    assert c["outcome_next"].tolist()[:2] == [17.0, 19.0] and math.isnan(c["outcome_next"].iloc[2])
    assert math.isnan(c["alliance_lag"].iloc[0]) and c["alliance_lag"].tolist()[1:] == [6.0, 8.0]
    # one-session patient b: no lag, no lead, within 0
    b = out[out.patient == "b"].iloc[0]
    assert math.isnan(b.outcome_lag) and math.isnan(b.outcome_next) and b.alliance_within == 0.0


def _scored(seed=5, n_patients=60, max_sessions=10):
    """A small scored study: therapists, dropout, unrecorded sessions, missing scores."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_patients):
        n = int(rng.integers(1, max_sessions + 1))
        intake = rng.normal(19, 5)
        level = rng.normal(3.6, 0.4)
        for s in range(1, n + 1):
            if s > 1 and rng.random() < 0.05:
                continue  # unrecorded session
            ors = intake + 0.6 * (s - 1) + rng.normal(0, 3)
            rows.append(
                {
                    "therapist": f"T{i % 6}",
                    "patient": f"P{i:03d}",
                    "session": s,
                    "days": 7.0 * (s - 1),
                    "wai_sr_total": level + rng.normal(0, 0.4),
                    "ors_total": np.nan
                    if rng.random() < 0.03
                    else round(float(np.clip(ors, 0, 40)), 1),
                }
            )
    return pd.DataFrame(rows)


def test_derive_tables_end_to_end_on_simulated_study():
    scored = _scored()
    unchanged = scored.copy(deep=True)
    res = derive_tables(
        scored,
        alliance="wai_sr_total",
        outcome="ors_total",
        **EXAMPLE_ORS,
    )
    assert len(res.analysis) == len(scored)
    assert res.patients["patient"].is_unique and len(res.patients) == scored.patient.nunique()
    for col in ("track_status", "rupture_detected", "alliance_therapist", "outcome_next"):
        assert col in res.analysis.columns
    for col in (
        "rc_category",
        "ending",
        "weeks",
        "first_off_track_session",
        "n_sudden_gains",
        "n_ruptures",
    ):
        assert col in res.patients.columns
    # counts reconcile between the event table and the patients table
    assert res.patients.n_sudden_gains.sum() == (res.sudden_gains.event == "gain").sum()
    assert res.patients.n_sudden_losses.sum() == (res.sudden_gains.event == "loss").sum()
    assert (
        res.patients.n_ruptures.sum()
        == res.analysis.rupture_detected.fillna(False).astype(bool).sum()
    )
    assert res.patients.n_ruptures.equals(
        res.patients.n_repaired + res.patients.n_unrepaired + res.patients.n_censored
    )
    assert set(res.expected_response) == {
        "gamma0",
        "gamma1",
        "centre",
        "sigma",
        "n_patients",
        "n_observations",
    }
    # the same inputs give the same tables
    again = derive_tables(
        scored,
        alliance="wai_sr_total",
        outcome="ors_total",
        **EXAMPLE_ORS,
    )
    pd.testing.assert_frame_equal(res.patients, again.patients)
    pd.testing.assert_frame_equal(res.sudden_gains, again.sudden_gains)
    # the analysis table shares the scored columns: deriving never writes into them
    pd.testing.assert_frame_equal(scored, unchanged, check_exact=True)


def test_derive_tables_settings_switches_and_coefficients():
    scored = _scored(n_patients=20)
    res = derive_tables(
        scored,
        alliance="wai_sr_total",
        outcome="ors_total",
        direction="higher_is_better",
        rci=None,
        settings={
            "reliable_change": {"enabled": False},
            "sudden_gains": {"enabled": False},
            "ruptures": {"enabled": False},
            "on_track": {
                "reference": "coefficients",
                "coefficients": {"gamma0": 2.0, "gamma1": -0.1, "centre": 19.0, "sigma": 4.0},
            },
        },
    )
    assert res.sudden_gains.empty and "rupture_detected" not in res.analysis
    assert "rc_category" not in res.patients and "n_sudden_gains" not in res.patients
    assert res.expected_response["gamma0"] == 2.0


@pytest.mark.parametrize(
    "settings, kwargs, error, match",
    [
        (
            {"sudden_gain": {}},
            {},
            KeyError,
            "Unknown derive setting 'sudden_gain' \\(did you mean 'sudden_gains'\\?\\)",
        ),
        ({"ruptures": {"k": 2}}, {}, KeyError, "Unknown key 'k' in derive setting 'ruptures'"),
        (
            {"on_track": {"reference": "norms"}},
            {},
            ValueError,
            "`on_track.reference` must be 'study', 'reference' or 'coefficients'",
        ),
        ({}, {"rci": None}, ValueError, "Sudden gains need a first-criterion cut-off"),
        (
            {"sudden_gains": {"cutoff": 5}},
            {"rci": None},
            ValueError,
            "Reliable change needs the outcome instrument's `rci`",
        ),
        ({"informant": "therapist"}, {}, KeyError, "Column 'informant' is not in the data"),
    ],
)
def test_derive_tables_errors(settings, kwargs, error, match):
    scored = _scored(n_patients=10)
    args = dict(alliance="wai_sr_total", outcome="ors_total", direction="higher_is_better", rci=5.0)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        derive_tables(scored, settings=settings, **args)


def test_defaults_cover_every_block():
    assert set(DERIVE_DEFAULTS) == {
        "informant",
        "therapist_centring",
        "reliable_change",
        "on_track",
        "sudden_gains",
        "ruptures",
        "endings",
    }


def test_schema_defaults_are_the_derive_defaults():
    import yaml

    schema = yaml.safe_load(
        (Path(__file__).resolve().parents[1] / "workflow/schemas/config.schema.yaml").read_text()
    )
    blocks = dict(schema["$defs"]["study"]["properties"]["derive"]["properties"])
    blocks.pop("lag_across_gaps")  # an argument of derive_tables of its own
    assert set(blocks) == set(DERIVE_DEFAULTS)
    compared = 0
    for block, spec in blocks.items():
        if "properties" not in spec:
            assert spec.get("default") == DERIVE_DEFAULTS[block], block
            compared += 1
            continue
        for key, sub in spec["properties"].items():
            assert sub.get("default") == DERIVE_DEFAULTS[block][key], f"{block}.{key}"
            compared += 1
    assert compared >= 20  # the walk reached the nested keys


# --------------------------------------------------------------- preset_variables (review fixes)


def _preset_frame():
    d = pd.DataFrame(
        {
            "patient": ["a"] * 6 + ["b"],
            "session": [1, 2, 3, 4, 5, 6, 1],
            "alliance": [4.0, 2.0, 4.0, 4.0, 2.0, 3.0, 4.0],
            # rupture detected at sessions 2 and 5 of patient a; the first repaired at session 3
            "rupture_detected": pd.array(
                [pd.NA, True, False, False, True, False, pd.NA], dtype="boolean"
            ),
            "rupture_repair": [None, "repaired", None, None, "censored", None, None],
            "rupture_repair_session": pd.array(
                [pd.NA, 3, pd.NA, pd.NA, pd.NA, pd.NA, pd.NA], dtype="Int64"
            ),
            "rupture": pd.Categorical(
                ["none", "withdrawal", "none", "none", "confrontation", "none", "none"]
            ),
            "on_track": pd.array([pd.NA, True, False, True, True, True, pd.NA], dtype="boolean"),
        }
    )
    patients = pd.DataFrame(
        {"patient": ["a", "b"], "first_off_track_session": [3.0, np.nan], "n_not_on_track": [1, 0]}
    )
    return d, patients


def test_ruptures_and_repairs_before_each_session_use_only_the_past():
    from allianceflow.derive import preset_variables

    d, patients = _preset_frame()
    out = preset_variables(d, patients)
    a = out[out["patient"] == "a"].sort_values("session")
    # ruptures at sessions 2 and 5 count from the session after each
    assert a["ruptures_before"].tolist() == [0, 0, 1, 1, 1, 2]
    # the first rupture was repaired at session 3, so it counts as repaired from session 4
    assert a["repairs_before"].tolist() == [0, 0, 0, 1, 1, 1]
    assert out["rupture_flag"].tolist()[:6] == [
        pytest.approx(np.nan, nan_ok=True),
        1.0,
        0.0,
        0.0,
        1.0,
        0.0,
    ]
    # the coded rupture column is kept as it was
    assert out["rupture"].astype(str).tolist() == d["rupture"].astype(str).tolist()


def test_off_track_is_missing_for_a_patient_never_assessed():
    from allianceflow.derive import preset_variables

    d, patients = _preset_frame()
    out = preset_variables(d, patients)
    assert out.loc[out["patient"] == "a", "off_track"].eq(1.0).all()
    assert out.loc[out["patient"] == "b", "off_track"].isna().all()


def test_component_names_are_explicit_and_collisions_refused():
    from allianceflow.derive import preset_variables

    d, _ = _preset_frame()
    d["y_task"] = d["alliance"] + 1
    d["w_task"] = d["alliance"] - 1
    out = preset_variables(d, components={"task": "y_task"})
    assert out["alliance_task_between"].notna().all() and "alliance_task_within_lag" in out
    with pytest.raises(ValueError, match=r"give the component name 'task' twice; pass a mapping"):
        preset_variables(d, components=["y_task", "w_task"])


@pytest.mark.parametrize("seed", range(30))
@pytest.mark.parametrize("across_gaps", [False, True])
def test_lags_of_sorted_rows_equal_the_merge_on_keys(seed, across_gaps):
    # A table sorted by patient and session takes lags and leads from the neighbouring
    # rows; a shuffled copy goes through the merge on patient and session. Same values
    # and the same types (int to float, bool to object, nullable kept).
    rng = np.random.default_rng(seed)
    frames = []
    for p in rng.choice(10**5, size=int(rng.integers(1, 30)), replace=False):
        sessions = np.sort(
            rng.choice(np.arange(1, 15), size=int(rng.integers(1, 10)), replace=False)
        )
        pid = f"p{p}" if seed % 3 else int(p)
        frames.append(pd.DataFrame({"patient": pid, "session": sessions}))
    data = pd.concat(frames, ignore_index=True)
    n = len(data)
    data["x"] = np.where(rng.random(n) < 0.2, np.nan, rng.normal(size=n))
    data["k"] = rng.integers(0, 5, n)
    data["b"] = rng.random(n) < 0.5
    data["f"] = pd.array(np.where(rng.random(n) < 0.2, None, rng.random(n)), dtype="Float64")
    data = data.sort_values(["patient", "session"], kind="mergesort").reset_index(drop=True)
    shuffled = data.sample(frac=1.0, random_state=seed)
    for lag in (1, -1):
        got = lag_within_patient(data, ["x", "k", "b", "f"], lag=lag, across_gaps=across_gaps)
        want = lag_within_patient(shuffled, ["x", "k", "b", "f"], lag=lag, across_gaps=across_gaps)
        pd.testing.assert_frame_equal(got, want.loc[data.index], check_exact=True)


@pytest.mark.parametrize("seed", range(30))
def test_patient_therapist_pairs_by_codes_equal_drop_duplicates(seed):
    # The three-level split finds each patient's therapists from integer codes; the rows
    # must be those of dropna().drop_duplicates() on the two id columns, labels and order.
    from allianceflow.derive import _id_codes, _pairs

    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 300))
    patients = rng.integers(0, 40, n)
    therapists = np.where(rng.random(n) < 0.1, None, rng.integers(0, 6, n).astype(str))
    data = pd.DataFrame(
        {"patient": [f"p{p}" if seed % 2 else int(p) for p in patients], "therapist": therapists},
        index=rng.permutation(n) + 7,
    )
    if seed % 3 == 0:
        data["therapist"] = data["therapist"].astype("category")
    codes, _ = _id_codes(data["patient"])
    got = _pairs(data, "patient", "therapist", codes)
    want = data[["patient", "therapist"]].dropna().drop_duplicates()
    pd.testing.assert_frame_equal(got, want, check_exact=True)


@pytest.mark.parametrize("seed", range(20))
def test_values_by_patient_code_equal_the_map(seed):
    # Patient-level values reach the session rows by the ids' codes; the result must be
    # Series.map's: values, missing ones, type and name.
    from allianceflow.derive import _by_patient

    rng = np.random.default_rng(seed)
    ids = pd.Series(
        [f"p{i}" if seed % 2 else int(i) for i in rng.integers(0, 30, 200)], name="patient"
    )
    known = pd.unique(ids)[: int(rng.integers(0, 31))]
    kind = seed % 4
    values = [
        rng.random(len(known)),
        rng.integers(0, 3, len(known)),
        rng.choice(["planned", "dropout", None], len(known)),
        rng.random(len(known)) < 0.5,
    ][kind]
    per_patient = pd.Series(values, index=pd.Index(known, name="patient"))
    pd.testing.assert_series_equal(
        _by_patient(ids, per_patient), ids.map(per_patient), check_exact=True
    )
    # a category or string type is kept, as the map keeps it
    for dtype in ("category", "string"):
        typed = pd.Series(rng.choice(["planned", "dropout"], len(known)), index=known, dtype=dtype)
        pd.testing.assert_series_equal(_by_patient(ids, typed), ids.map(typed), check_exact=True)


def test_ids_mixing_text_and_numbers_are_not_sorted_by_their_codes():
    """Sorting such ids raises; factorize would order them (numbers first): no codes."""
    from allianceflow.derive import _id_codes

    mixed = pd.Series(["b", 2, "a", 1], dtype=object)
    assert _id_codes(mixed, sort=True) is None
    codes, ids = _id_codes(mixed)  # first-appearance order needs no sorting
    assert codes.tolist() == [0, 1, 2, 3] and ids.tolist() == ["b", 2, "a", 1]


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.lists(
        st.tuples(st.sampled_from(["a", "b", "B", "c10", "c2"]), st.integers(1, 4)),
        min_size=2,
        max_size=20,
    ),
    presort=st.booleans(),
)
def test_check_sessions_refuses_a_repeated_session_sorted_or_not(rows, presort):
    """A repeated (patient, session) is refused whether or not the rows come sorted.

    Sorted tables with sessions rising within each patient skip pandas' duplicate search;
    half the drawn tables are sorted, so both paths are checked against ``duplicated``.
    """
    from allianceflow._derive_checks import check_sessions

    data = pd.DataFrame(rows, columns=["patient", "session"])
    if presort:
        data = data.sort_values(["patient", "session"], kind="mergesort")
    repeated = data.duplicated(["patient", "session"])
    if repeated.any():
        first = data[repeated].iloc[0]
        with pytest.raises(
            ValueError,
            match=f"more than one row for patient '{first['patient']}' at session "
            f"{first['session']};",
        ):
            check_sessions(data, "patient", "session")
    else:
        check_sessions(data, "patient", "session")


@pytest.mark.parametrize("seed", range(6))
def test_informant_alliances_adds_each_raters_columns_without_copying_the_table(seed):
    """Each informant's rating, split and lag equal the merge-split-lag of the public functions.

    The analysis table handed in is left unchanged, and its columns are shared with the
    result rather than copied; a nullable Float64 rating stays Float64.
    """
    from allianceflow.derive import informant_alliances

    rng = np.random.default_rng(seed)
    keys = random_session_keys(rng, text_ids=bool(seed % 2))
    raters = []
    for name in ("patient", "therapist", "observer"):
        rated = keys.sample(frac=float(rng.uniform(0.5, 1.0)), random_state=seed)
        raters.append(rated.assign(informant=name, wai=rng.normal(5, 1, len(rated))))
    scored = pd.concat(raters, ignore_index=True).sample(frac=1.0, random_state=seed)
    if seed == 5:  # a nullable rating keeps its type, as the merge keeps it
        scored["wai"] = scored["wai"].astype("Float64")
    own = scored[scored["informant"] == "patient"]
    analysis = derive_analysis(
        own.assign(ors=rng.normal(20, 5, len(own))), alliance="wai", outcome="ors"
    )
    before = analysis.copy()
    across = bool(seed % 3 == 0)
    got = informant_alliances(scored, analysis, alliance="wai", lag_across_gaps=across)

    expected = analysis.copy()
    for name in ("observer", "patient", "therapist"):
        rows = scored.loc[scored["informant"] == name, ["patient", "session", "wai"]]
        column = f"alliance_rater_{name}"
        expected = expected.merge(
            rows.rename(columns={"wai": column}), on=["patient", "session"], how="left"
        )
        expected = within_between(expected, column)
        expected = lag_within_patient(expected, [f"{column}_within"], across_gaps=across)
    pd.testing.assert_frame_equal(got, expected)
    pd.testing.assert_frame_equal(analysis, before)
    assert np.shares_memory(got["alliance"].to_numpy(), analysis["alliance"].to_numpy())
    assert str(got["alliance_rater_observer"].dtype) == ("Float64" if seed == 5 else "float64")
