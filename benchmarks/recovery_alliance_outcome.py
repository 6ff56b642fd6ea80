"""Parameter recovery of the alliance_outcome preset on simulated studies (issue 6).

For each of ``--reps`` replications (seeds 1..reps) a small three-level study is simulated
with :func:`allianceflow.simulate.simulate_study` (true within-patient effect 2.0 and
between-patient effect 4.0 ORS points per WAI-SR item-mean point), scored the way the
pipeline scores it (WAI-SR item mean and ORS total, prorated over answered items), split
into within/between parts with the within part lagged by one session, and fitted with
``fit_model(data, preset_formula("alliance_outcome"))`` (REML). Reported per effect: mean
estimate, bias, relative bias, empirical SD, mean model SE, RMSE and the coverage of the
95% Wald CI with its Monte Carlo SE; plus convergence and boundary (singular) rates.

Run:  python benchmarks/recovery_alliance_outcome.py --reps 200 --workers 2
Output: benchmarks/results/recovery_alliance_outcome.txt (and printed).
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from allianceflow.models import fit_model, preset_formula
from allianceflow.simulate import EXAMPLE_DESIGN, simulate_study

DESIGN = {"n_therapists": 15, "n_patients": 150, "max_sessions": 12}
TRUTH = {
    "alliance_within_lag": EXAMPLE_DESIGN.within_effect,
    "alliance_between": EXAMPLE_DESIGN.between_effect,
}


def analysis_table(sessions: pd.DataFrame) -> pd.DataFrame:
    """Score, split within/between and lag, as the score and derive stages define them."""
    d = sessions.sort_values(["patient", "session"]).reset_index(drop=True)
    wai = d[[f"wai_sr_{i}" for i in range(1, 13)]]
    ors = d[[f"ors_{i}" for i in range(1, 5)]]
    d["alliance"] = wai.mean(axis=1)  # item mean over answered items (proration)
    d["outcome"] = ors.mean(axis=1) * 4
    pmean = d.groupby("patient")["alliance"].transform("mean")
    d["alliance_within"] = d["alliance"] - pmean
    d["alliance_between"] = pmean - d.groupby("patient")["alliance"].mean().mean()
    prev_session = d.groupby("patient")["session"].shift(1)
    prev_within = d.groupby("patient")["alliance_within"].shift(1)
    d["alliance_within_lag"] = prev_within.where(prev_session == d["session"] - 1)
    return d


def one(seed: int) -> dict:
    data = analysis_table(simulate_study(seed=seed, **DESIGN))
    t0 = time.perf_counter()
    res = fit_model(data, preset_formula("alliance_outcome"), name=f"rep{seed}").to_dict()
    out = {
        "seed": seed,
        "seconds": time.perf_counter() - t0,
        "converged": res["convergence"]["converged"],
        "optimizer": res["convergence"]["optimizer"],
        "boundary": bool(res["convergence"]["boundary"]),
        "n_obs": res["n_obs"],
    }
    for row in res["fixed"]:
        if row["term"] in TRUTH:
            out[row["term"] + ":est"] = row["estimate"]
            out[row["term"] + ":se"] = row["se"]
            out[row["term"] + ":lo"] = row["ci_low"]
            out[row["term"] + ":hi"] = row["ci_high"]
            out[row["term"] + ":r"] = row["r"]
    return out


def summarise(df: pd.DataFrame, reps: int, workers: int, wall: float) -> str:
    lines = [
        "Parameter recovery: alliance_outcome preset (issue 6)",
        f"formula: {preset_formula('alliance_outcome')}",
        f"design per replication: {DESIGN}, other parameters as EXAMPLE_DESIGN; "
        f"REML; seeds 1..{reps}",
        f"replications: {len(df)}  converged: {int(df.converged.sum())}  "
        f"boundary (singular) fits: {int(df.boundary.sum())}  "
        f"optimizers used: {df.optimizer.value_counts().sort_index().to_dict()}",
        f"mean observations per fit: {df.n_obs.mean():.1f}",
        "",
        f"{'effect':<22}{'true':>7}{'mean est':>10}{'bias':>9}{'rel.bias':>9}{'emp.SD':>9}"
        f"{'mean SE':>9}{'RMSE':>8}{'cover95':>9}{'MC SE':>7}{'mean r':>8}",
    ]
    for term, truth in TRUTH.items():
        est = df[term + ":est"].to_numpy(float)
        se = df[term + ":se"].to_numpy(float)
        cover = (df[term + ":lo"] <= truth) & (truth <= df[term + ":hi"])
        cov = float(cover.mean())
        mcse = math.sqrt(cov * (1 - cov) / len(df))
        bias = est.mean() - truth
        lines.append(
            f"{term:<22}{truth:>7.2f}{est.mean():>10.4f}{bias:>9.4f}{bias / truth:>9.2%}"
            f"{est.std(ddof=1):>9.4f}{se.mean():>9.4f}"
            f"{math.sqrt(np.mean((est - truth) ** 2)):>8.4f}"
            f"{cov:>9.3f}{mcse:>7.3f}{df[term + ':r'].mean():>8.3f}"
        )
    lines += [
        "",
        f"fit time per replication: median {df.seconds.median():.2f} s, "
        f"max {df.seconds.max():.2f} s; "
        f"wall {wall:.0f} s on {workers} worker(s); python {platform.python_version()}",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument(
        "--out", default=str(Path(__file__).parent / "results" / "recovery_alliance_outcome.txt")
    )
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=a.workers) as ex:
        rows = list(ex.map(one, range(1, a.reps + 1), chunksize=4))
    df = pd.DataFrame(rows).sort_values("seed")
    text = summarise(df, a.reps, a.workers, time.perf_counter() - t0)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(text)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
