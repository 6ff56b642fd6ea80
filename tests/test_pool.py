"""Test pooling across studies against published, hand-computed and metafor's numbers.

Also the forest plot, the one-stage model, and the second example study it is shown on.

Reference data: the 16 correlations between conscientiousness and medication adherence of
Molloy, O'Carroll & Ferguson (2014, Annals of Behavioral Medicine 47, 92–101), as shipped
with R's metafor (``dat.molloy2014``). Reference numbers: metafor 3.8-1,
``rma(yi, vi, data = escalc("ZCOR", ri = ri, ni = ni, data = dat.molloy2014),
method = "DL" | "PM", test = "z" | "knha")``; metafor's own documentation reports
Q(df = 15) = 38.1595 for these data. DerSimonian–Laird and Paule–Mandel are also computed
here by hand from their definitions.
"""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import optimize, stats

from allianceflow.pool import (
    FLUCKIGER_2018,
    Benchmark,
    compare_stages,
    meta_analysis,
    meta_table,
    one_stage_model,
    plot_forest,
    random_effects,
    reml_tau2,
    stack_studies,
    study_effects,
)
from allianceflow.simulate import (
    EXAMPLE2_DESIGN,
    EXAMPLE2_SEED,
    simulate_study,
    write_example2_study,
)

MOLLOY_N = [109, 749, 55, 107, 72, 65, 174, 326, 58, 771, 56, 91, 116, 537, 158, 65]
MOLLOY_R = [
    0.187,
    0.162,
    0.34,
    0.32,
    0.27,
    0,
    0.175,
    0.05,
    0.26,
    0.01,
    -0.09,
    0.37,
    0,
    0.15,
    0.24,
    0.04,
]


@pytest.fixture
def molloy():
    return pd.DataFrame({"study": [f"s{i:02d}" for i in range(16)], "r": MOLLOY_R, "n": MOLLOY_N})


def _hand(method):
    """DL and PM from their definitions (DerSimonian & Laird 1986; Paule & Mandel 1982)."""
    y = np.arctanh(np.array(MOLLOY_R))
    v = 1 / (np.array(MOLLOY_N, dtype=float) - 3)
    w = 1 / v
    k = len(y)
    ybar = (w * y).sum() / w.sum()
    q = (w * (y - ybar) ** 2).sum()
    if method == "dl":
        tau2 = max(0.0, (q - (k - 1)) / (w.sum() - (w**2).sum() / w.sum()))
    else:

        def gen_q(t):
            ws = 1 / (v + t)
            mu = (ws * y).sum() / ws.sum()
            return (ws * (y - mu) ** 2).sum() - (k - 1)

        tau2 = optimize.brentq(gen_q, 0.0, 1.0, xtol=1e-15)
    ws = 1 / (v + tau2)
    mu = (ws * y).sum() / ws.sum()
    se = math.sqrt(1 / ws.sum())
    se_hksj = math.sqrt((ws * (y - mu) ** 2).sum() / ((k - 1) * ws.sum()))
    return {"q": q, "tau2": tau2, "mu": mu, "se": se, "se_hksj": se_hksj, "k": k}


# ---------------------------------------------------------------- published numbers


@pytest.mark.parametrize(
    "hksj, se, lo, hi",
    [
        (False, 0.0311612658, 0.0885233944, 0.2106733117),
        (True, 0.0326851832, 0.0799315342, 0.2192651719),
    ],
)
def test_dersimonian_laird_matches_metafor(molloy, hksj, se, lo, hi):
    res = meta_analysis(molloy, method="dl", hksj=hksj)
    p, het = res["pooled"], res["heterogeneity"]
    assert p["z"] == pytest.approx(0.1495983531, abs=1e-9)
    assert p["se"] == pytest.approx(se, abs=1e-9)
    assert (p["ci_low_z"], p["ci_high_z"]) == pytest.approx((lo, hi), abs=1e-9)
    assert het["tau2"] == pytest.approx(0.0077625441, abs=1e-10)
    assert het["q"] == pytest.approx(38.1595154236, abs=1e-8)
    assert het["df"] == 15
    assert het["p"] == pytest.approx(0.000854584976, rel=1e-8)
    assert het["i2"] == pytest.approx(0.606913247365, abs=1e-10)
    assert het["h2"] == pytest.approx(2.5439676949, abs=1e-9)
    # back on the r scale (metafor: predict(res, transf = transf.ztor))
    assert p["r"] == pytest.approx(0.1484922664, abs=1e-9)
    assert p["distribution"] == ("t(15)" if hksj else "normal")


def test_paule_mandel_solves_its_equation_and_agrees_with_metafor(molloy):
    hand = _hand("pm")
    res = meta_analysis(molloy, method="pm")
    assert res["heterogeneity"]["tau2"] == pytest.approx(hand["tau2"], abs=1e-11)
    assert res["pooled"]["z"] == pytest.approx(hand["mu"], abs=1e-10)
    assert res["pooled"]["se"] == pytest.approx(hand["se"], abs=1e-10)
    # metafor 3.8-1 stops its PM iteration earlier: tau2 0.0094789754, estimate 0.1510065863
    assert res["heterogeneity"]["tau2"] == pytest.approx(0.0094789754, abs=5e-7)
    assert res["pooled"]["z"] == pytest.approx(0.1510065863, abs=1e-6)
    # Higgins-Thompson I^2 does not depend on the tau2 estimator
    assert res["heterogeneity"]["i2"] == pytest.approx((hand["q"] - 15) / hand["q"], abs=1e-12)


