"""Satterthwaite and Kenward–Roger df against lmerTest and pbkrtest.

Reference numbers: lmerTest 3.1-3 (``summary(m, ddf = "Satterthwaite" | "Kenward-Roger")``,
which calls pbkrtest 0.5.2 for Kenward–Roger) with lme4 on ``simulate_three_level()``
(tests/conftest.py, seed 7), each model fitted by REML with tight optimiser tolerances. The
same comparison runs live when R with lmerTest and pbkrtest is installed.
"""

import numpy as np
import pandas as pd
import pytest

from allianceflow.models import fit_model
from allianceflow.models.ddf import (
    compare_df,
    f_test,
    kenward_roger,
    satterthwaite_df,
    variance_structure,
)

FORMULAS = [
    # correlated patient slopes under a therapist level
    "outcome ~ alliance_within_lag + alliance_between + session + (1 | therapist) "
    "+ (1 + session | pid)",
    "outcome ~ alliance_within_lag + alliance_between + session + (1 | therapist) + (1 | pid)",
    # nested with patient ids reused across therapists
    "outcome ~ alliance_within_lag * session + (1 | therapist/patient)",
    # crossed: raters cross patients (one dense block)
    "outcome ~ alliance_within_lag + session + (1 | pid) + (1 | rater)",
    # a boundary fit: the uncorrelated slope variance is 0
    "outcome ~ alliance_within_lag + alliance_between + session + (1 | therapist) "
    "+ (1 + session || pid)",
]

# lmerTest / pbkrtest on simulate_three_level(): per model, per fixed effect
REFERENCE = [
    {
        "sat_df": [30.6838826699, 526.937021903, 113.431728899, 66.9852478824],
        "kr_se": [0.588309319167, 0.556373323541, 0.83883861221, 0.0777007859644],
        "kr_df": [32.1257696377, 529.828964724, 117.871935376, 65.6693429334],
    },
    {
        "sat_df": [25.8211984079, 526.586803673, 112.93447739, 561.314888484],
        "kr_se": [0.53774806934, 0.554065806539, 0.842466506014, 0.0752939139512],
        "kr_df": [26.079529751, 530.906121111, 117.278825518, 564.495924205],
    },
    {
        "sat_df": [32.0268471569, 595.463107939, 607.392318738, 595.852170656],
        "kr_se": [0.623540168192, 1.65492070061, 0.0904250333247, 0.310433289164],
        "kr_df": [32.0040348911, 595.808956032, 607.586696851, 596.202103296],
    },
    {
        "sat_df": [27.7651717528, 520.332710478, 548.649250075],
        "kr_se": [0.668634526017, 0.538559020702, 0.0733810613561],
        "kr_df": [27.7953217384, 525.465099581, 552.82236605],
    },
    {
        "sat_df": [25.8211999843, 526.586796805, 112.934502356, 561.314885328],
        "kr_se": [0.538717530866, 0.55587972183, 0.846277622406, 0.0758936317881],
        "kr_df": [26.0077575105, 529.987922637, 117.184448216, 88.8164289101],
    },
]


@pytest.fixture(scope="module")
def structures(three_level_data):
    d = three_level_data
    return [variance_structure(d, f, fit_model(d, f, reml=True)) for f in FORMULAS]


@pytest.mark.parametrize("k", range(len(FORMULAS)))
def test_satterthwaite_matches_lmertest(structures, k):
    sat = satterthwaite_df(structure=structures[k])
    np.testing.assert_allclose(sat["df"], REFERENCE[k]["sat_df"], rtol=1e-4)


@pytest.mark.parametrize("k", range(len(FORMULAS)))
def test_kenward_roger_matches_pbkrtest(structures, k):
    kr = kenward_roger(structure=structures[k])
    np.testing.assert_allclose(kr["df"], REFERENCE[k]["kr_df"], rtol=1e-4)
    np.testing.assert_allclose(kr["se"], REFERENCE[k]["kr_se"], rtol=1e-5)


