"""Where ``fit_model``'s time goes: cProfile of the public fit path (issue 20).

Profiles :func:`allianceflow.models.fit_model` on the data sets of ``benchmarks/fit_path.py``
(sleepstudy-like, a 300-row two-level set, 20,000 nested patients with and without the
therapist level; ``--sizes`` chooses the nested sizes) and prints, per case, the time of
``fit_model`` and of the engine alone (``fit_lmm``) and the profile's top entries by
cumulative and by own time. Small models are fitted ``--small-reps`` times in one profile so
that their entries are not lost in the noise.

Run:  python benchmarks/fit_path_profile.py > benchmarks/results/fit_path_profile.txt
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from fit_path import (  # noqa: E402
    NESTED_MODELS,
    SLEEP_FORMULA,
    TWO_LEVEL_FORMULA,
    nested,
    sleepstudy_like,
    two_level,
)


def profile(label: str, data, formula: str, reps: int, top: int) -> None:
    """Print the cumulative and own-time profile of *reps* ``fit_model`` calls."""
    from allianceflow.models import fit_lmm, fit_model

    fit_model(data, formula)  # warm-up (imports)
    c0 = time.process_time()
    for _ in range(reps):
        fit_lmm(data, formula)
    engine = (time.process_time() - c0) / reps
    prof = cProfile.Profile(time.process_time)
    c0 = time.process_time()
    prof.enable()
    for _ in range(reps):
        fit_model(data, formula)
    prof.disable()
    public = (time.process_time() - c0) / reps
    print(f"=== {label}: {formula}")
    print(
        f"    per fit (CPU s): fit_model {public:.3f} under the profiler, fit_lmm {engine:.3f} "
        f"without; {reps} fit(s) profiled"
    )
    for key in ("cumulative", "tottime"):
        buf = io.StringIO()
        stats = pstats.Stats(prof, stream=buf).strip_dirs().sort_stats(key)
        stats.print_stats(top)
        body = buf.getvalue()
        start = body.find("   ncalls")
        print(f"--- top {top} by {key}")
        print(body[start:].rstrip())
    print()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="*", default=[20000])
    ap.add_argument("--small-reps", type=int, default=20)
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()
    profile(
        "sleepstudy-like (180 rows)", sleepstudy_like(), SLEEP_FORMULA, args.small_reps, args.top
    )
    profile("two-level (300 rows)", two_level(), TWO_LEVEL_FORMULA, args.small_reps, args.top)
    for n in args.sizes:
        d = nested(n)
        for model, formula in NESTED_MODELS.items():
            profile(f"nested {n // 1000}k {model} ({len(d)} rows)", d, formula, 1, args.top)


if __name__ == "__main__":
    main()
