"""A changed setting reruns only the outputs that read it: Snakemake's own dry-run reasons.

Each rule receives only its own part of the configuration as ``params``, so Snakemake's
``params`` rerun trigger, which compares them with those recorded at the last run, reruns a
study's figure job when one of its figures' settings changes and nothing upstream (one job
draws all of a study's figures, so their start-up is paid once). The test builds the
quick-tier project, records every job as done without running it (empty outputs, then
``--touch``, which stores each job's params in ``.snakemake/metadata``), changes one
setting and reads the plan of
``snakemake --dry-run --rerun-triggers params``. The manifests appear in every plan: they
hash ``config.yaml`` itself, so any edit of it rebuilds them.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _snakemake(workdir: Path, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "1", *args],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def recorded(tmp_path_factory, copy_project):
    """A quick-tier project whose every job is recorded as done (with its params)."""
    workdir = copy_project(tmp_path_factory.mktemp("rerun"), small=True)
    summary = _snakemake(workdir, "--summary")
    outputs = [
        line.split("\t")[0]
        for line in summary.splitlines()
        if "\t" in line and not line.startswith("output_file")
    ]
    assert "results/example/figures/caterpillar.png" in outputs
    for name in outputs:
        path = workdir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    _snakemake(workdir, "--touch", "--forceall")
    assert "Nothing to be done" in _snakemake(workdir, "--dry-run", "--rerun-triggers", "params")
    return workdir


def _plan(workdir: Path, path: tuple[str, ...], value) -> dict[tuple[str, str], str]:
    """Jobs (rule, wildcards) -> reason, of a dry run after setting config *path* to *value*.

    The config file is restored afterwards.
    """
    config_file = workdir / "config.yaml"
    original = config_file.read_text()
    config = yaml.safe_load(original)
    node = config
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    try:
        out = _snakemake(workdir, "--dry-run", "--rerun-triggers", "params")
    finally:
        config_file.write_text(original)
    jobs = {}
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", out):
        rule = re.match(r"(?:local)?rule (\w+):", block)
        if not rule or rule.group(1) == "all":
            continue
        wildcards = re.search(r"^\s+wildcards: (.*)$", block, re.M)
        reason = re.search(r"^\s+reason: (.*)$", block, re.M)
        jobs[(rule.group(1), wildcards.group(1) if wildcards else "")] = reason.group(1)
    return jobs


MANIFESTS = {("write_manifest", "study=example"), ("write_manifest", "study=example2")}


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (
            ("studies", "example", "report", "figures", "caterpillar_group"),
            "patient",
            {("plot_figures_example", "")},
        ),
        (
            ("studies", "example", "measures", "reliability_bootstrap"),
            40,
            {("compute_reliability", "study=example")},
        ),
        (  # the summaries quote the benchmark beside each alliance-outcome effect
            ("pool", "benchmark", "r"),
            0.3,
            {
                ("plot_meta_forest", ""),
                ("write_summary", "study=example"),
                ("write_summary", "study=example2"),
            },
        ),
    ],
    ids=["caterpillar_group", "reliability_bootstrap", "pool_benchmark"],
)
def test_a_changed_setting_reruns_only_what_reads_it(recorded, path, value, expected):
    jobs = _plan(recorded, path, value)
    assert set(jobs) == expected | MANIFESTS
    changed = {job for job, reason in jobs.items() if reason.startswith("Params have changed")}
    assert changed == expected


def test_a_new_reliable_change_value_leaves_clean_and_score_alone(recorded):
    """A new `rci` reruns what reads reliable change, from derive on, and not clean or score.

    Clean, score and the reliability table receive only the instrument overrides they read
    (the item key, proration limits). Snakemake names changed params as the reason only of
    jobs whose inputs are not rebuilt anyway: here derive alone.
    """
    jobs = _plan(recorded, ("studies", "example", "measures", "instruments", "ors", "rci"), 6)
    changed = {job for job, reason in jobs.items() if reason.startswith("Params have changed")}
    assert changed == {("derive_variables", "study=example")}
    assert not {
        job
        for job in jobs
        if job[0] in ("clean_sessions", "score_instruments", "compute_reliability")
    }
    # what reads the derived variables reruns after derive
    assert jobs[("plot_figures_example", "")].startswith("Input files updated")
    assert jobs[("write_summary", "study=example")].startswith("Input files updated")


def test_a_new_item_key_reruns_clean_and_everything_after_it(recorded):
    """A study's reverse-keyed items (an override of the item key) reach clean and score.

    Clean is rerun for its changed params; score and the reliability table follow because
    their input is rebuilt (their own params changed too, which Snakemake does not list
    first).
    """
    path = ("studies", "example", "measures", "instruments", "ors", "reverse")
    jobs = _plan(recorded, path, [2])
    assert jobs[("clean_sessions", "study=example")].startswith("Params have changed")
    for rule in ("score_instruments", "compute_reliability", "derive_variables"):
        assert jobs[(rule, "study=example")].startswith("Input files updated"), rule
    assert not {job for job in jobs if job[1] == "study=example2"} - MANIFESTS