# lmerTest::contest(m, L, ddf = "Satterthwaite" | "Kenward-Roger") on the first model:
# F value, NumDF, DenDF, Pr(>F)
HYPOTHESES = {
    "both alliance terms": [[0, 1, 0, 0], [0, 0, 1, 0]],
    "three rows": [[0, 1, -1, 0], [0, 0, 1, 0], [1, 0, 0, 10]],
}
CONTEST = {
    ("both alliance terms", "satterthwaite"): (18.2664315293, 2, 185.981960369, 5.71619111092e-08),
    ("both alliance terms", "kenward_roger"): (17.6386486786, 2, 254.153538724, 6.70948874448e-08),
    ("three rows", "satterthwaite"): (586.364944214, 3, 56.9150788698, 9.58297863209e-43),
    ("three rows", "kenward_roger"): (562.182693967, 3, 90.4953172558, 2.3134016654e-58),
}


@pytest.mark.parametrize("name, method", list(CONTEST))
def test_f_test_matches_lmertest_contest(structures, name, method):
    res = f_test(structure=structures[0], hypothesis=HYPOTHESES[name], method=method)
    f, ndf, ddf, p = CONTEST[(name, method)]
    assert res["ndf"] == ndf
    assert res["f"] == pytest.approx(f, rel=1e-5)
    assert res["ddf"] == pytest.approx(ddf, rel=1e-4)
    assert res["p"] == pytest.approx(p, rel=1e-3)


def test_one_row_f_test_is_the_squared_t_test(structures):
    st = structures[0]
    row = [0, 0, 0, 1]
    for method, one in (("satterthwaite", satterthwaite_df), ("kenward_roger", kenward_roger)):
        res = f_test(structure=st, hypothesis=[row], method=method)
        t = one(structure=st, contrasts={"session": row})
        assert res["ddf"] == pytest.approx(t["df"].iloc[0], rel=1e-10)
        if method == "satterthwaite":
            assert res["f"] == pytest.approx(t["statistic"].iloc[0] ** 2, rel=1e-10)


def test_f_test_refuses_bad_arguments(structures):
    with pytest.raises(ValueError, match="`method` must be 'satterthwaite' or 'kenward_roger'"):
        f_test(structure=structures[0], hypothesis=[[0, 1, 0, 0]], method="kr")
    with pytest.raises(ValueError, match=r"`hypothesis` must have 4 columns"):
        f_test(structure=structures[0], hypothesis=[[0, 1]])


def test_blocks_follow_the_outermost_factor(structures):
    assert [s.n_blocks for s in structures] == [12, 12, 12, 1, 12]
    assert structures[4].at_boundary.tolist() == [False, False, True, False]
    assert structures[0].parameters == [
        "var(therapist, (Intercept))",
        "var(pid, (Intercept))",
        "var(pid, session)",
        "cov(pid, (Intercept), session)",
        "residual",
    ]


def test_the_structure_reproduces_the_fit(three_level_data, structures):
    res = fit_model(three_level_data, FORMULAS[0], reml=True)
    st = structures[0]
    fixed = res.fixed
    np.testing.assert_allclose(st.beta, fixed["estimate"], rtol=1e-7)
    np.testing.assert_allclose(np.sqrt(np.diag(st.phi)), fixed["se"], rtol=1e-6)
    # the REML deviance is at its minimum: gradient ~ 0 relative to its curvature
    step = np.linalg.solve(st.hessian, st.gradient)
    assert np.all(np.abs(step) < 1e-4 * np.maximum(np.abs(st.psi), 1e-2))


def _balanced_one_way(a=8, n=5, seed=3):
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(a), n)
    y = 10 + rng.normal(0, 2, a)[g] + rng.normal(0, 1, a * n)
    return pd.DataFrame({"y": y, "g": [f"g{i}" for i in g]})


