"""Tests of the fast nested-LMM engine against statsmodels MixedLM and a dense likelihood."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from statsmodels.regression.mixed_linear_model import MixedLM, MixedLMParams

from allianceflow.derive import derive_analysis
from allianceflow.models import LMMFit, fit_lmm, fit_model, supports
from allianceflow.score import score_sessions
from allianceflow.simulate import FORMER, simulate_study

FIXED = "outcome ~ session + alliance_within_lag + alliance_between"
COLS = ["outcome", "session", "alliance_within_lag", "alliance_between", "patient", "therapist"]


def _analysis(seed: int, **design) -> pd.DataFrame:
    # the simulator's draws as when these cases were chosen (constant dropout hazard)
    df = simulate_study(seed=seed, **{**FORMER, **design})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scored = score_sessions(df, ["wai_sr", "ors"])
    an = derive_analysis(scored, alliance="wai_sr_total", outcome="ors_total")
    studies = {t: f"S{i % 3}" for i, t in enumerate(sorted(an["therapist"].unique()))}
    an["study"] = an["therapist"].map(studies)
    return an


@pytest.fixture(scope="module")
def data() -> pd.DataFrame:
    # a larger slope SD than the example study's, so that the slope variance is interior
    return _analysis(7, n_patients=150, n_therapists=12, max_sessions=10, outcome_sd_slope=0.8)


@pytest.fixture(scope="module")
def small() -> pd.DataFrame:
    """For the dense (n x n) reference likelihood."""
    d = _analysis(5, n_patients=60, n_therapists=6, max_sessions=8, outcome_sd_slope=0.8)
    return d.dropna(subset=COLS).reset_index(drop=True)


@pytest.fixture(scope="module")
def complete(data) -> pd.DataFrame:
    return data.dropna(subset=COLS).reset_index(drop=True)


# --------------------------------------------------------------------------- statsmodels


SM_STRUCTURES = {
    # formula -> (groups, re_formula, vc_formula, how to map our fit to statsmodels params)
    "intercept": (FIXED + " + (1 | patient)", "patient", "1", None),
    "correlated": (FIXED + " + (1 + session | patient)", "patient", "1 + session", None),
    "uncorrelated": (FIXED + " + (1 + session || patient)", "patient", "1", {"s": "0 + session"}),
    "nested": (
        FIXED + " + (1 | therapist) + (1 + session || patient)",
        "therapist",
        "1",
        {"p": "0 + C(patient)", "ps": "0 + C(patient):session"},
    ),
}


def _sm_model(complete, key, reml):
    _, groups, re_formula, vc = SM_STRUCTURES[key]
    m = MixedLM.from_formula(FIXED, complete, groups=groups, re_formula=re_formula, vc_formula=vc)
    m.reml = reml
    m.cov_pen = None
    m.fe_pen = None
    m._cov_sing = 0
    return m


def _sm_fit(complete, key, reml):
    """Fit statsmodels to its converged answer, the reference.

    lbfgs, then Nelder-Mead from there (lbfgs alone can stop short of lme4's answer),
    keeping the better.
    """
    m = _sm_model(complete, key, reml)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r1 = m.fit(reml=reml, method="lbfgs")
        start = r1.params_object.get_packed(use_sqrt=True, has_fe=False)
        r2 = m.fit(reml=reml, method="nm", start_params=start, maxiter=20000)
    best = r2 if r2.llf > r1.llf else r1
    assert best.converged
    return best


def _sm_params(fit: LMMFit, key: str) -> MixedLMParams:
    """Our estimates as statsmodels parameters (covariances relative to the residual).

    statsmodels' likelihood jumps at a singular covariance matrix (statsmodels #10239), so a
    ridge of 1e-10 keeps a boundary fit just inside.
    """
    s2 = fit.sigma2
    if key in ("intercept", "correlated"):
        cov_re, vcomp = fit.cov_re["patient"].to_numpy() / s2, np.zeros(0)
    elif key == "uncorrelated":
        c = fit.cov_re["patient"].to_numpy() / s2
        cov_re, vcomp = c[:1, :1], np.array([c[1, 1]])
    else:
        c = fit.cov_re["patient"].to_numpy() / s2
        cov_re = fit.cov_re["therapist"].to_numpy() / s2
        vcomp = np.array([c[0, 0], c[1, 1]])
    cov_re = cov_re + 1e-10 * np.eye(len(cov_re))
    return MixedLMParams.from_components(fe_params=fit.fe_params, cov_re=cov_re, vcomp=vcomp)


@pytest.mark.parametrize("reml", [True, False], ids=["REML", "ML"])
@pytest.mark.parametrize("key", list(SM_STRUCTURES))
def test_agrees_with_statsmodels(complete, key, reml):
    fit = fit_lmm(complete, SM_STRUCTURES[key][0], reml=reml)
    sm = _sm_fit(complete, key, reml)
    assert fit.converged, fit.warnings
    assert fit.n_obs == len(complete)
    assert fit.fixed_names == list(sm.fe_params.index)
    # log-likelihood: at least as high as statsmodels' converged answer and within 1e-6
    assert fit.loglik >= sm.llf - 1e-9 * abs(sm.llf)
    assert abs(fit.loglik - sm.llf) <= 1e-6 * abs(sm.llf)
    np.testing.assert_allclose(fit.fe_params, sm.fe_params.to_numpy(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(fit.sigma2, sm.scale, rtol=1e-4)
    # statsmodels' own likelihood evaluated at our estimates is our log-likelihood
    m = _sm_model(complete, key, reml)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ll_at_ours = m.loglike(_sm_params(fit, key), profile_fe=True)
    assert ll_at_ours == pytest.approx(fit.loglik, rel=1e-10)
    # variance components
    if key in ("intercept", "correlated"):
        np.testing.assert_allclose(
            fit.cov_re["patient"].to_numpy(), sm.cov_re.to_numpy(), rtol=2e-3, atol=1e-5
        )
    elif key == "uncorrelated":
        ours = np.diag(fit.cov_re["patient"].to_numpy())
        theirs = np.r_[sm.cov_re.to_numpy().ravel(), sm.vcomp]
        np.testing.assert_allclose(ours, theirs, rtol=2e-3, atol=1e-5)
        assert fit.cov_re["patient"].iloc[0, 1] == 0.0
    else:
        ours = np.r_[
            fit.cov_re["therapist"].to_numpy().ravel(), np.diag(fit.cov_re["patient"].to_numpy())
        ]
        theirs = np.r_[sm.cov_re.to_numpy().ravel(), sm.vcomp]
        np.testing.assert_allclose(ours, theirs, rtol=2e-3, atol=1e-5)


@pytest.mark.parametrize("key", ["correlated", "nested"])
def test_standard_errors_are_gls(complete, key):
    """SE = sqrt(diag(sigma^2 (X'V^-1 X)^-1)), as lme4's vcov, computed densely here."""
    fit = fit_lmm(complete, SM_STRUCTURES[key][0])
    X, y, V = _dense(complete, fit)
    XtVX = X.T @ np.linalg.solve(V, X)  # V relative to sigma^2
    cov = fit.sigma2 * np.linalg.inv(XtVX)
    np.testing.assert_allclose(fit.cov_fe, cov, rtol=1e-8)
    np.testing.assert_allclose(fit.bse, np.sqrt(np.diag(cov)), rtol=1e-8)
    beta = np.linalg.solve(XtVX, X.T @ np.linalg.solve(V, y))
    np.testing.assert_allclose(fit.fe_params, beta, rtol=1e-8)


def test_conditional_modes_match_statsmodels(complete):
    fit = fit_lmm(complete, SM_STRUCTURES["correlated"][0])
    sm = _sm_fit(complete, "correlated", True)
    re = fit.ranef["patient"].set_index("patient")
    theirs = pd.DataFrame(sm.random_effects).T
    theirs.columns = ["(Intercept)", "session"]
    theirs = theirs.loc[re.index]
    np.testing.assert_allclose(
        re[["(Intercept)", "session"]].to_numpy(), theirs.to_numpy(), atol=2e-3, rtol=1e-3
    )
    assert list(re.columns) == ["(Intercept)", "session", "se_(Intercept)", "se_session"]
    assert (re["se_session"] > 0).all()
    assert len(re) == fit.n_groups["patient"] == complete["patient"].nunique()


# --------------------------------------------------------------------------- dense reference


def _dense(d: pd.DataFrame, fit: LMMFit):
    """X, y and V/sigma^2 = I + Z Sigma Z' / sigma^2 for small data (dense)."""
    import patsy

    X = patsy.dmatrix(fit.formula.split("~")[1].split("+ (")[0], d, return_type="matrix")
    X = np.asarray(X)
    y = d["outcome"].to_numpy(float)
    n = len(d)
    V = np.eye(n)
    for label, cov in fit.cov_re.items():
        keys = d[label.split(":")].astype(str).agg(":".join, axis=1).to_numpy()
        same = keys[:, None] == keys[None, :]
        zs = [np.ones(n) if e == "(Intercept)" else d[e].to_numpy(float) for e in cov.index]
        rel = cov.to_numpy() / fit.sigma2
        for a, za in enumerate(zs):
            for b, zb in enumerate(zs):
                if rel[a, b] != 0:
                    V += same * rel[a, b] * np.outer(za, zb)
    return X, y, V


def _dense_loglik(X, y, V, reml):
    """(RE)ML log-likelihood at the GLS estimate for the covariance matrix V of y."""
    n, p = X.shape
    Vi_X = np.linalg.solve(V, X)
    XtVX = X.T @ Vi_X
    beta = np.linalg.solve(XtVX, Vi_X.T @ y)
    r = y - X @ beta
    ll = -0.5 * (np.linalg.slogdet(V)[1] + r @ np.linalg.solve(V, r) + n * np.log(2 * np.pi))
    if reml:
        ll += -0.5 * np.linalg.slogdet(XtVX)[1] + 0.5 * p * np.log(2 * np.pi)
    return ll


@pytest.mark.parametrize(
    "random",
    [
        "(1 + session | patient) + (1 | therapist)",  # correlated inside a therapist level
        "(1 + session | patient) + (1 | therapist) + (1 | study)",  # three levels
        "(1 + session | therapist/patient)",  # nesting syntax, correlated at both levels
    ],
)
@pytest.mark.parametrize("reml", [True, False], ids=["REML", "ML"])
def test_structures_statsmodels_cannot_fit(small, random, reml):
    """Check the likelihood at our estimates against a dense computation.

    No perturbation of any variance parameter raises it (the estimates are the maximum).
    """
    d = small
    fit = fit_lmm(d, f"{FIXED} + {random}", reml=reml)
    assert fit.converged, fit.warnings
    X, y, V = _dense(d, fit)
    ll0 = _dense_loglik(X, y, fit.sigma2 * V, reml)
    assert ll0 == pytest.approx(fit.loglik, rel=1e-10)
    n = len(d)
    for label, cov in fit.cov_re.items():
        q = cov.shape[0]
        for a in range(q):
            for b in range(a + 1):
                for sign in (-1, 1):
                    pert = {k: v.copy() for k, v in fit.cov_re.items()}
                    delta = 0.05 * np.sqrt(cov.iloc[a, a] * cov.iloc[b, b]) + 1e-6
                    pert[label].iloc[a, b] += sign * delta
                    if a != b:
                        pert[label].iloc[b, a] += sign * delta
                    if np.linalg.eigvalsh(pert[label].to_numpy()).min() < 0:
                        continue
                    alt = LMMFit(**{**fit.__dict__, "cov_re": pert})
                    _, _, Vp = _dense(d, alt)
                    assert _dense_loglik(X, y, fit.sigma2 * Vp, reml) < ll0
    for s in (0.97, 1.03):  # the residual variance
        assert _dense_loglik(X, y, fit.sigma2 * (V + (s - 1) * np.eye(n)), reml) < ll0
    assert fit.n_obs == n
    assert fit.aic == pytest.approx(-2 * fit.loglik + 2 * fit.n_params)
    assert fit.bic == pytest.approx(-2 * fit.loglik + fit.n_params * np.log(n))


def test_three_level_counts_and_ranef(complete):
    fit = fit_lmm(complete, FIXED + " + (1 | study) + (1 | therapist) + (1 + session | patient)")
    assert fit.n_groups == {"study": 3, "therapist": 12, "patient": complete["patient"].nunique()}
    assert list(fit.ranef) == ["study", "therapist", "patient"]
    assert fit.n_params == 4 + (1 + 1 + 3) + 1
    assert set(fit.ranef["therapist"]["therapist"]) == set(complete["therapist"])


def test_singular_fit_is_reported_and_same_likelihood():
    """Report a therapist level without therapist variance as a boundary fit.

    The likelihood is that of the model without it (as lme4).
    """
    d = _analysis(11, n_patients=120, n_therapists=12, max_sessions=8, outcome_sd_therapist=0.0)
    d = d.dropna(subset=COLS)
    # shuffle therapists among patients so that no therapist clustering remains
    rng = np.random.default_rng(0)
    pats = d["patient"].unique()
    d["therapist"] = d["patient"].map(
        dict(zip(pats, rng.permutation(np.resize(["A", "B", "C", "D"], len(pats))), strict=True))
    )
    with_t = fit_lmm(d, FIXED + " + (1 | therapist) + (1 + session | patient)")
    without = fit_lmm(d, FIXED + " + (1 + session | patient)")
    if not with_t.boundary:
        pytest.skip("this draw has a non-zero therapist variance")
    assert with_t.boundary == ["(Intercept) | therapist"]
    assert with_t.cov_re["therapist"].iloc[0, 0] == pytest.approx(0.0, abs=1e-12)
    assert with_t.loglik == pytest.approx(without.loglik, rel=1e-9)
    assert any("singular fit" in w for w in with_t.warnings)
    assert with_t.converged


def test_missing_rows_dropped_and_counted(data):
    fit = fit_lmm(data, FIXED + " + (1 | patient)")
    n_complete = int(data[COLS[:5]].notna().all(axis=1).sum())
    assert fit.n_obs == n_complete
    assert fit.n_dropped_missing == len(data) - n_complete


def test_result_helpers(complete):
    fit = fit_lmm(complete, SM_STRUCTURES["correlated"][0])
    fe = fit.fixed_effects()
    assert list(fe.columns) == ["term", "estimate", "se"]
    assert list(fe["term"]) == ["Intercept", "session", "alliance_within_lag", "alliance_between"]
    vc = fit.variance_components()
    assert list(vc["group"]) == ["patient", "patient", "patient", "Residual"]
    assert vc["variance_or_cov"].iloc[-1] == fit.sigma2
    assert fit.level_variance["patient"] > fit.cov_re["patient"].iloc[0, 0]  # slope adds variance
    assert 0 < fit.var_fixed


# --------------------------------------------------------------------------- supports / errors


@pytest.mark.parametrize(
    "formula, expected",
    [
        ("y ~ x + (1 | patient)", True),
        ("y ~ x + (1 + x | patient) + (1 | therapist)", True),
        ("y ~ x + (1 + x || patient)", True),
        ("y ~ x + (1 | therapist/patient)", True),
        ("y ~ x", False),
        ("y ~ x + (1 | patient) + (1 | patient)", False),
    ],
)
def test_supports_formula(formula, expected):
    assert supports(formula) is expected


def test_supports_checks_nesting_with_data(complete):
    crossed = complete.assign(rater=np.resize(["r1", "r2", "r3"], len(complete)))
    assert supports(FIXED + " + (1 | patient) + (1 | therapist)", complete) is True
    assert supports(FIXED + " + (1 | patient) + (1 | rater)", crossed) is False
    assert supports(FIXED + " + (1 | clinic)", complete) is False


def test_crossed_factors_raise(complete):
    crossed = complete.assign(rater=np.resize(["r1", "r2", "r3"], len(complete)))
    with pytest.raises(ValueError, match=r"are not nested in one another.*statsmodels engine"):
        fit_lmm(crossed, FIXED + " + (1 | patient) + (1 | rater)")


@pytest.mark.parametrize(
    "args, kwargs, exc, match",
    [
        (
            ("not a frame", FIXED + " + (1 | patient)"),
            {},
            TypeError,
            r"`data` must be a pandas DataFrame; got str",
        ),
        (
            (None, 3),
            {},
            TypeError,
            r"`formula_or_spec` must be an lme4 formula string or a FormulaSpec; got int",
        ),
        ((None, FIXED), {}, ValueError, r"has no random part"),
        (
            (None, FIXED + " + (1 | patient)"),
            {"reml": "yes"},
            TypeError,
            r"`reml` must be True or False; got 'yes'",
        ),
        (
            (None, FIXED + " + (1 | patient)"),
            {"tol": 0},
            ValueError,
            r"`tol` must be a positive number; got 0",
        ),
        (
            (None, FIXED + " + (1 | clinic)"),
            {},
            KeyError,
            r"grouping factor 'clinic' is not a column",
        ),
        (
            (None, FIXED + " + (1 | patient)"),
            {"start": [1.0, 2.0]},
            ValueError,
            r"`start` must have 1 values",
        ),
    ],
)
def test_validation(complete, args, kwargs, exc, match):
    data, formula = args
    with pytest.raises(exc, match=match):
        fit_lmm(complete if data is None else data, formula, **kwargs)


def test_rank_deficient_fixed_effects(complete):
    d = complete.assign(session2=complete["session"] * 2.0)
    with pytest.raises(ValueError, match="The fixed effects cannot all be estimated"):
        fit_lmm(d, "outcome ~ session + session2 + (1 | patient)")


def test_a_saddle_on_the_boundary_is_left_for_the_optimum(three_level_data):
    # Therapist intercepts and slopes, correlated: from the default start the optimiser
    # reached Λ entries (θ11, θ21) = (0, 0) with the therapist intercept variance at 0 -- a
    # stationary point that is not a minimum (logLik 0.295 below the optimum). statsmodels
    # can fit this structure (the therapist is the outermost factor) and is the reference.
    formula = (
        "outcome ~ alliance_within_lag + alliance_between + session + (1 + session |"
        " therapist) + (1 | pid)"
    )
    fast = fit_model(three_level_data, formula, engine="fast").to_dict()
    ref = fit_model(three_level_data, formula, engine="statsmodels").to_dict()
    assert fast["convergence"]["converged"] and not fast["convergence"]["boundary"]
    assert fast["loglik"] >= ref["loglik"] - 1e-7
    assert abs(fast["loglik"] - ref["loglik"]) < 1e-5
    var = {x["term"]: x["variance"] for x in fast["random"] if x["group"] == "therapist"}
    assert var["(Intercept)"] > 0.5  # not the boundary solution (0)


def test_a_variance_that_stops_next_to_zero_does_not_fail_the_convergence_check():
    # A small power-analysis replication: the patient slope's diagonal θ stopped at 1.6e-6
    # (inside boundary_tol, reported at the boundary) but counted as free, and the deviance
    # has no curvature there, so the check failed the fit ("not converged"). Set on the
    # bound, the fit converges -- here to an interior point slightly better still.
    from allianceflow.power import PowerDesign, simulate_power_data

    legacy = {"early_sessions": 1, "dropout_alliance_effect": 0.0, "deterioration_share": 0.0}
    d = simulate_power_data(  # the simulator as it was when the case was found
        PowerDesign(
            n_therapists=12, patients_per_therapist=8, sessions=8, within_effect=1.5, **legacy
        ),
        seed=3715024065,
    )
    formula = (
        "outcome ~ alliance_within_lag + alliance_between + session + session:feedback"
        " + (1 | therapist) + (1 + session | patient)"
    )
    r = fit_model(d, formula, engine="fast").to_dict()
    assert r["convergence"]["converged"] and r["convergence"]["hessian_positive_definite"]
    assert r["loglik"] >= -1571.90264259  # the value at the point the check refused
    uncorrelated = fit_model(d, formula.replace("| patient", "|| patient"), engine="fast").to_dict()
    assert r["loglik"] >= uncorrelated["loglik"]  # the larger model cannot fit worse


# --------------------------------------------------------------------------- differences


@pytest.mark.parametrize("cross", ["four-point", "axis"])
def test_fd_hessian_is_exact_on_a_cubic(cross):
    """Both cross-term formulas are second order: exact to rounding on a cubic's Hessian.

    f = x0^2 x1 + 3 x1^2 + x0 x2 - x2^3 / 6 has, at (1, 2, -1), the Hessian
    [[2 x1, 2 x0, 1], [2 x0, 6, 0], [1, 0, -x2]] = [[4, 2, 1], [2, 6, 0], [1, 0, 1]]; the
    third derivatives' error terms cancel in central differences.
    """
    from allianceflow.models.optimize import fd_hessian

    def f(x):
        return x[0] ** 2 * x[1] + 3 * x[1] ** 2 + x[0] * x[2] - x[2] ** 3 / 6

    H = fd_hessian(f, np.array([1.0, 2.0, -1.0]), np.ones(3, dtype=bool), cross=cross)
    np.testing.assert_allclose(H, [[4, 2, 1], [2, 6, 0], [1, 0, 1]], atol=1e-6)
    sub = fd_hessian(f, np.array([1.0, 2.0, -1.0]), np.array([True, False, True]), cross=cross)
    np.testing.assert_allclose(sub, [[4, 1], [1, 1]], atol=1e-6)