@pytest.mark.parametrize("method", ["dl", "pm"])
@pytest.mark.parametrize("hksj", [False, True])
def test_pooled_estimate_and_interval_match_the_hand_computation(molloy, method, hksj):
    hand = _hand(method)
    res = meta_analysis(molloy, method=method, hksj=hksj)
    se = hand["se_hksj"] if hksj else hand["se"]
    crit = stats.t.isf(0.025, 15) if hksj else stats.norm.isf(0.025)
    p = res["pooled"]
    assert p["se"] == pytest.approx(se, abs=1e-9)
    assert p["ci_low"] == pytest.approx(math.tanh(hand["mu"] - crit * se), abs=1e-9)
    assert p["ci_high"] == pytest.approx(math.tanh(hand["mu"] + crit * se), abs=1e-9)
    # metafor's predict.rma: the test's own critical value ...
    half = crit * math.sqrt(hand["tau2"] + se**2)
    assert (p["pi_low"], p["pi_high"]) == pytest.approx(
        (math.tanh(hand["mu"] - half), math.tanh(hand["mu"] + half)), abs=1e-9
    )
    # ... or t(k - 2) with pi.type = "riley" (Higgins, Thompson & Spiegelhalter 2009)
    riley = meta_analysis(molloy, method=method, hksj=hksj, pi_type="riley")["pooled"]
    half = stats.t.isf(0.025, 14) * math.sqrt(hand["tau2"] + se**2)
    assert (riley["pi_low"], riley["pi_high"]) == pytest.approx(
        (math.tanh(hand["mu"] - half), math.tanh(hand["mu"] + half)), abs=1e-9
    )
    assert riley["pi_distribution"] == "t(14)"
    weights = [s["weight"] for s in res["studies"]]
    assert sum(weights) == pytest.approx(100.0)


# metafor 3.8-1 on dat.bcg: dat <- escalc(measure = "RR", ai = tpos, bi = tneg, ci = cpos,
# di = cneg, data = dat.bcg); rma(yi, vi, data = dat, method = "REML", test = "z" | "knha",
# control = list(threshold = 1e-12)); predict(res, pi.type = "default" | "riley")
BCG_YI = [
    -0.889311333920205, -1.58538865720143, -1.34807314829969, -1.44155119002131,
    -0.217547322211296, -0.786115585818864, -1.62089822359839, 0.0119523335238405,
    -0.469417648738149, -1.37134480347278, -0.339358828338391, 0.445913400571379,
    -0.0173139482168798,
]  # fmt: skip
BCG_VI = [
    0.325584765003961, 0.194581121398144, 0.415367965367965, 0.0200100319022476,
    0.0512101721696309, 0.00690561845590876, 0.223017247572315, 0.00396157929781773,
    0.056434210463249, 0.0730247936130289, 0.0124122139715597, 0.532505845200153,
    0.0714046596839863,
]  # fmt: skip
# (test, pi_type): tau2, estimate, se, ci.lb, ci.ub, zval, pval, QE, I2 (%), H2, pi.lb, pi.ub
METAFOR_BCG_REML = {
    ("z", "default"): (0.313243258136, -0.714532342158, 0.179781516105, -1.06689763881,
                       -0.362167045506, -3.97444830613, 7.05425810164e-05, 152.233008082,
                       92.2213845213, 12.8557582353, -1.8666922179, 0.437627533587),
    ("z", "riley"): (0.313243258136, -0.714532342158, 0.179781516105, -1.06689763881,
                     -0.362167045506, -3.97444830613, 7.05425810164e-05, 152.233008082,
                     92.2213845213, 12.8557582353, -2.00837590692, 0.579311222606),
    ("knha", "default"): (0.313243258136, -0.714532342158, 0.180791744093, -1.10844371369,
                          -0.320620970631, -3.95223988652, 0.00192001509606, 152.233008082,
                          92.2213845213, 12.8557582353, -1.9960168342, 0.56695214988),
    ("knha", "riley"): (0.313243258136, -0.714532342158, 0.180791744093, -1.10844371369,
                        -0.320620970631, -3.95223988652, 0.00192001509606, 152.233008082,
                        92.2213845213, 12.8557582353, -2.00905765037, 0.579992966055),
}  # fmt: skip
# the first k of the Molloy correlations on the z scale, REML, threshold = 1e-12
METAFOR_MOLLOY_REML = {
    (2, "z", "default"): (0.0, 0.166648125919, 0.0342594354914, 0.0995008662253,
                          0.233795385613, 4.86429865317, 1.1486336693e-06, 0.0617159536351,
                          0.0, 1.0, 0.0995008662253, 0.233795385613),
    (2, "z", "riley"): (0.0, 0.166648125919, 0.0342594354914, 0.0995008662253, 0.233795385613,
                        4.86429865317, 1.1486336693e-06, 0.0617159536351, 0.0, 1.0,
                        -0.26865927558, 0.601955527418),
    (2, "knha", "default"): (0.0, 0.166648125919, 0.00851096735391, 0.0585060322174,
                             0.274790219621, 19.5803977373, 0.0324848937067, 0.0617159536351,
                             0.0, 1.0, 0.0585060322174, 0.274790219621),
    (2, "knha", "riley"): (0.0, 0.166648125919, 0.00851096735391, 0.0585060322174,
                           0.274790219621, 19.5803977373, 0.0324848937067, 0.0617159536351,
                           0.0, 1.0, 0.0585060322174, 0.274790219621),
    (5, "z", "default"): (0.00259217913689, 0.223203318995, 0.043697556985, 0.137557681092,
                          0.308848956898, 5.10791299093, 3.25736574371e-07, 4.45238470103,
                          25.6682768458, 1.34532062162, 0.0917007536133, 0.354705884377),
    (5, "z", "riley"): (0.00259217913689, 0.223203318995, 0.043697556985, 0.137557681092,
                        0.308848956898, 5.10791299093, 3.25736574371e-07, 4.45238470103,
                        25.6682768458, 1.34532062162, 0.00967906210276, 0.436727575888),
    (5, "knha", "default"): (0.00259217913689, 0.223203318995, 0.0373423745421,
                             0.119524265981, 0.326882372009, 5.97721279732, 0.00393704658193,
                             4.45238470103, 25.6682768458, 1.34532062162, 0.047899180267,
                             0.398507457723),
    (5, "knha", "riley"): (0.00259217913689, 0.223203318995, 0.0373423745421, 0.119524265981,
                           0.326882372009, 5.97721279732, 0.00393704658193, 4.45238470103,
                           25.6682768458, 1.34532062162, 0.0222643529944, 0.424142284996),
}  # fmt: skip
# metafor with its default threshold (1e-5) on dat.bcg, test = "z": tau2 and estimate
METAFOR_BCG_REML_DEFAULT_CONTROL = (0.313243325981, -0.714532348365)