def test_balanced_one_way_intercept_has_groups_minus_one_df():
    # Balanced random-intercept model: the mean's F test is the ANOVA's between-group test,
    # exactly on a - 1 df, and Satterthwaite and Kenward-Roger both recover that (KR also
    # leaves the SE unchanged: Phi_A = Phi).
    d = _balanced_one_way()
    res = fit_model(d, "y ~ 1 + (1 | g)", reml=True)
    sat = satterthwaite_df(d, "y ~ 1 + (1 | g)", res)
    kr = kenward_roger(d, "y ~ 1 + (1 | g)", res)
    assert sat["df"].iloc[0] == pytest.approx(7.0, rel=1e-6)
    assert kr["df"].iloc[0] == pytest.approx(7.0, rel=1e-6)
    assert kr["se"].iloc[0] == pytest.approx(sat["se"].iloc[0], rel=1e-6)
    # the SE is that of the group means: sqrt(MS_between / (a n))
    means = d.groupby("g")["y"].mean()
    assert sat["se"].iloc[0] == pytest.approx(np.sqrt(5 * means.var() / 40), rel=1e-6)


def test_contrasts_match_the_single_effects(structures):
    st = structures[0]
    unit = {"session": [0, 0, 0, 1]}
    sat = satterthwaite_df(structure=st, contrasts=unit)
    assert sat["df"].iloc[0] == pytest.approx(satterthwaite_df(structure=st)["df"].iloc[3])
    kr = kenward_roger(structure=st, contrasts={"w-b": [0, 1, -1, 0]})
    assert kr["estimate"].iloc[0] == pytest.approx(st.beta[1] - st.beta[2])
    assert 0 < kr["df"].iloc[0] < 600


def test_compare_df_sets_the_three_side_by_side(three_level_data):
    table = compare_df(three_level_data, FORMULAS[1])
    assert list(table.columns) == [
        "term",
        "estimate",
        "se",
        "df_containment",
        "df_satterthwaite",
        "se_kenward_roger",
        "df_kenward_roger",
    ]
    np.testing.assert_allclose(table["df_satterthwaite"], REFERENCE[1]["sat_df"], rtol=1e-4)
    # the containment df are fit_model's own
    fixed = fit_model(three_level_data, FORMULAS[1], reml=True).to_dict()["fixed"]
    assert table["df_containment"].tolist() == [row["df"] for row in fixed]
    # where precision rests on the 12 therapists, Satterthwaite gives far fewer df
    assert table["df_satterthwaite"].iloc[0] < 30 < table["df_containment"].iloc[0]


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"result": {"fixed": []}}, TypeError, "`result` must be the dict returned by"),
        (
            {"result": {"random": [], "reml": False}},
            ValueError,
            r"`result` is a maximum-likelihood fit \(reml=False\)",
        ),
        (
            {"result": {"random": [], "reml": True, "residual_variance": 1.0}},
            KeyError,
            r"`result` has no variance for \('g', '\(Intercept\)'\)",
        ),
        ({"formula": "y ~ 1"}, ValueError, "`formula` has no random effects"),
    ],
)
def test_bad_inputs_are_refused(kwargs, error, message):
    args = {"data": _balanced_one_way(), "formula": "y ~ 1 + (1 | g)", **kwargs}
    with pytest.raises(error, match=message):
        variance_structure(args["data"], args["formula"], args.get("result"))


def test_bad_contrasts_are_refused(structures):
    with pytest.raises(ValueError, match=r"contrast 'x' must have 4 weights"):
        satterthwaite_df(structure=structures[0], contrasts={"x": [1, 0]})
    with pytest.raises(TypeError, match="`contrasts` must be a non-empty mapping"):
        kenward_roger(structure=structures[0], contrasts=[1, 0, 0, 0])
    with pytest.raises(TypeError, match="`structure` must be a VarianceStructure"):
        kenward_roger(structure={"phi": 1})


