"""The couple and family alliance instruments: SOFTA-s scoring through ``score_sessions``.

The SOFTA-s file ships what could be confirmed (16 items, four dimensions, direction) and
leaves the response range, the reverse keying and the items of each dimension null. A study
supplies them from the developers' key; ``KEY`` below is such a study key, invented for the
test (it is not the published key), so every expected number is a hand computation from it.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from allianceflow.instruments import load_instrument
from allianceflow.score import score_columns, score_sessions

#: A study's scoring key for the SOFTA-s (test values, not the developers' key).
KEY = {
    "response": {"min": 1, "max": 5},
    "reverse": [3, 12],
    "subscales": {
        "engagement": [1, 5, 9, 13],
        "emotional_connection": [2, 6, 10, 14],
        "safety": [3, 7, 11, 15],
        "shared_purpose": [4, 8, 12, 16],
    },
    "max_missing": 2,
    "subscale_max_missing": 1,
}

#: Raw answers of one complete form. Items 3 (2) and 12 (1) are reverse-keyed: 6 - x gives
#: 4 and 5, so the keyed items are 5 4 4 3 | 4 4 5 3 | 5 4 4 5 | 3 5 4 4 (total 66).
FULL = [5, 4, 2, 3, 4, 4, 5, 3, 5, 4, 4, 1, 3, 5, 4, 4]


def _forms(*rows: list[float | None]) -> pd.DataFrame:
    data = {"patient": [f"p{i}" for i in range(len(rows))], "session": 1}
    for j in range(16):
        data[f"softa_s_{j + 1}"] = [row[j] for row in rows]
    return pd.DataFrame(data).astype({f"softa_s_{j + 1}": "float64" for j in range(16)})


def _without(items: list[int]) -> list[float | None]:
    return [None if j + 1 in items else v for j, v in enumerate(FULL)]


def test_softa_s_as_shipped_names_every_unconfirmed_rule():
    with pytest.raises(ValueError) as err:
        score_sessions(_forms(FULL), ["softa_s"])
    assert str(err.value) == (
        "instrument 'softa_s' cannot be scored as shipped: its response range (`response: "
        "{min: ..., max: ...}`); reverse-keyed items (`reverse: [...]`, [] for none); items of "
        "the subscales ['emotional_connection', 'engagement', 'safety', 'shared_purpose'] "
        "(`subscales: {<name>: [...]}`) could not be confirmed against a published source. "
        "Set them for the study from the developers' scoring key, e.g. config `instruments: "
        "{softa_s: {response: {min: <lowest>, max: <highest>}, reverse: [<items>], subscales: "
        "{<name>: [<items>]}}}`."
    )


def test_softa_s_ships_its_confirmed_facts():
    inst = load_instrument("softa_s", overrides=KEY)
    assert inst.n_items == 16
    assert inst.construct == "alliance"
    assert inst.direction == "higher_is_better"
    assert list(inst.subscales) == [
        "engagement",
        "emotional_connection",
        "safety",
        "shared_purpose",
    ]
    d = inst.definition
    assert d["response"]["source"] == "study override"
    assert all(s["source"] == "study override" for s in d["subscales"].values())
    assert inst.cutoff is None and inst.rci is None
    assert score_columns(inst) == [
        "softa_s_total",
        "softa_s_engagement",
        "softa_s_emotional_connection",
        "softa_s_safety",
        "softa_s_shared_purpose",
        "softa_s_n_items",
        "softa_s_prorated",
    ]


def test_softa_s_scores_a_complete_form_with_reverse_keys():
    s = score_sessions(_forms(FULL), {"softa_s": KEY}).iloc[0]
    assert s["softa_s_total"] == 66.0
    assert s["softa_s_engagement"] == 17.0  # items 1 5 9 13: 5 4 5 3
    assert s["softa_s_emotional_connection"] == 17.0  # items 2 6 10 14: 4 4 4 5
    assert s["softa_s_safety"] == 17.0  # items 3 7 11 15: (6-2) 5 4 4
    assert s["softa_s_shared_purpose"] == 15.0  # items 4 8 12 16: 3 3 (6-1) 4
    assert s["softa_s_n_items"] == 16
    assert not s["softa_s_prorated"]


def test_softa_s_prorates_up_to_the_study_limit():
    # Items 3 and 16 missing: 14 keyed answers sum to 66 - 4 - 4 = 58, so the total is
    # 58 / 14 x 16; safety has 7 11 15 = 13 of 3 items (x 4 / 3), shared purpose 4 8 12 = 11.
    s = score_sessions(_forms(_without([3, 16])), {"softa_s": KEY}).iloc[0]
    assert math.isclose(s["softa_s_total"], 58 / 14 * 16, rel_tol=1e-12)
    assert math.isclose(s["softa_s_safety"], 13 / 3 * 4, rel_tol=1e-12)
    assert math.isclose(s["softa_s_shared_purpose"], 11 / 3 * 4, rel_tol=1e-12)
    assert s["softa_s_engagement"] == 17.0
    assert s["softa_s_n_items"] == 14
    assert s["softa_s_prorated"]


def test_softa_s_missing_rule_per_scale():
    # Row 0: items 1, 2 and 3 missing, one more than the total allows; each of the three
    # subscales misses one item and is prorated. Row 1: items 1 and 5 missing, two of
    # engagement's four (more than its limit of one), while the total is prorated.
    rows = [_without([1, 2, 3]), _without([1, 5])]
    with pytest.warns(UserWarning, match=r"softa_s: 1 row\(s\) answered some but not enough"):
        s = score_sessions(_forms(*rows), {"softa_s": KEY})
    first, second = s.iloc[0], s.iloc[1]
    assert np.isnan(first["softa_s_total"])
    assert first["softa_s_engagement"] == 16.0  # 4 5 3 = 12 of 3 items, x 4 / 3
    assert math.isclose(first["softa_s_emotional_connection"], 13 / 3 * 4, rel_tol=1e-12)
    assert math.isclose(first["softa_s_safety"], 13 / 3 * 4, rel_tol=1e-12)
    assert first["softa_s_shared_purpose"] == 15.0
    assert first["softa_s_prorated"]
    assert np.isnan(second["softa_s_engagement"])
    assert math.isclose(second["softa_s_total"], (66 - 5 - 4) / 14 * 16, rel_tol=1e-12)


def test_softa_s_without_proration_leaves_partial_forms_missing():
    with pytest.warns(UserWarning):
        s = score_sessions(_forms(_without([16])), {"softa_s": KEY}, prorate=False).iloc[0]
    assert np.isnan(s["softa_s_total"]) and np.isnan(s["softa_s_shared_purpose"])
    assert s["softa_s_safety"] == 17.0


def test_softa_s_answers_outside_the_study_range_are_refused():
    bad = list(FULL)
    bad[6] = 6
    with pytest.raises(
        ValueError, match=r"Column 'softa_s_7' \(instrument 'softa_s'\) has value 6"
    ):
        score_sessions(_forms(bad), {"softa_s": KEY})


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            {"response": {"min": 1}},
            r"override `response` must be a mapping \{min: <number>, max: <number>\}",
        ),
        (
            {"response": {"min": "1", "max": 5}},
            r"override `response.min` must be a finite number; got '1'",
        ),
        ({"reverse": [3, 3]}, r"override `reverse` must be a list of distinct item numbers"),
        (
            {"subscales": {"bond": [1, 2]}},
            r"override `subscales` names 'bond', which is not a subscale of this instrument "
            r"\(allowed: \['emotional_connection', 'engagement', 'safety', 'shared_purpose'\]\)",
        ),
        (
            {"subscales": {"safety": [3, 17]}},
            r"field `subscales.safety.items` names item\(s\) \[17\] but the instrument has 16",
        ),
        ({"reverse": [0]}, r"override `reverse` must be a list of distinct item numbers"),
    ],
)
def test_softa_s_key_overrides_are_checked(override, message):
    with pytest.raises(ValueError, match=message):
        load_instrument("softa_s", overrides={**KEY, **override})


def test_a_partial_key_still_names_what_is_missing():
    partial = {k: v for k, v in KEY.items() if k != "reverse"}
    with pytest.raises(ValueError, match=r"its reverse-keyed items \(`reverse: \[...\]`"):
        load_instrument("softa_s", overrides=partial)
    # Supplying "no reverse-keyed items" is a key too.
    assert load_instrument("softa_s", overrides={**partial, "reverse": []}).reverse == ()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"response": {"min": None, "max": 5}},
            r"field `response` has a null min or max; mark it `unconfirmed: true`",
        ),
        (
            {"subscales": {"a": {"items": None}}},
            r"field `subscales.a.items` is null; mark the subscale `unconfirmed: true`",
        ),
    ],
)
def test_a_null_scoring_rule_must_be_marked_unconfirmed(change, message):
    definition = {
        "id": "study_alliance",
        "name": "Study alliance scale",
        "construct": "alliance",
        "informant": ["patient"],
        "items": 4,
        "response": {"min": 1, "max": 5},
        "total": "sum",
        "direction": "higher_is_better",
        "proration": {"max_missing": 0},
        "sources": {"pilot": "Our pilot study (2025)."},
        **change,
    }
    with pytest.raises(ValueError, match=message):
        load_instrument(definition)


def _clean_family_forms(root, folder, instruments, bad_item: int | None = None):
    """Clean three family members' SOFTA-s forms with the example study's read settings."""
    import copy

    from allianceflow.clean import clean_sessions
    from allianceflow.config import load_config
    from allianceflow.stages import clean_settings, read_export

    study = copy.deepcopy(load_config(root / "config.yaml")["studies"]["example"])
    rows = []
    for family, member in [("F1", "mother"), ("F1", "son"), ("F2", "father")]:
        row = {"Client": f"{family}-{member}", "Clinician": "T1", "Session": 1}
        row.update({f"SOFTA_{j + 1:02d}": FULL[j] for j in range(16)})
        rows.append(row)
    if bad_item is not None:
        rows[2][f"SOFTA_{bad_item:02d}"] = 6
    pd.DataFrame(rows).to_csv(folder / "family.csv", index=False)
    columns = {"Client": "patient", "Clinician": "therapist", "Session": "session"}
    columns.update({f"SOFTA_{j:02d}": f"softa_s_{j}" for j in range(1, 17)})
    read = {**study["read"], "raw": "family.csv", "columns": columns, "labels": {}}
    settings = clean_settings(
        read=read, privacy=study["privacy"], clean=study["clean"], instruments=instruments
    )
    return clean_sessions(read_export(folder / "family.csv", read), settings, source="family.csv")


def test_the_clean_stage_checks_answers_against_the_study_key(root, tmp_path):
    from allianceflow.clean import DataError

    cleaned = _clean_family_forms(root, tmp_path, {"softa_s": KEY})
    assert len(cleaned.sessions) == 3
    scored = score_sessions(cleaned.sessions, {"softa_s": KEY})
    assert scored["softa_s_total"].tolist() == [66.0, 66.0, 66.0]
    with pytest.raises(DataError) as err:
        _clean_family_forms(root, tmp_path, {"softa_s": KEY}, bad_item=7)
    assert str(err.value).startswith(
        "family.csv, row 4, column 'SOFTA_07': softa_s_7 = 6 is outside the response range "
        "1 to 5 of softa_s."
    )


def test_the_clean_stage_asks_for_the_key_of_an_unconfirmed_instrument(root, tmp_path):
    with pytest.raises(ValueError, match=r"instrument 'softa_s' cannot be scored as shipped"):
        _clean_family_forms(root, tmp_path, {"softa_s": None})