def _check_against_metafor(fit, ref, tol=1e-9):
    p, het = fit["pooled"], fit["heterogeneity"]
    tau2, est, se, lo, hi, stat, pval, q, i2, h2, pi_lo, pi_hi = ref
    assert het["tau2"] == pytest.approx(tau2, abs=tol)
    assert p["estimate"] == pytest.approx(est, abs=tol)
    assert p["se"] == pytest.approx(se, abs=tol)
    assert (p["ci_low"], p["ci_high"]) == pytest.approx((lo, hi), abs=tol)
    assert p["statistic"] == pytest.approx(stat, abs=10 * tol)
    assert p["p"] == pytest.approx(pval, rel=1e-7)
    assert het["q"] == pytest.approx(q, abs=10 * tol)
    # metafor prints the tau2-based I2 (in %) and H2
    assert 100 * het["i2_tau2"] == pytest.approx(i2, abs=1e-7)
    assert het["h2_tau2"] == pytest.approx(h2, abs=1e-7)
    assert (p["pi_low"], p["pi_high"]) == pytest.approx((pi_lo, pi_hi), abs=tol)


@pytest.mark.parametrize("test, pi_type", list(METAFOR_BCG_REML))
def test_reml_matches_metafor_on_dat_bcg(test, pi_type):
    fit = random_effects(
        BCG_YI, BCG_VI, method="reml", hksj=test == "knha", hksj_adhoc=False, pi_type=pi_type
    )
    _check_against_metafor(fit, METAFOR_BCG_REML[(test, pi_type)])
    # the Q-based I2 differs from metafor's tau2-based one for REML
    q = METAFOR_BCG_REML[(test, pi_type)][7]
    assert fit["heterogeneity"]["i2"] == pytest.approx((q - 12) / q, abs=1e-10)
    assert fit["heterogeneity"]["i2"] != pytest.approx(fit["heterogeneity"]["i2_tau2"], abs=1e-3)


def test_reml_is_the_root_metafor_approaches_with_its_default_tolerance():
    tau2 = reml_tau2(BCG_YI, BCG_VI)
    assert tau2 == pytest.approx(METAFOR_BCG_REML_DEFAULT_CONTROL[0], abs=1e-7)
    # the score of the restricted likelihood vanishes there
    y, v = np.array(BCG_YI), np.array(BCG_VI)
    w = 1 / (v + tau2)
    mu = (w * y).sum() / w.sum()
    score = (w**2 * (y - mu) ** 2).sum() - w.sum() + (w**2).sum() / w.sum()
    assert abs(score) < 1e-9


@pytest.mark.parametrize("k, test, pi_type", list(METAFOR_MOLLOY_REML))
def test_reml_matches_metafor_with_two_and_five_studies(molloy, k, test, pi_type):
    res = meta_analysis(
        molloy.iloc[:k], method="reml", hksj=test == "knha", hksj_adhoc=False, pi_type=pi_type
    )
    p, het = res["pooled"], res["heterogeneity"]
    fit = {
        "pooled": {
            "estimate": p["z"],
            "se": p["se"],
            "ci_low": p["ci_low_z"],
            "ci_high": p["ci_high_z"],
            "statistic": p["statistic"],
            "p": p["p"],
            "pi_low": math.atanh(p["pi_low"]),
            "pi_high": math.atanh(p["pi_high"]),
        },
        "heterogeneity": het,
    }
    _check_against_metafor(fit, METAFOR_MOLLOY_REML[(k, test, pi_type)])
    df = k - 1 if test == "knha" else None
    assert p["distribution"] == (f"t({df})" if df else "normal")
    assert p["pi_distribution"] == (
        f"t({max(1, k - 2)})" if pi_type == "riley" else p["distribution"]
    )


def test_tau2_based_i2_equals_the_q_based_one_for_dersimonian_laird(molloy):
    het = meta_analysis(molloy, method="dl")["heterogeneity"]
    assert het["i2_tau2"] == pytest.approx(het["i2"], abs=1e-12)
    assert het["h2_tau2"] == pytest.approx(het["h2"], abs=1e-12)


@pytest.mark.parametrize(
    "yi, vi, message",
    [
        ([0.1], [0.1], "at least 2 effects are needed to pool; got 1."),
        ([0.1, 0.2], [0.1], "`yi` and `vi` must have the same length; got 2 and 1."),
        ([0.1, 0.2], [0.1, 0.0], r"`vi` must be positive and finite; got \[0.0\]."),
        ([0.1, float("nan")], [0.1, 0.1], r"`yi` must be finite; got \[nan\]."),
    ],
)
def test_random_effects_refuses_bad_input(yi, vi, message):
    with pytest.raises(ValueError, match=message):
        random_effects(yi, vi)


# ---------------------------------------------------------------- equal effects (Q = 0)

EQUAL_YI = [0.2, 0.2, 0.2, 0.2]
EQUAL_VI = [0.01, 0.02, 0.04, 0.05]
# metafor 3.8-1: rma(yi, vi, method = "REML" | "DL" | "PM", test = "adhoc"), the same for all
# three estimators; columns as METAFOR_BCG_REML. test = "knha" prints se = 0, tval = Inf.
METAFOR_EQUAL_ADHOC = {
    "default": (0.0, 0.2, 0.0716114874039433, -0.0278997135045501, 0.42789971350455,
                2.79284800875379, 0.0682570728547282, 0.0, 0.0, 1.0, -0.0278997135045501,
                0.42789971350455),
    "riley": (0.0, 0.2, 0.0716114874039433, -0.0278997135045501, 0.42789971350455,
              2.79284800875379, 0.0682570728547282, 0.0, 0.0, 1.0, -0.108119361759996,
              0.508119361759996),
}  # fmt: skip
# the first two Molloy correlations, REML, test = "adhoc": Q = 0.0617 < 1, so the factor
# max(1, q) is 1 where metafor's "knha" uses s2w = 0.0617 (se 0.00851, METAFOR_MOLLOY_REML)
METAFOR_MOLLOY2_ADHOC = (0.0, 0.166648125919113, 0.0342594354913766, -0.268659275580088,
                         0.601955527418314, 4.86429865317131, 0.1290776161772,
                         0.0617159536350817, 0.0, 1.0, -0.268659275580088,
                         0.601955527418314)  # fmt: skip


