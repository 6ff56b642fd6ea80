"""CPU cost of the example pipeline's ``fit_model`` jobs: their imports and their fits.

Every configured model of every study is one Snakemake ``fit_model`` job: a fresh
interpreter that runs ``workflow/scripts/fit_model.py`` (``allianceflow.stages.fit_stage``
on the study's ``analysis.parquet`` or ``patients.parquet``). This script measures, on the
data of a finished example run (``--run DIR``: ``DIR/config.yaml`` and
``DIR/data/processed/<study>/``; only read):

1. *Imports*, in fresh interpreters (process CPU, user + system, median of ``--repeat``
   runs): a bare interpreter, ``import pandas``, what a fit job imports before it fits
   (``allianceflow.stages``, ``allianceflow.models.fit_model``, ``.models.presets``,
   ``.models.moderation``) and what a model table or figure job imports
   (``allianceflow.models.result``), with the heavy packages each leaves loaded.
2. *Jobs* (``--jobs``): each of the models fitted as the pipeline does, one fresh interpreter
   per model: the CPU before ``fit_stage`` starts, the whole job's CPU, and the heavy
   packages loaded by its end (scipy.stats, statsmodels, patsy).
3. *Fits*, in one process with every module already imported: the CPU of each model's
   ``fit_stage`` (median of ``--repeat``), summed over the models, and the functions where
   that time goes (one cProfile pass over all of them, ``--profile N`` rows).

With ``--before SRC`` (the ``src/`` folder of an earlier version, e.g. from ``git archive``)
every measurement is made for both versions in the same run, alternating in sections 1
and 2, so that both see the same load on a shared machine.

Usage::

    python benchmarks/fit_jobs.py --run RUN_DIR [--before OLD/src] [--repeat 3] [--jobs]
        [--profile 25]

and paste the output into ``benchmarks/results/fit_jobs.txt``. The numbers are process CPU
time on a shared machine: for comparison between runs on one machine, not absolute.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import platform
import pstats
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

#: What a fit job imports before it fits (the script's import and fit_stage's own).
FIT_IMPORTS = (
    "from allianceflow.stages import fit_stage, run_step\n"
    "from allianceflow.models import fit_model\n"
    "from allianceflow.models.presets import preset_level, preset_rows\n"
    "import allianceflow.models.moderation\n"
)
#: What a model table or figure job imports from the models package.
RESULT_IMPORTS = "import allianceflow.models.result\n"
#: Packages whose import is expensive, reported when a step leaves them loaded.
HEAVY = ("scipy.stats", "statsmodels", "patsy", "scipy.optimize", "scipy.sparse")

_LOADED = f"import sys, json; print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"


def _env(src: Path | None) -> dict[str, str]:
    """The environment of a child interpreter: *src* first on its path (None: as installed)."""
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(src), env.get("PYTHONPATH")]))
    return env


def _child_cpu(code: str, src: Path | None = None, args: tuple = ()) -> tuple[float, str]:
    """Run *code* (or a script and *args*) in a fresh interpreter; its CPU time and stdout."""
    command = [sys.executable, *args] if args else [sys.executable, "-c", code]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(command, capture_output=True, text=True, env=_env(src))
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        raise RuntimeError(f"{command[:3]} failed:\n{done.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, done.stdout


def imports(versions, repeat: int) -> None:
    """Section 1: the import CPU of each kind of job, versions alternating."""
    cases = {
        "bare interpreter": "pass\n",
        "import pandas": "import pandas\n",
        "import scipy.stats": "import scipy.stats\n",
        "fit job (stages, models, presets, moderation)": FIT_IMPORTS,
        "table/figure job (models.result)": RESULT_IMPORTS,
    }
    print(f"1. Imports (fresh interpreter, process CPU s, median of {repeat} runs each)")
    for label, code in cases.items():
        runs = {name: [] for name, _ in versions}
        for _ in range(repeat):
            for name, src in versions:
                runs[name].append(_child_cpu(code + _LOADED, src))
        print(f"  {label}")
        for name, _ in versions:
            cpu = statistics.median(r[0] for r in runs[name])
            loaded = ", ".join(json.loads(runs[name][-1][1].strip().splitlines()[-1])) or "-"
            print(f"    {name:8s} {cpu:6.3f}  loaded: {loaded}")
    print()


def models_of(run: Path) -> list[tuple[str, str, dict, Path, Path]]:
    """``(study, model, spec, analysis, patients)`` of every configured model of the run."""
    config = yaml.safe_load((run / "config.yaml").read_text())
    out = []
    for study, block in config["studies"].items():
        data = run / "data" / "processed" / study
        for name in block["models"]:
            spec = config["models"][name]
            out.append((study, name, spec, data / "analysis.parquet", data / "patients.parquet"))
    return out


def _fit_call(name: str, spec: dict, analysis: Path, patients: Path, out: Path) -> str:
    return (
        f"fit_stage({str(analysis)!r}, {spec!r}, name={name!r}, "
        f"json={str(out / (name + '.json'))!r}, txt={str(out / (name + '.txt'))!r}, "
        f"patients={str(patients)!r})\n"
    )


def jobs(versions, models, out: Path) -> None:
    """Section 2: each model as a fresh-interpreter job, versions alternating."""
    print("2. Jobs (one fresh interpreter per model, as the pipeline runs them; CPU s)")
    print("   'start' is the CPU spent before fit_stage begins (interpreter and imports)")
    head = "".join(f" {name + ' start':>13s} {name + ' job':>11s}" for name, _ in versions)
    print(f"  {'study/model':40s}{head}")
    totals = {name: [0.0, 0.0] for name, _ in versions}
    loaded_by = {}
    for study, name, spec, analysis, patients in models:
        code = (
            "import time\n"
            + FIT_IMPORTS
            + "t0 = time.process_time()\n"
            + _fit_call(name, spec, analysis, patients, out)
            + "import sys, json\n"
            + f"print(json.dumps([t0, [m for m in {HEAVY!r} if m in sys.modules]]))\n"
        )
        line = f"  {study + '/' + name:40s}"
        for version, src in versions:
            cpu, stdout = _child_cpu(code, src)
            t0, loaded = json.loads(stdout.strip().splitlines()[-1])
            totals[version][0] += t0
            totals[version][1] += cpu
            loaded_by[version, f"{study}/{name}"] = loaded
            line += f" {t0:13.3f} {cpu:11.3f}"
        print(line)
    line = f"  {'total over ' + str(len(models)) + ' jobs':40s}"
    for version, _ in versions:
        line += f" {totals[version][0]:13.3f} {totals[version][1]:11.3f}"
    print(line)
    for version, _ in versions:
        counts: dict[str, int] = {}
        for (v, _m), loaded in loaded_by.items():
            for module in loaded if v == version else ():
                counts[module] = counts.get(module, 0) + 1
        listed = ", ".join(f"{m} in {k}" for m, k in sorted(counts.items())) or "none"
        print(f"  {version}: heavy packages loaded by the end of a job: {listed}")
    print()


def fits(models, out: Path, repeat: int, profile: int) -> dict:
    """Section 3 in this process: each model's fit_stage CPU, and a profile of them all."""
    # everything a fit may import lazily, so that section 3 times the fits alone
    import allianceflow.models.glmm  # noqa: F401
    import allianceflow.models.moderation  # noqa: F401
    from allianceflow.stages import fit_stage

    def call(row):
        study, name, spec, analysis, patients = row
        fit_stage(
            analysis,
            spec,
            name=name,
            json=out / f"{name}.json",
            txt=out / f"{name}.txt",
            patients=patients,
        )

    for row in models:  # warm-up: first calls import patsy and fill caches
        call(row)
    times = {}
    for row in models:
        runs = []
        for _ in range(repeat):
            t0 = time.process_time()
            call(row)
            runs.append(time.process_time() - t0)
        times[f"{row[0]}/{row[1]}"] = statistics.median(runs)
    text = ""
    if profile:
        prof = cProfile.Profile(time.process_time)
        prof.enable()
        for row in models:
            call(row)
        prof.disable()
        buf = io.StringIO()
        stats = pstats.Stats(prof, stream=buf)
        stats.sort_stats("tottime").print_stats(profile)
        lines = buf.getvalue().splitlines()
        start = next(i for i, line in enumerate(lines) if "ncalls" in line)
        for line in lines[start:]:
            if line.strip():
                for prefix in (sys.prefix, sys.base_prefix):
                    line = re.sub(
                        re.escape(prefix) + r"/lib/python3\.\d+/(site-packages/)?", "", line
                    )
                text += "    " + re.sub(r"/\S*/src/allianceflow/", "allianceflow/", line)[:140]
                text += "\n"
    return {"times": times, "profile": text}


