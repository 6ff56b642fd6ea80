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

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any, Literal

import matplotlib
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd

from ._checks import check_columns, check_frame  # noqa: E402
from .io import atomic_path  # noqa: E402
from .labels import Labels, lower_first, upper_first  # noqa: E402

__all__ = [
    "ONE_COLUMN",
    "TWO_COLUMNS",
    "OKABE_ITO",
    "style",
    "save_figure",
    "model_implied_mean",
    "pick_example_patient",
    "plot_within_between",
    "plot_trajectories",
    "plot_forest",
    "plot_caterpillar",
    "plot_feedback_curves",
    "plot_expected_response",
    "plot_ruptures",
    "plot_sudden_gains",
    "plot_reliable_change",
    "plot_flow",
    "plot_simple_slopes",
    "within_between_estimates",
    "plot_binary_rates",
    "dropout_curve",
    "plot_dropout_curve",
    "pick_systems",
    "split_estimates",
    "plot_couple_trajectories",
    "plot_split_outcome",
]

Band = Literal["patients", "confidence"]
Width = Literal["one", "two"]

#: Figure widths in inches for one- and two-column journal pages.
ONE_COLUMN = 3.35
TWO_COLUMNS = 6.85
_RC = Path(__file__).with_name("matplotlibrc")
#: The order files are saved in (:func:`_save_all`): the first one lays the figure out.
_SAVE_ORDER = ("pdf", "svg", "png")
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
    """Save *fig* to *paths* on one layout: the PDF's, then the SVG and the PNG.

    A layout engine (constrained layout) places the axes from the sizes of the texts, as
    the renderer measures them, and stores the positions as fractions of the figure. The
    first save lays the figure out and the others are drawn on those positions instead of
    laying it out again (one layout for the three files instead of two). The
    vector formats go first: their renderer measures text in points, wider than the PNG's
    at 300 dpi, and the two layouts put an axes up to 2.1 pt apart on the example's
    figures, so a layout made for the PNG could push a long label of the PDF against the
    edge, while the PNG's text sits inside the PDF's layout with room to spare. The files
    are saved in that order whatever the order of *paths*, so the same figure gives the
    same bytes.
    """
    saves = []
    for path in map(Path, paths):
        fmt = path.suffix.lstrip(".").lower()
        if fmt not in _METADATA:
            raise ValueError(f"`paths` must end in .png, .pdf or .svg; got {path.name!r}.")
        saves.append((_SAVE_ORDER.index(fmt), path, fmt))
    engine = fig.get_layout_engine()
    try:
        for i, (_, path, fmt) in enumerate(sorted(saves, key=lambda save: save[0])):  # stable
            if i == 1 and engine is not None:
                fig.set_layout_engine("none")  # keep the positions the first save computed
            with atomic_path(path) as tmp, _lean_font_subsets(fmt == "pdf"):
                fig.savefig(tmp, format=fmt, metadata=_METADATA[fmt], dpi=300, bbox_inches=None)
    finally:
        if engine is not None and fig.get_layout_engine() is not engine:
            fig.set_layout_engine(engine)


# --------------------------------------------------------------------------- PDF font subsets

#: OpenType tables a PDF reader never uses: glyph substitution and positioning (GSUB, GPOS,
#: GDEF, BASE, JSTF, the old ``kern``) and math layout (MATH). matplotlib has already shaped
#: and placed every glyph when it writes the PDF; the reader draws the embedded outlines
#: (``glyf``) at those positions with the embedded advance widths (``hmtx``).
_LAYOUT_TABLES = ("GSUB", "GPOS", "GDEF", "BASE", "JSTF", "kern", "MATH")


@contextmanager
def _lean_font_subsets(active: bool = True) -> Iterator[None]:
    """Subset fonts for the PDF backend from copies without their layout tables.

    matplotlib embeds each font of a PDF (Type 42, ``pdf.fonttype: 42``) as a subset made
    with fontTools, which reads and subsets the whole font file, GSUB and GPOS included,
    for every PDF: most of the cost of saving a PDF. The subsets made here hold the same
    glyph outlines, advance widths, hinting programs and names, so every glyph is drawn
    the same; the layout tables (:data:`_LAYOUT_TABLES`), which no PDF reader uses, are left
    out of the font before subsetting. Without matplotlib's subsetting hook (another
    matplotlib version) the PDF is written as matplotlib writes it.
    """
    try:
        from matplotlib.backends import _backend_pdf_ps as pdf_ps
    except ImportError:  # pragma: no cover - another matplotlib layout
        pdf_ps = None
    original = getattr(pdf_ps, "get_glyphs_subset", None)
    if not active or original is None or not hasattr(pdf_ps, "SubsetResults"):
        yield
        return
    pdf_ps.get_glyphs_subset = _glyphs_subset
    try:
        yield
    finally:
        pdf_ps.get_glyphs_subset = original


def _glyphs_subset(fontfile, glyphs):
    """:func:`matplotlib.backends._backend_pdf_ps.get_glyphs_subset` on a lean copy.

    The options are matplotlib's (glyph names kept, recommended glyphs added, its extra
    tables dropped), plus :data:`_LAYOUT_TABLES`; the font is read from memory
    (:func:`_lean_font`).
    """
    import io as _bytes_io

    from fontTools import subset
    from matplotlib.backends import _backend_pdf_ps as pdf_ps

    options = subset.Options(glyph_names=True, recommended_glyphs=True)
    options.drop_tables += [
        *("FFTM", "PfEd", "BDF", "meta", "MERG", "TSIV", "Zapf", "bdat", "bloc", "cidg"),
        *("fdsc", "feat", "fmtx", "fond", "just", "kerx", "ltag", "morx", "trak", "xref"),
        *_LAYOUT_TABLES,
    ]
    path = str(fontfile)
    face = int(getattr(fontfile, "face_index", 0))
    font = subset.load_font(_bytes_io.BytesIO(_lean_font(path, face)), options)
    subsetter = subset.Subsetter(options=options)
    subsetter.populate(gids=glyphs)
    subsetter.subset(font)
    return pdf_ps.SubsetResults(font, subsetter.glyph_index_map)._as_cm()


@cache
def _lean_font(path: str, face_index: int) -> bytes:
    """The font at *path* (face *face_index* of a collection) without its layout tables.

    Read once per process; the tables kept are copied byte for byte (nothing is
    recompiled, and the ``head`` timestamp is the file's, so subsets are the same bytes on
    every run).
    """
    import io as _bytes_io

    from fontTools import ttLib

    with ttLib.TTFont(
        path, fontNumber=face_index, lazy=True, recalcBBoxes=False, recalcTimestamp=False
    ) as font:
        for tag in _LAYOUT_TABLES:
            if tag in font:
                del font[tag]
        out = _bytes_io.BytesIO()
        font.save(out, reorderTables=False)
    return out.getvalue()


def _fit_line(ax, x: np.ndarray, y: np.ndarray, colour: str) -> float:
    slope, intercept = np.polyfit(x, y, 1)
    grid = np.linspace(x.min(), x.max(), 50)
    ax.plot(grid, intercept + slope * grid, color=colour, lw=1.5)
    return float(slope)


def _slope_line(ax, x: np.ndarray, y: np.ndarray, slope: float, colour: str) -> None:
    """Draw a line of the given *slope* through the centroid of the points."""
    grid = np.linspace(x.min(), x.max(), 50)
    ax.plot(grid, y.mean() + slope * (grid - x.mean()), color=colour, lw=1.5)


def within_between_estimates(
    result: Mapping[str, Any],
    *,
    within: Sequence[str] = (
        "alliance_within_lag",
        "alliance_within_detrended_lag",
        "alliance_within",
    ),
    between: str = "alliance_between",
) -> dict[str, dict[str, float]]:
    """The within- and between-patient alliance slopes of a fitted model.

    Parameters
    ----------
    result : mapping
        A model result (:meth:`allianceflow.models.MixedModelResult.to_dict`, the JSON the
        fit stage writes).
    within : sequence of str
        Candidate names of the within-patient term, the first present is used.
    between : str
        Name of the between-patient term.

    Returns
    -------
    dict
        ``{"within": {...}, "between": {...}}``, each with ``term``, ``estimate``,
        ``ci_low`` and ``ci_high``.

    Raises
    ------
    KeyError
        The model has no within-patient or no between-patient alliance term.

    Examples
    --------
    >>> r = {"name": "m", "fixed": [
    ...     {"term": "alliance_within_lag", "estimate": 0.16, "ci_low": 0.12, "ci_high": 0.2},
    ...     {"term": "alliance_between", "estimate": 0.29, "ci_low": 0.2, "ci_high": 0.38}]}
    >>> within_between_estimates(r)["within"]["estimate"]
    0.16
    """
    rows = {f["term"]: f for f in result["fixed"]}
    term_w = next((t for t in within if t in rows), None)
    if term_w is None or between not in rows:
        raise KeyError(
            f"model {result.get('name')!r} has no within-patient term ({', '.join(within)}) "
            f"and between-patient term ({between}); its terms are {sorted(rows)}."
        )
    keys = ("estimate", "ci_low", "ci_high")
    return {
        "within": {"term": term_w, **{k: rows[term_w][k] for k in keys}},
        "between": {"term": between, **{k: rows[between][k] for k in keys}},
    }


