"""CPU cost of the example pipeline, per rule, and the import overhead each job pays.

Runs ``snakemake --cores N`` on the full example (``config.yaml``: both studies, pooling,
power) in a temporary copy of the project, as the end-to-end tests do, then sums the
``cpu_time`` and ``s`` columns of every job's Snakemake ``benchmark:`` file per rule. The
total CPU of the whole run (the Snakemake process, its DAG, every job) comes from
``getrusage(RUSAGE_CHILDREN)``. Separately it measures, with fresh interpreters, what one job
pays before it computes anything: ``import snakemake.script`` (the preamble of every
``script:`` job), ``import allianceflow.stages`` and each rule script's imports (its
top-level imports plus the modules its stage function imports lazily), as process CPU time
(median of *repeat* runs) and as ``-X importtime`` cumulative microseconds.

Usage::

    python benchmarks/pipeline_cpu.py [--label before] [--cores 2] [--imports-only]

and paste the output into ``benchmarks/results/pipeline_cpu.txt``. ``--summarise DIR``
only sums the benchmark files of a run already made in DIR.

Snakemake samples a job's processes (every 0.5 s for the first 15 s, then every 30 s), so a
benchmark file's ``cpu_time`` leaves out what a job spent after its last sample: it is close
for short jobs and an undercount for long ones, more so on a loaded machine where jobs take
longer. The whole-run total from ``getrusage`` is exact. The machine's load changes wall
time, much less CPU time; numbers are for comparison on one machine.
"""

from __future__ import annotations

import argparse
import ast
import csv
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from conftest import _copy_project  # noqa: E402  (the copy the end-to-end tests make)

SCRIPTS = ROOT / "workflow" / "scripts"
STAGES = ROOT / "src" / "allianceflow" / "stages.py"


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


#: Runs Snakemake in this interpreter and, at exit, writes the CPU time of its own process
#: (DAG, scheduling, job starts, benchmark sampling: every thread) to the file argv[1].
_SNAKEMAKE = """
import atexit, resource, sys
out = sys.argv.pop(1)
def _own_cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    with open(out, "w") as handle:
        handle.write(str(usage.ru_utime + usage.ru_stime))
atexit.register(_own_cpu)
from snakemake.cli import main
main()
"""

#: The line :func:`allianceflow.stages.run_step` logs when a job's step ends.
_CPU_LINE = re.compile(r"CPU time: ([0-9.]+) s in this process, ([0-9.]+) s of it before")


#: What every rule script becomes with ``--stub``: write its outputs empty, compute nothing.
_STUB = """for path in [*snakemake.output, *snakemake.log]:
    open(path, "w").close()
"""


def run_pipeline(
    cores: int,
    scheduler: str | None,
    root: Path = ROOT,
    env=None,
    stub: bool = False,
    studies: list[str] | None = None,
) -> dict:
    """Run the example in a temporary copy of *root*; return wall and CPU, per rule too.

    ``cpu`` is the whole run (getrusage of Snakemake and every process it started),
    ``snakemake`` the Snakemake process alone, ``per_rule`` the benchmark files and the
    CPU each job's own process logged. With *stub* every rule script only writes empty
    outputs: the run measures Snakemake's own cost (DAG, params, scheduling, job starts
    and the script preamble) on the real DAG. *studies* keeps only those studies of the
    example's config (the pooling stays when two or more remain).

    Python runs as on a researcher's machine: it caches compiled modules
    (``__pycache__``), so ``PYTHONDONTWRITEBYTECODE``, which some sandboxes set and which
    makes every job compile the package again (about 0.3 CPU-s a job), is unset, and the
    package is compiled once before the run, as its first import would.
    """
    env = {k: v for k, v in (env or os.environ).items() if k != "PYTHONDONTWRITEBYTECODE"}
    package = (root / "src" / "allianceflow") if env.get("PYTHONPATH") else None
    for source in filter(None, [package, ROOT / "src" / "allianceflow"]):
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(source)], check=True)
    with tempfile.TemporaryDirectory(prefix="pipeline_cpu_") as tmp:
        workdir = _copy_project(root, Path(tmp), small=False)
        if studies:
            import yaml

            config = yaml.safe_load((workdir / "config.yaml").read_text(encoding="utf-8"))
            config["studies"] = {k: v for k, v in config["studies"].items() if k in studies}
            (workdir / "config.yaml").write_text(
                yaml.safe_dump(config, sort_keys=False, allow_unicode=True), encoding="utf-8"
            )
        if stub:
            for script in (workdir / "workflow" / "scripts").glob("*.py"):
                script.write_text(_STUB)
        rules = subprocess.run(
            [sys.executable, "-m", "snakemake", "--list-rules"],
            cwd=workdir,
            capture_output=True,
            text=True,
            check=True,
            env=env,
        ).stdout.split()
        own = Path(tmp) / "snakemake_cpu.txt"
        cpu0, wall0 = _children_cpu(), time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-c", _SNAKEMAKE, str(own), "--cores", str(cores)]
            + (["--scheduler", scheduler] if scheduler else []),
            cwd=workdir,
            capture_output=True,
            text=True,
            env=env,
        )
        wall, cpu = time.perf_counter() - wall0, _children_cpu() - cpu0
        if proc.returncode != 0:
            sys.exit(f"snakemake failed:\n{proc.stderr[-4000:]}")
        per_rule = summarise(workdir, rules)
        snakemake_cpu = float(own.read_text())
    return {"wall": wall, "cpu": cpu, "snakemake": snakemake_cpu, "per_rule": per_rule}


