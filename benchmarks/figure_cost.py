"""CPU cost of the example's figures and tables, per output and per format (issue 20).

Calls the figure and table stages (``allianceflow.stages``) the way the rules in
``workflow/rules/figures.smk``, ``tables.smk``, ``score.smk`` and ``pool.smk`` call them,
with the inputs of a finished example run (``--run DIR``: its ``data/processed`` and
``results/*/models``, copied to a temporary folder first, so the run is only read) and the
settings of ``config.yaml``, in fresh interpreters:

* **start-up**: ``import allianceflow.stages`` and the imports a figure or a table job
  pays before it draws (pandas, matplotlib.pyplot, python-docx), process CPU time;
* **cold**: the first figure of a process (a forest plot) and the first table (one model's
  table), which pay one-time costs (the font cache, the Word template, …);
* **warm**: every figure and every table once more in the same process, with the CPU time
  of each format (``Figure.savefig`` per format; the table writer per format).

Each worker runs every figure and table twice and reports the second pass as warm; the
numbers are medians over ``--repeat`` workers. ``--profile FILE`` instead writes a cProfile
(process CPU time) of one pass over every figure and table, after a first warm-up pass.
``--outputs DIR`` keeps the files of the last pass (to compare bytes and pixels).

Usage::

    python benchmarks/figure_cost.py --run RUN --label after --repeat 3 \
        --append benchmarks/results/figure_cost.txt

CPU time (``time.process_time``) is what the pipeline's budget counts; it moves much less
with the machine's load than wall time, but the load average is printed with the numbers.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIGURE_FORMATS = ("png", "pdf", "svg")
TABLE_FORMATS = ("csv", "md", "html", "tex", "docx")


# --------------------------------------------------------------------------- the jobs


def _copy_inputs(run: Path, work: Path) -> None:
    """Copy what the figure and table rules read from a finished run into *work*."""
    for path in sorted((run / "data" / "processed").glob("*/*")):
        if path.suffix in (".parquet", ".json", ".csv"):
            target = work / path.relative_to(run)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
    for pattern in (
        "results/*/models/*.json",
        "results/*/tables/reliability.csv",
        "results/pooled/meta_analysis.json",
        "results/power/tables/power.csv",
    ):
        for path in sorted(run.glob(pattern)):
            target = work / path.relative_to(run)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)


def _rebased(value, work: Path):
    """Return *value* (a step's keyword) with every relative file path under *work*.

    Paths may stand alone or in a list or mapping; other values are returned unchanged.
    """
    if isinstance(value, dict):
        return {k: _rebased(v, work) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_rebased(v, work) for v in value]
    if isinstance(value, str) and value.startswith(("data/", "results/")):
        return str(work / value)
    return value


def _jobs(work: Path, config_path: Path) -> list[tuple[str, str, Callable[[], None]]]:
    """Every figure and table of the example as ``(kind, name, call)``, in the jobs' order.

    The figures and tables are the steps of the study's figure and table jobs
    (:func:`allianceflow.stages.figure_steps`, :func:`~allianceflow.stages.table_steps`,
    which exist from commit 3ca6ae3 on: to rerun the "before" recorded in the results file,
    use this script as of commit 21f74d1), with their paths under *work*; the reliability
    table, the pooled forest plot and the power curve are called as their own rules call
    them.
    """
    from allianceflow import stages
    from allianceflow.config import load_config

    config = load_config(config_path)
    jobs: list[tuple[str, str, Callable[[], None]]] = []

    def p(*parts: str) -> str:
        return str(work.joinpath(*parts))

    for study, block in config["studies"].items():
        steps = [
            ("figure", step) for step in stages.figure_steps(study, block, config["models"])
        ] + [("table", step) for step in stages.table_steps(study, block, config["models"])]
        for kind, step in steps:
            stem = Path(stages.step_files([step], outputs=True)[0]).stem
            call = partial(stages.outputs_stage, [_rebased(step, work)])
            jobs.append((kind, f"{study}/{stem}", call))
        if "reliability" in stages.study_tables(block):  # compute_reliability renders it
            call = partial(
                stages.reliability_table_stage,
                p("results", study, "tables", "reliability.csv"),
                outputs=[
                    p("results", study, "tables", f"reliability.{f}") for f in TABLE_FORMATS[1:]
                ],
                **stages.table_settings("reliability", block, config["models"]),
            )
            jobs.append(("table", f"{study}/reliability", call))
    meta = work / "results" / "pooled" / "meta_analysis.json"
    if meta.exists():
        call = partial(
            stages.meta_forest_figure_stage,
            str(meta),
            benchmark=config["pool"]["benchmark"],
            outputs=[p("results", "pooled", "figures", f"meta_forest.{f}") for f in FIGURE_FORMATS],
        )
        jobs.append(("figure", "pooled/meta_forest", call))
    power = work / "results" / "power" / "tables" / "power.csv"
    if power.exists():
        call = partial(
            stages.power_curve_stage,
            str(power),
            outputs=[p("results", "power", "figures", f"power_curve.{f}") for f in FIGURE_FORMATS],
        )
        jobs.append(("figure", "power/power_curve", call))
    return jobs


def _make_folders(work: Path, jobs) -> None:
    for study in {name.split("/")[0] for _, name, _ in jobs}:
        for folder in ("figures", "tables"):
            (work / "results" / study / folder).mkdir(parents=True, exist_ok=True)


# --------------------------------------------------------------------------- timing per format


class _FormatClock:
    """Adds up process CPU time per output format while installed.

    Figures: each ``Figure.savefig`` call, by its ``format``. Tables: each path given to
    ``allianceflow.tables.write_table_files`` (called once per path), by suffix, and the
    CSVs that stages write themselves (``allianceflow.io.write_table``).
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    def install(self) -> None:
        import matplotlib.figure

        import allianceflow.io as af_io
        import allianceflow.tables as tables

        clock = self
        savefig = matplotlib.figure.Figure.savefig

        def timed_savefig(fig, fname, *args, **kwargs):
            fmt = kwargs.get("format") or Path(str(fname)).suffix.lstrip(".")
            c0 = time.process_time()
            try:
                return savefig(fig, fname, *args, **kwargs)
            finally:
                clock.seconds[fmt] += time.process_time() - c0

        write = tables.write_table_files
        write_csv = af_io.write_table
        inside = []

        def timed_write(table, paths):
            for path in paths:
                c0 = time.process_time()
                inside.append(True)
                try:
                    write(table, [path])
                finally:
                    inside.pop()
                clock.seconds[Path(path).suffix.lstrip(".")] += time.process_time() - c0

        def timed_csv(frame, path, *args, **kwargs):  # stages write some CSVs themselves
            if inside or Path(path).suffix != ".csv":
                return write_csv(frame, path, *args, **kwargs)
            c0 = time.process_time()
            try:
                return write_csv(frame, path, *args, **kwargs)
            finally:
                clock.seconds["csv"] += time.process_time() - c0

        matplotlib.figure.Figure.savefig = timed_savefig
        tables.write_table_files = timed_write
        af_io.write_table = timed_csv

    def take(self) -> dict[str, float]:
        out = dict(self.seconds)
        self.seconds.clear()
        return out


def _run_pass(jobs, clock: _FormatClock | None) -> list[dict]:
    rows = []
    for kind, name, call in jobs:
        if clock is not None:
            clock.take()
        c0 = time.process_time()
        call()
        seconds = time.process_time() - c0
        rows.append(
            {
                "kind": kind,
                "name": name,
                "cpu": seconds,
                "formats": clock.take() if clock is not None else {},
            }
        )
    return rows


def _worker(args) -> None:
    """One fresh process: start-up, cold first figure and table, then two passes."""
    c0 = time.process_time()
    import allianceflow.stages  # noqa: F401  (every job's script imports it)

    t_stages = time.process_time() - c0
    c0 = time.process_time()
    import pandas  # noqa: F401

    t_pandas = time.process_time() - c0
    c0 = time.process_time()
    import matplotlib.pyplot  # noqa: F401

    import allianceflow.figures  # noqa: F401

    t_mpl = time.process_time() - c0
    c0 = time.process_time()
    import docx  # noqa: F401

    import allianceflow.tables  # noqa: F401

    t_docx = time.process_time() - c0
    work = Path(args.work)
    jobs = _jobs(work, Path(args.config))
    _make_folders(work, jobs)
    clock = _FormatClock()
    clock.install()
    first_figure = next(j for j in jobs if j[0] == "figure" and "/forest_" in j[1])
    first_table = next(j for j in jobs if j[0] == "table" and j[1].endswith("/alliance_outcome"))
    cold = _run_pass([first_figure, first_table], clock)
    passes = [_run_pass(jobs, clock) for _ in range(2)]
    json.dump(
        {
            "startup": {
                "allianceflow.stages": t_stages,
                "pandas": t_pandas,
                "matplotlib.pyplot": t_mpl,
                "docx": t_docx,
            },
            "cold": cold,
            "first_pass": passes[0],
            "warm": passes[1],
        },
        sys.stdout,
    )


def _profile(work: Path, config: Path, out: Path, top: int) -> None:
    jobs = _jobs(work, config)
    _make_folders(work, jobs)
    prof = cProfile.Profile(time.process_time)
    prof.enable()
    _run_pass(jobs[:1], None)  # the cold first figure
    prof.disable()
    cold = prof
    _run_pass(jobs, None)
    prof = cProfile.Profile(time.process_time)
    c0 = time.process_time()
    prof.enable()
    rows = _run_pass(jobs, None)
    prof.disable()
    total = time.process_time() - c0
    with out.open("w", encoding="utf-8") as fh:
        fh.write(
            f"# cProfile (process CPU) of one warm pass over {len(rows)} outputs: {total:.2f} s\n"
        )
        for kind in ("figure", "table"):
            cpu = sum(r["cpu"] for r in rows if r["kind"] == kind)
            fh.write(f"#   {kind}s: {cpu:.2f} s\n")
        for label, stats_of in (("warm pass", prof), ("cold first figure", cold)):
            for key in ("cumulative", "tottime"):
                buf = io.StringIO()
                pstats.Stats(stats_of, stream=buf).sort_stats(key).print_stats(top)
                fh.write(f"\n=== {label}, by {key}\n{buf.getvalue()}")


# --------------------------------------------------------------------------- the report


def _median(values) -> float:
    values = list(values)
    return statistics.median(values) if values else float("nan")


def _report(label: str, results: list[dict], n_jobs: dict[str, int]) -> str:
    load = os.getloadavg()
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [
        f"== {label}  ({len(results)} fresh processes; medians; CPU seconds; load average "
        f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; {stamp})",
        "start-up (imports, per process): "
        + ", ".join(
            f"{k} {_median(r['startup'][k] for r in results):.2f}" for k in results[0]["startup"]
        ),
    ]
    for i, row in enumerate(results[0]["cold"]):
        key = (row["kind"], row["name"])
        med = _median(r["cold"][i]["cpu"] for r in results)
        warm = _median(
            next(w["cpu"] for w in r["warm"] if (w["kind"], w["name"]) == key) for r in results
        )
        fmts = {
            f: _median(r["cold"][i]["formats"].get(f, 0.0) for r in results) for f in row["formats"]
        }
        lines.append(
            f"cold, first {row['kind']} of a process ({row['name']}): {med:.3f} "
            f"(warm {warm:.3f}; first-call cost {med - warm:.3f}); per format: "
            + ", ".join(f"{f} {s:.3f}" for f, s in fmts.items())
        )
    for kind, formats in (("figure", FIGURE_FORMATS), ("table", TABLE_FORMATS)):
        names = [w["name"] for w in results[0]["warm"] if w["kind"] == kind]
        per = {
            n: _median(
                next(w["cpu"] for w in r["warm"] if (w["kind"], w["name"]) == (kind, n))
                for r in results
            )
            for n in names
        }
        fmt = {
            f: _median(
                sum(w["formats"].get(f, 0.0) for w in r["warm"] if w["kind"] == kind)
                for r in results
            )
            for f in formats
        }
        total = sum(per.values())
        lines.append(
            f"warm {kind}s: {len(names)} of them, total {total:.2f}, mean {total / len(names):.3f} "
            f"per {kind}; all {kind}s' time per format: "
            + ", ".join(f"{f} {s:.2f}" for f, s in fmt.items())
            + f"; building (the rest) {total - sum(fmt.values()):.2f}"
        )
        lines += [f"    {n:<48} {s:.3f}" for n, s in per.items()]
    del n_jobs
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, help="a finished example run (only read)")
    parser.add_argument("--config", type=Path, default=ROOT / "config.yaml")
    parser.add_argument("--label", default="this checkout")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--profile", type=Path, help="write a cProfile of one pass here")
    parser.add_argument("--top", type=int, default=45)
    parser.add_argument("--outputs", type=Path, help="keep the last pass's files here")
    parser.add_argument("--append", type=Path, help="also append the report to this file")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args)
        return
    if args.run is None:
        parser.error("--run DIR (a finished example run) is required")
    with tempfile.TemporaryDirectory(prefix="figure_cost_") as tmp:
        work = Path(tmp)
        _copy_inputs(args.run, work)
        if args.profile:
            _profile(work, args.config, args.profile, args.top)
            return
        results = []
        for _ in range(args.repeat):
            done = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--worker",
                    "--work",
                    str(work),
                    "--config",
                    str(args.config),
                ],
                check=True,
                capture_output=True,
                text=True,
                cwd=ROOT,
            )
            results.append(json.loads(done.stdout))
        n_jobs = {k: sum(r["kind"] == k for r in results[0]["warm"]) for k in ("figure", "table")}
        report = _report(args.label, results, n_jobs)
        sys.stdout.write(report)
        if args.append:
            with args.append.open("a", encoding="utf-8") as fh:
                fh.write(report + "\n")
        if args.outputs:
            shutil.copytree(work / "results", args.outputs, dirs_exist_ok=True)


if __name__ == "__main__":
    main()