def _estimate_text(e: Mapping[str, Any]) -> str:
    from .tables.formatting import format_number

    return (
        f"b = {format_number(e['estimate'])}, 95% CI "
        f"[{format_number(e['ci_low'])}, {format_number(e['ci_high'])}]"
    )


def plot_within_between(
    analysis: pd.DataFrame,
    result: Mapping[str, Any] | None = None,
    *,
    alliance_label: str | None = None,
    outcome_label: str | None = None,
    labels: Labels | Mapping[str, Any] | None = None,
) -> matplotlib.figure.Figure:
    """Within- and between-patient alliance–outcome relations, side by side.

    Left: each session's outcome minus the patient's mean outcome against last session's
    alliance minus the patient's mean alliance (``alliance_within_lag``, ``outcome_within``).
    Right: patient mean outcome against patient mean alliance (one dot per patient).

    With a fitted model *result* (a model with ``alliance_within_lag`` and
    ``alliance_between``, :func:`within_between_estimates`), the lines have the model's
    slopes, drawn through the centroid of each panel's points, and the panel titles print
    the model's estimates with their 95% CIs: the numbers to report. Without one, the lines
    are ordinary least-squares fits, for orientation only, and the titles say so.
    """
    words = _as_labels(labels)
    alliance_label = alliance_label or words.variable("alliance")
    outcome_label = outcome_label or words.variable("outcome")
    within = analysis.dropna(subset=["alliance_within_lag", "outcome_within"])
    patients = (
        analysis.groupby("patient", observed=True)[["alliance_pmean", "outcome_pmean"]]
        .first()
        .dropna()
    )
    estimates = within_between_estimates(result) if result is not None else None
    with style():
        fig, (left, right) = plt.subplots(1, 2, figsize=(TWO_COLUMNS, 3.1), layout="constrained")
        left.scatter(
            within["alliance_within_lag"],
            within["outcome_within"],
            s=3,
            alpha=0.25,
            color="#56B4E9",
            linewidths=0,
        )
        xw = within["alliance_within_lag"].to_numpy()
        yw = within["outcome_within"].to_numpy()
        xb = patients["alliance_pmean"].to_numpy()
        yb = patients["outcome_pmean"].to_numpy()
        if estimates is None:
            b_w = _fit_line(left, xw, yw, "#0072B2")
            left.set_title(f"Within patients\n(OLS slope {b_w:.2f}, for orientation)")
        else:
            _slope_line(left, xw, yw, float(estimates["within"]["estimate"]), "#0072B2")
            left.set_title(f"Within patients\n{_estimate_text(estimates['within'])}")
        left.set_xlabel(
            _wrap(f"{alliance_label} at the previous session (deviation from the patient's mean)")
        )
        left.set_ylabel(_wrap(f"{outcome_label} (deviation from the patient's mean)"))
        right.scatter(xb, yb, s=6, alpha=0.6, color="#E69F00", linewidths=0)
        if estimates is None:
            b_b = _fit_line(right, xb, yb, "#D55E00")
            right.set_title(f"Between patients\n(OLS slope {b_b:.2f}, for orientation)")
        else:
            _slope_line(right, xb, yb, float(estimates["between"]["estimate"]), "#D55E00")
            right.set_title(f"Between patients\n{_estimate_text(estimates['between'])}")
        right.set_xlabel(_wrap(f"{alliance_label}, patient mean"))
        right.set_ylabel(_wrap(f"{outcome_label}, patient mean"))
    return fig


# --------------------------------------------------------------------------- shared helpers

#: The Okabe–Ito palette by name.
OKABE_ITO = {
    "blue": "#0072B2",
    "vermillion": "#D55E00",
    "bluish_green": "#009E73",
    "reddish_purple": "#CC79A7",
    "orange": "#E69F00",
    "sky_blue": "#56B4E9",
    "yellow": "#F0E442",
    "black": "#000000",
}
_CYCLE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000"]
_MARKERS = ["o", "s", "^", "D", "v", "P", "X"]
_GREY = "#999999"


def _width(width: str) -> float:
    if width not in ("one", "two"):
        raise ValueError(f"`width` must be 'one' or 'two' (journal columns); got {width!r}.")
    return ONE_COLUMN if width == "one" else TWO_COLUMNS


def _as_labels(labels: Labels | Mapping[str, Any] | None) -> Labels:
    """A :class:`~allianceflow.labels.Labels` from labels, their record, or None."""
    return Labels.from_dict(labels)


def _wrap(text: str, width: int = 44) -> str:
    """Break a long axis label into lines of at most *width* characters."""
    import textwrap

    return "\n".join(textwrap.wrap(text, width=width, break_on_hyphens=False)) or text


def _integer_ticks(ax, axis: str = "x") -> None:
    """Whole-number ticks (sessions) on *axis*."""
    from matplotlib.ticker import MaxNLocator

    target = ax.xaxis if axis == "x" else ax.yaxis
    target.set_major_locator(MaxNLocator(integer=True))


def _legend_below(fig, ax, *, ncols: int | None = None) -> None:
    """The legend of *ax* below the axes, outside the data (constrained layout)."""
    handles, texts = ax.get_legend_handles_labels()
    if not handles:
        return
    if ncols is None:
        ncols = 2 if max(len(t) for t in texts) <= 22 and len(texts) > 1 else 1
    fig.legend(handles, texts, loc="outside lower center", ncols=ncols, frameon=False)


def _mean_ci(values: pd.Series) -> tuple[float, float, float, int]:
    """Mean and normal 95% CI of the mean (NaN interval for n < 2)."""
    v = pd.to_numeric(values, errors="coerce").dropna().to_numpy(dtype=float)
    n = len(v)
    if n == 0:
        return float("nan"), float("nan"), float("nan"), 0
    m = float(v.mean())
    if n < 2:
        return m, float("nan"), float("nan"), n
    half = 1.96 * float(v.std(ddof=1)) / np.sqrt(n)
    return m, m - half, m + half, n


# --------------------------------------------------------------------------- model-implied mean


def _term_value(part: str, grid: pd.DataFrame, hold: Mapping[str, float]) -> np.ndarray:
    import re

    match = re.fullmatch(r"(?:C\()?([A-Za-z_][\w.]*)\)?\[T\.(.+)\]", part)
    if match:
        column, level = match.groups()
        if column in grid.columns:
            return (grid[column].astype(str) == level).to_numpy(dtype=float)
        return np.full(len(grid), float(hold.get(part, 0.0)))
    if part in ("Intercept", "(Intercept)"):
        return np.ones(len(grid))
    if part in grid.columns:
        return grid[part].to_numpy(dtype=float)
    return np.full(len(grid), float(hold.get(part, 0.0)))


def model_implied_mean(
    result: Mapping[str, Any],
    grid: pd.DataFrame,
    *,
    hold: Mapping[str, float] | None = None,
    time: str = "session",
    band: Band = "patients",
) -> pd.DataFrame:
    """The fixed-effects prediction of a fitted model on a grid, with a band.

    Parameters
    ----------
    result : dict
        A :func:`allianceflow.models.fit_model` result.
    grid : pandas.DataFrame
        Values of the predictors to predict at (e.g. ``session`` 1 … 16). Terms whose
        variable is not in *grid* are held at ``hold[term]`` (default 0, the mean of a
        centred predictor such as ``alliance_within_lag`` or ``alliance_between``).
        Interactions ``a:b`` are products; ``x[T.level]`` is 1 where ``grid[x] == level``.
    time : str
        The time variable of random slopes (for the ``"patients"`` band).
    band : {'patients', 'confidence'}
        ``'patients'``: the range of 95% of patients' (and therapists') model-implied
        trajectories, mean ± 1.96 √(Σ variances of the random effects at *time*), from the
        variance components; ``'confidence'``: the 95% confidence band of the mean,
        ±1.96 √(x' V x), which needs the fixed-effects covariance ``result['vcov_fixed']``.

    Returns
    -------
    pandas.DataFrame
        *grid* plus ``mean``, ``lower``, ``upper``.

    Raises
    ------
    KeyError
        ``band='confidence'`` and the result has no ``vcov_fixed``.
    """
    if band not in ("patients", "confidence"):
        raise ValueError(f"`band` must be 'patients' or 'confidence'; got {band!r}.")
    hold = dict(hold or {})
    terms = [f["term"] for f in result["fixed"]]
    x = np.column_stack(
        [np.prod([_term_value(p, grid, hold) for p in term.split(":")], axis=0) for term in terms]
    )
    beta = np.array([f["estimate"] for f in result["fixed"]], dtype=float)
    mean = x @ beta
    if band == "confidence":
        if "vcov_fixed" not in result:
            raise KeyError(
                "`result` has no 'vcov_fixed' (the covariance matrix of the fixed effects, "
                "{'terms': [...], 'matrix': [[...]]}); use band='patients' or refit with a "
                "models.py that stores it."
            )
        vc = result["vcov_fixed"]
        order = [vc["terms"].index(t) for t in terms]
        v = np.asarray(vc["matrix"], dtype=float)[np.ix_(order, order)]
        half = 1.96 * np.sqrt(np.einsum("ij,jk,ik->i", x, v, x))
    else:
        t = grid[time].to_numpy(dtype=float) if time in grid.columns else np.zeros(len(grid))
        var = np.zeros(len(grid))
        for r in result.get("random", []):
            if r["group"] == "Residual" or r["variance"] is None:
                continue
            z = (
                np.ones(len(grid))
                if r["term"] in ("(Intercept)", "Intercept", "1")
                else (t if r["term"] == time else 0.0)
            )
            var = var + float(r["variance"]) * z**2
        for c in result.get("covariances", []):
            if c.get("covariance") is None:
                continue
            pair = {c["term1"], c["term2"]}
            if pair == {"(Intercept)", time}:
                var = var + 2.0 * float(c["covariance"]) * t
        half = 1.96 * np.sqrt(np.maximum(var, 0.0))
    out = grid.reset_index(drop=True).copy()
    out["mean"], out["lower"], out["upper"] = mean, mean - half, mean + half
    return out