@pytest.mark.parametrize("method", ["reml", "dl", "pm"])
@pytest.mark.parametrize("pi_type", ["default", "riley"])
def test_equal_effects_get_the_ad_hoc_knapp_hartung_interval_of_metafor(method, pi_type):
    # Q = 0, tau2 = 0 and the Knapp-Hartung factor q = 0: the unmodified variance is 0
    fit = random_effects(EQUAL_YI, EQUAL_VI, method=method, hksj=True, pi_type=pi_type)
    _check_against_metafor(fit, METAFOR_EQUAL_ADHOC[pi_type])
    # by hand: se = (sum 1/v)^(-1/2) = 195^(-1/2), t(3) quantile
    se = 195**-0.5
    crit = stats.t.isf(0.025, 3)
    assert fit["pooled"]["se"] == pytest.approx(se, abs=1e-15)
    assert fit["pooled"]["ci_low"] == pytest.approx(0.2 - crit * se, abs=1e-15)
    assert fit["pooled"]["distribution"] == "t(3)"
    assert all(math.isfinite(v) for v in fit["pooled"].values() if isinstance(v, float))


def test_the_ad_hoc_factor_is_one_when_the_studies_agree_more_than_chance():
    y = np.arctanh(MOLLOY_R[:2])
    v = 1 / (np.array(MOLLOY_N[:2], dtype=float) - 3)
    fit = random_effects(y, v, method="reml", hksj=True)
    _check_against_metafor(fit, METAFOR_MOLLOY2_ADHOC)
    # unmodified: metafor's test = "knha", the standard error four times smaller
    plain = random_effects(y, v, method="reml", hksj=True, hksj_adhoc=False)
    _check_against_metafor(plain, METAFOR_MOLLOY_REML[(2, "knha", "default")])


def test_the_ad_hoc_factor_changes_nothing_when_q_is_above_one(molloy):
    # DL on all 16 studies: q = 1.100 > 1
    fit = meta_analysis(molloy, method="dl", hksj=True)
    plain = meta_analysis(molloy, method="dl", hksj=True, hksj_adhoc=False)
    assert fit["pooled"] == plain["pooled"]
    assert (fit["hksj_adhoc"], plain["hksj_adhoc"]) == (True, False)


def test_unmodified_knapp_hartung_refuses_equal_effects():
    with pytest.raises(ValueError) as info:
        random_effects(EQUAL_YI, EQUAL_VI, hksj=True, hksj_adhoc=False)
    assert str(info.value) == (
        "the unmodified Knapp–Hartung variance is 0 because the 4 effects are equal "
        "(weighted residual sum of squares 0): its interval would have zero width; use "
        "`hksj_adhoc=True` (Knapp & Hartung's max(1, q)) or `hksj=False`."
    )


def test_studies_with_equal_r_pool_to_a_finite_interval():
    # the pipeline's defaults (Paule-Mandel, HKSJ); artanh(0.3) is the same float three times
    effects = pd.DataFrame({"study": ["a", "b", "c"], "r": [0.3] * 3, "n": [50, 80, 120]})
    res = meta_analysis(effects)
    p = res["pooled"]
    # metafor 3.8-1: rma(measure = "ZCOR", ri, ni, method = "PM", test = "adhoc"),
    # predict(transf = transf.ztor)
    assert p["z"] == pytest.approx(0.309519604203112, abs=1e-12)
    assert p["se"] == pytest.approx(0.0644156626400831, abs=1e-12)  # (47 + 77 + 117)^(-1/2)
    assert (p["ci_low_z"], p["ci_high_z"]) == pytest.approx(
        (0.0323613775061377, 0.586677830900086), abs=1e-11
    )
    assert p["statistic"] == pytest.approx(4.80503640756636, abs=1e-10)
    assert p["p"] == pytest.approx(0.0406868063890963, rel=1e-9)
    assert (p["ci_low"], p["ci_high"]) == pytest.approx(
        (0.0323500853244859, 0.527502063349756), abs=1e-11
    )
    assert res["heterogeneity"]["tau2"] == 0.0


def test_dl_without_excess_heterogeneity_is_the_common_effect_model():
    # Q < k - 1: statsmodels' DL tau2 would be negative; ours is truncated at 0
    effects = pd.DataFrame({"study": ["a", "b", "c"], "r": [0.2, 0.3, 0.25], "n": [103, 203, 53]})
    res = meta_analysis(effects, method="dl", hksj=False)
    y = np.arctanh([0.2, 0.3, 0.25])
    w = np.array([100.0, 200.0, 50.0])
    assert res["heterogeneity"]["tau2"] == 0.0
    assert res["heterogeneity"]["i2"] == 0.0
    assert res["pooled"]["z"] == pytest.approx((w * y).sum() / w.sum(), abs=1e-12)
    assert res["pooled"]["se"] == pytest.approx(math.sqrt(1 / w.sum()), abs=1e-12)
    assert res["pooled"]["z"] == pytest.approx(res["fixed"]["z"], abs=1e-12)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"method": "ml"}, ValueError, "`method` must be 'reml', 'dl' or 'pm'; got 'ml'."),
        ({"pi_type": "t"}, ValueError, "`pi_type` must be 'default' or 'riley'; got 't'."),
        ({"alpha": 1.5}, ValueError, r"`alpha` must lie in \(0, 1\); got 1.5."),
        ({"hksj": "yes"}, TypeError, "`hksj` must be True or False; got 'yes'."),
        ({"hksj_adhoc": 1}, TypeError, "`hksj_adhoc` must be True or False; got 1."),
        ({"r": "corr"}, KeyError, "Column 'corr' is not in `effects`"),
    ],
)
def test_bad_options_are_refused(molloy, kwargs, error, message):
    with pytest.raises(error, match=message):
        meta_analysis(molloy, **kwargs)


@pytest.mark.parametrize(
    "r, n, message",
    [
        ([0.2], [50], "`effects` must hold at least 2 studies to pool; got 1."),
        ([0.2, 1.0], [50, 50], r"column 'r' must hold correlations in \(-1, 1\); got \[1.0\]."),
        ([0.2, 0.3], [50, 3], r"column 'n' must hold sample sizes above 3; got \[3.0\]."),
    ],
)
def test_bad_effects_are_refused(r, n, message):
    effects = pd.DataFrame({"study": [f"s{i}" for i in range(len(r))], "r": r, "n": n})
    with pytest.raises(ValueError, match=message):
        meta_analysis(effects)


def test_duplicate_study_labels_are_refused():
    effects = pd.DataFrame({"study": ["a", "a"], "r": [0.2, 0.3], "n": [50, 60]})
    with pytest.raises(
        ValueError, match=r"study labels in column 'study' must be unique; \['a'\] repeat."
    ):
        meta_analysis(effects)


