r"""Crossed random effects: the sparse engine against lme4 in one run (issue 20).

Patients are rated at every session by one of a pool of raters drawn at random, so patients
and raters are crossed (each patient meets several raters, each rater many patients). Three
sizes: 200 patients (about 1,900 rows), 2,000 patients (about 19,000 rows) and 7,500
patients (about 70,000 rows, the size of the 73,000-row crossed data set that lme4 fits in
under a minute and statsmodels could not), 60 / 150 / 300 raters. Two models, fitted by REML:

* ``crossed``: ``y ~ session + x + (1 | patient) + (1 | rater)``
* ``slope``:   ``y ~ session + x + (1 + session | patient) + (1 | rater)``

Our side runs ``allianceflow.models.fit_model`` (the public path, engine "auto", which picks
the sparse engine) in a fresh Python child; lme4 runs ``lmer`` (default control) for every
size and model in one R session, each fit timed in-process with ``system.time``. Both report
wall and CPU time of each fit, the estimates, and their peak resident memory (VmHWM).

The choice of sparse Cholesky is measured on the 70,000-row data at the REML optimum of the
``crossed`` model: one evaluation of the profiled deviance by this package's block
elimination (:class:`allianceflow.models.sparse.CrossedProblem`) against one numeric
factorisation of :math:`A_\\theta = \\Lambda^\\top Z^\\top Z\\Lambda + I` alone by scipy's
SuperLU (``splu``, minimum-degree ordering of :math:`A + A^\\top`, no pivoting) and, when
``--cholmod-python`` names an interpreter with scikit-sparse, by CHOLMOD (symbolic analysis
done once, ``cholesky_inplace`` per θ, as lme4 does).

Run:  python benchmarks/crossed.py [--reps 3] [--cholmod-python /path/to/python]
Output: benchmarks/results/crossed.txt (and printed).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

MODELS = {
    "crossed": "y ~ session + x + (1 | patient) + (1 | rater)",
    "slope": "y ~ session + x + (1 + session | patient) + (1 | rater)",
}
SIZES = ((200, 60), (2_000, 150), (7_500, 300))


def simulate(n_patients: int, n_raters: int, seed: int = 20) -> pd.DataFrame:
    """Patients with 4-14 sessions, each session rated by a random rater."""
    rng = np.random.default_rng(seed)
    n_sessions = rng.integers(4, 15, n_patients)
    patient = np.repeat(np.arange(n_patients), n_sessions)
    session = np.concatenate([np.arange(1, k + 1) for k in n_sessions]).astype(float)
    rater = rng.integers(0, n_raters, len(patient))
    u0 = rng.normal(0, 2.0, n_patients)
    u1 = rng.normal(0, 0.25, n_patients)
    w = rng.normal(0, 1.0, n_raters)
    x = rng.normal(0, 1, len(patient))
    y = (
        20
        + u0[patient]
        + (-0.4 + u1[patient]) * session
        + 0.5 * x
        + w[rater]
        + rng.normal(0, 2.5, len(patient))
    )
    return pd.DataFrame(
        {
            "patient": [f"P{i:05d}" for i in patient],
            "rater": [f"R{j:03d}" for j in rater],
            "session": session,
            "x": x,
            "y": y,
        }
    )


PY_CHILD = r"""
import json, sys, time, warnings
import numpy as np, pandas as pd
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024
from allianceflow.models import fit_model
path, formula, reps = sys.argv[1], sys.argv[2], int(sys.argv[3])
d = pd.read_csv(path)
before = hwm()
wall, cpu = [], []
for _ in range(reps):
    t0, c0 = time.perf_counter(), time.process_time()
    r = fit_model(d, formula).to_dict()
    wall.append(time.perf_counter() - t0); cpu.append(time.process_time() - c0)
comps = {f"{x['group']}|{x['term']}": x["variance"] for x in r["random"]}
comps.update({f"{x['group']}|{x['term1']}|{x['term2']}": x["covariance"] for x in r["covariances"]})
comps["Residual"] = r["residual_variance"]
print(json.dumps({"wall": wall, "cpu": cpu, "loglik": r["loglik"], "engine": r["engine"],
    "converged": r["convergence"]["converged"], "optimizer": r["convergence"]["optimizer"],
    "fixef": [x["estimate"] for x in r["fixed"]], "se": [x["se"] for x in r["fixed"]],
    "comps": comps, "peak_before": before, "peak_after": hwm()}))