def summarise(workdir: Path, rules: list[str]) -> dict[str, dict[str, float]]:
    """Per rule: jobs, the benchmark files' ``cpu_time`` and ``s``, and the logged CPU.

    ``job_cpu`` is the CPU time each job's own process logged at the end of its step
    (exact, unlike the sampled ``cpu_time``), ``job_start`` the part of it spent before
    the step began: interpreter start, Snakemake's script preamble and the imports.
    """
    per_rule: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))

    def rule_of(path: Path, study: str) -> str | None:
        # files are named after the rule (fit_model_<model>.log), or after a per-study rule
        # without its study (logs/<study>/plot_figures.log for plot_figures_<study>)
        found = [r for r in rules if path.stem.startswith(r) or r == f"{path.stem}_{study}"]
        return max(found, key=len, default=None)

    for path in sorted(workdir.glob("logs/**/benchmarks/*.tsv")):
        rule = rule_of(path, path.parts[-3])
        with path.open() as handle:
            row = next(csv.DictReader(handle, delimiter="\t"))
        per_rule[rule]["jobs"] += 1
        per_rule[rule]["s"] += float(row["s"])
        per_rule[rule]["cpu_time"] += float(row["cpu_time"])
    for path in sorted(workdir.glob("logs/**/*.log")):
        found = _CPU_LINE.search(path.read_text(errors="replace"))
        if found:
            rule = rule_of(path, path.parts[-2]) or path.stem
            per_rule[rule]["logged_jobs"] += 1
            per_rule[rule]["job_cpu"] += float(found.group(1))
            per_rule[rule]["job_start"] += float(found.group(2))
    return per_rule


def print_rules(per_rule: dict[str, dict[str, float]]) -> None:
    """One line per rule, most CPU first, and the sums."""
    print(f"{'rule':<24} {'jobs':>4} {'cpu_time':>9} {'s (wall)':>9} {'job CPU':>8} {'start':>6}")
    for rule in sorted(per_rule, key=lambda r: -per_rule[r]["job_cpu"]):
        v = per_rule[rule]
        jobs = int(max(v["jobs"], v["logged_jobs"]))
        print(
            f"{rule:<24} {jobs:4d} {v['cpu_time']:9.1f} {v['s']:9.1f} "
            f"{v['job_cpu']:8.1f} {v['job_start']:6.1f}"
        )
    jobs = sum(max(v["jobs"], v["logged_jobs"]) for v in per_rule.values())
    sums = {k: sum(v[k] for v in per_rule.values()) for k in ("cpu_time", "job_cpu", "job_start")}
    print(
        f"{'sum of jobs':<24} {int(jobs):4d} {sums['cpu_time']:9.1f} {'':9} "
        f"{sums['job_cpu']:8.1f} {sums['job_start']:6.1f}"
    )


