"""The public fit path: one grouping-factor key, outer conditional modes, boundary scale.

Timings are measured in ``benchmarks/fit_path.py``, never here.
"""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from allianceflow.models import fit_lmm, fit_model
from allianceflow.models.design import group_codes, level_labels, nested_in
from allianceflow.models.inference import boundary_p, containment_df, is_boundary, is_singular

NESTED = "outcome ~ session + alliance_between + (1 + session | pid) + (1 | therapist)"


# --------------------------------------------------------------------------- grouping key


def test_an_interaction_key_does_not_merge_levels_that_join_to_the_same_text():
    """``("a:b", "c")`` and ``("a", "b:c")`` are two levels, although both read ``a:b:c``."""
    d = pd.DataFrame({"t": ["a:b", "a", "a:b"], "p": ["c", "b:c", "c"]})
    codes, levels = group_codes(d, ("t", "p"))
    assert codes.tolist() == [1, 0, 1]
    assert level_labels(levels) == ["a:b:c", "a:b:c"]
    assert len(levels) == 2


def test_group_codes_sort_levels_and_keep_their_values():
    d = pd.DataFrame({"g": [3, 1, 3, 2]})
    codes, levels = group_codes(d, ("g",))
    assert codes.tolist() == [2, 0, 2, 1]
    assert levels["g"].tolist() == [1, 2, 3] and level_labels(levels) == ["1", "2", "3"]


@pytest.mark.parametrize(
    ("inner", "outer", "expected"),
    [
        ([0, 0, 1, 1, 2], [0, 0, 0, 0, 1], True),
        ([0, 0, 1, 1, 2], [0, 1, 0, 0, 1], False),  # unit 0 in two outer units
        ([0, 1, 2], [0, 0, 0], True),
    ],
)
def test_nested_in(inner, outer, expected):
    assert nested_in(np.array(inner), np.array(outer)) is expected


def test_containment_df_counts_levels_with_the_shared_key(three_level_data):
    """Pinheiro & Bates' rule on 12 therapists, 120 patients (``pid``) and n = 644 rows.

    ``alliance_between`` is constant within patients: 120 - 12 - 1 = 107 df; ``session``
    and the intercept: n - 120 - 1 = 523. The interaction ``therapist:patient`` (ids
    ``P0``..``P9`` reused) has 60 levels, within which ``alliance_between`` varies: every
    column then gets n - 60 - 2 = 582.
    """
    d = three_level_data
    assert len(d) == 644
    exog = pd.DataFrame(
        {"Intercept": 1.0, "alliance_between": d["alliance_between"], "session": d["session"]}
    )
    df = containment_df(d, [("therapist",), ("pid",)], exog)
    assert df == {"Intercept": 523.0, "alliance_between": 107.0, "session": 523.0}
    df = containment_df(d, [("therapist",), ("therapist", "patient")], exog)
    assert df == {"Intercept": 582.0, "alliance_between": 582.0, "session": 582.0}


# --------------------------------------------------------------------------- conditional modes


def test_the_engine_reports_the_outermost_factor_whatever_the_formula_order(three_level_data):
    """Patients are listed first, but the modes are the therapists' (the outer factor)."""
    d = three_level_data
    record = fit_model(d, NESTED).to_dict()
    modes = pd.DataFrame(record["conditional_modes"])
    assert set(modes["group"]) == {"therapist"}
    assert list(modes["level"]) == [f"T{t:02d}" for t in range(12)]
    lmm = fit_lmm(d, NESTED).ranef["therapist"]
    assert modes["estimate"].to_numpy() == pytest.approx(lmm["(Intercept)"].to_numpy(), abs=1e-9)
    assert modes["se"].to_numpy() == pytest.approx(lmm["se_(Intercept)"].to_numpy(), abs=1e-9)


def test_both_engines_report_the_same_outer_modes(three_level_data):
    """The fast engine and statsmodels give the therapists' modes, level by level."""
    formula = "outcome ~ session + (1 | pid) + (1 | therapist)"
    fast = pd.DataFrame(fit_model(three_level_data, formula).to_dict()["conditional_modes"])
    sm = pd.DataFrame(
        fit_model(three_level_data, formula, engine="statsmodels").to_dict()["conditional_modes"]
    )
    assert list(fast["group"]) == list(sm["group"]) == ["therapist"] * 12
    assert list(fast["level"]) == list(sm["level"])
    assert fast["estimate"].to_numpy() == pytest.approx(sm["estimate"].to_numpy(), abs=1e-3)