"""

R_CHILD = r"""
suppressMessages(library(lme4))
hwm <- function() {
  s <- readLines("/proc/self/status"); l <- s[grepl("^VmHWM", s)]
  as.numeric(strsplit(trimws(sub("VmHWM:", "", l)), " +")[[1]][1]) / 1024
}
args <- commandArgs(trailingOnly = TRUE)
jobs <- read.csv(args[1], stringsAsFactors = FALSE)
reps <- as.integer(args[2])
for (k in seq_len(nrow(jobs))) {
  d <- read.csv(jobs$path[k], stringsAsFactors = TRUE)
  wall <- c(); cpu <- c()
  for (r in seq_len(reps)) {
    st <- system.time(m <- lmer(as.formula(jobs$formula[k]), data = d, REML = TRUE))
    wall <- c(wall, st[["elapsed"]]); cpu <- c(cpu, st[["user.self"]] + st[["sys.self"]])
  }
  vc <- as.data.frame(VarCorr(m))
  key <- ifelse(is.na(vc$var1), "Residual",
                ifelse(is.na(vc$var2), paste(vc$grp, vc$var1, sep = "|"),
                       paste(vc$grp, vc$var1, vc$var2, sep = "|")))
  conv <- m@optinfo$conv$lme4$messages
  cat("JOB", k, "\n")
  cat("WALL", sprintf("%.4f", wall), "\n")
  cat("CPU", sprintf("%.4f", cpu), "\n")
  cat("LOGLIK", sprintf("%.10f", as.numeric(logLik(m))), "\n")
  cat("FIXEF", sprintf("%.12g", fixef(m)), "\n")
  cat("SE", sprintf("%.12g", sqrt(diag(as.matrix(vcov(m))))), "\n")
  cat("COMPKEYS", key, "\n")
  cat("COMPS", sprintf("%.12g", vc$vcov), "\n")
  cat("WARN", if (is.null(conv)) "none" else gsub("[[:space:]]+", "_", conv), "\n")
  cat("PEAK", sprintf("%.1f", hwm()), "\n")
}
"""

CHOLMOD_CHILD = r"""
import sys, time, json
import numpy as np, scipy.sparse as sp
from sksparse.cholmod import analyze
A = sp.load_npz(sys.argv[1]).tocsc()
t0 = time.process_time(); f = analyze(A); t_an = time.process_time() - t0
times = []
for _ in range(int(sys.argv[2])):
    t0 = time.process_time(); f.cholesky_inplace(A); times.append(time.process_time() - t0)
import sksparse
print(json.dumps({"analyze": t_an, "factor": times, "logdet": float(f.logdet()),
                  "version": getattr(sksparse, "__version__", "?")}))
"""


def hwm() -> float:
    """Peak resident memory of this process in MB (VmHWM)."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024
    return float("nan")


def factorisation_comparison(d: pd.DataFrame, tmp: Path, cholmod_python: str | None, reps: int):
    """Per-θ cost: block elimination vs SuperLU vs CHOLMOD on the same A_θ."""
    import scipy.sparse as sp
    from scipy.sparse.linalg import splu

    from allianceflow.models import sparse as sparse_engine
    from allianceflow.models.pls import check_spec

    formula = MODELS["crossed"]
    fit = sparse_engine.fit_crossed(d, formula)
    spec = check_spec(formula)
    _, levels, codes, X, _, y, z_cols, _ = sparse_engine._prepare(d, spec)
    prob = sparse_engine.CrossedProblem(levels, codes, z_cols, X, y, True)
    theta = fit.theta
    ours = []
    with sparse_engine._blas_threads(1):  # as fit_crossed runs it
        for _ in range(reps):
            t0 = time.process_time()
            prob.deviance(theta)
            ours.append(time.process_time() - t0)
    # the full A_theta in lme4's layout (patients, then raters)
    Z = sp.hstack([_z1(prob), prob._z2]).tocsc()
    lam = np.concatenate(
        [np.full(prob.m[prob.first], theta[0])] + [np.full(prob.m[k], theta[k]) for k in prob.rest]
    )
    L = sp.diags(lam)
    A = (L @ (Z.T @ Z) @ L + sp.identity(Z.shape[1])).tocsc()
    logdet_ours = prob.factor(theta).logdet
    lu_times = []
    for _ in range(reps):
        t0 = time.process_time()
        lu = splu(
            A, permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0, options={"SymmetricMode": True}
        )
        lu_times.append(time.process_time() - t0)
    logdet_lu = float(np.log(np.abs(lu.U.diagonal())).sum())
    out = {
        "q": int(A.shape[0]),
        "nnz_A": int(A.nnz),
        "ours": ours,
        "superlu": lu_times,
        "superlu_fill": int(lu.L.nnz + lu.U.nnz),
        "logdet_ours": logdet_ours,
        "logdet_superlu": logdet_lu,
    }
    if cholmod_python:
        sp.save_npz(tmp / "A.npz", A)
        res = subprocess.run(
            [cholmod_python, "-c", CHOLMOD_CHILD, str(tmp / "A.npz"), str(reps)],
            capture_output=True,
            text=True,
            timeout=600,
            env={**os.environ, "OPENBLAS_NUM_THREADS": "1"},
        )
        if res.returncode == 0:
            out["cholmod"] = json.loads(res.stdout.strip().splitlines()[-1])
        else:
            out["cholmod_error"] = res.stderr.strip().splitlines()[-1:]
    return out