def test_missing_column_names_the_closest_match(molloy):
    with pytest.raises(KeyError, match="Did you mean 'study'\\?"):
        meta_analysis(molloy, study="studdy")


# ---------------------------------------------------------------- effects from model results


def _result(term_rows):
    return {
        "fixed": [
            {
                "term": t,
                "estimate": e,
                "se": 0.1,
                "statistic": z,
                "df": df,
                "r": z / math.sqrt(z * z + df),
            }
            for t, e, z, df in term_rows
        ]
    }


def test_study_effects_flip_lower_is_better_outcomes_and_use_df_plus_two():
    results = {
        "wai_ors": _result([("alliance_within_lag", 0.2, 5.0, 598.0)]),
        "srs_phq": _result([("alliance_within_lag", -0.3, -4.0, 498.0)]),
    }
    eff = study_effects(results, directions={"srs_phq": "lower_is_better"})
    assert list(eff["study"]) == ["srs_phq", "wai_ors"]
    assert eff.loc[eff.study == "srs_phq", "r"].item() == pytest.approx(4 / math.sqrt(16 + 498))
    assert eff.loc[eff.study == "wai_ors", "r"].item() == pytest.approx(5 / math.sqrt(25 + 598))
    assert list(eff["n"]) == [500.0, 600.0]
    assert list(eff["sign"]) == [-1, 1]


def test_study_effects_name_the_missing_term_and_bad_direction():
    results = {"a": _result([("session", 0.2, 5.0, 100.0)])}
    with pytest.raises(
        KeyError,
        match=(
            r"the model of study 'a' has no fixed effect 'alliance_within_lag'; "
            r"it has \['session'\]"
        ),
    ):
        study_effects(results)
    results = {"a": _result([("alliance_within_lag", 0.2, 5.0, 100.0)])}
    with pytest.raises(
        ValueError,
        match="direction of study 'a' must be 'higher_is_better' or 'lower_is_better'; got 'up'.",
    ):
        study_effects(results, directions={"a": "up"})


# ---------------------------------------------------------------- forest plot and table


def test_forest_plot_marks_the_benchmark(molloy):
    res = meta_analysis(molloy, method="pm", hksj=True)
    fig = plot_forest(res, comparable=True)
    ax = fig.axes[0]
    vertical = [
        tuple(line.get_xdata())
        for line in ax.lines
        if len(line.get_xdata()) == 2 and line.get_xdata()[0] == line.get_xdata()[1]
    ]
    assert (0.278, 0.278) in vertical
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels[0] == "s00 (n = 109)"
    assert labels[-1] == "Pooled, random effects\nI² = 61%, τ² = 0.0095"
    # the band is named in the note under the plot, not in a legend over the data
    assert ax.get_legend() is None and fig.legends == []
    assert "Dashed line and band: Flückiger et al. (2018), r = 0.278 [0.256, 0.299]." in (
        _note(fig)
    )
    assert "not comparable" not in _note(fig)
    assert (
        "τ² by Paule–Mandel, Hartung–Knapp–Sidik–Jonkman interval (its variance never below "
        "the Wald one: Knapp & Hartung, 2003); the thin bar" in _note(fig)
    )
    plain = plot_forest(meta_analysis(molloy, hksj_adhoc=False))
    assert "Hartung–Knapp–Sidik–Jonkman interval; the thin bar" in _note(plain)
    fig2 = plot_forest(res, benchmark=Benchmark("mine", 0.1, 0.05, 0.15), comparable=True)
    assert (0.1, 0.1) in [tuple(line.get_xdata()) for line in fig2.axes[0].lines]


def _note(fig):
    """The note under a pooled forest plot, on one line."""
    return " ".join(fig.get_supxlabel().split())


def test_forest_plot_speaks_in_words(molloy):
    """Studies by their labels, the effect in words with its unit, the title from the term."""
    from allianceflow.tables import format_r

    res = {**meta_analysis(molloy), "term": "alliance_within_lag"}
    res["studies"][0]["label"] = "s00: alliance WAI-SR total, outcome ORS total"
    fig = plot_forest(res, studies={"s01": "Second study"})
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels[:3] == [
        "s00: alliance WAI-SR total, outcome ORS total\n(n = 109)",
        f"Second study (n = {res['studies'][1]['n']:.0f})",
        "s02 (n = 55)",
    ]
    assert " ".join(ax.get_xlabel().split()) == (
        "r-equivalent of the within-patient alliance–outcome association (95% CI); "
        "positive: a stronger alliance with a better outcome"
    )
    assert fig.get_suptitle() == (
        "Random-effects meta-analysis of the within-patient alliance–outcome association"
    )
    right = [t.get_text() for t in fig.axes[1].get_yticklabels()]
    first = res["studies"][0]
    assert right[0] == (
        f"{format_r(first['r'])} [{format_r(first['ci_low'])}, {format_r(first['ci_high'])}]"
    )
    assert first["r"] == pytest.approx(MOLLOY_R[0])


def _vertical_lines(ax):
    return [
        tuple(line.get_xdata())
        for line in ax.lines
        if len(line.get_xdata()) == 2 and line.get_xdata()[0] == line.get_xdata()[1]
    ]


def test_forest_plot_leaves_out_a_benchmark_that_is_not_comparable(molloy):
    res = {**meta_analysis(molloy, method="pm", hksj=True), "term": "alliance_within_lag"}
    fig = plot_forest(res)  # default: not comparable
    ax = fig.axes[0]
    assert (0.278, 0.278) not in _vertical_lines(ax)
    assert ax.get_legend() is None
    assert len(ax.patches) == 1  # the pooled diamond only, no shaded band
    assert len(plot_forest(res, comparable=True).axes[0].patches) == 2  # diamond + band
    assert _note(fig).endswith(
        "Flückiger et al. (2018) benchmark (r = 0.278) not shown: it is a between-patient "
        "correlation, not comparable with the within-patient alliance–outcome association."
    )
    assert "benchmark" not in _note(plot_forest(res, benchmark=None))  # nothing to explain


