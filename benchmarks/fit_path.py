"""Speed of the public fit path, ``fit_model``, against the engine and lme4 (issue 20).

In one run, on the same data, small, nested and crossed models, three fitters are timed:

* ``fit_model`` (:func:`allianceflow.models.fit_model`, the public path: complete rows,
  few-level check, engine, containment df, ICC, R², conditional modes, the JSON record);
* the engine alone: ``fit_lmm`` (:func:`allianceflow.models.engine.fit_lmm`) for nested
  models, ``fit_crossed`` (:func:`allianceflow.models.sparse.fit_crossed`) for crossed ones;
* lme4's ``lmer`` in one R session that times its own fits with repeated ``system.time``
  (R start-up and ``library(lme4)`` are excluded; they are measured once on their own and
  reported, since a user who calls R from Python pays them once per process).

Data sets (REML fits):

* ``sleepstudy-like``: 18 subjects x 10 days, ``Reaction ~ Days + (Days | Subject)``,
  simulated with the estimates lme4 reports for Belenky et al.'s (2003) sleepstudy data
  (Bates et al. 2015, sec. 2: intercept 251.4, slope 10.47, SDs 24.74 and 5.92, correlation
  0.07, residual SD 25.59). The data set itself is not shipped (lme4 is GPL).
* ``two-level 300``: 30 patients x 10 sessions, ``outcome ~ session + alliance +
  (1 | patient)``.
* ``nested 2k`` and ``nested 20k``: :func:`allianceflow.simulate.simulate_study` with 2,000
  and 20,000 patients (50 per therapist), scored and derived as the pipeline does; the
  models ``outcome ~ session + alliance_within_lag + alliance_between + (1 + session |
  patient)`` and the same ``+ (1 | therapist)``.
* ``crossed 200``, ``crossed 2k`` (``--crossed-sizes``): ``benchmarks/crossed.py``'s
  simulation, patients with 4-14 sessions each rated by one of 60 or 150 raters, the models
  ``y ~ session + x + (1 | patient) + (1 | rater)`` (intercepts) and the same with
  ``(1 + session | patient)`` (slope).

Reported per model: the median CPU time (process time; the machine is shared, so wall time
mostly measures waiting) and median wall time of each fitter, the ratios
``fit_model / engine`` and ``lmer / fit_model``, peak memory (Python: tracemalloc peak of one
extra fit; R: the "max used" of ``gc()`` over its fits), and agreement: the largest absolute
difference between ``fit_model`` and ``lmer`` in the fixed effects and in the variance
components (variances, covariances, residual variance), and in the REML log-likelihood.
With ``--ddf`` the cost of ``ddf="satterthwaite"`` and ``"kenward-roger"`` (the pipeline's
default) is timed too.

Run:  python benchmarks/fit_path.py > benchmarks/results/fit_path.txt
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))

from crossed import MODELS as CROSSED_MODELS  # noqa: E402
from crossed import simulate as simulate_crossed  # noqa: E402

#: Raters of the crossed data sets, by number of patients (as benchmarks/crossed.py).
CROSSED_RATERS = {200: 60, 2000: 150, 7500: 300}

FIXED = "outcome ~ session + alliance_within_lag + alliance_between"
NESTED_MODELS = {
    "patient": FIXED + " + (1 + session | patient)",
    "therapist": FIXED + " + (1 + session | patient) + (1 | therapist)",
}
SLEEP_FORMULA = "Reaction ~ Days + (Days | Subject)"
TWO_LEVEL_FORMULA = "outcome ~ session + alliance + (1 | patient)"


# ----------------------------------------------------------------- data


def sleepstudy_like(seed: int = 1) -> pd.DataFrame:
    """18 subjects x 10 days drawn from lme4's sleepstudy estimates (Bates et al. 2015)."""
    rng = np.random.default_rng(seed)
    n_subj, days = 18, np.arange(10.0)
    sd = np.array([24.741, 5.922])
    corr = 0.066
    cov = np.array([[sd[0] ** 2, corr * sd[0] * sd[1]], [corr * sd[0] * sd[1], sd[1] ** 2]])
    b = rng.multivariate_normal([0.0, 0.0], cov, size=n_subj)
    subj = np.repeat(np.arange(308, 308 + n_subj), len(days))
    d = np.tile(days, n_subj)
    b_i = np.repeat(b, len(days), axis=0)
    y = 251.405 + 10.467 * d + b_i[:, 0] + b_i[:, 1] * d + rng.normal(0, 25.592, len(d))
    return pd.DataFrame({"Subject": subj.astype(str), "Days": d, "Reaction": y})


