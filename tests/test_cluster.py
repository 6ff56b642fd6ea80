"""The pipeline on a real (single-node) SLURM cluster, through workflow/profiles/slurm.

The test needs Debian's ``slurm-wlm`` and ``munge`` (``.ci/run`` installs them; the test
never installs anything), starts munged, slurmctld and slurmd on localhost with a minimal
``slurm.conf`` in a temporary folder, runs the project's default target on a copy of the
project through the slurm profile (snakemake-executor-plugin-slurm: every rule becomes an
sbatch job), checks that every job ran and completed under SLURM and that a model fitted
on the cluster is byte-identical to the same model fitted locally, and stops the daemons it
started.

Details that make a throw-away cluster work:

* slurmd runs *configless* (``--conf-server``): the slurm-jobstep plugin drops every
  ``SLURM_*`` variable, ``SLURM_CONF`` included, before its nested ``srun``, so ``srun``
  inside a job finds the configuration only at a default place; configless slurmd puts it
  in ``/run/slurm/conf``. A configless slurmd fetches its configuration with munge on the
  default socket, so munged listens on ``/run/munge/munge.socket.2``.
* Without an accounting database ``sacct`` answers "Slurm accounting storage is disabled",
  so jobs are followed with ``squeue`` (``--slurm-status-command squeue``), which needs
  ``MinJobAge`` above 120 s to still see finished jobs.

Run with ``pytest -m cluster tests/test_cluster.py``. Outside CI it skips (with the reason
and how to enable it) without root, without SLURM, without the executor plugin, or on a
machine with a system SLURM configuration of its own; under CI (``CI=true``) the first
three fail instead, because CI must run it. The pipeline runs on ``.test/config.yaml``: the
test is of the executor, not of the statistics.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import FULL, require_tool

from allianceflow.io import read_json, sha256_file

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

MUNGE_SOCKET = Path("/run/munge/munge.socket.2")


# --------------------------------------------------------------------------- set-up helpers


def _run(cmd, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, **kwargs)


def _ensure_installed() -> None:
    """SLURM's and munge's programs must be on PATH (.ci/run installs Debian's packages)."""
    require_tool(
        all(shutil.which(tool) for tool in ("slurmctld", "slurmd", "munged", "sbatch", "squeue")),
        "SLURM (slurmctld, slurmd, sbatch, squeue) with munge",
        "apt-get install slurm-wlm munge as root, then run as root: pytest -m cluster",
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return 4000


def _slurm_conf(folder: Path, host: str, ctld_port: int, slurmd_port: int) -> str:
    cpus = os.cpu_count() or 1
    memory = max(1000, int(_memory_mb() * 0.8))
    return f"""\
# Single-node test cluster written by tests/test_cluster.py
ClusterName=allianceflow
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmctldParameters=enable_configless
AuthType=auth/munge
AuthInfo=socket={MUNGE_SOCKET}
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SwitchType=switch/none
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MinJobAge=3600
ReturnToService=2
SchedulerType=sched/backfill
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory} State=UNKNOWN
PartitionName=main Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def _munge_works() -> bool:
    if not MUNGE_SOCKET.exists():
        return False
    enc = _run(["munge", "-n", "-S", str(MUNGE_SOCKET)], timeout=10)
    if enc.returncode != 0:
        return False
    dec = _run(["unmunge", "-S", str(MUNGE_SOCKET)], input=enc.stdout, timeout=10)
    return dec.returncode == 0


def _wait(predicate, timeout: float, what: str, logs: list[Path]) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.5)
    tails = "\n".join(f"--- {p}\n{p.read_text()[-1500:]}" for p in logs if p.exists())
    raise AssertionError(f"{what} did not happen within {timeout:.0f} s.\n{tails}")


# --------------------------------------------------------------------------- the cluster


@pytest.fixture(scope="module")
def slurm_cluster(request):
    """A running single-node SLURM cluster; yields the environment to submit with."""
    if not FULL and "cluster" not in (request.config.getoption("markexpr") or ""):
        pytest.skip(
            "the SLURM cluster test runs in the full tier: make test-all (CI=true), or "
            "pytest -m cluster as root with slurm-wlm and munge installed."
        )
    if sys.platform != "linux":
        pytest.skip("the local SLURM cluster needs Linux.")
    require_tool(os.geteuid() == 0, "root", "run the cluster test as root (it starts slurmctld).")
    require_tool(
        importlib.util.find_spec("snakemake_executor_plugin_slurm") is not None,
        "snakemake-executor-plugin-slurm",
        "make test installs it from requirements.lock.",
    )
    if Path("/etc/slurm/slurm.conf").exists():
        pytest.skip(
            "this machine has a SLURM configuration of its own (/etc/slurm/slurm.conf); "
            "not starting another cluster."
        )
    _ensure_installed()

    folder = Path(
        tempfile.mkdtemp(prefix="afslurm-", dir="/tmp")
    )  # short: socket paths are limited
    for sub in ("state", "spool"):
        (folder / sub).mkdir()
    host = socket.gethostname().split(".")[0]
    conf = folder / "slurm.conf"
    ctld_port = _free_port()
    conf.write_text(_slurm_conf(folder, host, ctld_port, _free_port()))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    started: list[subprocess.Popen] = []

    def start(cmd, name, run_env):
        handle = open(folder / f"{name}.out", "w")
        started.append(subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, env=run_env))

    try:
        if not _munge_works():
            MUNGE_SOCKET.parent.mkdir(parents=True, exist_ok=True)
            key = folder / "munge.key"
            system_key = Path("/etc/munge/munge.key")
            key.write_bytes(system_key.read_bytes() if system_key.exists() else os.urandom(1024))
            key.chmod(0o400)
            start(
                [
                    "munged",
                    "-F",
                    "-f",
                    f"--key-file={key}",
                    f"--pid-file={folder}/munged.pid",
                    f"--log-file={folder}/munged.log",
                    f"--seed-file={folder}/munged.seed",
                ],
                "munged",
                env,
            )
            _wait(
                _munge_works,
                20,
                "munged answering on " + str(MUNGE_SOCKET),
                [folder / "munged.out"],
            )
        start(["slurmctld", "-D", "-i", "-f", str(conf)], "slurmctld", env)
        _wait(
            lambda: _run(["scontrol", "ping"], env=env, timeout=10).stdout.count("UP") > 0,
            30,
            "slurmctld answering scontrol ping",
            [folder / "slurmctld.out", folder / "slurmctld.log"],
        )
        no_conf = {k: v for k, v in env.items() if k != "SLURM_CONF"}
        start(["slurmd", "-D", "--conf-server", f"127.0.0.1:{ctld_port}"], "slurmd", no_conf)
        _wait(
            lambda: _run(["sinfo", "-h", "-o", "%t"], env=env, timeout=10).stdout.strip() == "idle",
            60,
            "the node becoming idle",
            [folder / "slurmd.out", folder / "slurmd.log", folder / "slurmctld.log"],
        )
        yield {"env": env, "folder": folder}
    finally:
        for proc in reversed(started):  # only the daemons this fixture started, by their own handle
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        shutil.rmtree(folder, ignore_errors=True)


# --------------------------------------------------------------------------- the test


def test_pipeline_runs_through_the_slurm_profile(slurm_cluster, copy_project, tmp_path):
    env = slurm_cluster["env"]
    target = "results/example/models/alliance_outcome.json"
    # the same rule chain locally first, to compare bytes with the cluster's result
    local = copy_project(tmp_path / "local", small=True)
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "2", target],
        cwd=local,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    workdir = copy_project(tmp_path / "cluster", small=True)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "--profile",
            "workflow/profiles/slurm",
            "--slurm-status-command",
            "squeue",
            "--slurm-init-seconds-before-status-checks",
            "5",
        ],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]

    # every job went through sbatch and SLURM reports each of them COMPLETED
    submitted = [line for line in log.splitlines() if "has been submitted with SLURM jobid" in line]
    job_ids = {line.split("SLURM jobid ")[1].split()[0] for line in submitted}
    assert len(job_ids) >= 10, log[-3000:]
    states = _run(["squeue", "-h", "-t", "all", "-o", "%i %T"], env=env, timeout=30).stdout.split(
        "\n"
    )
    state_of = dict(line.split() for line in states if line.strip())
    assert {state_of.get(j) for j in job_ids} == {"COMPLETED"}, {
        j: state_of.get(j) for j in job_ids
    }
    assert any(
        "slurm_logs/rule_fit_model/" in line for line in submitted
    )  # the model fits ran as jobs

    # the results are there and make sense: the example's between-patient effect per WAI-SR
    # total point has its truth (4 ORS points per item-mean point = 4/12) in its interval,
    # and the within-patient estimate is the one the example README states (1.28 per
    # item-mean point, an interval that misses its truth 2.0 at this seed; see
    # test_pipeline_e2e.test_alliance_effects_against_the_truth)
    model = read_json(workdir / target)
    assert model["convergence"]["converged"] is True
    fixed = {row["term"]: row for row in model["fixed"]}
    assert fixed["alliance_between"]["ci_low"] < 4 / 12 < fixed["alliance_between"]["ci_high"]
    assert fixed["alliance_within_lag"]["estimate"] * 12 == pytest.approx(1.2825, abs=5e-5)
    assert (workdir / "results/example/manifest.json").is_file()
    # same bytes on one SLURM core as on two local cores
    assert sha256_file(local / target) == sha256_file(workdir / target)