def test_forest_stage_draws_the_benchmark_only_for_the_between_patient_term(
    molloy, tmp_path, monkeypatch
):
    import json

    from allianceflow import pool, stages

    figures = {}
    real = pool.plot_forest

    def spy(result, **kwargs):
        figures[result["term"]] = fig = real(result, **kwargs)
        return fig

    monkeypatch.setattr(pool, "plot_forest", spy)
    bench = {"label": "Flückiger et al. (2018)", "r": 0.278, "ci_low": 0.256, "ci_high": 0.299}
    for term in ("alliance_between", "alliance_within_lag"):
        path = tmp_path / f"{term}.json"
        path.write_text(json.dumps({**meta_analysis(molloy), "term": term}))
        stages.meta_forest_figure_stage(path, benchmark=bench, outputs=[tmp_path / f"{term}.png"])
        assert (tmp_path / f"{term}.png").stat().st_size > 0
    assert (0.278, 0.278) in _vertical_lines(figures["alliance_between"].axes[0])
    assert "not comparable" not in _note(figures["alliance_between"])
    assert (0.278, 0.278) not in _vertical_lines(figures["alliance_within_lag"].axes[0])
    assert "not comparable with the within-patient alliance–outcome association" in _note(
        figures["alliance_within_lag"]
    )


def test_benchmark_is_checked():
    assert (FLUCKIGER_2018.r, FLUCKIGER_2018.ci_low, FLUCKIGER_2018.ci_high) == (
        0.278,
        0.256,
        0.299,
    )
    with pytest.raises(
        ValueError, match=r"benchmark interval must hold its r: got r = 0.5 with CI \[0.1, 0.2\]."
    ):
        Benchmark("x", 0.5, 0.1, 0.2)
    with pytest.raises(ValueError, match=r"benchmark `r` must be a number in \(-1, 1\); got 1.2."):
        Benchmark("x", 1.2, 0.1, 0.2)


def test_meta_table_has_a_row_per_study_and_the_pooled_row(molloy):
    table = meta_table(meta_analysis(molloy))
    assert len(table) == 17
    assert table["study"].iloc[-1] == "Random effects (PM, HKSJ)"  # the pipeline's defaults
    assert table["n"].iloc[-1] == sum(MOLLOY_N)
    assert table["ci_low"].iloc[0] == pytest.approx(
        math.tanh(math.atanh(0.187) - 1.959964 / math.sqrt(106)), abs=1e-6
    )


# ---------------------------------------------------------------- one stage vs two stages


def _analysis(instruments, seed, **overrides):
    from allianceflow.derive import derive_analysis

    if instruments == "srs+phq9":
        df = simulate_study(EXAMPLE2_DESIGN, seed=seed, instruments="srs+phq9", **overrides)
        df["a"] = df.filter(regex=r"^srs_\d+$").sum(axis=1, min_count=4)
        df["y"] = df.filter(regex=r"^phq9_\d+$").sum(axis=1, min_count=9)
    else:
        df = simulate_study(seed=seed, **overrides)
        df["a"] = df.filter(regex=r"^wai_sr_\d+$").mean(axis=1) * 12
        df["y"] = df.filter(regex=r"^ors_\d+$").mean(axis=1) * 4
    return derive_analysis(df, alliance="a", outcome="y")


def test_stack_studies_standardises_within_study_and_nests_ids():
    tables = {
        "one": _analysis("wai_sr+ors", 1, n_patients=40, n_therapists=4, max_sessions=6),
        "two": _analysis("srs+phq9", 2, n_patients=40, n_therapists=4, max_sessions=6),
    }
    stacked = stack_studies(tables, directions={"two": "lower_is_better"})
    assert list(stacked.columns[:1]) == ["study"]
    assert stacked.groupby("study")["outcome"].agg(["mean", "std"]).to_numpy() == pytest.approx(
        np.array([[0, 1], [0, 1]]), abs=1e-12
    )
    assert stacked["patient"].str.match(r"^(one|two):P\d+$").all()
    assert stacked["therapist"].nunique() == 8
    two = tables["two"]
    assert stacked.loc[stacked.study == "two", "alliance_within_lag"].to_numpy() == pytest.approx(
        (two["alliance_within_lag"] / two["alliance"].std()).to_numpy(), nan_ok=True
    )
    # lower-is-better outcome is negated: a higher PHQ-9 becomes a lower standardised outcome
    y = two["outcome"]
    assert stacked.loc[stacked.study == "two", "outcome"].to_numpy() == pytest.approx(
        (-(y - y.mean()) / y.std()).to_numpy(), nan_ok=True
    )


def _full_analysis(instruments, seed):
    """Derive an analysis table with every derived column the presets use.

    The three-level split, intake score, detrended lag and two alliance components.
    """
    from allianceflow.derive import derive_analysis, preset_variables

    kw = dict(n_patients=40, n_therapists=4, max_sessions=6)
    if instruments == "srs+phq9":
        df = simulate_study(EXAMPLE2_DESIGN, seed=seed, instruments="srs+phq9", **kw)
        items = df.filter(regex=r"^srs_\d+$")
        df["y"] = df.filter(regex=r"^phq9_\d+$").sum(axis=1, min_count=9)
    else:
        df = simulate_study(seed=seed, **kw)
        items = df.filter(regex=r"^wai_sr_\d+$")
        df["y"] = df.filter(regex=r"^ors_\d+$").mean(axis=1) * 4
    df["a"] = items.sum(axis=1)
    df["x_task"] = items.iloc[:, :2].sum(axis=1)
    df["x_bond"] = items.iloc[:, 2:].sum(axis=1) * 10  # a component on another scale
    table = derive_analysis(df, alliance="a", outcome="y", therapist="therapist")
    table["intake_score"] = table.groupby("patient")["outcome"].transform("first")
    return preset_variables(table, components=["x_task", "x_bond"])


