"""Speed of the GLMM engine against lme4's glmer (issue 19), and how far their answers differ.

Two designs, each at 2,000 and 20,000 patients, simulated here with fixed seeds:

* ``patient_binary``: one 0/1 outcome per patient (e.g. reliable deterioration), 100
  patients per therapist: ``y ~ arm + baseline + (1 | therapist)``;
* ``session_binary``: a 0/1 outcome per session (8 sessions per patient, e.g. attendance):
  ``y ~ session + arm + (1 | patient)``.

Both tools fit by the Laplace approximation (nAGQ = 1) with their default settings: ours
through :func:`allianceflow.models.fit_model` (``family="binomial"``), glmer with its
default ``glmerControl()``. Python fits in this process; glmer fits in one R session
(one ``Rscript``) that reads every data set and fits each ``--reps`` times. Times are of
fitting only (not simulation or reading), medians over repetitions, as wall-clock and as
CPU time (the process's user + system time), since the machine may be shared; the ratio
is glmer / ours (above 1: ours is faster). Differences: the largest absolute difference in
fixed effects and in their SEs, and ours minus glmer's log-likelihood (positive: ours is
higher, glmer stopped short).

Run:  python benchmarks/glmm_speed.py [--reps 3]
Output: benchmarks/results/glmm_speed.txt (and printed).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

MODELS = {
    "patient_binary": "y ~ arm + baseline + (1 | therapist)",
    "session_binary": "y ~ session + arm + (1 | patient)",
}
SIZES = (2_000, 20_000)

R_SCRIPT = r"""
suppressMessages(library(lme4))
args <- commandArgs(trailingOnly = TRUE)
folder <- args[1]; reps <- as.integer(args[2])
cases <- read.csv(file.path(folder, "cases.csv"), stringsAsFactors = FALSE)
for (k in seq_len(nrow(cases))) {
  d <- read.csv(file.path(folder, cases$file[k]))
  d$arm <- factor(d$arm)
  if ("therapist" %in% names(d)) d$therapist <- factor(d$therapist)
  if ("patient" %in% names(d)) d$patient <- factor(d$patient)
  wall <- cpu <- numeric(reps)
  for (r in seq_len(reps)) {
    t0 <- proc.time()
    m <- suppressWarnings(glmer(as.formula(cases$formula[k]), data = d, family = binomial))
    t1 <- proc.time() - t0
    wall[r] <- t1[["elapsed"]]; cpu[r] <- t1[["user.self"]] + t1[["sys.self"]]
  }
  cat("CASE", cases$id[k], "\n")
  cat("WALL", sprintf("%.4f", wall), "\n")
  cat("CPU", sprintf("%.4f", cpu), "\n")
  cat("LOGLIK", sprintf("%.10f", as.numeric(logLik(m))), "\n")
  cat("FIXEF", sprintf("%.10g", fixef(m)), "\n")
  cat("SE", sprintf("%.10g", sqrt(diag(as.matrix(vcov(m))))), "\n")
  cat("NAMES", names(fixef(m)), "\n")
}
"""


def simulate(design: str, n_patients: int, seed: int) -> pd.DataFrame:
    """One simulated study of *n_patients* for *design* (see the module docstring)."""
    rng = np.random.default_rng(seed)
    if design == "patient_binary":
        n_therapists = n_patients // 100
        th = np.repeat(np.arange(n_therapists), 100)
        arm = rng.integers(0, 2, n_patients)
        baseline = rng.normal(0, 1, n_patients)
        eta = -1.0 - 0.4 * arm + 0.3 * baseline + rng.normal(0, 0.5, n_therapists)[th]
        return pd.DataFrame(
            {
                "therapist": [f"T{t:04d}" for t in th],
                "arm": np.where(arm == 1, "feedback", "usual"),
                "baseline": baseline.round(6),
                "y": rng.binomial(1, 1 / (1 + np.exp(-eta))),
            }
        )
    sessions = 8
    pat = np.repeat(np.arange(n_patients), sessions)
    session = np.tile(np.arange(1, sessions + 1), n_patients)
    arm = rng.integers(0, 2, n_patients)[pat]
    eta = 1.0 - 0.1 * session + 0.3 * arm + rng.normal(0, 1.0, n_patients)[pat]
    return pd.DataFrame(
        {
            "patient": [f"P{p:06d}" for p in pat],
            "session": session,
            "arm": np.where(arm == 1, "feedback", "usual"),
            "y": rng.binomial(1, 1 / (1 + np.exp(-eta))),
        }
    )


def _r_name(term: str) -> str:
    return "(Intercept)" if term == "Intercept" else term.replace("[T.", "").replace("]", "")


def main() -> None:
    """Run the benchmark and write ``benchmarks/results/glmm_speed.txt``."""
    from allianceflow.models import fit_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results/glmm_speed.txt")
    args = parser.parse_args()
    rscript = shutil.which("Rscript")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        cases = []
        data = {}
        for i, design in enumerate(MODELS):
            for j, n in enumerate(SIZES):
                cid = f"{design}_{n}"
                d = simulate(design, n, seed=100 + 10 * i + j)
                d.to_csv(folder / f"{cid}.csv", index=False)
                data[cid] = (design, n, pd.read_csv(folder / f"{cid}.csv"))
                cases.append({"id": cid, "file": f"{cid}.csv", "formula": MODELS[design]})
        pd.DataFrame(cases).to_csv(folder / "cases.csv", index=False)
        # ours, in this process
        ours = {}
        for cid, (design, _n, d) in data.items():
            wall, cpu = [], []
            for _ in range(args.reps):
                w0, c0 = time.perf_counter(), time.process_time()
                res = fit_model(d, MODELS[design], family="binomial")
                wall.append(time.perf_counter() - w0)
                cpu.append(time.process_time() - c0)
            ours[cid] = (wall, cpu, res)
            print(cid, "ours", np.median(wall), np.median(cpu), res.converged, flush=True)
        ref = {}
        if rscript is not None:
            (folder / "bench.R").write_text(R_SCRIPT)
            out = subprocess.run(
                [rscript, str(folder / "bench.R"), str(folder), str(args.reps)],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            current = None
            for line in out.splitlines():
                parts = line.split()
                if not parts:
                    continue
                if parts[0] == "CASE":
                    current = parts[1]
                    ref[current] = {}
                else:
                    ref[current][parts[0]] = parts[1:]
    for cid, (design, n, d) in data.items():
        wall, cpu, res = ours[cid]
        row = {
            "design": design,
            "patients": n,
            "rows": len(d),
            "ours_wall_s": float(np.median(wall)),
            "ours_cpu_s": float(np.median(cpu)),
            "ours_converged": res.converged,
        }
        if cid in ref:
            r = ref[cid]
            names = [_r_name(t) for t in res.fixed["term"]]
            order = [r["NAMES"].index(t) for t in names]
            fe = np.array(r["FIXEF"], dtype=float)[order]
            se = np.array(r["SE"], dtype=float)[order]
            g_wall = float(np.median(np.array(r["WALL"], dtype=float)))
            g_cpu = float(np.median(np.array(r["CPU"], dtype=float)))
            row |= {
                "glmer_wall_s": g_wall,
                "glmer_cpu_s": g_cpu,
                "ratio_wall": g_wall / row["ours_wall_s"],
                "ratio_cpu": g_cpu / row["ours_cpu_s"],
                "max_abs_diff_fixef": float(np.max(np.abs(res.fixed["estimate"] - fe))),
                "max_abs_diff_se": float(np.max(np.abs(res.fixed["se"] - se))),
                "loglik_ours_minus_glmer": float(res.loglik - float(r["LOGLIK"][0])),
            }
        rows.append(row)
    table = pd.DataFrame(rows)
    lme4 = "not run (no Rscript)"
    if rscript is not None:
        lme4 = subprocess.run(
            [rscript, "-e", "cat(as.character(packageVersion('lme4')))"],
            capture_output=True,
            text=True,
        ).stdout.strip()
    header = [
        "GLMM speed: allianceflow.models.fit_model(family='binomial') vs lme4::glmer (Laplace)",
        f"python {platform.python_version()}, lme4 {lme4}, {os.cpu_count()} CPU cores, "
        f"load average {os.getloadavg()[0]:.1f} at the end; medians of {args.reps} fits.",
        "ratio = glmer time / our time (above 1: ours is faster); loglik difference = ours - "
        "glmer (positive: glmer, with its default tolerances, stopped short of the optimum).",
        "",
    ]
    text = "\n".join(header) + table.to_string(index=False, float_format="%.6g") + "\n"
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
