r"""Coverage of 95% intervals for fixed effects under three denominator df (issue 21).

Design (the issue's): 20 therapists, 150 patients (7 or 8 per therapist), up to 10
sessions per patient (dropout after each session from session 2 on with probability 0.06),
correlated patient intercepts and slopes. Each replication draws a study from the model
itself, so every true value is exact and the fitted model is correctly specified; a
miscovered interval is then the interval's fault, not the model's:

.. math::

    a_{ij} &= 3.6 + v_i + e^a_{ij}, \quad v_i \sim N(0, 0.45^2),\;
    e^a_{ij} \sim N(0, 0.35^2)\\
    y_{ij} &= 19 + 0.5\,\text{session}_{ij} + 2\,w_{i,j-1} + 4\,b_i
              + t_{k(i)} + u_{0i} + u_{1i}\,\text{session}_{ij} + \varepsilon_{ij}

with :math:`w_{ij} = a_{ij} - \bar a_i` (within-patient alliance, lagged one session),
:math:`b_i = \bar a_i - \overline{\bar a}` (between-patient alliance), therapist
intercepts :math:`t_k \sim N(0, 1.5^2)`, patient intercepts and slopes with SDs 4.5 and
0.25 and correlation -0.2, residual SD 3.5 (the example study's variance components,
:class:`allianceflow.simulate.StudyDesign`). ``allianceflow.simulate.simulate_study`` is not
used because its outcome's session slope differs by arm and its alliance is an item mean,
so the true session coefficient of this model is not one number there.

Each study is fitted by REML with the alliance_outcome preset,
``outcome ~ alliance_within_lag + alliance_between + session + (1 | therapist) +
(1 + session | patient)``, and three 95% intervals are formed for each of ``session``,
``alliance_between`` and ``alliance_within_lag``:

* containment: what ``fit_model(ddf="containment")`` reports (Wald z, normal quantile);
  the column ``containment t`` uses a t quantile on the containment df instead;
* Satterthwaite (lmerTest): t quantile on :func:`allianceflow.models.ddf.satterthwaite_df`;
* Kenward–Roger (pbkrtest): adjusted SE and t quantile on the KR df
  (:func:`allianceflow.models.ddf.kenward_roger`).

Reported: coverage with its Monte Carlo SE :math:`\sqrt{\hat c(1-\hat c)/R}`, mean df,
mean SE against the empirical SD of the estimates, and seconds per replication for the
fit and for the df. Replication *r* uses ``numpy.random.default_rng([seed, r])``, so a run
with ``--reps R`` is reproduced exactly by any later run with the same seed and ``--reps``.
The run stops after ``--reps`` replications or when ``--budget`` seconds have passed,
whichever comes first (one process).

Run:  OMP_NUM_THREADS=1 python benchmarks/coverage_df.py --reps 2000 --budget 1380 --seed 21
Output: benchmarks/results/coverage_df.txt (and printed).

A smaller study, where the df matter more (8 therapists, 40 patients):
OMP_NUM_THREADS=1 python benchmarks/coverage_df.py --therapists 8 --patients 40 --reps 2000
--budget 420 --seed 21 --out benchmarks/results/coverage_df_small.txt
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from allianceflow.models import fit_model, preset_formula
from allianceflow.models.ddf import kenward_roger, satterthwaite_df, variance_structure

FORMULA = preset_formula("alliance_outcome")
TRUTH = {"session": 0.5, "alliance_between": 4.0, "alliance_within_lag": 2.0}
DESIGN = {
    "n_therapists": 20,
    "n_patients": 150,
    "max_sessions": 10,
    "dropout_hazard": 0.06,
    "alliance_mean": 3.6,
    "alliance_sd_patient": 0.45,
    "alliance_sd_session": 0.35,
    "intercept": 19.0,
    "sd_therapist": 1.5,
    "sd_patient": 4.5,
    "sd_slope": 0.25,
    "corr": -0.2,
    "sd_residual": 3.5,
}
METHODS = ("containment", "containment t", "satterthwaite", "kenward-roger")


def simulate(rng: np.random.Generator) -> pd.DataFrame:
    """Draw one study from the model in the module docstring (the analysis table)."""
    d = DESIGN
    n_p, n_t = d["n_patients"], d["n_therapists"]
    therapist = np.arange(n_p) % n_t
    # sessions attended: 1, then continue after each session with probability 1 - hazard
    n_sessions = np.ones(n_p, dtype=int)
    for s in range(2, d["max_sessions"] + 1):
        go_on = (n_sessions == s - 1) & (rng.random(n_p) >= d["dropout_hazard"])
        n_sessions[go_on] = s
    patient = np.repeat(np.arange(n_p), n_sessions)
    session = np.concatenate([np.arange(1, k + 1) for k in n_sessions]).astype(float)
    alliance = (
        d["alliance_mean"]
        + rng.normal(0.0, d["alliance_sd_patient"], n_p)[patient]
        + rng.normal(0.0, d["alliance_sd_session"], len(patient))
    )
    frame = pd.DataFrame({"patient": patient, "session": session, "alliance": alliance})
    pmean = frame.groupby("patient")["alliance"].transform("mean")
    frame["alliance_within"] = frame["alliance"] - pmean
    frame["alliance_between"] = pmean - frame.groupby("patient")["alliance"].mean().mean()
    frame["alliance_within_lag"] = frame.groupby("patient")["alliance_within"].shift(1)
    cov = np.array(
        [
            [d["sd_patient"] ** 2, d["corr"] * d["sd_patient"] * d["sd_slope"]],
            [d["corr"] * d["sd_patient"] * d["sd_slope"], d["sd_slope"] ** 2],
        ]
    )
    u = rng.multivariate_normal([0.0, 0.0], cov, n_p)
    t = rng.normal(0.0, d["sd_therapist"], n_t)
    frame["outcome"] = (
        d["intercept"]
        + TRUTH["session"] * session
        + TRUTH["alliance_within_lag"] * frame["alliance_within_lag"].fillna(0.0)
        + TRUTH["alliance_between"] * frame["alliance_between"]
        + t[therapist[patient]]
        + u[patient, 0]
        + u[patient, 1] * session
        + rng.normal(0.0, d["sd_residual"], len(patient))
    )
    frame["patient"] = "P" + frame["patient"].astype(str).str.zfill(3)
    frame["therapist"] = "T" + pd.Series(therapist[patient]).astype(str).str.zfill(2)
    # session 1 has no lagged alliance: the model drops it, as it does in the pipeline
    return frame


def one(seed: int, rep: int) -> dict:
    """Fit one replication; return estimate, SE, df and interval per term and method."""
    data = simulate(np.random.default_rng([seed, rep]))
    t0 = time.perf_counter()
    res = fit_model(data, FORMULA, reml=True, name=f"rep{rep}").to_dict()
    t1 = time.perf_counter()
    st = variance_structure(data, FORMULA, res)
    sat = satterthwaite_df(structure=st).set_index("term")
    kr = kenward_roger(structure=st).set_index("term")
    t2 = time.perf_counter()
    out = {
        "rep": rep,
        "converged": res["convergence"]["converged"],
        "boundary": bool(res["convergence"]["boundary"]),
        "fit_s": t1 - t0,
        "df_s": t2 - t1,
    }
    zcrit = float(stats.norm.ppf(0.975))
    for row in res["fixed"]:
        term = row["term"]
        if term not in TRUTH:
            continue
        est = float(row["estimate"])
        out[f"{term}:est"] = est
        se_df = {
            "containment": (float(row["se"]), float(row["df"]), zcrit),
            "containment t": (
                float(row["se"]),
                float(row["df"]),
                float(stats.t.ppf(0.975, row["df"])),
            ),
            "satterthwaite": (
                float(sat.loc[term, "se"]),
                float(sat.loc[term, "df"]),
                float(stats.t.ppf(0.975, sat.loc[term, "df"])),
            ),
            "kenward-roger": (
                float(kr.loc[term, "se"]),
                float(kr.loc[term, "df"]),
                float(stats.t.ppf(0.975, kr.loc[term, "df"])),
            ),
        }
        for method, (se, df, crit) in se_df.items():
            out[f"{term}:{method}:se"] = se
            out[f"{term}:{method}:df"] = df
            out[f"{term}:{method}:covered"] = abs(est - TRUTH[term]) <= crit * se
    return out


def summarise(df: pd.DataFrame, args: argparse.Namespace, wall: float) -> str:
    """The coverage table with Monte Carlo SEs, as written to the results file."""
    n = len(df)
    lines = [
        "Coverage of 95% CIs for fixed effects by denominator df (issue 21)",
        f"formula: {FORMULA}",
        f"design: {DESIGN}",
        f"truth: {TRUTH}",
        f"REML; seed {args.seed}; replications run: {n} (asked {args.reps}, budget "
        f"{args.budget:.0f} s); converged: {int(df.converged.sum())}; boundary (singular) "
        f"fits: {int(df.boundary.sum())}",
        "",
        f"{'term':<21}{'method':<15}{'cover95':>9}{'MC SE':>7}{'mean df':>10}{'mean SE':>9}"
        f"{'emp.SD':>9}",
    ]
    for term in TRUTH:
        emp_sd = float(df[f"{term}:est"].std(ddof=1))
        for method in METHODS:
            cov = float(df[f"{term}:{method}:covered"].mean())
            mcse = math.sqrt(cov * (1 - cov) / n)
            lines.append(
                f"{term:<21}{method:<15}{cov:>9.3f}{mcse:>7.3f}"
                f"{df[f'{term}:{method}:df'].mean():>10.1f}{df[f'{term}:{method}:se'].mean():>9.4f}"
                f"{emp_sd:>9.4f}"
            )
        # paired comparison: replications covered by one method and not by containment
        for method in ("satterthwaite", "kenward-roger"):
            a = df[f"{term}:{method}:covered"].to_numpy(bool)
            b = df[f"{term}:containment:covered"].to_numpy(bool)
            lines.append(
                f"{'':<21}{method} vs containment: covered only by {method} "
                f"{int((a & ~b).sum())}, only by containment {int((b & ~a).sum())}"
            )
    lines += [
        "",
        f"seconds per replication: fit median {df.fit_s.median():.2f}, df (Satterthwaite + "
        f"Kenward–Roger) median {df.df_s.median():.2f}; wall {wall:.0f} s in one process "
        f"on a shared 2-core machine; python {platform.python_version()}",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run the replications and write the summary."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=800)
    ap.add_argument("--budget", type=float, default=1500.0, help="seconds; stop after this")
    ap.add_argument("--seed", type=int, default=21)
    ap.add_argument("--therapists", type=int, default=DESIGN["n_therapists"])
    ap.add_argument("--patients", type=int, default=DESIGN["n_patients"])
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "coverage_df.txt"))
    args = ap.parse_args(argv)
    DESIGN.update(n_therapists=args.therapists, n_patients=args.patients)
    t0 = time.perf_counter()
    rows = []
    for rep in range(1, args.reps + 1):
        rows.append(one(args.seed, rep))
        if rep % 50 == 0:
            partial = summarise(pd.DataFrame(rows), args, time.perf_counter() - t0)
            Path(args.out + ".partial").write_text(partial)
        if time.perf_counter() - t0 > args.budget:
            break
    text = summarise(pd.DataFrame(rows), args, time.perf_counter() - t0)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    Path(args.out + ".partial").unlink(missing_ok=True)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