def test_stack_studies_rescales_every_derived_alliance_and_outcome_column():
    tables = {"one": _full_analysis("wai_sr+ors", 3), "two": _full_analysis("srs+phq9", 4)}
    stacked = stack_studies(tables, directions={"two": "lower_is_better"})
    for name, sign in (("one", 1.0), ("two", -1.0)):
        raw = tables[name]
        got = stacked[stacked.study == name].reset_index(drop=True)
        my, sy = raw["outcome"].mean(), raw["outcome"].std()
        ma, sa = raw["alliance"].mean(), raw["alliance"].std()
        for col in ("outcome", "outcome_lag", "outcome_next", "outcome_baseline", "outcome_pmean"):
            assert got[col].to_numpy() == pytest.approx(
                (sign * (raw[col] - my) / sy).to_numpy(), nan_ok=True
            ), col
        for col in (
            "outcome_within",
            "outcome_between",
            "outcome_gmc",
            "outcome_therapist",
            "outcome_patient",
        ):
            assert got[col].to_numpy() == pytest.approx(
                (sign * raw[col] / sy).to_numpy(), nan_ok=True
            ), col
        for col in ("alliance", "alliance_lag"):
            assert got[col].to_numpy() == pytest.approx(
                ((raw[col] - ma) / sa).to_numpy(), nan_ok=True
            ), col
        for col in (
            "alliance_within_lag",
            "alliance_between",
            "alliance_within",
            "alliance_within_detrended_lag",
            "alliance_therapist_mean",
            "alliance_patient_deviation",
        ):
            assert got[col].to_numpy() == pytest.approx((raw[col] / sa).to_numpy(), nan_ok=True), (
                col
            )
        for c in ("task", "bond"):  # components on their own SD
            sc = raw[f"alliance_{c}"].std()
            for col in (f"alliance_{c}_within_lag", f"alliance_{c}_between"):
                assert got[col].to_numpy() == pytest.approx(
                    (raw[col] / sc).to_numpy(), nan_ok=True
                ), col
            assert got[f"alliance_{c}"].std() == pytest.approx(1.0)
    # last session's outcome is flipped and scaled exactly like the outcome: within a
    # patient, outcome_lag at session s equals outcome at session s - 1
    two = stacked[stacked.study == "two"]
    prev = two.set_index(["patient", "session"])["outcome"]
    keys = list(zip(two["patient"], two["session"] - 1, strict=True))
    expected = np.array([prev.get(k, np.nan) for k in keys])
    assert two["outcome_lag"].to_numpy() == pytest.approx(expected, nan_ok=True)
    assert two["outcome_lag"].notna().sum() > 100


def test_one_stage_model_refuses_a_column_it_does_not_rescale():
    tables = {
        "one": _analysis("wai_sr+ors", 1, n_patients=20, n_therapists=2, max_sessions=5),
        "two": _analysis("srs+phq9", 2, n_patients=20, n_therapists=2, max_sessions=5),
    }
    tables["two"]["outcome_change"] = tables["two"]["outcome"].diff()
    with pytest.raises(
        ValueError,
        match=r"`formula` uses \['outcome_change'\], which the one-stage standardisation "
        r"does not rescale .*supported alliance and outcome columns are \[.*'outcome_lag'",
    ):
        one_stage_model(tables, "outcome ~ outcome_change + alliance_within_lag + (1 | patient)")
    stacked = stack_studies(tables)
    assert stacked.loc[stacked.study == "two", "outcome_change"].to_numpy() == pytest.approx(
        tables["two"]["outcome_change"].to_numpy(), nan_ok=True
    )  # left raw, hence refused


@pytest.mark.slow
def test_one_stage_and_two_stage_agree_in_sign_and_size():
    from allianceflow.models import fit_model

    formula = (
        "outcome ~ alliance_within_lag + alliance_between + session "
        "+ (1 | therapist) + (1 | patient)"
    )
    tables = {
        "wai_ors": _analysis("wai_sr+ors", 5, n_patients=120, n_therapists=12, max_sessions=10),
        "srs_phq": _analysis("srs+phq9", 6),
    }
    directions = {"srs_phq": "lower_is_better"}
    results = {name: fit_model(t, formula, name=name).to_dict() for name, t in tables.items()}
    effects = study_effects(results, directions=directions)
    assert (effects["r"] > 0).all()  # both: better alliance, better outcome
    meta = meta_analysis(effects, method="dl", hksj=False)
    one = one_stage_model(tables, formula, directions=directions)
    assert one["n_groups"]["study"] == 2
    assert one["formula"].endswith("+ (1 | study)")
    table = compare_stages(meta, one)
    assert list(table["approach"]) == ["two-stage (DL)", "one-stage"]
    r2, r1 = table["r"]
    assert r1 > 0 and r2 > 0
    # same data, same question: the one-stage r lies inside the two-stage interval
    assert table["ci_low"].iloc[0] < r1 < table["ci_high"].iloc[0]


# ---------------------------------------------------------------- the second example study


def test_second_example_is_exactly_what_the_simulator_writes(tmp_path, root):
    written = write_example2_study(tmp_path, seed=EXAMPLE2_SEED)
    assert written.read_bytes() == (root / "data/raw/example2/visits.csv").read_bytes()
    assert (tmp_path / "README.md").read_text() == (
        root / "data/raw/example2/README.md"
    ).read_text()


def test_second_example_has_its_own_layout_and_ranges(root):
    raw = pd.read_csv(
        root / "data/raw/example2/visits.csv", sep=";", dtype=str, keep_default_na=False
    )
    assert list(raw.columns[:5]) == ["client_id", "counsellor", "group", "visit", "visit_date"]
    assert raw["client_id"].nunique() == 120 and raw["counsellor"].nunique() == 12
    assert set(raw["group"]) == {"FIT", "usual care"}
    assert raw["visit_date"].str.fullmatch(r"20\d\d-\d\d-\d\d").all()
    srs = raw.filter(regex=r"^srs_q\d$")
    phq = raw.filter(regex=r"^phq_\d\d$")
    assert srs.shape[1] == 4 and phq.shape[1] == 9
    assert (srs == "").to_numpy().sum() > 0 and (
        phq == ""
    ).to_numpy().sum() > 0  # blanks are empty cells
    s = pd.to_numeric(srs.stack().replace("", np.nan)).dropna()
    p = pd.to_numeric(phq.stack().replace("", np.nan)).dropna()
    assert s.between(0, 10).all() and np.allclose(s * 10, np.round(s * 10))
    assert set(p.unique()) <= {0.0, 1.0, 2.0, 3.0}


def test_instrument_pair_is_checked():
    with pytest.raises(
        ValueError, match="`instruments` must be 'wai_sr\\+ors' or 'srs\\+phq9'; got 'wai\\+phq9'."
    ):
        simulate_study(seed=1, instruments="wai+phq9")