def _stage_imports() -> dict[str, list[str]]:
    """Stage function -> the modules it imports inside its body (lazily)."""
    tree = ast.parse(STAGES.read_text())
    out: dict[str, tuple[list[str], set[str]]] = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            mods = []
            for sub in ast.walk(node):
                if isinstance(sub, ast.ImportFrom) and sub.module:
                    mods.append("allianceflow." * (sub.level > 0) + sub.module)
                elif isinstance(sub, ast.ImportFrom):  # from . import tables
                    mods += [f"allianceflow.{a.name}" for a in sub.names]
                elif isinstance(sub, ast.Import):
                    mods += [a.name for a in sub.names]
            calls = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
            out[node.name] = (mods, calls)

    # follow calls between stage functions (derive_stage -> derive_study -> .derive)
    def closure(name, seen):
        mods, calls = out.get(name, ([], set()))
        found = list(mods)
        for other in sorted(calls - seen):
            if other in out:
                seen.add(other)
                found += closure(other, seen)
        return found

    return {name: list(dict.fromkeys(closure(name, {name}))) for name in out}


def script_imports() -> dict[str, list[str]]:
    """Rule script -> every module its job imports: top level, then its stage's lazy ones."""
    lazy = _stage_imports()
    out = {}
    for path in sorted(SCRIPTS.glob("*.py")):
        mods, called = [], []
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ImportFrom):
                mods.append(node.module)
                called += [a.name for a in node.names]
            elif isinstance(node, ast.Import):
                mods += [a.name for a in node.names]
        for name in called:
            mods += lazy.get(name, [])
        # figure_stage dispatches to the registry's stage functions: all of figures.py
        if "figure_stage" in called:
            mods.append("allianceflow.figures")
        # outputs_stage runs figure and table stages (OUTPUT_STAGES): both modules
        if "outputs_stage" in called:
            mods += ["allianceflow.figures", "allianceflow.tables"]
        out[path.stem] = list(dict.fromkeys(mods))
    return out


def import_cost(modules: list[str], repeat: int) -> tuple[float, float]:
    """Median process CPU seconds of ``python -c 'import ...'`` and -X importtime total (s)."""
    code = "; ".join(f"import {m}" for m in modules) or "pass"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    cpus = []
    for _ in range(repeat):
        before = _children_cpu()
        subprocess.run([sys.executable, "-c", code], check=True, env=env)
        cpus.append(_children_cpu() - before)
    err = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, env=env
    ).stderr
    total = 0
    for line in err.splitlines():
        parts = line.split("|")
        # top-level entries only (no indentation before the module name)
        if len(parts) == 3 and parts[1].strip().isdigit() and not parts[2].startswith("  "):
            total += int(parts[1])
    return statistics.median(cpus), total / 1e6


def report_imports(repeat: int) -> None:
    """Print the import costs of an empty interpreter, the preamble and every rule script."""
    base, _ = import_cost([], repeat)
    print(f"python -c pass: {base:.2f} CPU-s (subtracted below)")
    rows = [
        ("snakemake.script (job preamble)", ["snakemake.script"]),
        ("allianceflow.stages", ["allianceflow.stages"]),
    ] + [(f"scripts/{k}.py", v) for k, v in script_imports().items()]
    print(f"{'what':<42} {'CPU-s':>6} {'importtime-s':>12}  modules")
    for label, mods in rows:
        cpu, imp = import_cost(mods, repeat)
        shown = ", ".join(m.replace("allianceflow.", "af.") for m in mods)
        print(f"{label:<42} {cpu - base:6.2f} {imp:12.2f}  {shown}")


#: A job's imports, then its CPU time so far written to argv[1]; argv[2] == "freeze" calls
#: gc.freeze() first, as run_step(own_process=True) does when the step ends.
_EXIT = """
import gc, resource, sys
import pandas, pyarrow.parquet, scipy.optimize, snakemake.script, allianceflow.stages
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot
if sys.argv[2] == "freeze":
    gc.freeze()
usage = resource.getrusage(resource.RUSAGE_SELF)
open(sys.argv[1], "w").write(str(usage.ru_utime + usage.ru_stime))
"""


