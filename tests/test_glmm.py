"""The GLMM engine without R: its deviance against direct computations, recovery, the API.

Agreement with lme4's glmer is in ``tests/test_glmer.py``; here the Laplace deviance of the
block elimination is checked against a dense computation written out independently, the
adaptive quadrature against numerical integration, a simulated truth is recovered, and
every validation branch gives its message.
"""

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import integrate, special, stats

from allianceflow.models import MixedModelResult, fit_model, glmm
from allianceflow.models.design import model_rows
from allianceflow.models.formula import ModelError, parse_formula
from allianceflow.models.result import GLMMResult


def _nested_counts(seed=5):
    """Counts per session, sessions in 3 patients in each of 4 therapists."""
    rng = np.random.default_rng(seed)
    rows = []
    for t in range(4):
        for p in range(3):
            for s in range(4):
                rows.append({"therapist": f"T{t}", "patient": f"T{t}P{p}", "time": s / 3})
    d = pd.DataFrame(rows)
    d["y"] = rng.poisson(np.exp(0.5 + 0.3 * d["time"]))
    return d


def _problem(d, formula, family, link):
    spec = parse_formula(formula)
    rows, _ = model_rows(d, spec)
    levels, codes, X, _names, y, trials, Z = glmm._prepare(rows, spec, family)
    return glmm._Problem(levels, codes, Z, X, glmm._Family(family, link, y, trials)), rows


def test_laplace_deviance_equals_dense_computation():
    """Block elimination over nested levels gives the Laplace deviance of dense algebra."""
    d = _nested_counts()
    prob, rows = _problem(d, "y ~ time + (1 | therapist) + (1 + time | patient)", "poisson", "log")
    # θ: the patient block (inner level first; Λ's lower triangle column by column), then
    # the therapist's
    theta = np.array([0.4, -0.1, 0.3, 0.6])
    beta = np.array([0.45, 0.2])
    # dense Z Λ: patient intercept and time slope (2 columns per patient), therapist intercept
    patients = sorted(rows["patient"].unique())
    therapists = sorted(rows["therapist"].unique())
    lam_p = np.array([[0.4, 0.0], [-0.1, 0.3]])
    Z = np.zeros((len(rows), 2 * len(patients) + len(therapists)))
    lam = np.zeros((Z.shape[1], Z.shape[1]))
    for i in range(len(patients)):
        lam[2 * i : 2 * i + 2, 2 * i : 2 * i + 2] = lam_p
    for j in range(len(therapists)):
        k = 2 * len(patients) + j
        lam[k, k] = 0.6
    for r, row in rows.iterrows():
        i = patients.index(row["patient"])
        Z[r, 2 * i], Z[r, 2 * i + 1] = 1.0, row["time"]
        Z[r, 2 * len(patients) + therapists.index(row["therapist"])] = 1.0
    X = np.column_stack([np.ones(len(rows)), rows["time"]])
    y = rows["y"].to_numpy(float)
    ZL = Z @ lam

    def penalised(u):
        eta = X @ beta + ZL @ u
        return -2 * np.sum(stats.poisson.logpmf(y, np.exp(eta))) + u @ u

    u = np.zeros(Z.shape[1])
    for _ in range(50):  # Newton's method on the penalised deviance
        mu = np.exp(X @ beta + ZL @ u)
        step = np.linalg.solve(ZL.T @ (mu[:, None] * ZL) + np.eye(len(u)), ZL.T @ (y - mu) - u)
        u = u + step
        if np.max(np.abs(step)) < 1e-14:
            break
    mu = np.exp(X @ beta + ZL @ u)
    _sign, logdet = np.linalg.slogdet(ZL.T @ (mu[:, None] * ZL) + np.eye(Z.shape[1]))
    dense = penalised(u) + logdet
    assert prob.deviance(theta, beta) == pytest.approx(dense, rel=1e-9)


def test_adaptive_quadrature_converges_to_the_integral():
    r"""With 25 nodes, -2 log of :math:`\prod_j\int p(y_j|u)\phi(u)du` by numerical integration."""
    rng = np.random.default_rng(8)
    d = pd.DataFrame({"g": np.repeat([f"G{i}" for i in range(6)], 5), "x": rng.normal(size=30)})
    d["y"] = rng.binomial(1, special.expit(0.2 + 0.8 * d["x"]))
    prob, rows = _problem(d, "y ~ x + (1 | g)", "binomial", "logit")
    theta, beta = np.array([1.3]), np.array([0.1, 0.7])
    exact = 0.0
    for _g, part in rows.groupby("g"):
        eta0 = beta[0] + beta[1] * part["x"].to_numpy()
        yy = part["y"].to_numpy()

        def integrand(u, eta0=eta0, yy=yy):
            p = special.expit(eta0 + theta[0] * u)
            return np.prod(np.where(yy == 1, p, 1 - p)) * stats.norm.pdf(u)

        exact += -2 * math.log(integrate.quad(integrand, -12, 12, epsabs=1e-14)[0])
    assert prob.deviance(theta, beta, n_agq=25) == pytest.approx(exact, rel=1e-9)
    # Laplace is an approximation: measurably different on 5 observations per group
    assert abs(prob.deviance(theta, beta, n_agq=1) - exact) > 1e-3


def _simulated_binary(seed=21, n_therapists=80, per=40):
    rng = np.random.default_rng(seed)
    th = np.repeat(np.arange(n_therapists), per)
    arm = rng.integers(0, 2, len(th))
    baseline = rng.normal(0, 1, len(th))
    eta = -0.8 + 0.5 * arm - 0.4 * baseline + rng.normal(0, 0.7, n_therapists)[th]
    return pd.DataFrame(
        {
            "therapist": [f"T{t:02d}" for t in th],
            "arm": np.where(arm == 1, "feedback", "control"),
            "baseline": baseline,
            "y": rng.binomial(1, special.expit(eta)),
        }
    )


@pytest.fixture(scope="module")
def binary_fit():
    return fit_model(_simulated_binary(), "y ~ arm + baseline + (1 | therapist)", family="binomial")


def test_simulated_truth_is_recovered(binary_fit):
    """β = (-0.8, 0.5, -0.4) and therapist SD 0.7 (3,200 patients in 80 therapists)."""
    fixed = binary_fit.fixed.set_index("term")
    truth = {"Intercept": -0.8, "arm[T.feedback]": 0.5, "baseline": -0.4}
    for term, value in truth.items():
        assert fixed.loc[term, "ci_low"] < value < fixed.loc[term, "ci_high"], term
    sd = binary_fit.random.set_index("group").loc["therapist", "sd"]
    assert 0.5 < sd < 0.9
    assert binary_fit.converged


def test_record_keys_ratios_and_latent_icc(binary_fit):
    rec = binary_fit.to_dict()
    json.dumps(rec)  # plain JSON
    assert isinstance(binary_fit, GLMMResult)
    assert (rec["family"], rec["link"], rec["nAGQ"], rec["reml"]) == ("binomial", "logit", 1, False)
    assert rec["ratio_type"] == "odds ratio" and rec["vcov_method"] == "hessian"
    assert rec["n_params"] == 4  # three fixed effects and one θ, as glmer's df
    assert rec["aic"] == pytest.approx(-2 * rec["loglik"] + 8)
    for row, fixed in zip(rec["ratios"], rec["fixed"], strict=True):
        assert row["term"] == fixed["term"]
        assert row["ratio"] == pytest.approx(math.exp(fixed["estimate"]), rel=1e-11)
        assert row["ci_low"] == pytest.approx(math.exp(fixed["ci_low"]), rel=1e-11)
    var = rec["random"][0]["variance"]
    assert rec["residual_variance"] == pytest.approx(math.pi**2 / 3)
    assert rec["icc"]["therapist"] == pytest.approx(var / (var + math.pi**2 / 3), rel=1e-11)
    assert MixedModelResult.from_dict(rec).to_dict() == rec
    assert type(MixedModelResult.from_dict(rec)) is GLMMResult
    text = binary_fit.summary()
    assert "Generalised linear mixed model 'model' (binomial, logit link)" in text
    assert "Odds ratios (exp of estimate and 95% CI):" in text


def test_beta_only_standard_errors_are_an_option(binary_fit):
    res = fit_model(
        _simulated_binary(),
        "y ~ arm + baseline + (1 | therapist)",
        family="binomial",
        vcov="beta_only",
    )
    rec = res.to_dict()
    assert rec["vcov_method"] == "beta_only"
    assert [f["se"] for f in rec["fixed"]] == pytest.approx(
        list(rec["se_beta_only"].values()), rel=1e-10
    )
    # conditional on θ the intercept's SE is smaller: θ's uncertainty is left out
    assert rec["fixed"][0]["se"] < binary_fit.to_dict()["fixed"][0]["se"]


def test_reference_level_is_first_in_sorted_order():
    d = _simulated_binary(n_therapists=20, per=20)
    d["arm"] = np.where(d["arm"] == "feedback", "b", np.where(d.index % 2, "c", "a"))
    res = fit_model(d, "y ~ arm + (1 | therapist)", family="binomial")
    assert list(res.fixed["term"]) == ["Intercept", "arm[T.b]", "arm[T.c]"]


def test_probit_has_no_ratios_and_unit_latent_variance():
    d = _simulated_binary(n_therapists=20, per=20)
    res = fit_model(d, "y ~ baseline + (1 | therapist)", family="binomial", link="probit")
    rec = res.to_dict()
    assert rec["ratios"] == [] and rec["ratio_type"] is None
    var = rec["random"][0]["variance"]
    assert rec["icc"]["therapist"] == pytest.approx(var / (var + 1.0), rel=1e-11)


def test_poisson_rate_ratios_and_lognormal_residual():
    rng = np.random.default_rng(4)
    d = pd.DataFrame({"therapist": np.repeat([f"T{i}" for i in range(30)], 20)})
    d["alliance"] = rng.normal(0, 1, len(d))
    eta = 1.5 + 0.2 * d["alliance"] + np.repeat(rng.normal(0, 0.3, 30), 20)
    d["sessions"] = rng.poisson(np.exp(eta))
    res = fit_model(d, "sessions ~ alliance + (1 | therapist)", family="poisson")
    rec = res.to_dict()
    assert rec["ratio_type"] == "rate ratio" and rec["link"] == "log"
    lo, hi = rec["ratios"][1]["ci_low"], rec["ratios"][1]["ci_high"]
    assert lo < math.exp(0.2) < hi
    # Nakagawa, Johnson & Schielzeth (2017): log(1 + 1/λ), λ = exp(mean η + σ²/2)
    beta = [f["estimate"] for f in rec["fixed"]]
    mean_eta = beta[0] + beta[1] * d["alliance"].mean()
    lam = math.exp(mean_eta + rec["random"][0]["variance"] / 2)
    assert rec["residual_variance"] == pytest.approx(math.log1p(1 / lam), rel=1e-9)


def test_cbind_response_equals_expanded_binary_rows():
    """cbind(successes, failures) and the same trials as 0/1 rows: the same estimates.

    Their likelihoods differ by the binomial coefficients only.
    """
    rng = np.random.default_rng(9)
    g = np.repeat([f"G{i}" for i in range(12)], 3)
    x = np.tile([0.0, 1.0, 2.0], 12)
    n = rng.integers(3, 9, len(g))
    s = rng.binomial(n, special.expit(-0.5 + 0.4 * x + np.repeat(rng.normal(0, 0.5, 12), 3)))
    agg = pd.DataFrame({"g": g, "x": x, "s": s, "f": n - s})
    long = agg.loc[agg.index.repeat(n)].copy()
    long["y"] = np.concatenate([[1] * a + [0] * (b - a) for a, b in zip(s, n, strict=True)])
    r1 = fit_model(agg, "cbind(s, f) ~ x + (1 | g)", family="binomial").to_dict()
    r2 = fit_model(long, "y ~ x + (1 | g)", family="binomial").to_dict()
    assert [f["estimate"] for f in r1["fixed"]] == pytest.approx(
        [f["estimate"] for f in r2["fixed"]], abs=1e-6
    )
    log_choose = float(
        np.sum(special.gammaln(n + 1) - special.gammaln(s + 1) - special.gammaln(n - s + 1))
    )
    assert r1["loglik"] == pytest.approx(r2["loglik"] + log_choose, rel=1e-9)