@pytest.mark.slow
@pytest.mark.parametrize("seed", [21, 22])
def test_srs_phq9_truth_is_recovered(seed):
    """Recover the truth of a random-intercept generating model (no slopes).

    The estimates lie within 3 SE of the true effects on the item-mean (SRS) and total
    (PHQ-9) scales. (Seed 21's between-patient estimate is 2.1 SE from the truth, the kind
    of miss a 95% interval makes 1 time in 20, so the tolerance is 3 SE over two seeds
    rather than the interval of one.)
    """
    import statsmodels.formula.api as smf

    from allianceflow.derive import derive_analysis

    df = simulate_study(
        EXAMPLE2_DESIGN,
        seed=seed,
        instruments="srs+phq9",
        n_patients=600,
        n_therapists=40,
        outcome_sd_slope=0.0,
        alliance_sd_slope=0.0,
    )
    df["srs"] = df.filter(regex=r"^srs_\d+$").mean(axis=1)
    df["phq"] = df.filter(regex=r"^phq9_\d+$").mean(axis=1) * 9
    data = derive_analysis(df, alliance="srs", outcome="phq").dropna(subset=["alliance_within_lag"])
    fit = smf.mixedlm(
        "outcome ~ alliance_within_lag + alliance_between + session",
        data,
        groups="therapist",
        vc_formula={"patient": "0 + C(patient)"},
    ).fit(method="lbfgs")
    for term, truth in [("alliance_within_lag", -1.0), ("alliance_between", -1.5)]:
        assert abs(fit.params[term] - truth) < 3 * fit.bse[term], (
            term,
            fit.params[term],
            fit.bse[term],
        )


def test_outcome_direction_comes_from_the_instrument_file():
    from allianceflow.pool import outcome_direction

    assert (
        outcome_direction(
            {"instruments": {"srs": None, "phq9": {"rci": 6}}, "outcome": "phq9_total"}
        )
        == "lower_is_better"
    )
    assert (
        outcome_direction({"instruments": ["wai_sr", "ors"], "outcome": "ors_total"})
        == "higher_is_better"
    )
    with pytest.raises(
        ValueError,
        match=(
            r"the study's `outcome` is 'gad7_total', which none of its `instruments` "
            r"\(\['ors'\]\) scores."
        ),
    ):
        outcome_direction({"instruments": ["ors"], "outcome": "gad7_total"})


# ---------------------------------------------------------------- live comparison with R


METAFOR_SCRIPT = r"""
suppressMessages(library(metafor))
dat <- escalc(measure = "RR", ai = tpos, bi = tneg, ci = cpos, di = cneg, data = dat.bcg)
cat("YI", sprintf("%.17g", dat$yi), "\n"); cat("VI", sprintf("%.17g", dat$vi), "\n")
ctl <- list(threshold = 1e-12, maxiter = 10000)
for (t in c("z", "knha")) for (pt in c("default", "riley")) {
  res <- rma(yi, vi, data = dat, method = "REML", test = t, control = ctl)
  p <- predict(res, pi.type = pt)
  cat(paste0(t, "_", pt), sprintf("%.15g", c(res$tau2, res$beta[1], res$se, res$ci.lb, res$ci.ub,
      res$zval, res$pval, res$QE, res$I2, res$H2, p$pi.lb, p$pi.ub)), "\n")
}
yi <- c(0.2, 0.2, 0.2, 0.2); vi <- c(0.01, 0.02, 0.04, 0.05)
for (m in c("REML", "DL", "PM")) for (pt in c("default", "riley")) {
  res <- rma(yi, vi, method = m, test = "adhoc"); p <- predict(res, pi.type = pt)
  cat(paste0("adhoc_", m, "_", pt), sprintf("%.15g", c(res$tau2, res$beta[1], res$se,
      res$ci.lb, res$ci.ub, res$zval, res$pval, res$QE, res$I2, res$H2, p$pi.lb, p$pi.ub)), "\n")
}
"""


@pytest.mark.r
def test_reml_matches_metafor_computed_live(tmp_path):
    from rscript import parse_lines, require_r, run_r

    require_r("metafor")
    out = parse_lines(run_r(METAFOR_SCRIPT, tmp_path))
    yi, vi = np.array(out["YI"], dtype=float), np.array(out["VI"], dtype=float)
    assert yi == pytest.approx(BCG_YI, abs=1e-14)
    for test in ("z", "knha"):
        for pi_type in ("default", "riley"):
            ref = tuple(float(x) for x in out[f"{test}_{pi_type}"])
            fit = random_effects(
                yi, vi, method="reml", hksj=test == "knha", hksj_adhoc=False, pi_type=pi_type
            )
            _check_against_metafor(fit, ref)
    # equal effects under Knapp & Hartung's ad hoc correction, every estimator of tau2
    for method in ("REML", "DL", "PM"):
        for pi_type in ("default", "riley"):
            ref = tuple(float(x) for x in out[f"adhoc_{method}_{pi_type}"])
            fit = random_effects(
                EQUAL_YI, EQUAL_VI, method=method.lower(), hksj=True, pi_type=pi_type
            )
            _check_against_metafor(fit, ref)


def test_the_pool_stage_passes_the_ad_hoc_choice_on(tmp_path):
    """`pool.hksj_adhoc` reaches the meta-analysis.

    Two studies with the same effect pool to the ad hoc interval by default, and the
    unmodified method refuses them.
    """
    import json

    from allianceflow import stages

    paths = {}
    for name in ("a", "b"):  # the same within-patient effect, r = 4 / sqrt(16 + 198)
        paths[name] = tmp_path / f"{name}.json"
        paths[name].write_text(json.dumps(_result([("alliance_within_lag", 0.2, 4.0, 198.0)])))
    out = {
        "meta_json": tmp_path / "meta.json",
        "table_csv": tmp_path / "meta.csv",
        "table_md": tmp_path / "meta.md",
        "one_stage_json": tmp_path / "one.json",
        "comparison_csv": tmp_path / "cmp.csv",
    }
    common = dict(models=paths, analyses={}, directions={}, formula="", one_stage=False)
    stages.pool_stage(**common, **out)
    meta = json.loads(out["meta_json"].read_text())
    z = math.atanh(4 / math.sqrt(16 + 198))
    se = math.sqrt(1 / (200 - 3) / 2)  # the common-effect SE: q = 0 is raised to 1
    assert meta["hksj"] is True and meta["hksj_adhoc"] is True
    assert meta["pooled"]["z"] == pytest.approx(z, abs=1e-9)  # stored to 10 digits
    assert meta["pooled"]["se"] == pytest.approx(se, abs=1e-9)
    with pytest.raises(ValueError, match="hksj_adhoc=True"):
        stages.pool_stage(**common, hksj_adhoc=False, **out)
