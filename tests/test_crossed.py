"""Crossed and partially crossed random effects on the sparse engine, checked against lme4.

The data are simulated here with numpy and fixed seeds: (a) patients fully crossed with
raters, (b) patients nested in therapists except for a fifth who change therapist half-way,
(c) a correlated random slope on patient crossed with raters. Each is fitted by REML and ML
with ``fit_model`` and with ``lme4::lmer`` (tight optimiser tolerances) in one Rscript run.
Needs Rscript with lme4 (Debian: ``apt-get install r-base-core r-cran-lme4``); outside CI the
lme4 comparisons skip without it, under CI they fail.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import require_tool
from rscript import has_r_package, parse_lines, run_r

from allianceflow.models import fit_model
from allianceflow.models import sparse as sparse_engine
from allianceflow.models.sparse import CrossedProblem, fit_crossed


def crossed_data(seed: int = 11, n_patients: int = 50, n_raters: int = 6) -> pd.DataFrame:
    """(a) Every patient rated by every rater at two sessions (patient x rater, fully crossed)."""
    rng = np.random.default_rng(seed)
    p = np.repeat(np.arange(n_patients), n_raters * 2)
    r = np.tile(np.repeat(np.arange(n_raters), 2), n_patients)
    session = np.tile([1, 2], n_patients * n_raters)
    x = rng.normal(0, 1, len(p))
    y = (
        10
        + 0.4 * session
        + 0.8 * x
        + rng.normal(0, 2.0, n_patients)[p]
        + rng.normal(0, 1.0, n_raters)[r]
        + rng.normal(0, 1.5, len(p))
    )
    return pd.DataFrame(
        {
            "patient": [f"P{i:03d}" for i in p],
            "rater": [f"R{j}" for j in r],
            "session": session,
            "x": x,
            "y": y,
        }
    )


def changing_therapists_data(seed: int = 12, n_patients: int = 120, n_therapists: int = 12):
    """(b) Patients nested in therapists, except that every fifth changes therapist half-way."""
    rng = np.random.default_rng(seed)
    rows = []
    u = rng.normal(0, 2.0, n_patients)
    v = rng.normal(0, 1.2, n_therapists)
    for i in range(n_patients):
        n = int(rng.integers(4, 11))
        t0 = i % n_therapists
        t1 = (t0 + 1 + int(rng.integers(0, n_therapists - 1))) % n_therapists
        for s in range(1, n + 1):
            t = t1 if (i % 5 == 0 and s > n // 2) else t0
            rows.append((f"P{i:03d}", f"T{t:02d}", s, u[i] + v[t] + 0.3 * s))
    d = pd.DataFrame(rows, columns=["patient", "therapist", "session", "mu"])
    d["y"] = 20 + d["mu"] + rng.normal(0, 1.8, len(d))
    return d.drop(columns="mu")


def slope_data(seed: int = 13, n_patients: int = 80, n_raters: int = 8) -> pd.DataFrame:
    """(c) A correlated random intercept and session slope per patient; raters crossed."""
    rng = np.random.default_rng(seed)
    u0, u1 = rng.multivariate_normal([0, 0], [[4.0, -0.3], [-0.3, 0.16]], n_patients).T
    w = rng.normal(0, 0.9, n_raters)
    rows = []
    for i in range(n_patients):
        for s in range(1, int(rng.integers(5, 11)) + 1):
            j = int(rng.integers(0, n_raters))
            rows.append((f"P{i:03d}", f"R{j}", s, 15 + u0[i] + (0.5 + u1[i]) * s + w[j]))
    d = pd.DataFrame(rows, columns=["patient", "rater", "session", "mu"])
    d["y"] = d["mu"] + rng.normal(0, 1.2, len(d))
    return d.drop(columns="mu")


CASES = {
    "crossed": (crossed_data, "y ~ session + x + (1 | patient) + (1 | rater)"),
    "changing_therapists": (
        changing_therapists_data,
        "y ~ session + (1 | patient) + (1 | therapist)",
    ),
    "patient_slope": (slope_data, "y ~ session + (1 + session | patient) + (1 | rater)"),
}

R_SCRIPT = r"""
suppressMessages(library(lme4))
args <- commandArgs(trailingOnly = TRUE)
ctrl <- lmerControl(optCtrl = list(ftol_abs = 1e-14, ftol_rel = 1e-15, xtol_abs = 1e-12,
                                   xtol_rel = 1e-12, maxeval = 1e5))