# --------------------------------------------------------------------------- figures


def plot_trajectories(
    analysis: pd.DataFrame,
    result: Mapping[str, Any] | None = None,
    *,
    outcome: str = "outcome",
    time: str = "session",
    patient: str = "patient",
    max_patients: int = 60,
    band: Band = "patients",
    patient_lines: bool = True,
    min_n: int = 5,
    outcome_label: str | None = None,
    labels: Labels | Mapping[str, Any] | None = None,
    width: Width = "one",
) -> matplotlib.figure.Figure:
    """Outcome trajectories with the model-implied mean and its band.

    With ``patient_lines=True``, thin grey lines are individual patients (all of them, or
    *max_patients* evenly spaced in sorted id order, so the choice is the same every run).
    With ``patient_lines=False`` no individual is drawn: the observed mean per session with
    its 95% CI (sessions with at least *min_n* patients) stands in for them, so the figure
    shows aggregates only. The thick line is the fixed-effects prediction of *result* over
    *time* with the other predictors at 0 (the mean of a centred predictor) and the shaded
    band that of :func:`model_implied_mean`. The legend sits below the axes.
    """
    check_frame(analysis, "analysis")
    check_columns(analysis, outcome, time, patient, name="analysis")
    words = _as_labels(labels)
    outcome_label = outcome_label or words.variable(outcome)
    ids = sorted(analysis[patient].astype(str).unique())
    if len(ids) > max_patients:
        ids = [ids[i] for i in np.linspace(0, len(ids) - 1, max_patients).round().astype(int)]
    shown = analysis[analysis[patient].astype(str).isin(ids)].sort_values(
        [patient, time], kind="mergesort"
    )
    with style():
        fig, ax = plt.subplots(figsize=(_width(width), _width(width) * 0.95), layout="constrained")
        if patient_lines:
            for _, rows in shown.groupby(patient, observed=True, sort=True):
                rows = rows.dropna(subset=[outcome])
                ax.plot(rows[time], rows[outcome], color=_GREY, lw=0.5, alpha=0.5)
            title = f"{len(ids)} of {analysis[patient].nunique()} patients"
        else:
            stats_ = [(t, *_mean_ci(g[outcome])) for t, g in analysis.groupby(time, sort=True)]
            stats_ = [x for x in stats_ if x[4] >= min_n]
            if stats_:
                t, m, lo, hi, _ = map(np.array, zip(*stats_))
                ax.fill_between(t, lo, hi, color=_GREY, alpha=0.3, linewidth=0)
                ax.plot(
                    t, m, color="black", lw=1, marker="o", ms=2.5, label="observed mean (95% CI)"
                )
            title = f"{analysis[patient].nunique()} patients"
        if result is not None:
            t = np.arange(int(analysis[time].min()), int(analysis[time].max()) + 1, dtype=float)
            pred = model_implied_mean(result, pd.DataFrame({time: t}), time=time, band=band)
            what = "95% of patients" if band == "patients" else "95% CI"
            ax.fill_between(
                pred[time],
                pred["lower"],
                pred["upper"],
                color=OKABE_ITO["sky_blue"],
                alpha=0.3,
                linewidth=0,
                label=f"model-implied band ({what})",
            )
            ax.plot(
                pred[time], pred["mean"], color=OKABE_ITO["blue"], lw=2, label="model-implied mean"
            )
        _legend_below(fig, ax, ncols=1)
        _integer_ticks(ax)
        ax.set_xlabel(words.variable(time))
        ax.set_ylabel(_wrap(outcome_label, 36))
        ax.set_title(title)
    return fig


#: The ratio a GLMM family's exponentiated coefficients are (the records' ``ratios``).
_RATIO_AXES = {"binomial": "Odds ratio", "poisson": "Rate ratio"}


def plot_forest(
    results: Mapping[str, Any] | Sequence[Mapping[str, Any]],
    *,
    drop: Sequence[str] = ("Intercept",),
    labels: Labels | Mapping[str, Any] | None = None,
    title: str | None = None,
    width: Width = "one",
    max_height: float = 9.0,
) -> matplotlib.figure.Figure:
    """Forest plot of the fixed effects (estimate and 95% CI) of one model, or several.

    Each term is a row, named in words (:meth:`allianceflow.labels.Labels.term`, or a
    mapping from term to label); with several models they sit side by side in Okabe–Ito
    colours and distinct markers, with the legend below the axes. The dotted line marks
    zero. *drop* removes terms on another scale (the intercept). The pipeline draws one
    figure per model (research question); the height grows with the number of terms and
    never exceeds *max_height* inches.

    GLMMs whose records carry ``ratios`` (logit: odds ratios; log: rate ratios) are drawn
    as those ratios with their 95% CIs on a log axis, with the dotted line at 1, so a
    clinician reads the ratio rather than *b* on the log-odds or log-rate scale.

    Raises
    ------
    ValueError
        No results, or every term dropped.
    """
    if isinstance(results, Mapping):
        results = [results]
    results = list(results)
    if not results:
        raise ValueError("`results` must hold at least one model result; got none.")
    if isinstance(labels, Mapping) and not set(labels) <= set(Labels.__dataclass_fields__):
        mapping, words = dict(labels), Labels()
    else:
        mapping, words = {}, _as_labels(labels)
    terms: list[str] = []
    for r in results:
        terms += [f["term"] for f in r["fixed"] if f["term"] not in drop and f["term"] not in terms]
    if not terms:
        raise ValueError(f"every fixed effect is in `drop` ({list(drop)}); nothing to plot.")
    k = len(results)
    families = {r.get("family") for r in results}
    ratio_axis = (
        _RATIO_AXES.get(families.pop())
        if len(families) == 1 and all(r.get("ratios") for r in results)
        else None
    )
    offsets = (np.arange(k) - (k - 1) / 2) * (0.6 / max(k, 1))
    names = [_wrap(mapping.get(t) or words.term(t), 34 if width == "one" else 60) for t in terms]
    lines = sum(n.count("\n") + 1 for n in names)
    height = min(max_height, 1.3 + 0.2 * lines + 0.12 * len(terms) * k + (0.3 if k > 1 else 0))
    with style():
        fig, ax = plt.subplots(figsize=(_width(width), height), layout="constrained")
        for m, r in enumerate(results):
            point = "ratio" if ratio_axis else "estimate"
            rows = {f["term"]: f for f in (r["ratios"] if ratio_axis else r["fixed"])}
            ys, xs, lo, hi = [], [], [], []
            for i, term in enumerate(terms):
                row = rows.get(term)
                if row is not None and None not in (row[point], row["ci_low"], row["ci_high"]):
                    ys.append(len(terms) - 1 - i + offsets[m])
                    xs.append(row[point])
                    lo.append(row[point] - row["ci_low"])
                    hi.append(row["ci_high"] - row[point])
            ax.errorbar(
                xs,
                ys,
                xerr=[lo, hi],
                fmt=_MARKERS[m % len(_MARKERS)],
                color=_CYCLE[m % len(_CYCLE)],
                ms=4,
                capsize=2,
                lw=1,
                label=r.get("label") or r["name"],
            )
        ax.axvline(1 if ratio_axis else 0, color="black", lw=0.6, ls=":")
        ax.set_yticks(range(len(terms)))
        ax.set_yticklabels(list(reversed(names)))
        ax.set_ylim(-0.6, len(terms) - 0.4)
        if ratio_axis:
            ax.set_xscale("log")
            _ratio_ticks(ax, ax.dataLim.x0, ax.dataLim.x1)
            # on one column the axes can be narrower than the label, which would run off
            # the figure (a label is centred on its axes): two lines
            gap = "\n" if width == "one" else " "
            ax.set_xlabel(f"{ratio_axis}{gap}(95% CI, log scale)")
        else:
            ax.set_xlabel("Estimate (95% CI)")
        if title:  # over the whole figure: a long question must not overrun a narrow axes
            fig.suptitle(
                _wrap(title, 44 if width == "one" else 90), fontsize=plt.rcParams["axes.titlesize"]
            )
        if k > 1:
            _legend_below(fig, ax, ncols=1)
    return fig


