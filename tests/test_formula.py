"""Tests for allianceflow.models.formula: lme4 syntax -> spec -> MixedLM arguments."""

import re

import numpy as np
import pandas as pd
import pytest

from allianceflow.models.formula import RandomTerm, formula_variables, parse_formula, to_mixedlm


def _nested_data(n_ther=3, n_pat=2, n_ses=3, reuse_ids=False):
    rows = []
    for t in range(n_ther):
        for p in range(n_pat):
            pid = f"P{p}" if reuse_ids else f"T{t}P{p}"
            for s in range(1, n_ses + 1):
                rows.append(
                    {
                        "therapist": f"T{t}",
                        "patient": pid,
                        "site": "S0" if t < 2 else "S1",
                        "rater": f"R{(p + s) % 2}",
                        "session": s,
                        "x": float(s),
                        "y": 1.0,
                    }
                )
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- parsing


def test_walking_skeleton_formula():
    spec = parse_formula(
        "outcome ~ alliance_within_lag + alliance_between + session + (1 | therapist) + (1 |"
        " patient)"
    )
    assert spec.response == "outcome"
    assert spec.fixed == "alliance_within_lag + alliance_between + session"
    assert spec.random == (
        RandomTerm(("therapist",), True, (), False, "(1 | therapist)"),
        RandomTerm(("patient",), True, (), False, "(1 | patient)"),
    )
    assert spec.factors == (("therapist",), ("patient",))


@pytest.mark.parametrize(
    "text, factor, intercept, slopes, correlated",
    [
        ("(1 | g)", ("g",), True, (), False),
        ("(1 + x | g)", ("g",), True, ("x",), True),
        ("(x | g)", ("g",), True, ("x",), True),  # lme4: intercept implied
        ("(0 + x | g)", ("g",), False, ("x",), False),
        ("(-1 + x | g)", ("g",), False, ("x",), False),
        ("(x - 1 | g)", ("g",), False, ("x",), False),
        ("(1 + x || g)", ("g",), True, ("x",), False),
        ("(1 + x + z | g)", ("g",), True, ("x", "z"), True),
        ("(1 | a:b)", ("a", "b"), True, (), False),
    ],
)
def test_random_term_forms(text, factor, intercept, slopes, correlated):
    (term,) = parse_formula(f"y ~ x + {text}").random
    assert (term.factor, term.intercept, term.slopes, term.correlated) == (
        factor,
        intercept,
        slopes,
        correlated,
    )
    assert term.source == text


def test_nested_slash_expands_like_lme4():
    terms = parse_formula("y ~ x + (1 + x | a/b/c)").random
    assert [t.label for t in terms] == ["a", "a:b", "a:b:c"]
    assert all(t.slopes == ("x",) and t.correlated for t in terms)


@pytest.mark.parametrize(
    "formula, fixed",
    [
        ("y ~ a*b + (1|g)", "a*b"),
        ("y ~ a + a:b + (1|g)", "a + a:b"),
        ("y ~ x + I(x^2) + (1|g)", "x + I(x**2)"),
        ("y ~ log(x) + (1|g)", "np.log(x)"),
        ("y ~ 0 + x + (1|g)", "0 + x"),
        ("y ~ x - 1 + (1|g)", "0 + x"),
        ("y ~ (1|g)", "1"),
        ("y ~ 1 + (1|g)", "1"),
    ],
)
def test_fixed_part_translation(formula, fixed):
    assert parse_formula(formula).fixed == fixed


@pytest.mark.parametrize(
    "formula, exc, message",
    [
        (3, TypeError, "`formula` must be a string; got int"),
        ("y x + (1|g)", ValueError, "exactly one '~'"),
        ("y ~ x ~ z", ValueError, "exactly one '~'"),
        (" ~ x + (1|g)", ValueError, "no response before '~'"),
        (
            "log(y) ~ x + (1|g)",
            ValueError,
            re.escape("response 'log(y)' must be a column name; derive it first"),
        ),
        ("y ~ ", ValueError, "nothing after '~'"),
        ("y ~ x + (1|g", ValueError, re.escape("unmatched '('")),
        ("y ~ x + 1|g)", ValueError, re.escape("unmatched ')'")),
        (
            "y ~ x - z + (1|g)",
            ValueError,
            "removing terms with '-' is supported only for the intercept",
        ),
        ("y ~ x + + (1|g)", ValueError, "empty term"),
        ("y ~ x + 1 | g", ValueError, "'|' outside parentheses"),
        ("y ~ x + (1 | g | h)", ValueError, "exactly one '|'"),
        ("y ~ x + ( | g)", ValueError, "nothing before '|'; write '(1 | g)'"),
        ("y ~ x + (1 | )", ValueError, "no grouping factor after '|'"),
        ("y ~ x + (0 | g)", ValueError, "no random effects left"),
        (
            "y ~ x + (1 + log(x) | g)",
            ValueError,
            re.escape(
                "random slope 'log(x)' is not a column name. MixedLM needs plain columns here:"
                " derive the variable first"
            ),
        ),
        ("y ~ x + (1 | g + h)", ValueError, "grouping factor 'g \\+ h' is not supported.*'g1/g2'"),
        ("y ~ x + (1 | g*h)", ValueError, "grouping factor 'g\\*h' is not supported"),
        ("y ~ x + (1 | 2g)", ValueError, "grouping factor '2g' is not a column name"),
        ("y ~ poly(x, 2) + (1|g)", ValueError, "poly\\(\\) is not supported; write the powers out"),
        ("y ~ ns(x, 3) + (1|g)", ValueError, "spline bases are not supported"),
    ],
)
def test_parse_errors(formula, exc, message):
    with pytest.raises(exc, match=message):
        parse_formula(formula)