LMERTEST_SCRIPT = r"""
suppressMessages({library(lmerTest); library(pbkrtest)})
args <- commandArgs(trailingOnly = TRUE)
d <- read.csv(args[1]); fs <- readLines(args[2])
ctl <- lmerControl(optCtrl = list(ftol_abs = 1e-14, ftol_rel = 1e-15, xtol_abs = 1e-12,
                                  xtol_rel = 1e-12, maxeval = 1e5))
for (k in seq_along(fs)) {
  m <- lmer(as.formula(fs[k]), data = d, REML = TRUE, control = ctl)
  s <- summary(m, ddf = "Satterthwaite")$coefficients
  kr <- summary(m, ddf = "Kenward-Roger")$coefficients
  cat("MODEL", k, "\n")
  cat("SAT_DF", sprintf("%.12g", s[, "df"]), "\n")
  cat("KR_SE", sprintf("%.12g", kr[, "Std. Error"]), "\n")
  cat("KR_DF", sprintf("%.12g", kr[, "df"]), "\n")
  if (k == 1) for (dd in c("Satterthwaite", "Kenward-Roger")) {
    x <- contest(m, rbind(c(0, 1, -1, 0), c(0, 0, 1, 0), c(1, 0, 0, 10)), ddf = dd)
    cat(paste0("F_", dd), sprintf("%.12g", c(x[["F value"]], x$DenDF)), "\n")
  }
}
"""


@pytest.mark.r
@pytest.mark.slow
def test_df_match_lmertest_and_pbkrtest_computed_live(tmp_path, three_level_data, structures):
    from rscript import require_r, run_r

    require_r("lmerTest", "pbkrtest")
    three_level_data.to_csv(tmp_path / "d.csv", index=False)
    (tmp_path / "f.txt").write_text("\n".join(FORMULAS) + "\n")
    out = run_r(LMERTEST_SCRIPT, tmp_path, tmp_path / "d.csv", tmp_path / "f.txt")
    for k, block in enumerate(out.split("MODEL")[1:]):
        ref = {ln.split()[0]: np.array(ln.split()[1:], float) for ln in block.splitlines()[1:]}
        sat = satterthwaite_df(structure=structures[k])
        kr = kenward_roger(structure=structures[k])
        np.testing.assert_allclose(sat["df"], ref["SAT_DF"], rtol=1e-4)
        np.testing.assert_allclose(kr["df"], ref["KR_DF"], rtol=1e-4)
        np.testing.assert_allclose(kr["se"], ref["KR_SE"], rtol=1e-5)
        if k == 0:
            for method, tag in (
                ("satterthwaite", "F_Satterthwaite"),
                ("kenward_roger", "F_Kenward-Roger"),
            ):
                res = f_test(
                    structure=structures[0], hypothesis=HYPOTHESES["three rows"], method=method
                )
                assert res["f"] == pytest.approx(ref[tag][0], rel=1e-5)
                assert res["ddf"] == pytest.approx(ref[tag][1], rel=1e-4)


# A therapist level of a few hundred rows per therapist: the Woodbury computation
# (ddf_moments.reml_moments, the default) against dense V_j per therapist
# (ddf_moments.dense_reml_moments, the computation before it). The crossed model (one block of
# every row) runs on the smaller three-level data.
WOODBURY_CASES = [("large", f) for f in FORMULAS if "rater" not in f] + [
    ("large", "outcome ~ alliance_within_lag + session + (1 + session | therapist) + (1 | pid)"),
    ("small", next(f for f in FORMULAS if "rater" in f)),
]


@pytest.fixture(scope="module")
def large_therapist_data():
    from conftest import simulate_three_level

    return simulate_three_level(seed=11, n_therapists=6, n_patients=300, n_sessions=12)


@pytest.mark.parametrize("size, formula", WOODBURY_CASES)
def test_woodbury_moments_match_the_dense_computation(
    large_therapist_data, three_level_data, size, formula
):
    d = large_therapist_data if size == "large" else three_level_data
    if size == "large":
        assert d.groupby("therapist").size().between(250, 450).all()
    res = fit_model(d, formula, reml=True)
    fast = variance_structure(d, formula, res)
    dense = variance_structure(d, formula, res, _dense=True)
    assert fast.n_blocks == dense.n_blocks == (1 if size == "small" else 6)
    assert fast.parameters == dense.parameters
    for name in ("beta", "phi", "o", "q", "expected", "hessian"):
        ref = getattr(dense, name)
        np.testing.assert_allclose(
            getattr(fast, name), ref, rtol=1e-8, atol=1e-8 * np.max(np.abs(ref)), err_msg=name
        )
    # the gradient is ~0 at the optimum: compare it on the scale of the curvature
    scale = np.sqrt(np.abs(np.diag(dense.expected)))
    np.testing.assert_allclose(fast.gradient / scale, dense.gradient / scale, atol=1e-8)
    for fn in (kenward_roger, satterthwaite_df):
        new, old = fn(structure=fast), fn(structure=dense)
        for column in ("estimate", "se", "df", "statistic"):
            np.testing.assert_allclose(new[column], old[column], rtol=1e-8, err_msg=column)


CROSSED_FORMULA = "outcome ~ alliance_within_lag + session + (1 | pid) + (1 | rater)"


def _crossed_over_2000_rows():
    from conftest import simulate_three_level

    return simulate_three_level(seed=5, n_patients=340, n_sessions=12), CROSSED_FORMULA


def test_a_crossed_block_of_more_than_2000_rows_gets_kenward_roger_df():
    """Refused before (one block of every row, over the old 2,000-row limit): now computed.

    The crossed model's marginal covariance is one block of all 2,216 rows but only 346
    random effects (340 patients, 6 raters), which is what the Woodbury computation holds;
    its Kenward–Roger and Satterthwaite rows equal those of dense V (the computation the
    row limit protected).
    """
    from allianceflow.models.fit import DDF_MAX_MEMORY

    d, formula = _crossed_over_2000_rows()
    assert len(d) == 2216 and d["pid"].nunique() + d["rater"].nunique() == 346
    record = fit_model(d, formula, ddf="kenward-roger").to_dict()
    assert record["engine"] == "allianceflow.sparse" and record["ddf"] == "kenward-roger"
    structure = variance_structure(d, formula, record, max_memory=DDF_MAX_MEMORY)
    dense = variance_structure(d, formula, record, _dense=True)
    assert structure.n_blocks == dense.n_blocks == 1
    ours, ref = kenward_roger(structure=structure), kenward_roger(structure=dense)
    for column in ("se", "df"):
        np.testing.assert_allclose(ours[column], ref[column], rtol=1e-8, err_msg=column)
        rows = [row[column] for row in record["fixed"]]
        np.testing.assert_allclose(rows, ref[column], rtol=1e-8, err_msg=column)
    np.testing.assert_allclose(
        satterthwaite_df(structure=structure)["df"],
        satterthwaite_df(structure=dense)["df"],
        rtol=1e-8,
    )


PBKRTEST_CROSSED = r"""
suppressMessages({library(lmerTest); library(pbkrtest)})
args <- commandArgs(trailingOnly = TRUE)
d <- read.csv(args[1])
ctl <- lmerControl(optCtrl = list(ftol_abs = 1e-14, ftol_rel = 1e-15, xtol_abs = 1e-12,
                                  xtol_rel = 1e-12, maxeval = 1e5))
m <- lmer(as.formula(args[2]), data = d, REML = TRUE, control = ctl)
kr <- summary(m, ddf = "Kenward-Roger")$coefficients
cat("KR_SE", sprintf("%.12g", kr[, "Std. Error"]), "\n")
cat("KR_DF", sprintf("%.12g", kr[, "df"]), "\n")
"""


@pytest.mark.r
@pytest.mark.slow
def test_a_crossed_block_of_more_than_2000_rows_matches_pbkrtest(tmp_path):
    """The case the 2,000-row limit refused, against pbkrtest (through lmerTest's summary)."""
    from rscript import require_r, run_r

    require_r("lmerTest", "pbkrtest")
    d, formula = _crossed_over_2000_rows()
    d.to_csv(tmp_path / "d.csv", index=False)
    out = run_r(PBKRTEST_CROSSED, tmp_path, tmp_path / "d.csv", formula)
    ref = {ln.split()[0]: np.array(ln.split()[1:], float) for ln in out.splitlines() if ln}
    record = fit_model(d, formula, ddf="kenward-roger").to_dict()
    assert record["ddf"] == "kenward-roger"
    np.testing.assert_allclose([r["df"] for r in record["fixed"]], ref["KR_DF"], rtol=1e-4)
    np.testing.assert_allclose([r["se"] for r in record["fixed"]], ref["KR_SE"], rtol=1e-5)