def fits_report(versions, run: Path, repeat: int, profile: int) -> None:
    """Section 3: one warm process per version; medians per model, their sum, profiles."""
    print(f"3. Fits (one process per version, modules imported; fit_stage CPU s, median of "
          f"{repeat})")  # fmt: skip
    results = {}
    for name, src in versions:
        args = (__file__, "--run", str(run), "--repeat", str(repeat), "--profile",
                str(profile), "--fits-only")  # fmt: skip
        results[name] = json.loads(_child_cpu("", src, args)[1].strip().splitlines()[-1])
    head = "".join(f" {name:>9s}" for name, _ in versions)
    print(f"  {'study/model':40s}{head}")
    for key in results[versions[0][0]]["times"]:
        print(f"  {key:40s}" + "".join(f" {results[v]['times'][key]:9.3f}" for v, _ in versions))
    sums = "".join(f" {sum(results[v]['times'].values()):9.3f}" for v, _ in versions)
    print(f"  {'sum over ' + str(len(results[versions[0][0]]['times'])) + ' models':40s}{sums}")
    print()
    for name, _ in versions:
        if results[name]["profile"]:
            print(f"  {name}: cProfile (process time) over all fits, top {profile} by own time:")
            print(results[name]["profile"])


def main() -> None:
    """Run the sections asked for and print their report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a finished example run")
    parser.add_argument("--before", type=Path, help="the src/ folder of an earlier version")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--jobs", action="store_true", help="also time fresh-process jobs")
    parser.add_argument("--profile", type=int, default=0, help="cProfile rows (0: none)")
    parser.add_argument("--fits-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    models = models_of(args.run)
    if args.fits_only:
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(fits(models, Path(tmp), args.repeat, args.profile)))
        return
    import numpy
    import scipy

    versions = [("before", args.before.resolve()), ("after", None)] if args.before else [
        ("this", None)
    ]  # fmt: skip
    print("fit_model jobs of the example pipeline — issue 20")
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, numpy {numpy.__version__}, scipy {scipy.__version__}"
    )
    if args.before:
        print(f"before: the package from {args.before.name}/ as given; after: the installed one")
    print(f"load average at start: {'/'.join(f'{x:.1f}' for x in os.getloadavg())}")
    print()
    imports(versions, args.repeat)
    with tempfile.TemporaryDirectory() as tmp:
        if args.jobs:
            jobs(versions, models, Path(tmp))
    fits_report(versions, args.run, args.repeat, args.profile)
    print(f"load average at end: {'/'.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