def test_formula_variables_and_missing_columns():
    d = _nested_data()
    spec = parse_formula("y ~ x * session + I(x^2) + (1 + x | therapist) + (1 | therapist:patient)")
    assert formula_variables(spec, d.columns) == ["y", "x", "session", "therapist", "patient"]
    with pytest.raises(
        KeyError,
        match="'alliance' , which is not a column|uses 'alliance'.*closest: 'x'|uses 'alliance'",
    ):
        formula_variables(parse_formula("y ~ alliance + (1|therapist)"), d.columns)
    with pytest.raises(
        KeyError, match="grouping factor 'patiant' is not a column.*closest: 'patient'"
    ):
        formula_variables(parse_formula("y ~ x + (1|patiant)"), d.columns)
    with pytest.raises(KeyError, match="slope 'sesion' is not a column.*closest: 'session'"):
        formula_variables(parse_formula("y ~ x + (1 + sesion|patient)"), d.columns)
    with pytest.raises(KeyError, match="response 'yy' is not a column"):
        formula_variables(parse_formula("yy ~ x + (1|patient)"), d.columns)


# --------------------------------------------------------------------------- translation


def test_two_level_nested_intercepts():
    d = _nested_data()
    plan = to_mixedlm(parse_formula("y ~ x + (1 | therapist) + (1 | patient)"), d)
    assert plan.groups == "therapist"
    assert plan.re_formula == "1"
    assert plan.re_labels == [("therapist", "(Intercept)")]
    assert plan.vc_formula == {"vc0": "0 + C(patient)"}
    assert plan.vc_labels == {"vc0": ("patient", "(Intercept)")}
    assert plan.outer == "therapist"
    assert plan.formula == "y ~ x"


def test_order_of_terms_does_not_matter_for_outer_factor():
    d = _nested_data()
    plan = to_mixedlm(parse_formula("y ~ x + (1 | patient) + (1 + x | therapist)"), d)
    assert plan.groups == "therapist" and plan.re_formula == "1 + x"
    assert plan.re_labels == [("therapist", "(Intercept)"), ("therapist", "x")]
    assert plan.vc_formula == {"vc0": "0 + C(patient)"}


def test_single_factor_correlated_slopes():
    plan = to_mixedlm(parse_formula("y ~ x + (1 + x | patient)"), _nested_data())
    assert (plan.groups, plan.re_formula, plan.vc_formula) == ("patient", "1 + x", {})


def test_single_factor_uncorrelated_slopes_use_a_variance_component():
    plan = to_mixedlm(parse_formula("y ~ x + (1 + x || patient)"), _nested_data())
    assert (plan.groups, plan.re_formula) == ("patient", "1")
    assert plan.vc_formula == {"vc0": "0 + x"}
    assert plan.vc_labels == {"vc0": ("patient", "x")}


def test_slope_only_outer():
    plan = to_mixedlm(parse_formula("y ~ x + (0 + x | patient)"), _nested_data())
    assert plan.re_formula == "0 + x" and plan.re_labels == [("patient", "x")]


def test_repeated_blocks_for_outer_factor_are_uncorrelated():
    plan = to_mixedlm(parse_formula("y ~ x + (1 | patient) + (0 + x | patient)"), _nested_data())
    assert plan.re_formula == "1" and plan.vc_formula == {"vc0": "0 + x"}


def test_inner_uncorrelated_slopes():
    plan = to_mixedlm(parse_formula("y ~ x + (1 | therapist) + (1 + x || patient)"), _nested_data())
    assert plan.groups == "therapist"
    assert plan.vc_formula == {"vc0": "0 + C(patient)", "vc1": "0 + C(patient):x"}
    assert plan.vc_labels == {"vc0": ("patient", "(Intercept)"), "vc1": ("patient", "x")}