# --------------------------------------------------------------------------- boundary scale


def test_boundary_tests_are_on_the_sd_scale():
    """SD / residual SD below the tolerance: variance below tol² times the residual."""
    assert is_boundary(0.99e-8 * 4.0, 4.0, 1e-4) and not is_boundary(1.01e-8 * 4.0, 4.0, 1e-4)
    # a correlation of 0.9999999 leaves an SD of sqrt(1e-7) = 3.2e-4 (relative): not singular
    # at 1e-4, singular at 1e-3
    cov = np.array([[1.0, 1 - 1e-7], [1 - 1e-7, 1.0]])
    assert not is_singular(cov, 1.0, 1e-4) and is_singular(cov, 1.0, 1e-3)


@pytest.mark.parametrize("factor", [0.5, 2.0])
def test_every_boundary_flag_of_a_fit_uses_the_same_scale(three_level_data, factor):
    """The therapist SD relative to the residual SD, s, is flagged when s < boundary_tol.

    With ``boundary_tol`` = s / 2 no flag is set, with 2 s both the ``random`` row and the
    convergence record flag it. (Before, ``random`` compared variances, s² < tol, and the
    engine SDs, s < tol: at tol = s / 2 the first said boundary and the second did not.)
    """
    d = three_level_data
    record = fit_model(d, NESTED).to_dict()
    row = next(r for r in record["random"] if r["group"] == "therapist")
    s = (row["variance"] / record["residual_variance"]) ** 0.5
    assert 0.05 < s < 0.9  # s / 2 and 2 s give different answers on the two old scales
    tol = factor * s
    again = fit_model(d, NESTED, boundary_tol=tol).to_dict()
    flag = next(r for r in again["random"] if r["group"] == "therapist")["boundary"]
    listed = "(Intercept) | therapist" in again["convergence"]["boundary"]
    assert flag is listed is (factor > 1)


# --------------------------------------------------------------------------- LRT mixture


@pytest.mark.parametrize(
    ("stat", "df", "added", "expected"),
    [
        # one variance added, 1/2 chi2_0 + 1/2 chi2_1 (Self & Liang 1987): the 5% critical
        # value is the 90% quantile of chi2_1, 2.71
        (stats.chi2.ppf(0.90, 1), 1, 1, 0.05),
        # a random slope added with its covariance, 1/2 chi2_1 + 1/2 chi2_2 (Stram & Lee
        # 1994): the 5% critical value is 5.14
        (5.1383, 2, 1, 0.05),
    ],
)
def test_boundary_p_is_the_50_50_mixture(stat, df, added, expected):
    assert boundary_p(stat, df, added) == pytest.approx(expected, abs=2e-5)


# --------------------------------------------------------------------------- shared codes


def test_shared_codes_factorise_a_factor_once_per_frame():
    """Inside the block the same frame's codes are reused (sorted, read-only); outside not."""
    from allianceflow.models.design import shared_codes

    d = pd.DataFrame({"g": ["b", "a", "c", "a"]})
    other = d.copy()
    with shared_codes(d):
        first, levels = group_codes(d, ("g",), sort=False)
        assert first.tolist() == [1, 0, 2, 0]  # sorted even though sort=False was asked
        assert group_codes(d, ("g",))[0] is first
        assert not first.flags.writeable
        # an equal frame that is not the same object is factorised afresh, in its own order
        assert group_codes(other, ("g",), sort=False)[0].tolist() == [0, 1, 2, 1]
    assert group_codes(d, ("g",), sort=False)[0].tolist() == [0, 1, 2, 1]
    assert levels["g"].tolist() == ["a", "b", "c"]


def test_complete_rows_is_model_rows_and_missing_by_variable():
    from allianceflow.models.design import complete_rows, missing_by_variable, model_rows
    from allianceflow.models.formula import parse_formula

    d = pd.DataFrame(
        {
            "y": [1.0, np.nan, 3.0, np.nan, 5.0],
            "x": [1.0, 2.0, np.nan, np.nan, 4.0],
            "g": ["a", "a", "b", None, "b"],
        }
    )
    spec = parse_formula("y ~ x + (1 | g)")
    rows, dropped, by_variable = complete_rows(d, spec)
    expected_rows, expected_dropped = model_rows(d, spec)
    pd.testing.assert_frame_equal(rows, expected_rows)
    assert dropped == expected_dropped == 3
    assert by_variable == missing_by_variable(d, spec) == {"y": 2, "x": 2, "g": 1}
