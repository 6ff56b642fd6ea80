"""The manifest that lets a reviewer check a reproduction.

``results/<study>/manifest.json`` lists the SHA-256 of every input (raw files and the
config file), the resolved configuration of the study, the versions of the packages that
shape the results, a SHA-256 of allianceflow's own files (the exact code), the SHA-256 of
every output and the SHA-256 of the lock file (``requirements.lock``, every dependency pinned
with its hashes). :func:`verify_manifest` recomputes the input and output hashes and reports
any difference.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .io import package_versions, read_json, sha256_file, source_fingerprint

__all__ = ["build_manifest", "verify_manifest"]


def _hashes(paths: Iterable[str | Path], root: Path) -> dict[str, str]:
    out = {}
    for path in sorted(map(Path, paths)):
        try:
            key = path.resolve().relative_to(root).as_posix()
        except ValueError:
            key = path.as_posix()
        out[key] = sha256_file(path)
    return out


def build_manifest(
    *,
    study: str,
    inputs: Iterable[str | Path],
    outputs: Iterable[str | Path],
    config: dict[str, Any],
    root: str | Path = ".",
    lock: str | Path | None = None,
) -> dict[str, Any]:
    """Assemble the manifest of one study's run.

    Parameters
    ----------
    study : str
        The study's name.
    inputs, outputs : iterables of paths
        Files to hash; keys are paths relative to *root*, sorted.
    config : dict
        The resolved configuration (defaults filled in) of this study.
    root : str or path
        The project folder the paths are relative to.
    lock : str or path, optional
        The lock file the environment was installed from (``requirements.lock``); None
        when the run has none (its hash is then recorded as None).

    Returns
    -------
    dict
        ``study``, ``inputs`` and ``outputs`` (path -> sha256), ``config``, ``versions``
        and ``allianceflow_source_sha256`` (:func:`allianceflow.io.source_fingerprint`:
        the exact package code, which a version number does not pin during development),
        then ``lock_sha256`` (the lock file's SHA-256, or None). No timestamps, so the same
        run gives the same bytes.
    """
    root = Path(root).resolve()
    return {
        "study": study,
        "inputs": _hashes(inputs, root),
        "outputs": _hashes(outputs, root),
        "config": config,
        "versions": package_versions(),
        "allianceflow_source_sha256": source_fingerprint(),
        "lock_sha256": None if lock is None else sha256_file(lock),
    }


def verify_manifest(manifest_path: str | Path, root: str | Path = ".") -> list[str]:
    """Recompute the output hashes listed in a manifest.

    Returns
    -------
    list of str
        One line per output that is missing or differs; empty when all match.
    """
    root = Path(root)
    manifest = read_json(manifest_path)
    problems = []
    for rel, expected in sorted({**manifest["inputs"], **manifest["outputs"]}.items()):
        path = root / rel
        if not path.exists():
            problems.append(f"missing: {rel}")
        elif sha256_file(path) != expected:
            problems.append(f"differs: {rel}")
    return problems
