"""Agreement with R's lme4 on the same data.

Needs Rscript with lme4 (Debian: ``apt-get install r-base-core r-cran-lme4``; .ci/run
installs them). Outside CI the tests skip without them; under CI they fail.
"""

import shutil
import subprocess

import numpy as np
import pytest
from conftest import require_tool

from allianceflow.models import fit_model

pytestmark = pytest.mark.r

RSCRIPT = shutil.which("Rscript")


def _lme4_available() -> bool:
    if RSCRIPT is None:
        return False
    try:
        out = subprocess.run(
            [RSCRIPT, "-e", "suppressMessages(library(lme4)); cat('ok')"],
            capture_output=True,
            text=True,
            timeout=120,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and out.stdout.strip().endswith("ok")


@pytest.fixture(scope="module", autouse=True)
def _needs_lme4():
    require_tool(
        _lme4_available(),
        "Rscript with the lme4 package",
        "apt-get install r-base-core r-cran-lme4 (as .ci/run does).",
    )


R_SCRIPT = r"""
suppressMessages(library(lme4))
args <- commandArgs(trailingOnly = TRUE)
d <- read.csv(args[1], stringsAsFactors = TRUE)
d$patient <- factor(d$patient); d$therapist <- factor(d$therapist); d$rater <- factor(d$rater)
fs <- readLines(args[2]); reml <- as.logical(readLines(args[3]))
for (k in seq_along(fs)) {
  m <- lmer(as.formula(fs[k]), data = d, REML = reml[k],
            control = lmerControl(optCtrl = list(ftol_abs = 1e-14, ftol_rel = 1e-15,
                                                  xtol_abs = 1e-12,
                                                  xtol_rel = 1e-12, maxeval = 1e5)))
  cat("MODEL", k, "\n")
  cat("LOGLIK", sprintf("%.10f", as.numeric(logLik(m))), "\n")
  cat("FIXEF", sprintf("%.12g", fixef(m)), "\n")
  cat("SE", sprintf("%.12g", sqrt(diag(as.matrix(vcov(m))))), "\n")
  vc <- as.data.frame(VarCorr(m))
  cat("VAR", sprintf("%.12g", vc$vcov[is.na(vc$var2)]), "\n")
  cat("COV", sprintf("%.12g", vc$vcov[!is.na(vc$var2)]), "\n")
}
"""


CASES = [
    # (our formula, lme4 formula, REML)
    ("outcome ~ alliance_within_lag + alliance_between + session + (1 | therapist) + (1 | pid)",)
    * 2
    + (True,),
    ("outcome ~ alliance_within_lag + alliance_between + session + (1 + session | pid)",) * 2
    + (True,),
    (
        "outcome ~ alliance_within_lag + alliance_between + session + (1 | therapist) + (1 +"
        " session || pid)",
    )
    * 2
    + (True,),
    (
        "outcome ~ alliance_within_lag + alliance_between + session + (1 + session | therapist) +"
        " (1 | pid)",
    )
    * 2
    + (True,),
    # the presets' default: correlated patient slopes under a therapist level (fast engine only)
    (
        "outcome ~ alliance_within_lag + alliance_between + session + (1 | therapist) + (1 +"
        " session | pid)",
    )
    * 2
    + (True,),
    # nested with patient ids reused across therapists: lme4 expands to therapist:patient
    ("outcome ~ alliance_within_lag * session + (1 | therapist/patient)",) * 2 + (True,),
    # crossed: raters cross patients
    ("outcome ~ alliance_within_lag + session + (1 | pid) + (1 | rater)",) * 2 + (True,),
    # maximum likelihood
    ("outcome ~ alliance_within_lag + alliance_between + session + (1 | therapist) + (1 | pid)",)
    * 2
    + (False,),
]


@pytest.fixture(scope="module")
def lme4_fits(tmp_path_factory, three_level_data):
    tmp = tmp_path_factory.mktemp("lme4")
    d = three_level_data
    d.to_csv(tmp / "d.csv", index=False)
    (tmp / "fit.R").write_text(R_SCRIPT)
    (tmp / "f.txt").write_text("\n".join(c[1] for c in CASES) + "\n")
    (tmp / "reml.txt").write_text("\n".join("TRUE" if c[2] else "FALSE" for c in CASES) + "\n")
    out = subprocess.run(
        [
            RSCRIPT,
            str(tmp / "fit.R"),
            str(tmp / "d.csv"),
            str(tmp / "f.txt"),
            str(tmp / "reml.txt"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr
    fits = []
    for block in out.stdout.split("MODEL")[1:]:
        lines = {ln.split()[0]: ln.split()[1:] for ln in block.strip().splitlines()[1:]}
        fits.append(
            {
                "loglik": float(lines["LOGLIK"][0]),
                "fixef": np.array(lines["FIXEF"], dtype=float),
                "se": np.array(lines["SE"], dtype=float),
                "var": np.sort(np.array(lines["VAR"], dtype=float)),
                "cov": np.sort(np.array(lines.get("COV", []), dtype=float)),
            }
        )
    return d, fits


@pytest.mark.parametrize("k", range(len(CASES)))
def test_agrees_with_lme4(lme4_fits, k):
    d, fits = lme4_fits
    ours_f, _, reml = CASES[k]
    ref = fits[k]
    r = fit_model(d, ours_f, reml=reml).to_dict()
    assert r["convergence"]["converged"]
    ll = r["loglik"]
    est = np.array([f["estimate"] for f in r["fixed"]])
    se = np.array([f["se"] for f in r["fixed"]])
    var = np.sort(np.array([x["variance"] for x in r["random"]] + [r["residual_variance"]]))
    print(
        f"\n{ours_f} (REML={reml}): logLik diff {ll - ref['loglik']:+.2e}, "
        f"max |fixef diff|/SE {np.max(np.abs(est - ref['fixef']) / ref['se']):.1e}, "
        f"max rel SE diff {np.max(np.abs(se - ref['se']) / ref['se']):.1e}, "
        f"max |var diff| {np.max(np.abs(var - ref['var'])):.1e}"
    )
    # the same optimum: log-likelihoods agree and ours is never worse than lme4's
    assert abs(ll - ref["loglik"]) < 1e-6
    assert ll >= ref["loglik"] - 1e-6
    # estimates agree to a small fraction of their standard errors (random-slope likelihoods
    # are flat in some directions, so both optimisers stop within ~1e-5 SE of each other here)
    assert np.max(np.abs(est - ref["fixef"]) / ref["se"]) < 2e-4
    assert np.max(np.abs(se - ref["se"]) / ref["se"]) < 2e-4
    assert np.allclose(var, ref["var"], rtol=1e-3, atol=1e-4)
    cov = np.sort(np.array([c["covariance"] for c in r.get("covariances", [])]))
    assert cov.shape == ref["cov"].shape and np.allclose(cov, ref["cov"], rtol=1e-3, atol=1e-4)