def report_exit_cost(repeat: int) -> None:
    """Print what a job's interpreter spends after its last line (median of *repeat* runs).

    The process's whole CPU time (getrusage of the child) minus the CPU time it had used
    at its last line: the interpreter's exit, with a fit or figure job's modules loaded,
    with and without :func:`gc.freeze` before it. Snakemake sets one BLAS thread per job,
    so this does too.
    """
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    print(f"-- interpreter exit after a job's imports (median of {repeat}, CPU-s)")
    with tempfile.TemporaryDirectory() as tmp:
        own = Path(tmp) / "self.txt"
        for mode in ("plain", "freeze"):
            costs = []
            for _ in range(repeat):
                before = _children_cpu()
                subprocess.run([sys.executable, "-c", _EXIT, str(own), mode], env=env, check=True)
                costs.append(_children_cpu() - before - float(own.read_text()))
            label = "gc.freeze() first" if mode == "freeze" else "as it is"
            print(f"exit, {label:<18} {statistics.median(costs):6.3f}")


def print_run(label: str, res: dict) -> None:
    """The per-rule table and the whole-run totals of one run."""
    print(f"-- {label}")
    print_rules(res["per_rule"])
    jobs = sum(v["job_cpu"] for v in res["per_rule"].values())
    print(
        f"whole run (getrusage of Snakemake and every process it started): {res['cpu']:.1f} "
        f"CPU-s, {res['wall']:.1f} s wall; Snakemake's own process {res['snakemake']:.1f}; "
        f"jobs' processes (logged) {jobs:.1f}; other children (solver, teardown) "
        f"{res['cpu'] - res['snakemake'] - jobs:.1f}"
    )


def main() -> None:
    """Parse arguments, measure, print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", default="", help="a heading for the output")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3, help="interpreter starts per import")
    parser.add_argument("--imports-only", action="store_true")
    parser.add_argument("--no-imports", action="store_true", help="skip the import costs")
    parser.add_argument(
        "--exit-cost",
        action="store_true",
        help="only measure the interpreter's exit after a job's imports, with and without "
        "gc.freeze()",
    )
    parser.add_argument(
        "--scheduler",
        action="append",
        help="Snakemake's job scheduler (ilp, greedy); repeat to run once with each "
        "(default: greedy, as `make run`)",
    )
    parser.add_argument(
        "--studies",
        nargs="+",
        metavar="STUDY",
        help="keep only these studies of config.yaml (e.g. example example2: the two "
        "studies issue 20's target was set on)",
    )
    parser.add_argument(
        "--stub",
        action="store_true",
        help="replace every rule script by one that writes empty outputs (Snakemake's own cost)",
    )
    parser.add_argument(
        "--before",
        type=Path,
        metavar="DIR",
        help="also run a checkout of another commit in DIR first (its src/ on PYTHONPATH)",
    )
    parser.add_argument(
        "--summarise",
        type=Path,
        metavar="DIR",
        help="only sum the benchmark files and logs of a run already made in DIR",
    )
    args = parser.parse_args()
    if args.summarise:
        rules = subprocess.run(  # the rules of the copy that ran
            [sys.executable, "-m", "snakemake", "--list-rules"],
            cwd=args.summarise,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        print_rules(summarise(args.summarise, rules))
        return
    print(f"== {args.label} ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})")
    if args.exit_cost:
        report_exit_cost(max(args.repeat, 5))
        return
    if not args.no_imports:
        print("-- per-job imports (fresh interpreter, median CPU-s beyond `python -c pass`)")
        report_imports(args.repeat)
    if args.imports_only:
        return
    runs = []
    for scheduler in args.scheduler or ["greedy"]:
        how = f"--scheduler {scheduler}" + (", stub scripts" if args.stub else "")
        if args.before:
            env = {**os.environ, "PYTHONPATH": str(args.before.resolve() / "src")}
            runs.append((f"before ({args.before}), {how}", scheduler, args.before, env))
        runs.append((f"this tree, {how}", scheduler, ROOT, None))
    for label, scheduler, root, env in runs:
        load = os.getloadavg()
        res = run_pipeline(args.cores, scheduler, root, env, stub=args.stub, studies=args.studies)
        end = os.getloadavg()
        print_run(
            f"{label}, --cores {args.cores}; load average {load[0]:.1f} at start, "
            f"{end[0]:.1f} at end",
            res,
        )


if __name__ == "__main__":
    main()
