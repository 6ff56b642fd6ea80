"""Run R scripts for the reference comparisons (tests marked ``r``).

Each test that calls R skips with a one-line reason when Rscript or the R package it needs is
missing (Debian: ``apt-get install r-base-core r-cran-metafor r-cran-psych r-cran-lmertest
r-cran-pbkrtest``); CI installs them, so there the comparisons run.
"""

from __future__ import annotations

import functools
import shutil
import subprocess

import pytest

RSCRIPT = shutil.which("Rscript")


@functools.cache
def has_r_package(package: str) -> bool:
    """Whether Rscript exists and can load *package*."""
    if RSCRIPT is None:
        return False
    try:
        out = subprocess.run(
            [RSCRIPT, "-e", f"suppressMessages(library({package})); cat('ok')"],
            capture_output=True,
            text=True,
            timeout=120,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and out.stdout.strip().endswith("ok")


def require_r(*packages: str) -> None:
    """Skip the calling test unless Rscript and every one of *packages* are installed."""
    if RSCRIPT is None:
        pytest.skip("Rscript is not installed")
    for package in packages:
        if not has_r_package(package):
            pytest.skip(f"the R package {package} is not installed")


def run_r(script: str, tmp_path, *args: str, timeout: int = 600) -> str:
    """Write *script* to *tmp_path*, run it with Rscript and *args*, return its stdout."""
    path = tmp_path / "script.R"
    path.write_text(script)
    out = subprocess.run(
        [RSCRIPT, str(path), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def parse_lines(stdout: str) -> dict[str, list[str]]:
    """Lines ``TAG v1 v2 ...`` of R output as ``{TAG: [v1, v2, ...]}``."""
    return {ln.split()[0]: ln.split()[1:] for ln in stdout.strip().splitlines() if ln.strip()}
