r"""Cost of the Satterthwaite and Kenward–Roger df: Woodbury blocks against dense V_j (issue 20).

The pipeline's default denominator df for fixed effects is Kenward–Roger
(:mod:`allianceflow.models.ddf`). Both df need the REML moments of the fitted model
(:func:`allianceflow.models.ddf.variance_structure`). This script times, in one run and on
the same fits, the two ways of computing them:

* ``dense``: one dense :math:`n_j \times n_j` marginal covariance :math:`V_j` (and its
  derivatives) per level of the outermost grouping factor, the computation before this
  change (:func:`allianceflow.models.ddf_moments.dense_reml_moments`);
* ``woodbury``: :math:`V_j^{-1}` through Woodbury's identity, every product written with
  :math:`Z_j^\top Z_j`, :math:`Z_j^\top X_j` and :math:`q_j \times q_j` blocks
  (:func:`allianceflow.models.ddf_moments.reml_moments`, the default now).

Each timed call is ``variance_structure`` followed by ``kenward_roger`` and
``satterthwaite_df`` (what ``fit_model(..., ddf=...)`` adds to a fit). Data: the simulated
study of ``benchmarks/fit_path.py`` with 2,000 patients (about 18.7k rows, 50 patients per
therapist, so 40 therapists of about 470 rows), models

* ``patient``:   ``outcome ~ session + alliance_within_lag + alliance_between
  + (1 + session | patient)`` (2,000 blocks of about 9 rows);
* ``therapist``: the same ``+ (1 | therapist)`` (40 blocks of about 470 rows).

Reported: median CPU seconds (process time, all threads) over ``--reps`` calls (dense: at most
3), peak traced memory of one call (tracemalloc, which sees numpy's buffers), the median CPU
seconds of the REML fit itself for scale, and the largest relative difference between the two
ways in the Kenward–Roger SEs and df and the Satterthwaite df.

Run:  python benchmarks/ddf_speed.py > benchmarks/results/ddf_speed.txt
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

FIXED = "outcome ~ session + alliance_within_lag + alliance_between"
MODELS = {
    "patient": FIXED + " + (1 + session | patient)",
    "therapist": FIXED + " + (1 + session | patient) + (1 | therapist)",
}


def _df_tables(data: pd.DataFrame, formula: str, record: dict, dense: bool):
    from allianceflow.models.ddf import kenward_roger, satterthwaite_df, variance_structure

    st = variance_structure(data, formula, record, _dense=dense)
    return kenward_roger(structure=st), satterthwaite_df(structure=st)


def _cpu(fn, reps: int) -> tuple[list[float], object]:
    times, out = [], None
    for _ in range(reps):
        c0 = time.process_time()
        out = fn()
        times.append(time.process_time() - c0)
    return times, out


def _peak_mb(fn) -> float:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b) / np.abs(b)))


def main() -> None:
    """Time both computations on each model and print one table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=2000)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()

    from fit_path import nested

    from allianceflow.models import fit_model

    data = nested(args.patients)
    print(f"# ddf_speed: {args.patients} patients, {len(data)} rows, "
          f"{data['therapist'].nunique()} therapists")  # fmt: skip
    print(f"# python {platform.python_version()}, numpy {np.__version__}, "
          f"{os.cpu_count()} CPUs (shared machine: CPU time, not wall time)")  # fmt: skip
    print(f"# medians over {args.reps} calls (dense: {min(args.reps, 3)}); peak = tracemalloc")
    header = (
        f"{'model':10s} {'blocks':>6s} {'rows/block':>10s} {'fit CPU-s':>9s} "
        f"{'dense CPU-s':>11s} {'dense MB':>8s} {'woodbury CPU-s':>14s} {'woodbury MB':>11s} "
        f"{'speed-up':>8s} {'max rel diff (KR se, KR df, Sat df)':>36s}"
    )
    print(header)
    for model, formula in MODELS.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit_cpu, fit = _cpu(lambda f=formula: fit_model(data, f, reml=True), 3)
        record = fit.to_dict()
        key = "therapist" if model == "therapist" else "patient"
        groups = data.groupby(key).size()
        new_cpu, (kr_new, sat_new) = _cpu(
            lambda f=formula, r=record: _df_tables(data, f, r, dense=False), args.reps
        )
        old_cpu, (kr_old, sat_old) = _cpu(
            lambda f=formula, r=record: _df_tables(data, f, r, dense=True), min(args.reps, 3)
        )
        new_mb = _peak_mb(lambda f=formula, r=record: _df_tables(data, f, r, dense=False))
        old_mb = _peak_mb(lambda f=formula, r=record: _df_tables(data, f, r, dense=True))
        diff = (
            _rel(kr_new["se"].to_numpy(), kr_old["se"].to_numpy()),
            _rel(kr_new["df"].to_numpy(), kr_old["df"].to_numpy()),
            _rel(sat_new["df"].to_numpy(), sat_old["df"].to_numpy()),
        )
        med_old, med_new = statistics.median(old_cpu), statistics.median(new_cpu)
        print(
            f"{model:10s} {len(groups):6d} {groups.mean():10.0f} "
            f"{statistics.median(fit_cpu):9.3f} {med_old:11.3f} {old_mb:8.1f} "
            f"{med_new:14.3f} {new_mb:11.1f} {med_old / med_new:7.1f}x "
            f"{'  '.join(f'{x:.1e}' for x in diff):>36s}"
        )


if __name__ == "__main__":
    main()