def two_level(seed: int = 2, n_patients: int = 30, n_sessions: int = 10) -> pd.DataFrame:
    """A small two-level data set: patients x sessions, random patient intercepts."""
    rng = np.random.default_rng(seed)
    pid = np.repeat([f"P{i:03d}" for i in range(n_patients)], n_sessions)
    session = np.tile(np.arange(1.0, n_sessions + 1), n_patients)
    alliance = rng.normal(5, 1, len(pid))
    u = np.repeat(rng.normal(0, 3, n_patients), n_sessions)
    y = 20 + 0.8 * session + 1.5 * (alliance - 5) + u + rng.normal(0, 4, len(pid))
    return pd.DataFrame({"patient": pid, "session": session, "alliance": alliance, "outcome": y})


def nested(n_patients: int, seed: int = 20261125) -> pd.DataFrame:
    """A simulated study, scored and derived as the pipeline does (complete model rows)."""
    from allianceflow.derive import derive_analysis
    from allianceflow.score import score_sessions
    from allianceflow.simulate import simulate_study

    df = simulate_study(seed=seed, n_patients=n_patients, n_therapists=max(n_patients // 50, 10))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        an = derive_analysis(
            score_sessions(df, ["wai_sr", "ors"]), alliance="wai_sr_total", outcome="ors_total"
        )
    cols = ["therapist", "patient", "session", "outcome", "alliance_within_lag", "alliance_between"]
    return an[cols].dropna().reset_index(drop=True)


def _size(n: int) -> str:
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


def cases(
    sizes: list[int], crossed_sizes: list[int] = ()
) -> list[tuple[str, pd.DataFrame, str, int]]:
    """``(label, data, formula, repetitions)`` of every benchmark fit."""
    out = [
        ("sleepstudy-like (180 rows)", sleepstudy_like(), SLEEP_FORMULA, 30),
        ("two-level (300 rows)", two_level(), TWO_LEVEL_FORMULA, 30),
    ]
    for n in sizes:
        d = nested(n)
        reps = 5 if n <= 5000 else 3
        for model, formula in NESTED_MODELS.items():
            out.append((f"nested {_size(n)} {model} ({len(d)} rows)", d, formula, reps))
    for n in crossed_sizes:
        d = simulate_crossed(n, CROSSED_RATERS.get(n, max(n // 25, 10)))
        reps = 15 if n <= 500 else 5 if n <= 5000 else 3
        for model, formula in CROSSED_MODELS.items():
            label = "intercepts" if model == "crossed" else model
            out.append((f"crossed {_size(n)} {label} ({len(d)} rows)", d, formula, reps))
    return out


# ----------------------------------------------------------------- Python side


def _time(fn, reps: int) -> tuple[list[float], list[float], object]:
    cpu, wall, out = [], [], None
    for _ in range(reps):
        c0, w0 = time.process_time(), time.perf_counter()
        out = fn()
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    return cpu, wall, out


def _peak_mb(fn) -> float:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def run_python(data: pd.DataFrame, formula: str, reps: int, ddf: bool) -> dict:
    from allianceflow.models import fit_lmm, fit_model
    from allianceflow.models.pls import supports
    from allianceflow.models.sparse import fit_crossed

    engine = fit_lmm if supports(formula, data) else fit_crossed
    fns = {
        "fit_model": lambda: fit_model(data, formula),
        "engine": lambda: engine(data, formula),
    }
    if ddf:
        fns["fit_model satterthwaite"] = lambda: fit_model(data, formula, ddf="satterthwaite")
        fns["fit_model kenward-roger"] = lambda: fit_model(data, formula, ddf="kenward-roger")
    out = {}
    for name, fn in fns.items():
        fn()  # warm-up: imports, caches
        n = reps if " " not in name else max(1, reps // 3)
        cpu, wall, res = _time(fn, n)
        out[name] = {"cpu": cpu, "wall": wall, "peak_mb": _peak_mb(fn), "result": res}
    return out


# ----------------------------------------------------------------- R side

R_PROGRAM = r"""
suppressPackageStartupMessages(library(lme4))
args <- commandArgs(trailingOnly = TRUE)
jobs <- read.csv(args[1], stringsAsFactors = FALSE)
out <- file(args[2], "w")
put <- function(job, kind, a, b, value) {
  writeLines(paste(job, kind, a, b, format(value, digits = 17), sep = "\t"), out)
}
for (i in seq_len(nrow(jobs))) {
  d <- read.csv(jobs$path[i], stringsAsFactors = FALSE)
  for (id in intersect(c("patient", "therapist", "Subject", "rater"), names(d))) {
    d[[id]] <- as.character(d[[id]])
  }
  f <- as.formula(jobs$formula[i])
  fit <- suppressWarnings(lmer(f, data = d, REML = TRUE))  # warm-up
  invisible(gc(reset = TRUE))
  for (r in seq_len(jobs$reps[i])) {
    tm <- system.time(fit <- suppressWarnings(lmer(f, data = d, REML = TRUE)))
    put(i, "cpu", r, "", tm[["user.self"]] + tm[["sys.self"]])
    put(i, "wall", r, "", tm[["elapsed"]])
  }
  put(i, "mem", "", "", sum(gc()[, 6]))
  fe <- fixef(fit)
  for (k in seq_along(fe)) put(i, "fixef", names(fe)[k], "", fe[[k]])
  vc <- as.data.frame(VarCorr(fit))
  for (k in seq_len(nrow(vc))) {
    put(i, "vc", paste(vc$grp[k], vc$var1[k], sep = "|"), ifelse(is.na(vc$var2[k]), "",
        vc$var2[k]), vc$vcov[k])
  }
  put(i, "loglik", "", "", as.numeric(logLik(fit)))
  msgs <- fit@optinfo$conv$lme4$messages
  put(i, "converged", "", "", if (length(msgs)) 0 else 1)
}
close(out)
"""


def run_r(items: list[tuple[str, pd.DataFrame, str, int]], folder: Path) -> tuple[dict, dict]:
    """Fit every case with lmer in one R session; also time R start-up and the whole run."""
    rows = []
    written: dict[int, Path] = {}
    for _, data, formula, reps in items:
        key = id(data)
        if key not in written:
            written[key] = folder / f"data{len(written)}.csv"
            data.to_csv(written[key], index=False)
        rows.append({"path": str(written[key]), "formula": formula, "reps": reps})
    jobs = folder / "jobs.csv"
    pd.DataFrame(rows).to_csv(jobs, index=False)
    program, result = folder / "fit.R", folder / "r_results.tsv"
    program.write_text(R_PROGRAM)
    w0 = time.perf_counter()
    subprocess.run(["Rscript", "-e", "suppressPackageStartupMessages(library(lme4))"], check=True)
    startup = time.perf_counter() - w0
    w0 = time.perf_counter()
    subprocess.run(["Rscript", str(program), str(jobs), str(result)], check=True)
    whole = time.perf_counter() - w0
    out: dict[int, dict] = {}
    with open(result) as fh:
        for job, kind, a, b, value in csv.reader(fh, delimiter="\t"):
            rec = out.setdefault(
                int(job), {"cpu": [], "wall": [], "fixef": {}, "vc": {}, "loglik": None}
            )
            v = float(value)
            if kind in ("cpu", "wall"):
                rec[kind].append(v)
            elif kind == "fixef":
                rec["fixef"]["Intercept" if a == "(Intercept)" else a] = v
            elif kind == "vc":
                group, term = a.split("|")
                rec["vc"][(group, term, b)] = v
            else:
                rec[kind] = v
    return out, {"startup": startup, "whole": whole}


# ----------------------------------------------------------------- comparison


def _ours_vc(res) -> dict:
    rec = res.to_dict()
    out = {(r["group"], r["term"], ""): r["variance"] for r in rec["random"]}
    for c in rec["covariances"]:
        out[(c["group"], c["term1"], c["term2"])] = c["covariance"]
    out[("Residual", "NA", "")] = rec["residual_variance"]
    return out


def agreement(res, r: dict) -> tuple[float, float, float, float]:
    """Largest |difference| of fixed effects, of variance components, and of logLik.

    The variance components' difference is also given relative to the largest component.
    """
    rec = res.to_dict()
    fe = {f["term"]: f["estimate"] for f in rec["fixed"]}
    d_fe = max(abs(fe[t] - r["fixef"][t]) for t in fe)
    ours = _ours_vc(res)
    d_vc = max(abs(ours[k] - v) for k, v in r["vc"].items())
    rel = d_vc / max(abs(v) for v in r["vc"].values())
    return d_fe, d_vc, rel, abs(rec["loglik"] - r["loglik"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="*", default=[2000, 20000])
    ap.add_argument("--crossed-sizes", type=int, nargs="*", default=[200, 2000])
    ap.add_argument("--ddf", action="store_true", help="also time ddf='satterthwaite'/'k-r'")
    ap.add_argument(
        "--ddf-max-rows", type=int, default=20000, help="time the ddf on data up to this size"
    )
    ap.add_argument("--no-r", action="store_true", help="skip lme4")
    args = ap.parse_args()
    import scipy

    import allianceflow

    load0 = os.getloadavg()
    items = cases(args.sizes, args.crossed_sizes)
    py = []
    for label, data, formula, reps in items:
        print(f"[{time.strftime('%H:%M:%S')}] {label}", file=sys.stderr, flush=True)
        py.append(run_python(data, formula, reps, args.ddf and len(data) <= args.ddf_max_rows))
    has_r = not args.no_r and shutil.which("Rscript") is not None
    if has_r:
        with tempfile.TemporaryDirectory(prefix="fit_path_") as tmp:
            rr, r_whole = run_r(items, Path(tmp))
        lme4 = subprocess.run(
            ["Rscript", "-e", "cat(as.character(packageVersion('lme4')))"],
            capture_output=True,
            text=True,
        ).stdout.strip()
    load1 = os.getloadavg()

    med = statistics.median
    print("fit_model vs the engine alone vs lme4 lmer (in-process) — issue 20")
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, numpy {np.__version__}, scipy {scipy.__version__}, "
        f"allianceflow {allianceflow.__version__}" + (f", lme4 {lme4}" if has_r else "")
    )
    print(
        f"load average (1/5/15 min) at start {load0[0]:.1f}/{load0[1]:.1f}/{load0[2]:.1f}, "
        f"at end {load1[0]:.1f}/{load1[1]:.1f}/{load1[2]:.1f} (shared machine)"
    )
    print(
        "REML; medians of repeated fits in one process each (Python: after one warm-up fit; "
        "R: one session, system.time per fit, after one warm-up fit). CPU = process time "
        "(user + system), the primary measure on a shared machine; wall in brackets."
    )
    print("peak MB: Python tracemalloc peak of one fit; R gc() 'max used' (Ncells + Vcells).")
    print(
        "engine: fit_lmm (nested: small and nested rows) or fit_crossed (crossed rows); "
        "fm/eng = fit_model / engine, lmer/fm = lmer / fit_model (above 1: fit_model faster)."
    )
    if has_r:
        print(
            f"R start-up + library(lme4): {r_whole['startup']:.2f} s wall (not in the lmer "
            f"times); the whole R run took {r_whole['whole']:.1f} s wall."
        )
    print()
    head = (
        f"{'model':44s} {'fit_model':>16s} {'engine':>16s} {'lmer':>16s} "
        f"{'fm/eng':>7s} {'lmer/fm':>8s} {'peak MB fm/eng/R':>18s}"
    )
    print(head)
    for i, ((label, _, _, _), p) in enumerate(zip(items, py, strict=True), start=1):
        fm, fl = p["fit_model"], p["engine"]
        r = rr.get(i) if has_r else None

        def cell(cpu, wall):
            return f"{med(cpu):6.3f} [{med(wall):6.3f}]"

        lmer = cell(r["cpu"], r["wall"]) if r else "—"
        ratio_r = f"{med(r['cpu']) / med(fm['cpu']):7.2f}x" if r else "—"
        mem_r = f"{r['mem']:.0f}" if r else "—"
        print(
            f"{label:44s} {cell(fm['cpu'], fm['wall'])} {cell(fl['cpu'], fl['wall'])} {lmer} "
            f"{med(fm['cpu']) / med(fl['cpu']):6.2f}x {ratio_r} "
            f"{fm['peak_mb']:6.1f}/{fl['peak_mb']:.1f}/{mem_r}"
        )
    print()
    print("Agreement of fit_model with lmer (max |difference|):")
    for i, ((label, _, _, _), p) in enumerate(zip(items, py, strict=True), start=1):
        if not has_r:
            break
        d_fe, d_vc, rel, d_ll = agreement(p["fit_model"]["result"], rr[i])
        conv = "converged" if rr[i].get("converged") == 1.0 else "lme4 warned (convergence)"
        print(
            f"  {label:44s} fixed {d_fe:.1e}  variance components {d_vc:.1e} "
            f"({rel:.1e} of the largest)  "
            f"logLik {d_ll:.1e}  ({conv})"
        )
    if has_r:
        ratios = [med(rr[i]["cpu"]) / med(p["fit_model"]["cpu"]) for i, p in enumerate(py, start=1)]
        slowest = min(range(len(ratios)), key=ratios.__getitem__)
        print()
        print(
            f"lmer / fit_model CPU over all {len(ratios)} models: smallest "
            f"{ratios[slowest]:.2f}x ({items[slowest][0]}), geometric mean "
            f"{math.exp(statistics.mean(math.log(r) for r in ratios)):.2f}x; fit_model is "
            + (
                "at least as fast as lmer on every model."
                if ratios[slowest] >= 1
                else "slower than lmer on at least one model."
            )
        )
    if args.ddf:
        print()
        print("Denominator df through fit_model (CPU s, median; the pipeline's default is K-R):")
        for (label, _, _, _), p in zip(items, py, strict=True):
            if "fit_model kenward-roger" not in p:
                print(f"  {label:44s} not timed (more than --ddf-max-rows rows)")
                continue
            base = med(p["fit_model"]["cpu"])
            parts = []
            for name in ("fit_model satterthwaite", "fit_model kenward-roger"):
                t = med(p[name]["cpu"])
                parts.append(
                    f"{name.split()[1]} {t:.3f} s ({t / base:.2f}x, "
                    f"peak {p[name]['peak_mb']:.0f} MB)"
                )
            print(f"  {label:44s} " + "; ".join(parts))


if __name__ == "__main__":
    main()
