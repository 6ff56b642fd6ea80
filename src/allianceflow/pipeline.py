"""One function per pipeline stage, from input paths to output paths.

The Snakemake scripts in ``workflow/scripts/`` are thin adapters that call these; tests and
notebooks can call them directly. :func:`run_step` turns the errors a researcher can fix
(bad data, bad config) into one plain paragraph instead of a traceback.
"""

from __future__ import annotations

import logging
import sys
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from . import io
from .clean import DataError, clean_sessions
from .config import ConfigError

__all__ = [
    "run_step",
    "clean_stage",
    "score_stage",
    "reliability_stage",
    "derive_stage",
    "fit_stage",
    "within_between_figure_stage",
    "model_table_stage",
    "manifest_stage",
]

log = logging.getLogger("allianceflow")


@contextmanager
def run_step(log_path: str | Path | None, *, debug: bool = False) -> Iterator[logging.Logger]:
    """Log to *log_path*; on a :class:`DataError` or :class:`ConfigError` print its one
    paragraph to stderr and exit with status 1 (the traceback goes to the log only)."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_path is not None:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_path, mode="w", encoding="utf-8"))
    logging.basicConfig(level=logging.INFO, handlers=handlers, format="%(levelname)s %(message)s", force=True)
    try:
        yield log
    except (DataError, ConfigError) as error:
        if debug:
            raise
        log.debug("".join(traceback.format_exception(error)))
        if log_path is not None:
            with open(log_path, "a", encoding="utf-8") as handle:
                handle.write("".join(traceback.format_exception(error)))
        print(f"\nallianceflow: {error}\n", file=sys.stderr)
        sys.exit(1)


def clean_stage(raw: str | Path, study: dict[str, Any], *, sessions: str | Path, exclusions: str | Path, flow: str | Path) -> None:
    """Clean one raw export into the canonical table, its exclusions and flow counts."""
    raw = Path(raw)
    frame = io.read_raw(raw, delimiter=study.get("delimiter"), encoding=study.get("encoding", "utf-8-sig"))
    result = clean_sessions(frame, study, source=raw.name)
    io.write_table(result.sessions, sessions)
    io.write_table(result.exclusions, exclusions)
    io.write_json(result.flow, flow)
    log.info("%s: read %d rows, kept %d, excluded %d", raw.name, result.flow["sessions"]["read"], result.flow["sessions"]["kept"], result.flow["sessions"]["excluded"])


def score_stage(sessions: str | Path, study: dict[str, Any], *, scored: str | Path) -> None:
    """Score every instrument the study names."""
    from .score import score_sessions

    frame = io.read_table(sessions)
    io.write_table(score_sessions(frame, _instrument_specs(study)), scored)


def _instrument_specs(study: dict[str, Any]):
    return study["instruments"]


def reliability_stage(sessions: str | Path, study: dict[str, Any], *, seed: int, csv: str | Path, md: str | Path) -> None:
    """Alpha and omega with 95% CIs per instrument and subscale."""
    from .score import reliability
    from .tables import reliability_markdown

    table = reliability(io.read_table(sessions), _instrument_specs(study), seed=seed)
    io.write_table(table, csv)
    io.write_text(reliability_markdown(table), md)


def derive_stage(scored: str | Path, study: dict[str, Any], *, analysis: str | Path) -> None:
    """Within/between parts and lags of the configured alliance and outcome scores."""
    from .derive import derive_analysis

    frame = derive_analysis(
        io.read_table(scored),
        alliance=study["alliance"],
        outcome=study["outcome"],
        lag_across_gaps=study.get("lag_across_gaps", False),
    )
    io.write_table(frame, analysis)


def fit_stage(analysis: str | Path, model: dict[str, Any], *, name: str, json: str | Path, txt: str | Path) -> None:
    """Fit one model and write its tidy results and a readable summary."""
    from .models import fit_model, format_model

    result = fit_model(io.read_table(analysis), model["formula"], reml=model.get("reml", True), name=name)
    io.write_json(result, json)
    io.write_text(format_model(result), txt)
    conv = result["convergence"]
    log.info("%s: converged=%s with %s", name, conv["converged"], conv["optimizer"])


def within_between_figure_stage(analysis: str | Path, study: dict[str, Any], *, outputs) -> None:
    """The within- vs between-patient alliance–outcome figure in every format asked for."""
    from .figures import plot_within_between, save_figure

    fig = plot_within_between(io.read_table(analysis), alliance_label=study["alliance"], outcome_label=study["outcome"])
    save_figure(fig, outputs)


def model_table_stage(model_json: str | Path, *, csv: str | Path, md: str | Path) -> None:
    """The fixed-effects table of one model as CSV and Markdown."""
    from .tables import fixed_effects_table, model_markdown

    result = io.read_json(model_json)
    io.write_table(fixed_effects_table(result), csv)
    io.write_text(model_markdown(result), md)


def manifest_stage(*, study: str, study_config: dict[str, Any], inputs, outputs, manifest: str | Path) -> None:
    """Hashes of inputs and outputs, the resolved config and package versions."""
    from .report import build_manifest

    io.write_json(build_manifest(study=study, inputs=inputs, outputs=outputs, config=study_config), manifest)
