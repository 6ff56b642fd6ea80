"""Figures, saved the same way every time.

Colours are the Okabe–Ito palette (safe for the common colour-vision deficiencies); sizes
follow journal columns (one column 3.35 in, two columns 6.85 in); PNG at 300 dpi, PDF
with embedded TrueType fonts, SVG with text as text. Savers strip dates and software
stamps from the metadata, so the same data give the same bytes.

References
----------
Okabe, M., & Ito, K. (2008). Color Universal Design (CUD): How to make figures and
presentations that are friendly to colorblind people. https://jfly.uni-koeln.de/color/
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .io import atomic_path  # noqa: E402

__all__ = ["ONE_COLUMN", "TWO_COLUMNS", "style", "save_figure", "plot_within_between"]

#: Figure widths in inches for one- and two-column journal pages.
ONE_COLUMN = 3.35
TWO_COLUMNS = 6.85
_RC = Path(__file__).with_name("matplotlibrc")
_METADATA = {
    "png": {"Software": None},
    "pdf": {"Creator": None, "Producer": None, "CreationDate": None},
    "svg": {"Creator": None, "Date": None},
}


@contextmanager
def style() -> Iterator[None]:
    """Apply the project's matplotlibrc for the duration of a ``with`` block."""
    with matplotlib.rc_context(fname=str(_RC)):
        yield


def save_figure(fig: matplotlib.figure.Figure, paths) -> None:
    """Save *fig* to each path (``.png``, ``.pdf`` or ``.svg``) without dates or stamps.

    The file format comes from each path's suffix; writes are atomic.
    """
    with style():  # pdf.fonttype and svg.hashsalt are read at save time
        _save_all(fig, paths)
    plt.close(fig)


def _save_all(fig: matplotlib.figure.Figure, paths) -> None:
    for path in map(Path, paths):
        fmt = path.suffix.lstrip(".").lower()
        if fmt not in _METADATA:
            raise ValueError(f"`paths` must end in .png, .pdf or .svg; got {path.name!r}.")
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, metadata=_METADATA[fmt], dpi=300, bbox_inches=None)


def _fit_line(ax, x: np.ndarray, y: np.ndarray, colour: str) -> float:
    slope, intercept = np.polyfit(x, y, 1)
    grid = np.linspace(x.min(), x.max(), 50)
    ax.plot(grid, intercept + slope * grid, color=colour, lw=1.5)
    return float(slope)


def plot_within_between(analysis: pd.DataFrame, *, alliance_label: str = "alliance", outcome_label: str = "outcome") -> matplotlib.figure.Figure:
    """Within- and between-patient alliance–outcome relations, side by side.

    Left: each session's outcome minus the patient's mean outcome against last session's
    alliance minus the patient's mean alliance (``alliance_within_lag``, ``outcome_within``).
    Right: patient mean outcome against patient mean alliance (one dot per patient). Lines
    are ordinary least-squares fits, for orientation only: the estimates to report come from
    the multilevel model.
    """
    within = analysis.dropna(subset=["alliance_within_lag", "outcome_within"])
    patients = analysis.groupby("patient", observed=True)[["alliance_pmean", "outcome_pmean"]].first().dropna()
    with style():
        fig, (left, right) = plt.subplots(1, 2, figsize=(TWO_COLUMNS, 2.9), constrained_layout=True)
        left.scatter(within["alliance_within_lag"], within["outcome_within"], s=3, alpha=0.25, color="#56B4E9", linewidths=0)
        b_w = _fit_line(left, within["alliance_within_lag"].to_numpy(), within["outcome_within"].to_numpy(), "#0072B2")
        left.set_xlabel(f"last session's {alliance_label}\n(deviation from patient's mean)")
        left.set_ylabel(f"{outcome_label} (deviation from patient's mean)")
        left.set_title(f"Within patients (OLS slope {b_w:.2f})")
        right.scatter(patients["alliance_pmean"], patients["outcome_pmean"], s=6, alpha=0.6, color="#E69F00", linewidths=0)
        b_b = _fit_line(right, patients["alliance_pmean"].to_numpy(), patients["outcome_pmean"].to_numpy(), "#D55E00")
        right.set_xlabel(f"patient's mean {alliance_label}")
        right.set_ylabel(f"patient's mean {outcome_label}")
        right.set_title(f"Between patients (OLS slope {b_b:.2f})")
    return fig
