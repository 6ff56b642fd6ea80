"""Command line: ``allianceflow check PATH`` and ``allianceflow verify MANIFEST...``.

``check`` runs the clean stage on one raw file without writing anything and prints every
problem as a table (row, column, rule, action, reason): a researcher checks an export
before running the pipeline. Exit status 0 when the file would clean without errors or
exclusions (flagged or altered rows are listed but pass), 1 otherwise.

``verify`` recomputes the SHA-256 of every input and output a manifest lists, so a reviewer
can check that a reproduction gave the same bytes. Exit status 0 when everything matches,
1 otherwise. It also notes (without changing the status) when the manifest was made by
other allianceflow code than the installed package.
"""

from __future__ import annotations

import argparse
import os
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

__all__ = ["main"]

_DESCRIPTION = """\
Check a raw export before running the pipeline, and verify a reproduction's files.
The pipeline itself runs with Snakemake: snakemake --cores all"""

_EPILOG = """\
examples:
  allianceflow check data/raw/example/sessions_export.csv
  allianceflow check visits.csv --config config.yaml --study example2
  allianceflow verify results/*/manifest.json

Run 'allianceflow COMMAND --help' for the options of one command."""


def _version() -> str:
    """The installed package's version (from its metadata), or "unknown"."""
    try:
        return version("allianceflow")
    except PackageNotFoundError:  # pragma: no cover - a source tree without metadata
        return "unknown"


def _verify(args: argparse.Namespace) -> int:
    from .io import read_json, source_fingerprint
    from .manifest import verify_manifest

    status = 0
    installed = source_fingerprint()
    for manifest in args.manifests:
        problems = verify_manifest(manifest, root=args.root)
        recorded = read_json(manifest).get("allianceflow_source_sha256")
        if recorded is not None and recorded != installed:
            print(
                f"{manifest}: note: made by other allianceflow code than the one installed "
                f"(package files sha256 {recorded[:12]}... there, {installed[:12]}... here); "
                "a difference in the outputs may come from that."
            )
        if problems:
            status = 1
            print(f"{manifest}: {len(problems)} file(s) do not match")
            for line in problems:
                print(f"  {line}")
        else:
            print(f"{manifest}: all files match")
    return status


def _pick_study(config: dict, path: Path, name: str | None, config_path: Path) -> tuple[str, dict]:
    from .config import ConfigError

    studies = config["studies"]
    if name is not None:
        if name not in studies:
            raise ConfigError(
                f"{config_path.name}: there is no study {name!r}; the studies are "
                f"{', '.join(sorted(studies))}. Pass one of them with --study."
            )
        return name, studies[name]
    target = path.resolve()
    for study_name, study in studies.items():
        if (config_path.resolve().parent / study["read"]["raw"]).resolve() == target:
            return study_name, study
    if len(studies) == 1:
        return next(iter(studies.items()))
    raise ConfigError(
        f"{path}: no study in {config_path.name} reads this file, so its column mapping is "
        f"unknown. Pass --study with one of {', '.join(sorted(studies))}."
    )


def _problem_table(exclusions) -> str:
    columns = ["source_row", "column", "rule", "action", "reason"]
    rows = [["row", "column", "rule", "action", "reason"]]
    for record in exclusions[columns].itertuples(index=False):
        rows.append(["" if v is None or v != v else str(v) for v in record])
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = []
    for i, row in enumerate(rows):
        lines.append("  ".join(row[j].ljust(widths[j]) for j in range(4)) + "  " + row[4])
        if i == 0:
            lines.append("  ".join("-" * w for w in widths) + "  " + "-" * 6)
    return "\n".join(lines)


def _check(args: argparse.Namespace) -> int:
    from . import io
    from .clean import clean_sessions
    from .config import ConfigError, flat_study, load_config
    from .stages import read_export

    try:
        config = load_config(args.config)
        name, study = _pick_study(config, args.path, args.study, args.config)
        raw = read_export(args.path, study["read"], config=args.config.name)
        result = clean_sessions(
            raw,
            flat_study(study),
            source=args.path.name,
            name=name,
            collect=True,
            config=args.config.name,
        )
    except (io.DataError, ConfigError) as error:
        if args.debug:
            raise
        print(f"{args.path.name}: cannot be cleaned\n\n{error}")
        return 1
    flow = result.flow["sessions"]
    problems = result.exclusions
    errors = int((problems["action"] == "error").sum())
    print(
        f"{args.path.name} (study {name!r}): {flow['read']} rows read, {flow['kept']} kept, "
        f"{flow['excluded']} excluded ({errors} by rules set to error); "
        f"{result.flow['patients']['read']} patients, {result.flow['patients']['kept']} kept."
    )
    if len(problems):
        print()
        print(_problem_table(problems))
    if flow["excluded"]:
        print(f"\n{args.path.name}: {flow['excluded']} row(s) would not pass; see the table above.")
        return 1
    print(f"\n{args.path.name}: clean.")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="allianceflow",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {_version()}", help="show the version"
    )
    sub = parser.add_subparsers(dest="command", required=True, title="commands", metavar="COMMAND")
    verify = sub.add_parser(
        "verify",
        help="recompute the hashes listed in manifest.json files",
        description="Recompute the SHA-256 of every input and output a manifest lists. "
        "Exit status 0 when every file matches, 1 otherwise.",
    )
    verify.add_argument("manifests", nargs="+", type=Path)
    verify.add_argument(
        "--root", type=Path, default=Path("."), help="project folder the paths are relative to"
    )
    verify.set_defaults(func=_verify)
    check = sub.add_parser(
        "check",
        help="check a raw export against a study's config without writing anything",
        description="Clean one raw export in memory and list every problem (row, column, "
        "rule, action, reason). Exit status 0 when it would clean without errors or "
        "exclusions, 1 otherwise.",
    )
    check.add_argument("path", type=Path, help="the raw export to check")
    check.add_argument(
        "--config",
        type=Path,
        default=Path("config.yaml"),
        help="the config file (default: config.yaml)",
    )
    check.add_argument(
        "--study",
        default=None,
        help="study whose settings apply (default: the study whose raw file is PATH)",
    )
    check.add_argument("--debug", action="store_true", help="show the traceback of an error")
    check.set_defaults(func=_check)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``allianceflow`` command; returns its exit status.

    Output piped into a program that stops reading early (``allianceflow check ... | head``)
    ends the command quietly with status 1, as Python's documentation recommends ("Note on
    SIGPIPE" in :mod:`signal`): the rest of the output goes to the null device instead of
    raising ``BrokenPipeError`` again when Python flushes stdout at exit.
    """
    args = _parser().parse_args(argv)
    try:
        status = args.func(args)
        sys.stdout.flush()  # a closed pipe raises here, inside the try
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