def _ratio_ticks(ax, low: float, high: float) -> None:
    """Label a log ratio axis with plain numbers (0.5, 1, 2), never overprinted.

    matplotlib's log-axis labels are powers of ten (``2 × 10⁻¹``), and on an axis that
    spans less than a decade every minor tick gets one, so that they run into each other.
    Here the labelled ticks are 1, 2 and 5 times the powers of ten when the axis (*low* to
    *high*, and 1) spans up to a decade and a half; 1 and 3 times them up to three decades;
    the powers of ten beyond; and, when it spans less than a factor of 3 (``1.00`` to
    ``1.02``), up to six evenly spaced values. The other ticks stay as unlabelled marks.
    """
    from matplotlib.ticker import LogLocator, MaxNLocator, NullFormatter, StrMethodFormatter

    span = np.log10(max(high, 1.0) / min(low, 1.0))  # the dotted line at 1 is in view
    if not np.isfinite(span):  # no positive data: matplotlib's own ticks
        return
    if span < np.log10(3.0):
        locator = MaxNLocator(nbins=5, steps=[1, 2, 2.5, 5, 10])
    elif span <= 1.5:
        locator = LogLocator(base=10, subs=(1.0, 2.0, 5.0))
    elif span <= 3:
        locator = LogLocator(base=10, subs=(1.0, 3.0))
    else:
        locator = LogLocator(base=10)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(StrMethodFormatter("{x:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def plot_caterpillar(
    result: Mapping[str, Any],
    *,
    group: str = "therapist",
    term: str = "(Intercept)",
    labels: Labels | Mapping[str, Any] | None = None,
    width: Width = "one",
) -> matplotlib.figure.Figure:
    """Caterpillar plot: each group's conditional mode (BLUP) with its 95% interval.

    Needs ``result["conditional_modes"]``: rows ``{group, level, term, estimate, se}``,
    ``se`` the conditional SD (square root of the diagonal of the conditional variance
    of the random effects). Groups are sorted by estimate; the dotted line marks the
    average (0).

    Raises
    ------
    KeyError
        The result has no ``conditional_modes`` or none for *group* and *term*.
    """
    if "conditional_modes" not in result:
        raise KeyError(
            "`result` has no 'conditional_modes': the caterpillar plot needs fit_model to store "
            "rows {'group', 'level', 'term', 'estimate', 'se'} "
            "(conditional modes and conditional SDs "
            "of the random effects) under result['conditional_modes']."
        )
    modes = pd.DataFrame(result["conditional_modes"])
    check_columns(
        modes, "group", "level", "term", "estimate", "se", name="result['conditional_modes']"
    )
    modes = modes[(modes["group"] == group) & (modes["term"] == term)]
    if modes.empty:
        available = sorted(
            {
                (g, t)
                for g, t in zip(
                    pd.DataFrame(result["conditional_modes"])["group"],
                    pd.DataFrame(result["conditional_modes"])["term"],
                )
            }
        )
        raise KeyError(
            f"No conditional modes for group {group!r} and term {term!r}; there are {available}."
        )
    modes = (
        modes.assign(level=modes["level"].astype(str))
        .sort_values(["estimate", "level"], kind="mergesort")
        .reset_index(drop=True)
    )
    x = np.arange(1, len(modes) + 1)
    with style():
        fig, ax = plt.subplots(figsize=(_width(width), _width(width) * 0.7), layout="constrained")
        ax.errorbar(
            x,
            modes["estimate"],
            yerr=1.96 * modes["se"],
            fmt="o",
            ms=3,
            color=OKABE_ITO["blue"],
            ecolor=OKABE_ITO["sky_blue"],
            lw=1,
            capsize=0,
        )
        ax.axhline(0, color="black", lw=0.6, ls=":")
        words = _as_labels(labels)
        who = words.group(group)
        ax.set_xlabel(f"{who}s, ranked by estimate")
        what = lower_first(words.term(term))
        ax.set_ylabel(_wrap(f"{who} {what} (conditional mode, 95% interval)", 36))
        _integer_ticks(ax)
        ax.set_xlim(0, len(modes) + 1)
    return fig


def _patient_status(analysis: pd.DataFrame, patient: str, status: str) -> pd.Series:
    """Per patient: 'not on track' if any session was, else 'on track'."""
    ever = analysis.groupby(patient, observed=True)[status].agg(
        lambda s: bool((s.astype(str) == "not_on_track").any())
    )
    return ever.map({True: "not on track", False: "on track"})


def plot_feedback_curves(
    analysis: pd.DataFrame,
    *,
    arm: str = "condition",
    status: str = "track_status",
    outcome: str = "outcome",
    time: str = "session",
    patient: str = "patient",
    min_n: int = 5,
    outcome_label: str | None = None,
    labels: Labels | Mapping[str, Any] | None = None,
    width: Width = "one",
) -> matplotlib.figure.Figure:
    """Mean outcome per session by arm × on-track status, with 95% CIs.

    A patient counts as *not on track* when any of their sessions fell outside the
    expected-treatment-response band (``track_status == 'not_on_track'``). Colour = arm,
    line style = status (solid on track, dashed not on track). Sessions where a group has
    fewer than *min_n* patients are not drawn (unstable, and a small cell).
    """
    check_frame(analysis, "analysis")
    check_columns(analysis, arm, status, outcome, time, patient, name="analysis")
    words = _as_labels(labels)
    outcome_label = outcome_label or words.variable(outcome)
    data = analysis.join(_patient_status(analysis, patient, status).rename("_status"), on=patient)
    arms = sorted(data[arm].dropna().astype(str).unique())
    with style():
        fig, ax = plt.subplots(figsize=(_width(width), _width(width) * 1.0), layout="constrained")
        for a_i, a in enumerate(arms):
            for s_label, ls in (("on track", "-"), ("not on track", "--")):
                rows = data[(data[arm].astype(str) == a) & (data["_status"] == s_label)]
                n_pat = rows[patient].nunique()
                if n_pat < min_n:
                    continue
                stats_ = [(t, *_mean_ci(g[outcome])) for t, g in rows.groupby(time, sort=True)]
                stats_ = [s for s in stats_ if s[4] >= min_n]
                if not stats_:
                    continue
                t, m, lo, hi, _ = map(np.array, zip(*stats_))
                colour = _CYCLE[a_i % len(_CYCLE)]
                ax.fill_between(t, lo, hi, color=colour, alpha=0.15, linewidth=0)
                name = upper_first(words.level(arm, a))
                ax.plot(t, m, color=colour, ls=ls, lw=1.5, label=f"{name}, {s_label} (n = {n_pat})")
        ax.set_xlabel(words.variable(time))
        ax.set_ylabel(_wrap(f"Mean {lower_first(outcome_label)} (95% CI)", 36))
        _integer_ticks(ax)
        _legend_below(fig, ax, ncols=1)
    return fig


def pick_example_patient(
    analysis: pd.DataFrame,
    *,
    patient: str = "patient",
    status: str = "track_status",
    min_sessions: int = 6,
) -> str:
    """The patient to show: first (sorted ids) with enough sessions and one not on track.

    That is the first patient with at least *min_sessions* sessions and a session not on
    track; else the first with *min_sessions* sessions; else the first.
    """
    check_columns(analysis, patient, status, name="analysis")
    sizes = analysis.groupby(patient, observed=True).size()
    long_enough = sorted(map(str, sizes[sizes >= min_sessions].index))
    off = set(analysis.loc[analysis[status].astype(str) == "not_on_track", patient].astype(str))
    for candidates in (
        [p for p in long_enough if p in off],
        long_enough,
        sorted(map(str, sizes.index)),
    ):
        if candidates:
            return candidates[0]
    raise ValueError("`analysis` has no patients.")


def plot_expected_response(
    analysis: pd.DataFrame,
    patient_id: str | None = None,
    *,
    patient: str = "patient",
    outcome: str = "outcome",
    time: str = "session",
    outcome_label: str | None = None,
    labels: Labels | Mapping[str, Any] | None = None,
    width: Width = "one",
) -> matplotlib.figure.Figure:
    """One patient's outcome against the expected-treatment-response band.

    Uses the on-track columns of :func:`allianceflow.ontrack.on_track` (``etr_expected``,
    ``etr_lower``, ``etr_upper``, ``track_status``). The patient's id is not printed.
    """
    check_frame(analysis, "analysis")
    check_columns(
        analysis,
        patient,
        outcome,
        time,
        "etr_expected",
        "etr_lower",
        "etr_upper",
        "track_status",
        name="analysis",
    )
    if patient_id is None:
        patient_id = pick_example_patient(analysis, patient=patient)
    rows = analysis[analysis[patient].astype(str) == str(patient_id)].sort_values(
        time, kind="mergesort"
    )
    if rows.empty:
        raise KeyError(f"`patient_id` {patient_id!r} is not in `analysis`.")
    words = _as_labels(labels)
    outcome_label = outcome_label or words.variable(outcome)
    band = rows.dropna(subset=["etr_expected"])
    off = rows[rows["track_status"].astype(str) == "not_on_track"]
    on = rows[rows["track_status"].astype(str).isin(["on_track", "intake"])]
    with style():
        fig, ax = plt.subplots(figsize=(_width(width), _width(width) * 1.0), layout="constrained")
        ax.fill_between(
            band[time],
            band["etr_lower"],
            band["etr_upper"],
            color=OKABE_ITO["sky_blue"],
            alpha=0.3,
            linewidth=0,
            label="expected response band",
        )
        ax.plot(
            band[time],
            band["etr_expected"],
            color=OKABE_ITO["blue"],
            ls="--",
            lw=1,
            label="expected response",
        )
        ax.plot(rows[time], rows[outcome], color="black", lw=1)
        ax.scatter(on[time], on[outcome], color="black", s=14, zorder=3, label="on track")
        ax.scatter(
            off[time],
            off[outcome],
            color=OKABE_ITO["vermillion"],
            marker="^",
            s=22,
            zorder=3,
            label="not on track",
        )
        ax.set_xlabel(words.variable(time))
        ax.set_ylabel(_wrap(outcome_label, 36))
        _integer_ticks(ax)
        _legend_below(fig, ax)
        ax.set_title("One patient against the expected response")
    return fig


def _aligned(
    analysis: pd.DataFrame,
    events: pd.DataFrame,
    *,
    value: str,
    patient: str,
    time: str,
    at: str,
    window: tuple[int, int],
) -> pd.DataFrame:
    """Rows of *analysis* around each event, with ``offset`` = time − event time."""
    base = analysis[[patient, time, value]].dropna(subset=[value])
    ev = events[[patient, at]].reset_index(drop=True).rename(columns={at: "_at"})
    ev["episode"] = np.arange(len(ev))
    merged = base.merge(ev, on=patient)
    merged["offset"] = merged[time] - merged["_at"]
    return merged[(merged["offset"] >= window[0]) & (merged["offset"] <= window[1])]


def plot_ruptures(
    analysis: pd.DataFrame,
    *,
    alliance: str = "alliance",
    patient: str = "patient",
    time: str = "session",
    window: tuple[int, int] = (-2, 4),
    min_n: int = 5,
    alliance_label: str | None = None,
    labels: Labels | Mapping[str, Any] | None = None,
    width: Width = "one",
) -> matplotlib.figure.Figure:
    """Rupture–repair episodes: mean alliance around the rupture session, by repair status.

    Episodes are aligned at the rupture session (``rupture_detected``, offset 0); lines are
    the mean alliance (95% CI) of repaired, unrepaired and censored episodes
    (``rupture_repair``), drawn where at least *min_n* episodes contribute.
    """
    check_frame(analysis, "analysis")
    check_columns(
        analysis, alliance, patient, time, "rupture_detected", "rupture_repair", name="analysis"
    )
    events = analysis[analysis["rupture_detected"].fillna(False).astype(bool)][
        [patient, time, "rupture_repair"]
    ]
    colours = {
        "repaired": OKABE_ITO["bluish_green"],
        "unrepaired": OKABE_ITO["vermillion"],
        "censored": _GREY,
    }
    words = _as_labels(labels)
    alliance_label = alliance_label or words.variable(alliance)
    with style():
        fig, ax = plt.subplots(figsize=(_width(width), _width(width) * 0.95), layout="constrained")
        for status, colour in colours.items():
            ev = events[events["rupture_repair"].astype(str) == status].rename(
                columns={time: "_rupture"}
            )
            if len(ev) < min_n:
                continue
            rows = _aligned(
                analysis,
                ev,
                value=alliance,
                patient=patient,
                time=time,
                at="_rupture",
                window=window,
            )
            stats_ = [(o, *_mean_ci(g[alliance])) for o, g in rows.groupby("offset", sort=True)]
            stats_ = [s for s in stats_ if s[4] >= min_n]
            if not stats_:
                continue
            o, m, lo, hi, _ = map(np.array, zip(*stats_))
            ax.fill_between(o, lo, hi, color=colour, alpha=0.2, linewidth=0)
            ax.plot(
                o, m, color=colour, marker="o", ms=3, lw=1.5, label=f"{status} ({len(ev)} episodes)"
            )
        ax.axvline(0, color="black", lw=0.6, ls=":")
        ax.set_xlabel("Sessions from the rupture")
        ax.set_ylabel(_wrap(f"Mean {lower_first(alliance_label)} (95% CI)", 36))
        _integer_ticks(ax)
        _legend_below(fig, ax, ncols=1)
    return fig


def plot_sudden_gains(
    analysis: pd.DataFrame,
    gains: pd.DataFrame,
    *,
    outcome: str = "outcome",
    patient: str = "patient",
    time: str = "session",
    window: tuple[int, int] = (-2, 3),
    outcome_label: str | None = None,
    labels: Labels | Mapping[str, Any] | None = None,
    width: Width = "one",
) -> matplotlib.figure.Figure:
    """Outcome around each sudden gain, aligned at the pre-gain session (offset 0).

    Thin lines are individual gains; the thick line is their mean with its 95% CI
    (Tang & DeRubeis, 1999, figure 1 style).
    """
    check_frame(analysis, "analysis")
    check_frame(gains, "gains")
    check_columns(gains, patient, "event", "pregain_session", name="gains")
    ev = gains[gains["event"].astype(str) == "gain"]
    outcome_label = outcome_label or _as_labels(labels).variable(outcome)
    with style():
        fig, ax = plt.subplots(figsize=(_width(width), _width(width) * 0.9), layout="constrained")
        if len(ev):
            rows = _aligned(
                analysis,
                ev,
                value=outcome,
                patient=patient,
                time=time,
                at="pregain_session",
                window=window,
            )
            for _, g in rows.groupby("episode", sort=True):
                ax.plot(g["offset"], g[outcome], color=_GREY, lw=0.5, alpha=0.6)
            stats_ = [(o, *_mean_ci(g[outcome])) for o, g in rows.groupby("offset", sort=True)]
            o, m, lo, hi, _ = map(np.array, zip(*stats_))
            ax.fill_between(o, lo, hi, color=OKABE_ITO["orange"], alpha=0.3, linewidth=0)
            ax.plot(
                o,
                m,
                color=OKABE_ITO["vermillion"],
                lw=2,
                marker="o",
                ms=3,
                label=f"mean of {len(ev)} gains (95% CI)",
            )
            _legend_below(fig, ax)
        else:
            ax.text(0.5, 0.5, "no sudden gains", ha="center", va="center", transform=ax.transAxes)
        ax.axvspan(0, 1, color=OKABE_ITO["yellow"], alpha=0.25, linewidth=0)
        ax.set_xlabel("Sessions from the pre-gain session")
        ax.set_ylabel(_wrap(outcome_label, 36))
        _integer_ticks(ax)
    return fig


def plot_reliable_change(
    patients: pd.DataFrame,
    *,
    rci: float | None,
    cutoff: float | None = None,
    direction: Literal["higher_is_better", "lower_is_better"] = "higher_is_better",
    first: str = "score_first",
    last: str = "score_last",
    by: str | None = "condition",
    outcome_label: str | None = None,
    labels: Labels | Mapping[str, Any] | None = None,
    width: Width = "one",
) -> matplotlib.figure.Figure:
    """Intake against last score, one dot per patient, with reliable-change band and cut-off.

    The band and the clinical cut-off follow Jacobson & Truax (1991).
    Points inside the grey band around the identity line changed less than the reliable
    change value *rci*; dashed lines mark the cut-off on both axes.
    """
    check_frame(patients, "patients")
    check_columns(patients, first, last, name="patients")
    if direction not in ("higher_is_better", "lower_is_better"):
        raise ValueError(
            f"`direction` must be 'higher_is_better' or 'lower_is_better'; got {direction!r}."
        )
    words = _as_labels(labels)
    outcome_label = outcome_label or words.variable("outcome")
    data = patients.dropna(subset=[first, last])
    lo = float(np.nanmin(data[[first, last]].to_numpy())) if len(data) else 0.0
    hi = float(np.nanmax(data[[first, last]].to_numpy())) if len(data) else 1.0
    pad = 0.05 * (hi - lo or 1.0)
    lo, hi = lo - pad, hi + pad
    with style():
        fig, ax = plt.subplots(figsize=(_width(width), _width(width) * 1.25), layout="constrained")
        grid = np.array([lo, hi])
        if rci is not None:
            ax.fill_between(
                grid,
                grid - rci,
                grid + rci,
                color=_GREY,
                alpha=0.25,
                linewidth=0,
                label=f"no reliable change (± {rci:g})",
            )
        ax.plot(grid, grid, color="black", lw=0.6)
        if cutoff is not None:
            ax.axhline(cutoff, color="black", lw=0.8, ls="--", label=f"cut-off ({cutoff:g})")
            ax.axvline(cutoff, color="black", lw=0.8, ls="--")
        groups = (
            [("all", data)]
            if by is None or by not in data.columns
            else [
                (g, data[data[by].astype(str) == g])
                for g in sorted(data[by].dropna().astype(str).unique())
            ]
        )
        for i, (g, rows) in enumerate(groups):
            ax.scatter(
                rows[first],
                rows[last],
                s=8,
                alpha=0.7,
                color=_CYCLE[i % len(_CYCLE)],
                marker=_MARKERS[i % len(_MARKERS)],
                linewidths=0,
                label=None if g == "all" else upper_first(words.level(by, g)),
            )
        up, down = (
            ("improved", "deteriorated")
            if direction == "higher_is_better"
            else ("deteriorated", "improved")
        )
        ax.text(0.03, 0.97, f"reliably {up}", transform=ax.transAxes, ha="left", va="top")
        ax.text(0.97, 0.03, f"reliably {down}", transform=ax.transAxes, ha="right", va="bottom")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_aspect("equal")
        ax.set_xlabel(_wrap(f"{outcome_label} at intake", 40))
        ax.set_ylabel(_wrap(f"{outcome_label} at the last session", 40))
        _legend_below(fig, ax)
    return fig


def _box(ax, x: float, y: float, text: str):
    return ax.text(
        x,
        y,
        text,
        ha="center",
        va="center",
        transform=ax.transAxes,
        bbox={
            "boxstyle": "square,pad=0.5",
            "facecolor": "white",
            "edgecolor": "black",
            "linewidth": 0.8,
        },
    )


def _connect(ax, boxes: list, edges: list[tuple[int, int, str]]) -> None:
    """Arrows between box edges.

    'down': bottom centre to top centre; 'right': from the vertical arrow below the source
    box to the left edge of the target box.
    """
    renderer = ax.figure.canvas.get_renderer()
    for box in boxes:  # size each box around its text (what drawing the figure would do)
        box.update_bbox_position_size(renderer)
    inv = ax.transAxes.inverted()
    extent = [inv.transform(b.get_bbox_patch().get_window_extent(renderer)) for b in boxes]
    for a, b, kind in edges:
        (ax0, ay0), (ax1, ay1) = extent[a]
        (bx0, by0), (bx1, by1) = extent[b]
        if kind == "down":
            start, end = ((ax0 + ax1) / 2, ay0), ((bx0 + bx1) / 2, by1)
        else:
            start, end = ((ax0 + ax1) / 2, (by0 + by1) / 2), (bx0, (by0 + by1) / 2)
        ax.annotate(
            "",
            xy=end,
            xytext=start,
            xycoords="axes fraction",
            textcoords="axes fraction",
            arrowprops={
                "arrowstyle": "-|>",
                "color": "black",
                "lw": 0.8,
                "shrinkA": 0,
                "shrinkB": 0,
            },
        )


def _rules(block: Mapping[str, Any]) -> str:
    by_rule = block.get("excluded_by_rule", {}) or {}
    return "".join(f"\n  {rule.replace('_', ' ')}: {n}" for rule, n in sorted(by_rule.items()))


def plot_flow(
    flow: Mapping[str, Any],
    *,
    arms: Mapping[str, Mapping[str, int]] | None = None,
    analysed: Mapping[str, Mapping[str, Any]] | None = None,
    labels: Labels | Mapping[str, Any] | None = None,
    width: Width = "two",
) -> matplotlib.figure.Figure:
    """A CONSORT-style flow diagram drawn from ``flow.json`` (the clean stage's counts).

    Parameters
    ----------
    flow : mapping
        ``sessions`` and ``patients`` blocks with ``read``, ``kept``, ``excluded`` and
        ``excluded_by_rule`` (:func:`allianceflow.clean.clean_sessions`); ``source_file``.
    arms : mapping, optional
        Arm → ``{"patients": n, "sessions": n}`` of the kept data, one box per arm.
    analysed : mapping, optional
        Model name (or its question in words) → ``{"n_obs": n, "n_groups": {...},
        "n_dropped_missing": n}`` (the model results), one entry per model in the last box,
        in the order given, wrapped to the box.

    Raises
    ------
    KeyError
        *flow* lacks the ``sessions`` or ``patients`` block or their counts.
    """
    for level in ("sessions", "patients"):
        if level not in flow:
            raise KeyError(f"`flow` has no {level!r} block; it has {sorted(flow)}.")
        for key in ("read", "kept", "excluded"):
            if key not in flow[level]:
                raise KeyError(f"`flow['{level}']` has no {key!r}; it has {sorted(flow[level])}.")
    s, p = flow["sessions"], flow["patients"]
    source = flow.get("source_file", "the raw export")
    excl = f"Excluded\n{p['excluded']} patients{_rules(p)}\n{s['excluded']} sessions{_rules(s)}"
    lines_analysed = []
    import textwrap

    for name in analysed or {}:  # in the order given (the study's models)
        m = analysed[name]
        groups = ", ".join(f"{v} {k}s" for k, v in sorted(m.get("n_groups", {}).items()))
        lines_analysed += textwrap.wrap(
            f"{name}: {m['n_obs']} sessions, {groups}; "
            f"{m.get('n_dropped_missing', 0)} left out (missing values)",
            width=95 if width == "two" else 45,
            subsequent_indent="    ",
        )
    # Row heights in inches from their numbers of text lines, so long boxes never overflow;
    # the gap below the first row holds the exclusion box.
    line, pad, gap = 0.15, 0.25, 0.35
    heights = [2 * line + pad, 2 * line + pad] + ([2 * line + pad] if arms else [])
    heights += [(1 + len(lines_analysed)) * line + pad] if analysed else []
    gaps = [max(gap, excl.count("\n") * line + pad + 0.1)] + [gap] * (len(heights) - 1)
    total = sum(heights) + sum(gaps) + 0.2
    centres, top = [], total - 0.1
    for h, g in zip(heights, gaps):
        centres.append((top - h / 2) / total)
        top -= h + g
    with style():
        fig = plt.figure(figsize=(_width(width), total))
        ax = fig.add_axes([0, 0, 1, 1])
        ax.set_axis_off()
        ys = centres
        boxes = [
            _box(ax, 0.3, ys[0], f"Read from {source}\n{p['read']} patients, {s['read']} sessions")
        ]
        boxes.append(_box(ax, 0.75, (ys[0] + ys[1]) / 2, excl))
        boxes.append(_box(ax, 0.3, ys[1], f"Kept\n{p['kept']} patients, {s['kept']} sessions"))
        edges = [(0, 2, "down"), (0, 1, "right")]
        above = [2]
        row = 2
        if arms:
            names = sorted(arms)
            xs = np.linspace(0.2, 0.8, len(names)) if len(names) > 1 else [0.3]
            level = []
            for x, name in zip(xs, names):
                a = arms[name]
                boxes.append(
                    _box(
                        ax,
                        x,
                        ys[row],
                        f"{upper_first(_as_labels(labels).arm(name))}\n"
                        f"{a.get('patients', '')} patients, "
                        f"{a.get('sessions', '')} sessions",
                    )
                )
                edges.append((2, len(boxes) - 1, "down"))
                level.append(len(boxes) - 1)
            above = level
            row += 1
        if analysed:
            boxes.append(_box(ax, 0.5, ys[row], "Analysed\n" + "\n".join(lines_analysed)))
            edges += [(i, len(boxes) - 1, "down") for i in above]
        _connect(ax, boxes, edges)
    return fig


def plot_simple_slopes(
    result: Mapping[str, Any],
    *,
    labels: Mapping[str, str] | None = None,
    outcome_label: str = "outcome",
    width: Width = "one",
) -> matplotlib.figure.Figure:
    """Simple slopes of a moderated model: the alliance slope at each moderator level.

    One panel per moderated alliance term; each level of the moderator (or −1 SD, mean,
    +1 SD of a continuous one) is a point with its 95% CI from the model's
    ``simple_slopes`` (:func:`allianceflow.models.moderation.simple_slopes`); the dotted
    line marks no link. Overlapping intervals do not show equal slopes: interaction tests
    have low power.
    """
    from .tables import DEFAULT_LABELS
    from .tables.moderation import level_label

    if not result.get("simple_slopes"):
        raise ValueError(
            f"`result` {result.get('name')!r} has no simple slopes; fit a preset with the "
            "`moderator` option."
        )
    names = {**DEFAULT_LABELS, **(labels or {})}
    slopes = pd.DataFrame(result["simple_slopes"])
    terms = list(dict.fromkeys(slopes["term"]))
    moderator = str((result.get("moderation") or {}).get("moderator", "moderator"))
    moderator_words = names.get(moderator, moderator.removeprefix("moderator_").replace("_", " "))
    if moderator == "modality" and moderator not in names:
        moderator_words = "session modality"
    with style():
        fig, axes = plt.subplots(
            1,
            len(terms),
            figsize=(_width(width if len(terms) == 1 else "two"), 2.6),
            sharey=True,
            constrained_layout=True,
            squeeze=False,
        )
        for ax, term in zip(axes[0], terms, strict=True):
            rows = slopes[slopes["term"] == term].reset_index(drop=True)
            x = np.arange(len(rows))
            ax.errorbar(
                x,
                rows["slope"],
                yerr=[rows["slope"] - rows["ci_low"], rows["ci_high"] - rows["slope"]],
                fmt="o",
                color=OKABE_ITO["blue"],
                ms=4,
                capsize=3,
                lw=1,
            )
            ax.axhline(0, color="black", lw=0.6, ls=":")
            ax.set_xticks(x)
            ax.set_xticklabels([level_label(str(v), labels) for v in rows["level"]])
            ax.set_xlim(-0.5, len(rows) - 0.5)
            ax.set_xlabel(moderator_words.capitalize())
            ax.set_title(names.get(term, term), fontsize="medium")
        axes[0][0].set_ylabel(f"Change in {outcome_label}\nper alliance point (95% CI)")
    return fig


# --------------------------------------------------------------------------- binary presets

#: Labels of the binary outcomes drawn by :func:`plot_binary_rates`.
_BINARY_LABELS = {
    "deteriorated": "reliable deterioration",
    "improved": "reliable improvement or recovery",
    "dropout": "early ending",
}


def plot_binary_rates(
    patients: pd.DataFrame,
    *,
    outcomes: Sequence[str] = ("deteriorated", "improved"),
    arm: str = "condition",
    subgroup: str = "off_track",
    min_n: int = 5,
    width: Width = "two",
    labels: Labels | Mapping[str, Any] | None = None,
) -> matplotlib.figure.Figure:
    r"""Rates of binary outcomes by arm × on-track status, with Wilson 95% intervals.

    One panel per outcome; within a panel, one point per arm at each of "on track" and
    "not on track" (patients ever flagged, ``off_track`` = 1), with its Wilson score
    interval (:func:`allianceflow.effects.wilson_interval`; Wilson 1927, Newcombe 1998).
    Cells with fewer than *min_n* patients are not drawn (small-cell suppression); each
    point is labelled with events/patients.

    Parameters
    ----------
    patients : pandas.DataFrame
        The patients table (:func:`allianceflow.clinical.patient_outcomes` columns).
    outcomes : sequence of str
        0/1 columns, one panel each.
    arm, subgroup : str
        The arm column and the 0/1 not-on-track column.
    min_n : int
        Smallest cell drawn.
    width : {'one', 'two'}
        Journal column width.
    labels : Labels or its record, optional
        Arms in words (the legend, below the panels).
    """
    from .effects import wilson_interval

    words = _as_labels(labels)
    check_frame(patients, "patients")
    check_columns(patients, arm, subgroup, *outcomes, name="patients")
    arms = sorted(patients[arm].dropna().astype(str).unique())
    statuses = (("on track", 0), ("not on track", 1))
    with style():
        fig, axes = plt.subplots(
            1,
            len(outcomes),
            figsize=(_width(width), _width(width) * 0.45),
            constrained_layout=True,
            squeeze=False,
        )
        for ax, outcome in zip(axes[0], outcomes):
            labelled: set[str] = set()
            for a_i, a in enumerate(arms):
                offset = (a_i - (len(arms) - 1) / 2) * 0.15
                for s_i, (_, flag) in enumerate(statuses):
                    y = patients.loc[
                        patients[arm].astype(str).eq(a) & patients[subgroup].eq(flag), outcome
                    ].dropna()
                    if y.size < min_n:
                        continue
                    p, lo, hi = wilson_interval(int(y.sum()), int(y.size))
                    colour = _CYCLE[a_i % len(_CYCLE)]
                    ax.errorbar(
                        s_i + offset,
                        p,
                        yerr=[[p - lo], [hi - p]],
                        fmt="o",
                        color=colour,
                        capsize=3,
                        label=None if a in labelled else upper_first(words.arm(a)),
                    )
                    labelled.add(a)
                    ax.annotate(
                        f"{int(y.sum())}/{y.size}",
                        (s_i + offset, hi),
                        textcoords="offset points",
                        xytext=(0, 3),
                        ha="center",
                        fontsize="x-small",
                    )
            ax.set_xticks(range(len(statuses)), [s for s, _ in statuses])
            ax.set_xlim(-0.5, len(statuses) - 0.5)
            ax.set_ylim(0, 1)
            ax.set_title(upper_first(_BINARY_LABELS.get(outcome, outcome)))
            ax.set_ylabel("Proportion of patients (95% Wilson CI)")
        _legend_below(fig, axes[0][0])
    return fig


def dropout_curve(
    model: Mapping[str, Any],
    patients: pd.DataFrame,
    *,
    predictor: str = "early_alliance",
    points: int = 50,
    alpha: float = 0.05,
) -> pd.DataFrame:
    r"""Model-predicted probability across *predictor*, with a pointwise confidence band.

    Parameters
    ----------
    model : mapping
        A fitted binomial (logit) model's JSON record with ``fixed`` and ``vcov_fixed``.
    patients : pandas.DataFrame
        The rows the model was fitted to; other numeric predictors are held at their mean.
    predictor : str
        The fixed-effect term drawn on the x axis.
    points : int
        Grid points from the observed minimum to the maximum of *predictor*.
    alpha : float
        One minus the confidence level.

    Returns
    -------
    pandas.DataFrame
        Columns *predictor*, ``probability``, ``low``, ``high``.

    Notes
    -----
    With :math:`x` the design row (intercept, the grid value, the other terms at their
    means), :math:`\hat\eta = x^\top\hat\beta` and
    :math:`\operatorname{SE}(\hat\eta) = \sqrt{x^\top \hat V x}` (the delta method on the
    link scale), the band is :math:`\operatorname{expit}(\hat\eta \pm z\,\operatorname{SE})`,
    which stays inside (0, 1). It is conditional on a therapist random effect of 0 (a
    typical therapist), not averaged over therapists.
    """
    from .models.distributions import norm_ppf  # scipy.special's ndtri, as scipy.stats uses

    terms = model["vcov_fixed"]["terms"]
    vcov = np.asarray(model["vcov_fixed"]["matrix"], dtype=float)
    beta = {row["term"]: row["estimate"] for row in model["fixed"]}
    if predictor not in terms:
        raise KeyError(f"`predictor` {predictor!r} is not a term of the model; terms: {terms}.")
    others = [t for t in terms if t not in ("Intercept", predictor)]
    check_columns(patients, predictor, *others, name="patients")
    x_obs = patients[predictor].dropna()
    grid = np.linspace(float(x_obs.min()), float(x_obs.max()), points)
    design = np.zeros((points, len(terms)))
    for j, term in enumerate(terms):
        if term == "Intercept":
            design[:, j] = 1.0
        elif term == predictor:
            design[:, j] = grid
        else:
            design[:, j] = float(patients[term].mean())
    b = np.array([beta[t] for t in terms])
    eta = design @ b
    se = np.sqrt(np.einsum("ij,jk,ik->i", design, vcov, design))
    z = norm_ppf(1 - alpha / 2)

    def expit(v):
        return 1.0 / (1.0 + np.exp(-v))

    return pd.DataFrame(
        {
            predictor: grid,
            "probability": expit(eta),
            "low": expit(eta - z * se),
            "high": expit(eta + z * se),
        }
    )


def plot_dropout_curve(
    model: Mapping[str, Any],
    patients: pd.DataFrame,
    *,
    predictor: str = "early_alliance",
    outcome: str = "dropout",
    predictor_label: str | None = None,
    width: Width = "one",
    labels: Labels | Mapping[str, Any] | None = None,
) -> matplotlib.figure.Figure:
    """Predicted probability of an early ending across the early alliance, with a 95% band.

    The line and band are :func:`dropout_curve`; the observed endings are drawn as a rug
    (early endings at the top, planned endings at the bottom). The x axis is
    *predictor_label*, else the predictor in the words of *labels* ("Early WAI-SR total
    (mean of the first sessions)").
    """
    words = _as_labels(labels)
    if predictor_label is None:
        predictor_label = (
            f"Early {lower_first(words.variable('alliance'))} (mean of the first sessions)"
            if predictor == "early_alliance"
            else words.variable(predictor)
        )
    check_frame(patients, "patients")
    check_columns(patients, predictor, outcome, name="patients")
    curve = dropout_curve(model, patients, predictor=predictor)
    observed = patients[[predictor, outcome]].dropna()
    with style():
        fig, ax = plt.subplots(
            figsize=(_width(width), _width(width) * 0.8), constrained_layout=True
        )
        colour = _CYCLE[0]
        ax.fill_between(
            curve[predictor], curve["low"], curve["high"], color=colour, alpha=0.2, linewidth=0
        )
        ax.plot(curve[predictor], curve["probability"], color=colour, lw=1.5)
        ax.plot(
            observed[predictor],
            observed[outcome].to_numpy() * 1.02 - 0.01,
            "|",
            color="0.4",
            markersize=6,
            alpha=0.5,
        )
        ax.set_ylim(-0.03, 1.03)
        ax.set_xlabel(_wrap(predictor_label, 40 if width == "one" else 80))
        ax.set_ylabel(_wrap("Probability of an early ending (95% CI)", 28))
    return fig


# --------------------------------------------------------------------------- couples and families


def _plural(unit: str) -> str:
    """Plural of what a system is: couples, families, couples or families."""
    return {"family": "families", "couple or family": "couples or families"}.get(unit, unit + "s")


def pick_systems(analysis: pd.DataFrame, *, system: str = "system", n: int = 12) -> list[str]:
    """Choose *n* systems (couples, families) to draw, the same ones every run.

    All of them when there are at most *n*; else *n* evenly spaced in sorted id order (as
    :func:`plot_trajectories` chooses patients), so that the choice depends on the ids
    alone, never on a random draw or on the data's order.

    Examples
    --------
    >>> frame = pd.DataFrame({"system": [f"C{i:02d}" for i in range(10)]})
    >>> pick_systems(frame, n=4)
    ['C00', 'C03', 'C06', 'C09']
    """
    check_frame(analysis, "analysis")
    check_columns(analysis, system, name="analysis")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"`n` must be a positive whole number of systems; got {n!r}.")
    ids = sorted(analysis[system].dropna().astype(str).unique())
    if len(ids) <= n:
        return ids
    return [ids[i] for i in np.linspace(0, len(ids) - 1, n).round().astype(int)]