for (case in readLines(file.path(args[1], "cases.txt"))) {
  d <- read.csv(file.path(args[1], paste0(case, ".csv")), stringsAsFactors = TRUE)
  f <- readLines(file.path(args[1], paste0(case, ".txt")))
  for (reml in c(TRUE, FALSE)) {
    m <- lmer(as.formula(f), data = d, REML = reml, control = ctrl)
    tag <- paste0(case, "_", if (reml) "REML" else "ML")
    cat(paste0(tag, "_LOGLIK"), sprintf("%.12f", as.numeric(logLik(m))), "\n")
    cat(paste0(tag, "_FIXEF"), sprintf("%.12g", fixef(m)), "\n")
    cat(paste0(tag, "_SE"), sprintf("%.12g", sqrt(diag(as.matrix(vcov(m))))), "\n")
    if (reml && requireNamespace("lmerTest", quietly = TRUE)) {
      st <- summary(lmerTest::as_lmerModLmerTest(m))$coefficients
      cat(paste0(tag, "_SATT"), sprintf("%.10g", st[, "df"]), "\n")
    }
    vc <- as.data.frame(VarCorr(m))
    vc$var1[is.na(vc$var1)] <- "-"; vc$var2[is.na(vc$var2)] <- "-"
    for (k in seq_len(nrow(vc))) {
      cat(paste0(tag, "_VC_", vc$grp[k], "_", vc$var1[k], "_", vc$var2[k]),
          sprintf("%.12g", vc$vcov[k]), "\n")
    }
  }
}
"""


def _lme4_available() -> bool:
    return has_r_package("lme4")


@pytest.fixture(scope="module")
def lme4_reference(tmp_path_factory):
    """lme4's REML and ML fits of every case, from one Rscript run."""
    require_tool(
        _lme4_available(),
        "Rscript with the lme4 package",
        "apt-get install r-base-core r-cran-lme4 (as .ci/run does).",
    )
    tmp = tmp_path_factory.mktemp("lme4")
    for name, (make, formula) in CASES.items():
        make().to_csv(tmp / f"{name}.csv", index=False)
        (tmp / f"{name}.txt").write_text(formula + "\n")
    (tmp / "cases.txt").write_text("\n".join(CASES) + "\n")
    return parse_lines(run_r(R_SCRIPT, tmp, tmp))


def _our_components(record: dict) -> dict[str, float]:
    """Variances and covariances keyed as the R script prints them."""
    out = {}
    for row in record["random"]:
        out[f"{row['group']}_{row['term']}_-"] = row["variance"]
    for row in record["covariances"]:
        out[f"{row['group']}_{row['term1']}_{row['term2']}"] = row["covariance"]
    out["Residual_-_-"] = record["residual_variance"]
    return out


@pytest.mark.r
@pytest.mark.parametrize("reml", [True, False], ids=["REML", "ML"])
@pytest.mark.parametrize("case", list(CASES))
def test_agrees_with_lme4(lme4_reference, case, reml):
    make, formula = CASES[case]
    ref = lme4_reference
    tag = f"{case}_{'REML' if reml else 'ML'}"
    record = fit_model(make(), formula, reml=reml).to_dict()
    assert record["engine"] == "allianceflow.sparse"
    assert record["convergence"]["converged"]
    assert record["loglik"] == pytest.approx(float(ref[f"{tag}_LOGLIK"][0]), rel=1e-6)
    est = np.array([f["estimate"] for f in record["fixed"]])
    se = np.array([f["se"] for f in record["fixed"]])
    np.testing.assert_allclose(est, np.array(ref[f"{tag}_FIXEF"], dtype=float), atol=1e-4)
    np.testing.assert_allclose(se, np.array(ref[f"{tag}_SE"], dtype=float), rtol=1e-3)
    theirs = {k[len(tag) + 4 :]: float(v[0]) for k, v in ref.items() if k.startswith(f"{tag}_VC_")}
    ours = _our_components(record)
    assert set(ours) == set(theirs)
    for key, value in theirs.items():
        assert ours[key] == pytest.approx(value, rel=1e-3), key


@pytest.mark.r
@pytest.mark.parametrize("case", list(CASES))
def test_satterthwaite_df_agree_with_lmertest(lme4_reference, case):
    """``ddf="satterthwaite"`` on a sparse-engine fit: lmerTest's df (REML)."""
    require_tool(
        has_r_package("lmerTest"),
        "Rscript with the lmerTest package",
        "apt-get install r-cran-lmertest (as .ci/run does).",
    )
    make, formula = CASES[case]
    record = fit_model(make(), formula, ddf="satterthwaite").to_dict()
    assert record["engine"] == "allianceflow.sparse" and record["ddf"] == "satterthwaite"
    ours = np.array([f["df"] for f in record["fixed"]])
    theirs = np.array(lme4_reference[f"{case}_REML_SATT"], dtype=float)
    np.testing.assert_allclose(ours, theirs, rtol=1e-3)


def test_a_nested_design_keeps_the_nested_engine():
    """Patients who never change therapist: the block engine fits, not the sparse one."""
    d = changing_therapists_data()
    first = d.groupby("patient")["therapist"].transform("first")
    nested = d.assign(therapist=first)
    record = fit_model(nested, CASES["changing_therapists"][1]).to_dict()
    assert record["engine"] == "allianceflow.engine"
    crossed = fit_model(d, CASES["changing_therapists"][1]).to_dict()
    assert crossed["engine"] == "allianceflow.sparse"
    assert crossed["n_groups"] == {"patient": 120, "therapist": 12}


def test_sparse_engine_matches_the_nested_engine_on_nested_data(three_level_data):
    """On nested data both formulations maximise the same likelihood."""
    from allianceflow.models.engine import fit_lmm

    formula = (
        "outcome ~ alliance_within_lag + alliance_between + session + (1 | therapist)"
        " + (1 + session | pid)"
    )
    ours, block = fit_crossed(three_level_data, formula), fit_lmm(three_level_data, formula)
    assert ours.loglik == pytest.approx(block.loglik, rel=1e-9)
    np.testing.assert_allclose(ours.fe_params, block.fe_params, atol=1e-5)
    np.testing.assert_allclose(ours.bse, block.bse, rtol=1e-4)
    for group in ("therapist", "pid"):
        a = ours.ranef[group].set_index(group).sort_index()
        b = block.ranef[group].set_index(group).sort_index()[a.columns]
        np.testing.assert_allclose(a.to_numpy(), b.to_numpy(), atol=1e-4)


def _dense_deviance(d: pd.DataFrame, formula: str, theta: np.ndarray, reml: bool) -> float:
    """The profiled deviance of Bates et al. (2015, eqs. 34, 41) with dense matrices."""
    import patsy

    from allianceflow.models.pls import check_spec, factor_codes, levels_from_spec

    spec = check_spec(formula)
    X = patsy.dmatrix(spec.fixed, d, return_type="matrix")
    y = d[spec.response].to_numpy(float)
    blocks_z, blocks_l = [], []
    pos = 0
    for lev in levels_from_spec(spec):
        codes, _ = factor_codes(d, lev.factor)
        m = codes.max() + 1
        rows, cols = lev.theta_index
        lam = np.zeros((lev.q, lev.q))
        lam[rows, cols] = theta[pos : pos + len(rows)]
        pos += len(rows)
        for j, eff in enumerate(lev.effects):
            val = np.ones(len(d)) if eff == "(Intercept)" else d[eff].to_numpy(float)
            z = np.zeros((len(d), m))
            z[np.arange(len(d)), codes] = val
            blocks_z.append((z, j, lev.q))
        blocks_l.append((lam, m))
    # Z with columns level by level, unit-major within a level (lme4's order)
    Z_parts, k = [], 0
    for lam, m in blocks_l:
        q = lam.shape[0]
        zs = [blocks_z[k + j][0] for j in range(q)]
        k += q
        Z_parts.append(np.stack(zs, axis=2).reshape(len(d), m * q))
    Z = np.hstack(Z_parts)
    Lam = np.zeros((Z.shape[1], Z.shape[1]))
    o = 0
    for lam, m in blocks_l:
        q = lam.shape[0]
        Lam[o : o + m * q, o : o + m * q] = np.kron(np.eye(m), lam)
        o += m * q
    V = Z @ Lam @ Lam.T @ Z.T + np.eye(len(d))
    Vi = np.linalg.inv(V)
    XtVX = X.T @ Vi @ X
    beta = np.linalg.solve(XtVX, X.T @ Vi @ y)
    r = y - X @ beta
    r2 = r @ Vi @ r
    n, p = X.shape
    logdet = np.linalg.slogdet(V)[1]
    if reml:
        nu = n - p
        return logdet + np.linalg.slogdet(XtVX)[1] + nu * (1 + np.log(2 * np.pi * r2 / nu))
    return logdet + n * (1 + np.log(2 * np.pi * r2 / n))


@pytest.mark.parametrize("reml", [True, False])
@pytest.mark.parametrize("case", list(CASES))
def test_deviance_equals_the_dense_formula(case, reml):
    """log|Z Λ Λ'Z' + I| = log|A_θ| (Bates et al. 2015, eq. 18): the sparse pieces agree."""
    make, formula = CASES[case]
    d = make().iloc[:240].reset_index(drop=True)
    prep = sparse_engine._prepare(d, sparse_engine.check_spec(formula))
    _, levels, codes, X, _, y, z_cols, _ = prep
    prob = CrossedProblem(levels, codes, z_cols, X, y, reml)
    theta = np.array([0.8, 0.6, -0.05, 0.07][: prob.n_theta])
    if case == "patient_slope":
        theta = np.array([0.9, -0.02, 0.12, 0.5])
    assert prob.deviance(theta) == pytest.approx(
        _dense_deviance(d, formula, theta, reml), rel=1e-10
    )


def test_the_fast_engine_names_why_it_refuses(monkeypatch):
    d = crossed_data()
    monkeypatch.setattr(sparse_engine, "MAX_SCHUR", 5)
    formula = CASES["crossed"][1]
    with pytest.raises(
        ValueError,
        match=r"^The fast engine cannot fit 'y ~ session \+ x \+ \(1 \| patient\) \+ \(1 \| "
        r"rater\)': the grouping factors other than the largest have 6 random effects "
        r"together, more than the sparse engine's limit of 5 ",
    ):
        fit_model(d, formula, engine="fast")


# --------------------------------------------------------------------------- statsmodels cost


def test_statsmodels_cost_estimate_is_the_documented_formula():
    """One all-data group: n = 600 rows, q = 50 patients + 6 raters = 56 random effects."""
    from allianceflow.models.mixedlm import prepare
    from allianceflow.models.pls import check_spec
    from allianceflow.models.statsmodels_backend import estimate_cost

    d, plan = prepare(crossed_data(), check_spec(CASES["crossed"][1]))
    cost = estimate_cost(d, plan)
    assert cost["rows"] == 600 and cost["groups"] == 1 and cost["max_random_effects"] == 56
    assert cost["seconds"] == pytest.approx(7.6e-7 * 600 * 56**2, rel=1e-12)
    assert cost["bytes"] == pytest.approx(40 * 600 * 56, rel=1e-12)


def test_statsmodels_warns_before_a_large_fit(monkeypatch):
    import allianceflow.models.statsmodels_backend as smb

    monkeypatch.setattr(smb, "WARN_SECONDS", 1.0)
    message = (
        r"statsmodels' MixedLM is about to fit 'y ~ session \+ x \+ \(1 \| patient\) \+ \(1 \| "
        r"rater\)' on 600 rows with up to 56 random effects in one group of 600 rows; estimated "
        r"time 1 s and memory 0\.0 GiB"
    )
    with pytest.warns(smb.LargeModelWarning, match=message):
        record = fit_model(crossed_data(), CASES["crossed"][1], engine="statsmodels").to_dict()
    assert record["engine"] == "statsmodels.MixedLM"
    assert record["convergence"]["warnings"][0].startswith("statsmodels' MixedLM is about to fit")


def test_weighted_cross_products_equal_rows_scaled_by_root_weights():
    """``update_weights`` (for a PIRLS loop): weights w act as rows scaled by sqrt(w)."""
    make, formula = CASES["patient_slope"]
    d = make()
    _, levels, codes, X, _, y, z_cols, _ = sparse_engine._prepare(
        d, sparse_engine.check_spec(formula)
    )
    w = np.random.default_rng(5).uniform(0.2, 3.0, len(y))
    root = np.sqrt(w)
    weighted = CrossedProblem(levels, codes, z_cols, X, y, True, weights=w)
    scaled = CrossedProblem(
        levels,
        codes,
        [[c * root for c in cols] for cols in z_cols],
        X * root[:, None],
        y * root,
        True,
    )
    theta = np.array([0.9, -0.02, 0.12, 0.5])
    assert weighted.deviance(theta) == pytest.approx(scaled.deviance(theta), rel=1e-12)
    # and refreshing the weights in place gives the unweighted problem back
    weighted.update_weights(y)
    plain = CrossedProblem(levels, codes, z_cols, X, y, True)
    assert weighted.deviance(theta) == pytest.approx(plain.deviance(theta), rel=1e-12)


def test_the_sparse_product_fallback_gives_the_same_deviance(monkeypatch):
    """Above MAX_PAIR_PRODUCTS, C'DC is a sparse matrix product, not the pair-product matvec."""
    make, formula = CASES["patient_slope"]
    prep = sparse_engine._prepare(make(), sparse_engine.check_spec(formula))
    _, levels, codes, X, _, y, z_cols, _ = prep
    theta = np.array([0.9, -0.02, 0.12, 0.5])
    fast = CrossedProblem(levels, codes, z_cols, X, y, True)
    monkeypatch.setattr(sparse_engine, "MAX_PAIR_PRODUCTS", 0)
    fallback = CrossedProblem(levels, codes, z_cols, X, y, True)
    assert fast._pp is not None and fallback._pp is None
    assert fallback.deviance(theta) == pytest.approx(fast.deviance(theta), rel=1e-12)


@pytest.mark.parametrize("q", [1, 2, 3])
def test_unit_blocks_match_a_dense_computation(q):
    r"""log|A_i| and D_i = Λ A_i^{-1} Λ' of the first factor's blocks, against numpy."""
    rng = np.random.default_rng(q)
    m = 7
    Z = rng.normal(size=(m, 5, q))
    G = np.einsum("mra,mrb->mab", Z, Z)
    lam = np.tril(rng.normal(size=(q, q)))
    logdet, D = sparse_engine._unit_blocks(
        {(a, b): G[:, a, b].copy() for a in range(q) for b in range(q)}, lam
    )
    A = lam.T @ G @ lam + np.eye(q)
    assert logdet == pytest.approx(float(np.linalg.slogdet(A)[1].sum()), rel=1e-12)
    np.testing.assert_allclose(D, lam @ np.linalg.inv(A) @ lam.T, rtol=1e-10, atol=1e-14)