def _small():
    rng = np.random.default_rng(2)
    d = pd.DataFrame(
        {
            "therapist": np.repeat([f"T{i}" for i in range(6)], 10),
            "patient": [f"P{i}" for i in range(60)],
            "x": rng.normal(size=60),
        }
    )
    d["y"] = rng.integers(0, 2, 60)
    d["k"] = rng.integers(0, 4, 60)
    d["rater"] = np.tile([f"R{i}" for i in range(6)], 10)
    return d


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"family": "gamma"}, ValueError, "`family` must be 'gaussian', 'binomial' or 'poisson'"),
        ({"family": "binomial", "link": "log"}, ValueError, "must be 'logit' or 'probit'"),
        ({"family": "binomial", "nAGQ": 0}, ValueError, "`nAGQ` must be a whole number"),
        ({"family": "binomial", "nAGQ": 26}, ValueError, "`nAGQ` must be a whole number"),
        ({"family": "binomial", "vcov": "sandwich"}, ValueError, "`vcov` must be 'hessian'"),
        ({"link": "logit"}, ValueError, "apply to family='binomial' or 'poisson'"),
        ({"family": "poisson", "ddf": "satterthwaite"}, ValueError, "`ddf` applies to linear"),
    ],
)
def test_option_validation(kwargs, error, match):
    with pytest.raises(error, match=match):
        fit_model(_small(), "y ~ x + (1 | therapist)", **kwargs)


@pytest.mark.parametrize(
    ("formula", "family", "kwargs", "match"),
    [
        ("k ~ x + (1 | therapist)", "binomial", {}, "a binomial response must be 0/1"),
        ("x ~ 1 + (1 | therapist)", "poisson", {}, "must be a non-negative whole count"),
        ("cbind(y, k) ~ x + (1 | therapist)", "poisson", {}, "is for family='binomial'"),
        ("y ~ x + (1 | therapist) + (1 | rater)", "binomial", {}, "are crossed"),
        (
            "y ~ x + (1 + x | therapist)",
            "binomial",
            {"nAGQ": 3},
            "needs a single scalar random effect",
        ),
    ],
)
def test_model_errors(formula, family, kwargs, match):
    with pytest.raises(ModelError, match=match):
        fit_model(_small(), formula, family=family, **kwargs)


def test_response_without_information_is_refused():
    d = _small().assign(y=0)
    with pytest.raises(ModelError, match="the response has the single value 0 in all 60"):
        fit_model(d, "y ~ x + (1 | therapist)", family="binomial")


def test_cbind_needs_binomial_and_two_columns():
    with pytest.raises(ValueError, match="a cbind\\(successes, failures\\) response needs"):
        fit_model(_small(), "cbind(y, k) ~ x + (1 | therapist)")
    with pytest.raises(ValueError, match="write a binomial response as"):
        parse_formula("cbind(y) ~ x + (1 | g)")
    assert parse_formula("cbind(s, f) ~ x + (1 | g)").cbind == ("s", "f")


def test_singular_fit_is_flagged_and_its_ses_are_the_glms():
    """Without a therapist effect the variance goes to 0; the SEs are then those of the GLM."""
    rng = np.random.default_rng(3)
    d = pd.DataFrame(
        {"therapist": np.repeat([f"T{i}" for i in range(20)], 30), "x": rng.normal(size=600)}
    )
    d["y"] = rng.binomial(1, special.expit(0.2 + 0.5 * d["x"]))
    res = fit_model(d, "y ~ x + (1 | therapist)", family="binomial")
    rec = res.to_dict()
    assert rec["random"][0]["variance"] == 0.0 and rec["random"][0]["boundary"]
    assert rec["convergence"]["boundary"] == ["(Intercept) | therapist"]
    # logistic regression by IRLS, written out: its SEs are sqrt(diag((X'WX)^-1))
    X = np.column_stack([np.ones(600), d["x"]])
    beta = np.zeros(2)
    for _ in range(30):
        mu = special.expit(X @ beta)
        beta = beta + np.linalg.solve(X.T @ (X * (mu * (1 - mu))[:, None]), X.T @ (d["y"] - mu))
    mu = special.expit(X @ beta)
    se = np.sqrt(np.diag(np.linalg.inv(X.T @ (X * (mu * (1 - mu))[:, None]))))
    assert [f["estimate"] for f in rec["fixed"]] == pytest.approx(beta, abs=1e-6)
    assert [f["se"] for f in rec["fixed"]] == pytest.approx(se, rel=1e-4)
