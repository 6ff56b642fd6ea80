"""All file reading and writing of the package.

Writers are atomic (write to a temporary file in the same folder, then rename), so an
interrupted run never leaves a half-written output that Snakemake would take as done, and
deterministic (sorted keys, fixed float formatting, no timestamps), so the same inputs give
the same bytes. Raw files are only ever opened for reading.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import tempfile
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

import pandas as pd

__all__ = [
    "read_raw",
    "read_table",
    "write_table",
    "write_json",
    "read_json",
    "write_text",
    "sha256_file",
    "package_versions",
    "atomic_path",
    "clean_for_json",
]

_DELIMITERS = ",;\t|"


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to *path*; on success rename it to *path*."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _sniff_delimiter(path: Path, encoding: str) -> str:
    with open(path, "r", encoding=encoding, newline="") as handle:
        sample = handle.read(64 * 1024)
    try:
        return csv.Sniffer().sniff(sample, delimiters=_DELIMITERS).delimiter
    except csv.Error:
        first = sample.splitlines()[0] if sample else ""
        counts = {d: first.count(d) for d in _DELIMITERS}
        return max(counts, key=counts.get) if any(counts.values()) else ","


def read_raw(path: str | Path, *, delimiter: str | None = None, encoding: str = "utf-8-sig") -> pd.DataFrame:
    """Read a raw export as text columns, keeping every row and the raw values.

    Every value is read as a string (``dtype=str``) with no automatic NA detection, so the
    clean stage decides what is missing (declared missing codes) and what is malformed.

    Parameters
    ----------
    path : path
        A ``.csv``/``.tsv``/``.txt`` file (any of ``,`` ``;`` tab ``|`` as delimiter) or a
        ``.parquet`` file.
    delimiter : str, optional
        The CSV delimiter; detected from the first 64 KiB when omitted.
    encoding : str
        Text encoding; the default ``utf-8-sig`` reads UTF-8 with or without a BOM.

    Returns
    -------
    pandas.DataFrame
        The file's columns as strings, plus ``_source_row``: the 1-based line number of the
        row in the file counting the header as line 1 (what a spreadsheet shows).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        frame = pd.read_parquet(path).astype("string").astype(object)
        frame = frame.where(frame.notna(), "")
    elif suffix in {".csv", ".tsv", ".txt"}:
        sep = delimiter or _sniff_delimiter(path, encoding)
        frame = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, encoding=encoding)
    else:
        raise ValueError(
            f"{path.name}: files ending in {suffix!r} cannot be read yet; "
            "use .csv, .tsv, .txt or .parquet."
        )
    frame.insert(0, "_source_row", range(2, len(frame) + 2))
    return frame


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a processed table (parquet or CSV)."""
    path = Path(path)
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    return pd.read_csv(path)


def write_table(frame: pd.DataFrame, path: str | Path) -> None:
    """Write *frame* atomically as parquet or CSV, chosen by the suffix of *path*.

    Parquet is written without pandas' index and with pyarrow's default compression; CSV
    with ``\\n`` line endings and floats to 10 significant digits, so reruns give the same bytes.
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        if path.suffix == ".parquet":
            frame.to_parquet(tmp, index=False, engine="pyarrow")
        elif path.suffix == ".csv":
            frame.to_csv(tmp, index=False, lineterminator="\n", float_format="%.10g")
        else:
            raise ValueError(f"`path` must end in .parquet or .csv; got {path.name!r}.")


def clean_for_json(value: Any, digits: int = 10) -> Any:
    """Turn numpy/pandas scalars into plain Python values, floats rounded to *digits*
    significant digits, NaN and infinities to ``None``."""
    if isinstance(value, dict):
        return {str(k): clean_for_json(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_for_json(v, digits) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return float(f"{value:.{digits}g}")
    return value


def write_json(data: Any, path: str | Path) -> None:
    """Write *data* as indented JSON with sorted keys, atomically."""
    text = json.dumps(clean_for_json(data), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    write_text(text, path)


def read_json(path: str | Path) -> Any:
    """Read a JSON file."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_text(text: str, path: str | Path) -> None:
    """Write *text* as UTF-8 with ``\\n`` line endings, atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)


def sha256_file(path: str | Path) -> str:
    """The hex SHA-256 of a file's bytes (read in 1 MiB blocks, read-only)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def package_versions(names=("allianceflow", "numpy", "scipy", "pandas", "pyarrow", "statsmodels", "pingouin", "pandera", "matplotlib", "snakemake")) -> dict[str, str]:
    """Installed versions of the packages that shape the results."""
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions
