"""Command line: ``allianceflow verify MANIFEST...``.

``verify`` recomputes the SHA-256 of every input and output a manifest lists, so a reviewer
can check that a reproduction gave the same bytes. Exit status 0 when everything matches,
1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["main"]


def _verify(args: argparse.Namespace) -> int:
    from .report import verify_manifest

    status = 0
    for manifest in args.manifests:
        problems = verify_manifest(manifest, root=args.root)
        if problems:
            status = 1
            print(f"{manifest}: {len(problems)} file(s) do not match")
            for line in problems:
                print(f"  {line}")
        else:
            print(f"{manifest}: all files match")
    return status


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``allianceflow`` command."""
    parser = argparse.ArgumentParser(prog="allianceflow", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    verify = sub.add_parser("verify", help="recompute the hashes listed in manifest.json files")
    verify.add_argument("manifests", nargs="+", type=Path)
    verify.add_argument("--root", type=Path, default=Path("."), help="project folder the paths are relative to")
    verify.set_defaults(func=_verify)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