def test_slash_nesting_uses_derived_column():
    plan = to_mixedlm(
        parse_formula("y ~ x + (1 | therapist/patient)"), _nested_data(reuse_ids=True)
    )
    assert plan.groups == "therapist"
    assert plan.derived_columns == {"_g_therapist_patient": ("therapist", "patient")}
    assert plan.vc_formula == {"vc0": "0 + C(_g_therapist_patient)"}
    assert plan.vc_labels == {"vc0": ("therapist:patient", "(Intercept)")}


def test_three_levels():
    d = _nested_data(n_ther=4)
    plan = to_mixedlm(parse_formula("y ~ x + (1 | site) + (1 | therapist) + (1 + x || patient)"), d)
    assert plan.groups == "site"
    assert plan.vc_labels == {
        "vc0": ("therapist", "(Intercept)"),
        "vc1": ("patient", "(Intercept)"),
        "vc2": ("patient", "x"),
    }


def test_crossed_factors_become_components_of_one_group():
    d = _nested_data()
    plan = to_mixedlm(parse_formula("y ~ x + (1 | patient) + (1 | rater)"), d)
    assert plan.groups == "_all" and plan.re_formula == "0" and plan.outer == ""
    assert plan.vc_formula == {"vc0": "0 + C(patient)", "vc1": "0 + C(rater)"}


def test_reused_patient_ids_are_crossed_as_in_lme4():
    # lme4 treats (1 | patient) with ids reused across therapists as one factor crossing therapist
    plan = to_mixedlm(
        parse_formula("y ~ x + (1 | therapist) + (1 | patient)"), _nested_data(reuse_ids=True)
    )
    assert plan.groups == "_all"


def test_without_data_only_syntactic_nesting_counts():
    assert to_mixedlm(parse_formula("y ~ x + (1 | therapist) + (1 | patient)")).groups == "_all"
    assert to_mixedlm(parse_formula("y ~ x + (1 | therapist/patient)")).groups == "therapist"


def test_inner_correlated_slopes_raise_with_alternatives():
    msg = (
        "random term '(1 + session | patient)': 'patient' is nested in 'therapist', and "
        "MixedLM can give correlated random effects only to the outermost grouping factor "
        "('therapist'); inner levels are independent variance components. Write "
        "'(1 + session || patient)' (uncorrelated; for a preset model, the option `slopes:"
        " uncorrelated`), "
        "or drop '(... | therapist)' so that "
        "'patient' becomes the outer level."
    )
    with pytest.raises(ValueError, match=re.escape(msg)):
        to_mixedlm(
            parse_formula("y ~ x + (1 | therapist) + (1 + session | patient)"), _nested_data()
        )


def test_crossed_correlated_raise():
    # a ModelError (a DataError): the pipeline prints the paragraph, not a traceback
    from allianceflow.models.design import ModelError

    with pytest.raises(
        ModelError, match=re.escape("are crossed (not nested)") + ".*'\\(1 \\+ x \\|\\| rater\\)'"
    ):
        to_mixedlm(parse_formula("y ~ x + (1 | patient) + (1 + x | rater)"), _nested_data())


def test_two_correlated_blocks_for_one_factor_raise():
    with pytest.raises(ValueError, match="already has a correlated random-effects block"):
        to_mixedlm(
            parse_formula("y ~ x + (1 + x | patient) + (1 + session | patient)"), _nested_data()
        )


def test_duplicate_effect_raises():
    with pytest.raises(ValueError, match="the \\(Intercept\\) effect for 'patient' appears twice"):
        to_mixedlm(
            parse_formula("y ~ x + (1 | therapist) + (1 | patient) + (1 | patient)"), _nested_data()
        )


def test_no_random_part_raises():
    with pytest.raises(ValueError, match="has no random part; add e.g. '\\(1 \\| patient\\)'"):
        to_mixedlm(parse_formula("y ~ x"), _nested_data())


def test_vc_formulas_build_in_statsmodels():
    """The translated arguments are accepted by MixedLM and give the intended design sizes."""
    from statsmodels.regression.mixed_linear_model import MixedLM

    d = _nested_data(n_ther=3, n_pat=2, n_ses=4)
    d["y"] = np.arange(len(d), dtype=float) % 5
    plan = to_mixedlm(parse_formula("y ~ x + (1 + x | therapist) + (1 + x || patient)"), d)
    m = MixedLM.from_formula(
        plan.formula, d, groups=plan.groups, re_formula=plan.re_formula, vc_formula=plan.vc_formula
    )
    assert (m.k_re, m.k_vc, m.k_fe) == (2, 2, 2)
    # within one therapist: 2 patients -> 2 intercept columns and 2 slope columns
    assert [mat[0].shape for mat in m.exog_vc.mats] == [(8, 2), (8, 2)]