def plot_couple_trajectories(
    analysis: pd.DataFrame,
    *,
    alliance: str = "alliance",
    system: str = "system",
    role: str = "role",
    time: str = "session",
    n_systems: int = 12,
    ncols: int = 4,
    labels: Labels | Mapping[str, Any] | None = None,
) -> matplotlib.figure.Figure:
    """Each partner's alliance over sessions, one panel per couple (or family).

    Small multiples of *n_systems* systems (:func:`pick_systems`), numbered 1, 2, …
    in sorted id order (ids are never printed); in each panel one line per member, coloured
    (and marked) by role, so that where the lines part the split is seen. The panels share
    their axes, the session ticks are whole numbers and the legend (the roles in words,
    :meth:`allianceflow.labels.Labels.role`) sits below the panels.

    Parameters
    ----------
    analysis : pandas.DataFrame
        The analysis table of a couples study: one row per client × session with
        *alliance*, *system*, *role* and *time*.
    alliance : str
        The alliance column (the derive stage's ``alliance``: the study's alliance score).
    n_systems, ncols : int
        Systems drawn, and panels per row.
    labels : Labels or its record, optional
        Words for the alliance, the roles and what a system is (a couple or a family).

    Returns
    -------
    matplotlib.figure.Figure
    """
    check_frame(analysis, "analysis")
    check_columns(analysis, alliance, system, role, time, name="analysis")
    if not isinstance(ncols, int) or isinstance(ncols, bool) or ncols < 1:
        raise ValueError(f"`ncols` must be a positive whole number of panels; got {ncols!r}.")
    words = _as_labels(labels)
    unit = words.system_word()
    chosen = pick_systems(analysis, system=system, n=n_systems)
    roles = sorted(analysis[role].dropna().astype(str).unique())
    colours = {r: _CYCLE[i % len(_CYCLE)] for i, r in enumerate(roles)}
    markers = {r: _MARKERS[i % len(_MARKERS)] for i, r in enumerate(roles)}
    ncols = min(ncols, len(chosen))
    nrows = -(-len(chosen) // ncols)
    data = analysis[analysis[system].astype(str).isin(chosen)].sort_values(
        [system, role, time], kind="mergesort"
    )
    with style():
        fig, axes = plt.subplots(
            nrows,
            ncols,
            figsize=(TWO_COLUMNS, 1.45 * nrows + 1.3),
            sharex=True,
            sharey=True,
            layout="constrained",
            squeeze=False,
        )
        for k, (ax, sid) in enumerate(zip(axes.flat, chosen)):
            rows = data[data[system].astype(str) == sid]
            for r in roles:
                member = rows[rows[role].astype(str) == r].dropna(subset=[alliance])
                if member.empty:
                    continue
                ax.plot(
                    member[time],
                    member[alliance],
                    color=colours[r],
                    marker=markers[r],
                    ms=2.5,
                    lw=1,
                    label=upper_first(words.role(r)),
                )
            ax.set_title(f"{upper_first(unit)} {k + 1}", fontsize="medium")
            _integer_ticks(ax)
        for ax in list(axes.flat)[len(chosen) :]:
            ax.set_visible(False)
        for k in range(len(chosen)):  # the lowest drawn panel of each column: its session axis
            ax = axes.flat[k]
            if k + ncols >= len(chosen):
                ax.xaxis.set_tick_params(labelbottom=True)
                ax.set_xlabel(words.variable(time))
            if k % ncols == 0:
                ax.set_ylabel(_wrap(words.variable(alliance), 24))
        handles, texts = [], []
        for ax in axes.flat:  # one legend entry per role, whichever panel has it
            for handle, text in zip(*ax.get_legend_handles_labels()):
                if text not in texts:
                    handles.append(handle)
                    texts.append(text)
        fig.legend(
            handles, texts, loc="outside lower center", ncols=max(len(texts), 1), frameon=False
        )
        total = analysis[system].nunique()
        fig.suptitle(
            f"{_wrap(words.variable(alliance), 60)} of each member, "
            f"{len(chosen)} of {total} {_plural(unit)}",
            fontsize=plt.rcParams["axes.titlesize"],
        )
    return fig


def split_estimates(result: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """The within- and between-system split effects of a fitted ``split_alliance`` model.

    Parameters
    ----------
    result : mapping
        A model record (the fit stage's JSON) with the terms ``alliance_split_within_lag``
        and ``alliance_split_between`` (:func:`allianceflow.models.preset_formula`,
        ``split_alliance``).

    Returns
    -------
    dict
        ``{"within": {...}, "between": {...}}`` as :func:`within_between_estimates`.

    Raises
    ------
    KeyError
        The model has no split terms.

    Examples
    --------
    >>> r = {"name": "s", "fixed": [
    ...     {"term": "alliance_split_within_lag", "estimate": -0.1, "ci_low": -0.2,
    ...      "ci_high": 0.0},
    ...     {"term": "alliance_split_between", "estimate": -0.4, "ci_low": -0.6,
    ...      "ci_high": -0.2}]}
    >>> split_estimates(r)["between"]["estimate"]
    -0.4
    """
    return within_between_estimates(
        result, within=("alliance_split_within_lag",), between="alliance_split_between"
    )


def plot_split_outcome(
    analysis: pd.DataFrame,
    result: Mapping[str, Any] | None = None,
    *,
    system: str = "system",
    labels: Labels | Mapping[str, Any] | None = None,
) -> matplotlib.figure.Figure:
    """The split between partners' alliance and the outcome, within and between couples.

    Left: each session's outcome minus the client's mean outcome (``outcome_within``)
    against the split at the previous session minus the couple's mean split
    (``alliance_split_within_lag``), one dot per client × session. Right: each couple's
    mean outcome (both partners, every session) against its mean split over sessions (the
    mean of ``alliance_split``, in alliance points), one dot per couple.

    With a fitted ``split_alliance`` model *result* (:func:`split_estimates`) the lines
    have the model's slopes (adjusted for the couple's mean alliance and time), drawn
    through the centroid of each panel's points, and the panel titles print the
    estimates with their 95% CIs: the numbers to report. Without one, ordinary
    least-squares lines, for orientation only, and the titles say so.
    """
    check_frame(analysis, "analysis")
    check_columns(
        analysis,
        system,
        "outcome",
        "outcome_within",
        "alliance_split",
        "alliance_split_within_lag",
        name="analysis",
    )
    words = _as_labels(labels)
    unit = words.system_word()
    units = _plural(unit)
    estimates = split_estimates(result) if result is not None else None
    within = analysis.dropna(subset=["alliance_split_within_lag", "outcome_within"])
    systems = analysis.groupby(system, observed=True)[["alliance_split", "outcome"]].mean().dropna()
    split = lower_first(words.variable("alliance_split"))
    outcome_label = words.variable("outcome")
    with style():
        fig, (left, right) = plt.subplots(1, 2, figsize=(TWO_COLUMNS, 3.2), layout="constrained")
        left.scatter(
            within["alliance_split_within_lag"],
            within["outcome_within"],
            s=3,
            alpha=0.25,
            color=OKABE_ITO["sky_blue"],
            linewidths=0,
        )
        xw = within["alliance_split_within_lag"].to_numpy(dtype=float)
        yw = within["outcome_within"].to_numpy(dtype=float)
        xb = systems["alliance_split"].to_numpy(dtype=float)
        yb = systems["outcome"].to_numpy(dtype=float)
        head_w, head_b = f"Within {units}", f"Between {units}"
        if estimates is None:
            b_w = _fit_line(left, xw, yw, OKABE_ITO["blue"])
            left.set_title(f"{head_w}\n(OLS slope {b_w:.2f}, for orientation)")
        else:
            _slope_line(left, xw, yw, float(estimates["within"]["estimate"]), OKABE_ITO["blue"])
            left.set_title(f"{head_w}\n{_estimate_text(estimates['within'])}")
        left.set_xlabel(
            _wrap(
                f"{upper_first(split)} at the previous session (deviation from the {unit}'s mean)"
            )
        )
        left.set_ylabel(_wrap(f"{outcome_label} (deviation from the client's mean)"))
        right.scatter(xb, yb, s=8, alpha=0.7, color=OKABE_ITO["orange"], linewidths=0)
        if estimates is None:
            b_b = _fit_line(right, xb, yb, OKABE_ITO["vermillion"])
            right.set_title(f"{head_b}\n(OLS slope {b_b:.2f}, for orientation)")
        else:
            _slope_line(
                right, xb, yb, float(estimates["between"]["estimate"]), OKABE_ITO["vermillion"]
            )
            right.set_title(f"{head_b}\n{_estimate_text(estimates['between'])}")
        right.set_xlabel(_wrap(f"{upper_first(split)}, the {unit}'s mean over sessions"))
        right.set_ylabel(_wrap(f"{outcome_label}, the {unit}'s mean"))
    return fig