def _z1(prob):
    import scipy.sparse as sp

    f = prob.first
    q1, m1 = prob.qs[f], prob.m[f]
    rows = np.repeat(np.arange(prob.n), q1)
    cols = (prob.codes[f][:, None] * q1 + np.arange(q1)[None, :]).ravel()
    return sp.csr_matrix((prob.z[f].ravel(), (rows, cols)), shape=(prob.n, m1 * q1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--cholmod-python", default=None)
    ap.add_argument("--quick", action="store_true", help="smallest size only (a smoke test)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "crossed.txt"))
    args = ap.parse_args()
    load0 = os.getloadavg()
    tmp = Path(tempfile.mkdtemp())
    jobs = []
    data = {}
    sizes = SIZES[:1] if args.quick else SIZES
    for n_pat, n_rat in sizes:
        d = simulate(n_pat, n_rat)
        path = tmp / f"crossed_{n_pat}.csv"
        d.to_csv(path, index=False)
        data[n_pat] = d
        for model, formula in MODELS.items():
            jobs.append(
                {
                    "size": n_pat,
                    "raters": n_rat,
                    "rows": len(d),
                    "model": model,
                    "formula": formula,
                    "path": str(path),
                }
            )
    results = {}
    for k, job in enumerate(jobs):
        res = subprocess.run(
            [sys.executable, "-c", PY_CHILD, job["path"], job["formula"], str(args.reps)],
            capture_output=True,
            text=True,
            timeout=3600,
        )
        if res.returncode != 0:
            raise SystemExit(res.stderr)
        results[k] = {"ours": json.loads(res.stdout.strip().splitlines()[-1])}
        print(job["size"], job["model"], "ours", results[k]["ours"]["wall"], flush=True)
    rscript = shutil.which("Rscript")
    lme4_version = "not run"
    if rscript:
        pd.DataFrame(jobs).to_csv(tmp / "jobs.csv", index=False)
        (tmp / "fit.R").write_text(R_CHILD)
        res = subprocess.run(
            [rscript, str(tmp / "fit.R"), str(tmp / "jobs.csv"), str(args.reps)],
            capture_output=True,
            text=True,
            timeout=7200,
        )
        if res.returncode != 0:
            raise SystemExit(res.stderr)
        for block in res.stdout.split("JOB")[1:]:
            lines = block.strip().splitlines()
            k = int(lines[0].split()[0]) - 1
            kv = {ln.split()[0]: ln.split()[1:] for ln in lines[1:]}
            results[k]["lme4"] = {
                "wall": [float(v) for v in kv["WALL"]],
                "cpu": [float(v) for v in kv["CPU"]],
                "loglik": float(kv["LOGLIK"][0]),
                "fixef": [float(v) for v in kv["FIXEF"]],
                "se": [float(v) for v in kv["SE"]],
                "comps": dict(zip(kv["COMPKEYS"], map(float, kv["COMPS"]), strict=True)),
                "warn": " ".join(kv.get("WARN", ["none"])),
                "peak": float(kv["PEAK"][0]),
            }
        ver = subprocess.run(
            [rscript, "-e", "cat(as.character(packageVersion('lme4')))"],
            capture_output=True,
            text=True,
        )
        lme4_version = ver.stdout.strip()
    big = sizes[-1][0]
    fac = factorisation_comparison(data[big], tmp, args.cholmod_python, max(args.reps, 5))
    fac["patients"] = big
    load1 = os.getloadavg()
    write_report(jobs, results, fac, args, lme4_version, load0, load1)


def _med(x):
    return float(np.median(x))


def write_report(jobs, results, fac, args, lme4_version, load0, load1):
    import scipy
    import statsmodels

    lines = [
        "Crossed random effects: sparse engine (fit_model, engine auto) vs lme4 -- issue 20",
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, numpy {np.__version__}, scipy {scipy.__version__}, "
        f"statsmodels {statsmodels.__version__}, lme4 {lme4_version}",
        f"REML; medians of {args.reps} fits; ours: fit_model in a fresh Python child; lme4: "
        "lmer (default control) in one R session, timed in-process with system.time.",
        f"load average (1/5/15 min) at start {load0[0]:.1f}/{load0[1]:.1f}/{load0[2]:.1f}, "
        f"at end {load1[0]:.1f}/{load1[1]:.1f}/{load1[2]:.1f} (shared machine: wall times "
        "are inflated; CPU times are the fairer comparison).",
        "peak MB: resident memory high-water mark (VmHWM) of each process after its fits "
        "(ours: (+x) over the peak after reading the data; lme4: one R session for all fits).",
        "",
        "models: crossed = " + MODELS["crossed"],
        "        slope   = " + MODELS["slope"],
        "",
        f"{'patients':>8} {'rows':>7} {'raters':>6} {'model':<8} {'ours wall':>9} "
        f"{'lme4 wall':>9} {'ours CPU':>8} {'lme4 CPU':>8} {'lme4/ours CPU':>13} "
        f"{'peak MB ours/lme4':>18}",
    ]
    details = []
    for k, job in enumerate(jobs):
        o = results[k]["ours"]
        r = results[k].get("lme4")
        ratio = _med(r["cpu"]) / _med(o["cpu"]) if r else float("nan")
        peak = f"{o['peak_after']:.0f}(+{o['peak_after'] - o['peak_before']:.0f})"
        peak += f"/{r['peak']:.0f}" if r else "/-"
        lines.append(
            f"{job['size']:>8,} {job['rows']:>7,} {job['raters']:>6} {job['model']:<8} "
            f"{_med(o['wall']):>8.2f}s {(_med(r['wall']) if r else float('nan')):>8.2f}s "
            f"{_med(o['cpu']):>7.2f}s {(_med(r['cpu']) if r else float('nan')):>7.2f}s "
            f"{ratio:>12.1f}x {peak:>18}"
        )
        details.append(f"{job['size']:,} patients, {job['model']}:")
        details.append(
            f"  ours  wall {', '.join(f'{t:.3f}' for t in o['wall'])} s; CPU "
            f"{', '.join(f'{t:.3f}' for t in o['cpu'])} s; logLik {o['loglik']:.6f}; engine "
            f"{o['engine']} ({o['optimizer']}); converged {o['converged']}"
        )
        if r:
            details.append(
                f"  lme4  wall {', '.join(f'{t:.3f}' for t in r['wall'])} s; CPU "
                f"{', '.join(f'{t:.3f}' for t in r['cpu'])} s; logLik {r['loglik']:.6f}; "
                f"convergence messages: {r['warn']}"
            )
            rel = abs(o["loglik"] - r["loglik"]) / abs(r["loglik"])
            fe = np.max(np.abs(np.array(o["fixef"]) - np.array(r["fixef"])))
            se = np.max(np.abs(np.array(o["se"]) / np.array(r["se"]) - 1))
            comp = max(
                abs(o["comps"][key] / val - 1) for key, val in r["comps"].items() if val != 0
            )
            higher = "ours higher" if o["loglik"] >= r["loglik"] else "lme4 higher"
            details.append(
                f"  difference: logLik rel. {rel:.1e} ({higher}); max |fixed effect diff| "
                f"{fe:.1e}; max SE rel. diff {se:.1e}; max variance component rel. diff "
                f"{comp:.1e}"
            )
    lines += ["", "Details"] + details
    lines += [
        "",
        f"Sparse Cholesky, one evaluation at the REML optimum of 'crossed' at "
        f"{fac['patients']:,} patients (A_theta: {fac['q']:,} x {fac['q']:,}, "
        f"{fac['nnz_A']:,} non-zeros), CPU time, one BLAS thread, median of "
        f"{len(fac['ours'])}:",
        f"  block elimination (this package, whole deviance): {_med(fac['ours']) * 1e3:.1f} ms; "
        f"log|A| {fac['logdet_ours']:.6f}",
        f"  scipy SuperLU (splu, MMD on A+A', factorisation only): "
        f"{_med(fac['superlu']) * 1e3:.1f} ms; fill {fac['superlu_fill']:,} non-zeros in L+U; "
        f"log|A| {fac['logdet_superlu']:.6f}",
    ]
    if "cholmod" in fac:
        c = fac["cholmod"]
        lines.append(
            f"  CHOLMOD (scikit-sparse {c['version']}; analyze once {c['analyze'] * 1e3:.1f} ms, "
            f"then numeric factorisation only): {_med(c['factor']) * 1e3:.1f} ms; log|A| "
            f"{c['logdet']:.6f}"
        )
    elif "cholmod_error" in fac:
        lines.append(f"  CHOLMOD: failed: {fac['cholmod_error']}")
    else:
        lines.append("  CHOLMOD: not measured (no --cholmod-python)")
    text = "\n".join(lines) + "\n"
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
