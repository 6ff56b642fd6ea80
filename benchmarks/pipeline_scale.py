"""Clean, score and derive at routine-monitoring scale: 10^5 and 10^6 session rows (issue 10).

For each size one study is simulated with :func:`allianceflow.simulate.simulate_study`
(the example study's design, 50 patients per therapist, up to 16 sessions, ~10.2 recorded
sessions per patient on average) and written as the clinic export of
:func:`allianceflow.simulate.to_export` (CSV) to a temporary folder. The example study's
block of ``config.yaml`` (read with :func:`allianceflow.config.load_config`) is pointed at
that file, and the stage functions of :mod:`allianceflow.stages` run one after another
on it, exactly as the Snakemake rules call them:

* ``clean``  — :func:`~allianceflow.stages.clean_stage` (CSV → sessions.parquet,
  exclusions.csv, flow.json)
* ``score``  — :func:`~allianceflow.stages.score_stage` (→ scored.parquet)
* ``derive`` — :func:`~allianceflow.stages.derive_stage` (→ analysis.parquet,
  patients.parquet, sudden_gains.csv, expected.json)

Each stage runs in its own fresh interpreter (a child process), inside
``run_step(None, own_process=True, ...)`` as its Snakemake job runs it, so its peak resident
memory (``VmHWM`` from ``/proc/self/status``, which equals ``ru_maxrss`` of the child) is
that stage's alone. Recorded per stage: wall time of the stage call (imports excluded,
pandera's too),
rows/s, peak RSS, and the RSS after imports (the interpreter + numpy/pandas baseline).
``--profile`` also writes a cProfile dump per stage (``<workdir>/<rows>/<stage>.prof``);
``--workdir DIR --reuse`` keeps the data and reuses an export simulated before (the
simulation is deterministic: seed 20261125). ``--before DIR`` runs the stages with the
package found in *DIR* (put first on the children's ``PYTHONPATH``; e.g. the ``src/`` of
``git archive main``), so that before and after are measured in one sitting; the report
gives the sha256 of every output, to show that both write the same bytes.

Run:

    nohup .venv/bin/python benchmarks/pipeline_scale.py \
        > benchmarks/results/pipeline_scale.log 2>&1 &

Output: benchmarks/results/pipeline_scale.txt (and printed).
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STAGES = ("clean", "score", "derive")
#: Expected recorded sessions per patient under the example design (16 sessions, dropout
#: hazard 0.06 from session 2, 3% unrecorded): 1 + 0.97 * (sum_{t<16} 0.94^t - 1).
ROWS_PER_PATIENT = 1 + 0.97 * ((1 - 0.94**16) / 0.06 - 1)
PATIENTS_PER_THERAPIST = 50
SEED = 20261125
#: Issue 20's targets for clean + score + derive at 10^6 rows: wall seconds and peak MB (2 GiB).
TARGET_SECONDS = 30
TARGET_PEAK_MB = 2048


def _rss_mb(field: str) -> float:
    """``VmHWM`` (peak) or ``VmRSS`` (current) of this process in MB (Linux)."""
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _study(raw: Path) -> dict:
    from allianceflow.config import load_config

    config = load_config(REPO / "config.yaml")
    study = dict(config["studies"]["example"])
    study["read"] = {**study["read"], "raw": str(raw)}
    return study


def _paths(folder: Path) -> dict[str, Path]:
    return {
        "raw": folder / "sessions_export.csv",
        "sessions": folder / "sessions.parquet",
        "exclusions": folder / "exclusions.csv",
        "flow": folder / "flow.json",
        "scored": folder / "scored.parquet",
        "analysis": folder / "analysis.parquet",
        "patients": folder / "patients.parquet",
        "sudden_gains": folder / "sudden_gains.csv",
        "expected": folder / "expected.json",
    }


# --------------------------------------------------------------------------- child processes


def child_simulate(folder: Path, rows: int) -> dict:
    from allianceflow.simulate import simulate_study, to_export

    n_patients = max(PATIENTS_PER_THERAPIST, round(rows / ROWS_PER_PATIENT))
    n_therapists = max(1, n_patients // PATIENTS_PER_THERAPIST)
    start = time.perf_counter()
    sessions = simulate_study(seed=SEED, n_patients=n_patients, n_therapists=n_therapists)
    export = to_export(sessions, seed=SEED + 1)
    del sessions
    path = _paths(folder)["raw"]
    export.to_csv(path, index=False, lineterminator="\n")
    return {
        "rows": int(len(export)),
        "patients": n_patients,
        "therapists": n_therapists,
        "csv_mb": path.stat().st_size / 1e6,
        "seconds": time.perf_counter() - start,
    }


def child_stage(stage: str, folder: Path, profile: bool) -> dict:
    from allianceflow import stages

    p = _paths(folder)
    study = _study(p["raw"])
    calls = {
        "clean": lambda: stages.clean_stage(
            p["raw"],
            read=study["read"],
            privacy=study["privacy"],
            clean=study["clean"],
            instruments=study["measures"]["instruments"],
            sessions=p["sessions"],
            exclusions=p["exclusions"],
            flow=p["flow"],
            name="example",
        ),
        "score": lambda: stages.score_stage(
            p["sessions"], instruments=study["measures"]["instruments"], scored=p["scored"]
        ),
        "derive": lambda: stages.derive_stage(
            p["scored"],
            measures=study["measures"],
            derive=study["derive"],
            analysis=p["analysis"],
            patients=p["patients"],
            sudden_gains=p["sudden_gains"],
            expected=p["expected"],
        ),
    }
    # Import everything the stage imports lazily, so the timing is of the work only.
    import pandera  # noqa: F401  (the data contract imports it when clean checks the table)

    import allianceflow.clean  # noqa: F401
    import allianceflow.clinical  # noqa: F401
    import allianceflow.derive  # noqa: F401
    import allianceflow.ontrack  # noqa: F401
    import allianceflow.ruptures  # noqa: F401
    import allianceflow.score  # noqa: F401
    import allianceflow.suddengains  # noqa: F401

    # The stage runs in its process as its Snakemake job runs it: inside run_step, which
    # freezes the garbage collector and, for clean and derive, tunes the allocator
    # (stages.tune_allocator) when the step begins. A --before tree older than these
    # arguments gets the ones it has (the report's "run_step" line says which).
    takes = inspect.signature(stages.run_step).parameters
    job = {"own_process": True, "reuse_memory": stage in ("clean", "derive")}
    given = {k: v for k, v in job.items() if k in takes}
    baseline = _rss_mb("VmRSS")
    cpu_start = time.process_time()
    start = time.perf_counter()
    with stages.run_step(None, **given):
        if profile:
            import cProfile

            profiler = cProfile.Profile()
            profiler.runcall(calls[stage])
            seconds = time.perf_counter() - start
            profiler.dump_stats(str(folder / f"{stage}.prof"))
        else:
            calls[stage]()
            seconds = time.perf_counter() - start
    return {
        "run_step": ", ".join(f"{k}={v}" for k, v in given.items()),
        "seconds": seconds,
        "cpu_seconds": time.process_time() - cpu_start,
        "peak_mb": _rss_mb("VmHWM"),
        "baseline_mb": baseline,
    }


#: Source folder put first on the children's PYTHONPATH (``--before``), or None.
BEFORE_SRC: Path | None = None


def _run_child(args: list[str]) -> dict:
    env = dict(os.environ)
    if BEFORE_SRC is not None:
        env["PYTHONPATH"] = os.pathsep.join(
            [str(BEFORE_SRC), *filter(None, [env.get("PYTHONPATH")])]
        )
    proc = subprocess.run(
        [sys.executable, __file__, "--child", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"child {args} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- parent


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def run(sizes: list[int], workdir: Path, profile: bool, reuse: bool = False) -> list[dict]:
    results = []
    for rows in sizes:
        folder = workdir / str(rows)
        folder.mkdir(parents=True, exist_ok=True)
        meta = folder / "simulated.json"
        if reuse and meta.exists() and _paths(folder)["raw"].exists():
            sim = {**json.loads(meta.read_text()), "reused": True}
        else:
            sim = _run_child(["simulate", str(folder), str(rows)])
            meta.write_text(json.dumps(sim))
        print(
            f"[{rows}] simulated {sim['rows']} rows, {sim['patients']} patients, "
            f"{sim['csv_mb']:.0f} MB CSV in {sim['seconds']:.1f} s",
            flush=True,
        )
        record = {"target_rows": rows, **sim, "stages": {}}
        for stage in STAGES:
            load_before = _load()
            res = _run_child([stage, str(folder), "1" if profile else "0"])
            res["load_before"] = load_before
            res["rows_per_s"] = sim["rows"] / res["seconds"]
            record["stages"][stage] = res
            print(
                f"[{rows}] {stage}: {res['seconds']:.2f} s, peak {res['peak_mb']:.0f} MB "
                f"(baseline {res['baseline_mb']:.0f} MB), {res['rows_per_s']:,.0f} rows/s, "
                f"load before {load_before}",
                flush=True,
            )
        out = _paths(folder)
        import pandas as pd

        analysis = pd.read_parquet(out["analysis"])
        record["analysis_rows"] = int(len(analysis))
        record["analysis_columns"] = int(analysis.shape[1])
        record["flow"] = json.loads(out["flow"].read_text())["sessions"]
        from allianceflow.io import sha256_file

        record["sha256"] = {
            name: sha256_file(out[name])
            for name in (
                "sessions",
                "exclusions",
                "flow",
                "scored",
                "analysis",
                "patients",
                "sudden_gains",
                "expected",
            )
        }
        del analysis
        results.append(record)
    return results


def report(results: list[dict], total_seconds: float, load_start: str, load_end: str) -> str:
    import numpy
    import pandas
    import pyarrow

    lines = [
        "# Pipeline at scale: clean, score, derive (benchmarks/pipeline_scale.py, issue 10)",
        "",
        f"machine: {platform.node()}, {os.cpu_count()} cores, {platform.platform()}; "
        f"python {platform.python_version()}, numpy {numpy.__version__}, "
        f"pandas {pandas.__version__}, "
        f"pyarrow {pyarrow.__version__}",
        f"load average (1/5/15 min) at start: {load_start}; at end: {load_end} "
        "(shared machine: other jobs ran beside this one)",
        "study: example design (simulate_study, seed 20261125), 50 patients per therapist, "
        "up to 16 sessions; raw = to_export CSV; config = config.yaml studies.example",
        "each stage in a fresh child process, inside run_step(own_process=True, ...) as its "
        "job runs it; seconds = wall time of the stage call (imports excluded); peak = VmHWM of "
        "the child (ru_maxrss); baseline = RSS after imports",
        "",
    ]
    for rec in results:
        lines.append(
            f"## {rec['rows']:,} session rows ({rec['patients']:,} patients, "
            f"{rec['therapists']:,} therapists; "
            f"CSV {rec['csv_mb']:.0f} MB; kept {rec['flow']['kept']:,}, "
            f"excluded {rec['flow']['excluded']:,}; "
            f"analysis table {rec['analysis_rows']:,} × {rec['analysis_columns']})"
        )
        lines.append("")
        lines.append(
            "| stage | seconds | CPU s | rows/s | peak MB | baseline MB | load before (1/5/15) |"
        )
        lines.append("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
        total = cpu = peak = 0.0
        for stage, res in rec["stages"].items():
            total += res["seconds"]
            cpu += res.get("cpu_seconds", float("nan"))
            peak = max(peak, res["peak_mb"])
            lines.append(
                f"| {stage} | {res['seconds']:.2f} | {res.get('cpu_seconds', float('nan')):.2f} | "
                f"{res['rows_per_s']:,.0f} | {res['peak_mb']:.0f} | "
                f"{res['baseline_mb']:.0f} | {res['load_before']} |"
            )
        lines.append(f"| **total** | {total:.2f} | {cpu:.2f} | {rec['rows'] / total:,.0f} | | | |")
        lines.append("")
        for stage, res in rec["stages"].items():
            if "run_step" in res:
                lines.append(f"- {stage} ran in run_step({res['run_step']})")
        lines.append("")
        verdict = [
            f"time {total:.1f} s {'<=' if total <= TARGET_SECONDS else '>'} {TARGET_SECONDS} s",
            f"peak {peak:.0f} MB {'<=' if peak <= TARGET_PEAK_MB else '>'} {TARGET_PEAK_MB} MB",
        ]
        lines.append(f"issue 20 targets (clean + score + derive): {'; '.join(verdict)}")
        lines.append("")
        if rec.get("sha256"):
            lines.append("sha256 of the outputs:")
            lines.append("")
            for name, digest in rec["sha256"].items():
                lines.append(f"- {_paths(Path('.'))[name].name}: {digest}")
            lines.append("")
    reused = any(rec.get("reused") for rec in results)
    lines.append(
        f"benchmark wall time: {total_seconds:.0f} s"
        + (
            " (exports reused from --workdir, not simulated again)"
            if reused
            else " incl. simulation"
        )
    )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        kind, folder = argv[1], Path(argv[2])
        if kind == "simulate":
            result = child_simulate(folder, int(argv[3]))
        else:
            result = child_stage(kind, folder, argv[3] == "1")
        print(json.dumps(result))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument(
        "--workdir", type=Path, default=None, help="keep the data here (default: a temp dir)"
    )
    parser.add_argument("--profile", action="store_true", help="write a cProfile dump per stage")
    parser.add_argument(
        "--reuse", action="store_true", help="reuse a simulated export already in --workdir"
    )
    parser.add_argument(
        "--output", type=Path, default=REPO / "benchmarks" / "results" / "pipeline_scale.txt"
    )
    parser.add_argument(
        "--before",
        type=Path,
        default=None,
        help="run the stages with the package in this folder instead (e.g. the src/ of a "
        "`git archive` of main), to compare before and after in one sitting",
    )
    args = parser.parse_args(argv)
    global BEFORE_SRC
    BEFORE_SRC = args.before.resolve() if args.before is not None else None
    load_start = _load()
    start = time.perf_counter()
    if args.workdir is None:
        with tempfile.TemporaryDirectory(prefix="allianceflow-scale-") as tmp:
            results = run(args.sizes, Path(tmp), args.profile)
    else:
        results = run(args.sizes, args.workdir, args.profile, args.reuse)
    text = report(results, time.perf_counter() - start, load_start, _load())
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
