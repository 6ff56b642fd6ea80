"""One function per pipeline stage, from input paths to output paths.

The Snakemake scripts in ``workflow/scripts/`` are thin adapters that call these; tests and
notebooks can call them directly. :func:`run_step` turns the errors a researcher can fix
(bad data, bad config) into one plain paragraph instead of a traceback.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

from . import io
from .clean import DataError, clean_sessions
from .config import ConfigError

__all__ = [
    "run_step",
    "clean_stage",
    "score_stage",
    "reliability_stage",
    "derive_stage",
    "derive_study",
    "prepare_study",
    "PreparedStudy",
    "arm_counts",
    "instrument_of",
    "fit_stage",
    "model_formula",
    "comparison_stage",
    "within_between_figure_stage",
    "model_table_stage",
    "models_table_stage",
    "reliability_table_stage",
    "descriptive_table_stage",
    "trajectories_figure_stage",
    "forest_figure_stage",
    "caterpillar_figure_stage",
    "flow_figure_stage",
    "feedback_figure_stage",
    "expected_response_figure_stage",
    "ruptures_figure_stage",
    "sudden_gains_figure_stage",
    "reliable_change_figure_stage",
    "manifest_stage",
]

log = logging.getLogger("allianceflow")


@contextmanager
def run_step(log_path: str | Path | None, *, debug: bool = False) -> Iterator[logging.Logger]:
    """Log to *log_path*; on a :class:`DataError` or :class:`ConfigError` print its one
    paragraph to stderr and exit with status 1 (the traceback goes to the log only).
    """
    os.environ.setdefault("MPLBACKEND", "Agg")  # figures are files here, never windows
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_path is not None:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_path, mode="w", encoding="utf-8"))
    logging.basicConfig(
        level=logging.WARNING,
        handlers=handlers,
        format="%(levelname)s %(name)s: %(message)s",
        force=True,
    )
    log.setLevel(logging.INFO)
    logging.captureWarnings(True)  # warnings (e.g. unscorable rows) go to the log too
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


def clean_stage(
    raw: str | Path,
    study: dict[str, Any],
    *,
    sessions: str | Path,
    exclusions: str | Path,
    flow: str | Path,
    name: str | None = None,
) -> None:
    """Clean one raw export into the canonical table, its exclusions and flow counts.

    *name* is the study's key in config.yaml, used in messages (``studies.<name>.rules``).
    """
    raw = Path(raw)
    frame = io.read_raw(
        raw,
        delimiter=study.get("delimiter"),
        encoding=study.get("encoding", "utf-8-sig"),
        sheet=study.get("sheet"),
        header_rows=study.get("header_rows", 1),
        skip_rows=study.get("skip_rows", 0),
    )
    result = clean_sessions(frame, study, source=raw.name, name=name)
    io.write_table(result.sessions, sessions)
    io.write_table(result.exclusions, exclusions)
    io.write_json(result.flow, flow)
    counts = result.flow["sessions"]
    log.info(
        "%s: read %d rows, kept %d, excluded %d",
        raw.name,
        counts["read"],
        counts["kept"],
        counts["excluded"],
    )


def score_stage(sessions: str | Path, study: dict[str, Any], *, scored: str | Path) -> None:
    """Score every instrument the study names."""
    from .score import score_sessions

    frame = io.read_table(sessions)
    io.write_table(score_sessions(frame, _instrument_specs(study)), scored)


def _instrument_specs(study: dict[str, Any]):
    return study["instruments"]


def reliability_stage(
    sessions: str | Path, study: dict[str, Any], *, seed: int, csv: str | Path, md: str | Path
) -> None:
    """Alpha and omega with 95% CIs per instrument and subscale."""
    from .score import reliability
    from .tables import reliability_markdown

    table = reliability(
        io.read_table(sessions),
        _instrument_specs(study),
        seed=seed,
        n_boot=study.get("reliability_bootstrap", 1000),
    )
    io.write_table(table, csv)
    io.write_text(reliability_markdown(table), md)


def instrument_of(study: dict[str, Any], column: str):
    """The instrument (with the study's overrides) whose score *column* is, e.g. the
    study's ``outcome`` or ``alliance``.

    Raises
    ------
    ConfigError
        When none of the study's instruments produces *column*.
    """
    from .instruments import load_instrument
    from .score import score_columns

    specs = study["instruments"]
    items = specs.items() if isinstance(specs, dict) else ((name, None) for name in specs)
    for name, spec in items:
        own_definition = isinstance(spec, dict) and "items" in spec
        inst = load_instrument(
            spec if own_definition else name, overrides=None if own_definition else spec
        )
        if column in score_columns(inst):
            return inst
    raise ConfigError(
        f"config.yaml: the study uses the score {column!r}, which none of its `instruments` "
        f"produces; scores are named '<instrument>_total' or '<instrument>_<subscale>', "
        f"e.g. 'ors_total' or 'wai_sr_bond'."
    )


def derive_study(scored, study: dict[str, Any], *, reference=None):
    """Every derived variable of one study, in memory: the instrument numbers (direction,
    reliable change value, cut-off, alliance subscales) are looked up from the study's
    instruments and overrides, then :func:`allianceflow.derive.derive_tables` runs.

    Parameters
    ----------
    scored : pandas.DataFrame
        The scored sessions (:func:`allianceflow.score.score_sessions`).
    study : dict
        The study's validated config block.
    reference : pandas.DataFrame, optional
        A scored reference sample for the expected treatment response.

    Returns
    -------
    allianceflow.derive.DerivedTables
        ``analysis``, ``patients``, ``sudden_gains`` and ``expected_response``.
    """
    from .derive import derive_tables

    settings = study.get("derive") or {}
    if (
        "informant" in scored
        and not settings.get("informant")
        and scored.duplicated(["patient", "session"]).any()
    ):
        found = ", ".join(sorted(map(str, scored["informant"].dropna().unique())))
        raise ConfigError(
            f"config.yaml: the data hold several informants per session ({found}); the derive "
            f"stage works on one at a time. Set `derive: {{informant: <one of {found}>}}` for this study."
        )
    inst = instrument_of(study, study["outcome"])
    alliance = instrument_of(study, study["alliance"])
    components = (
        {sub: f"{alliance.id}_{sub}" for sub in alliance.subscales}
        if study["alliance"] == f"{alliance.id}_total"
        else {}
    )
    return derive_tables(
        scored,
        alliance=study["alliance"],
        outcome=study["outcome"],
        direction=inst.direction,
        rci=inst.rci,
        cutoff=inst.cutoff,
        clinical_range=inst.clinical_range,
        lag_across_gaps=study.get("lag_across_gaps", False),
        settings=study.get("derive"),
        components=components,
        reference=reference,
    )


class PreparedStudy(NamedTuple):
    """A study cleaned, scored and derived in memory (see :func:`prepare_study`)."""

    sessions: Any
    exclusions: Any
    flow: dict
    scored: Any
    analysis: Any
    patients: Any
    sudden_gains: Any
    expected_response: Any


def prepare_study(
    study: dict[str, Any], *, root: str | Path = ".", name: str | None = None
) -> PreparedStudy:
    """Clean, score and derive one configured study in memory, writing nothing.

    The same functions as the pipeline's clean, score and derive stages, for notebooks and
    interactive work: ``prepare_study(load_config("config.yaml")["studies"]["example"])``.
    *root* is the folder the study's ``raw`` path is relative to.
    """
    from .score import score_sessions

    raw = Path(root) / study["raw"]
    frame = io.read_raw(
        raw,
        delimiter=study.get("delimiter"),
        encoding=study.get("encoding", "utf-8-sig"),
        sheet=study.get("sheet"),
        header_rows=study.get("header_rows", 1),
        skip_rows=study.get("skip_rows", 0),
    )
    cleaned = clean_sessions(frame, study, source=raw.name, name=name)
    scored = score_sessions(cleaned.sessions, _instrument_specs(study))
    derived = derive_study(scored, study)
    return PreparedStudy(cleaned.sessions, cleaned.exclusions, cleaned.flow, scored, *derived)


def derive_stage(
    scored: str | Path,
    study: dict[str, Any],
    *,
    analysis: str | Path,
    patients: str | Path,
    sudden_gains: str | Path,
    expected: str | Path,
    reference: str | Path | None = None,
) -> None:
    """Within/between parts, lags, reliable change, on-track status, sudden gains, ruptures
    and endings of the configured alliance and outcome scores (:func:`derive_study`).
    *reference* is the reference study's scored sessions, when the expected treatment
    response is fitted on them.
    """
    result = derive_study(
        io.read_table(scored), study, reference=io.read_table(reference) if reference else None
    )
    io.write_table(result.analysis, analysis)
    io.write_table(result.patients, patients)
    io.write_table(result.sudden_gains, sudden_gains)
    io.write_json(result.expected_response, expected)


def model_formula(model: dict[str, Any]) -> str:
    """The lme4 formula of a configured model: its ``formula``, or its ``preset`` with
    ``options`` through :func:`allianceflow.models.preset_formula`.
    """
    from .models import preset_formula

    if "formula" in model:
        return model["formula"]
    return preset_formula(model["preset"], **model.get("options", {}))


def fit_stage(
    analysis: str | Path, model: dict[str, Any], *, name: str, json: str | Path, txt: str | Path
) -> None:
    """Fit one model and write its tidy results and a readable summary."""
    from .models import fit_model, format_model

    result = fit_model(
        io.read_table(analysis), model_formula(model), reml=model.get("reml", True), name=name
    )
    io.write_json(result, json)
    io.write_text(format_model(result), txt)
    conv = result["convergence"]
    log.info("%s: converged=%s with %s", name, conv["converged"], conv["optimizer"])


def comparison_stage(
    analysis: str | Path, models: dict[str, dict[str, Any]], *, json: str | Path, txt: str | Path
) -> None:
    """Likelihood-ratio test of two configured models (simpler first) on the same rows.

    Both are refitted on the rows complete for both, by ML when their fixed effects differ.
    """
    from .models import likelihood_ratio_test

    (name0, spec0), (name1, spec1) = models.items()
    result = likelihood_ratio_test(
        io.read_table(analysis), model_formula(spec0), model_formula(spec1), names=(name0, name1)
    )
    summary = {k: v for k, v in result.items() if k not in ("fit0", "fit1")}
    io.write_json(summary, json)
    lines = [f"Likelihood-ratio test: {name0} (simpler) vs {name1}"]
    lines += [f"  {key}: {summary[key]}" for key in sorted(summary)]
    io.write_text("\n".join(lines) + "\n", txt)


def within_between_figure_stage(analysis: str | Path, study: dict[str, Any], *, outputs) -> None:
    """The within- vs between-patient alliance–outcome figure in every format asked for."""
    from .figures import plot_within_between, save_figure

    fig = plot_within_between(
        io.read_table(analysis), alliance_label=study["alliance"], outcome_label=study["outcome"]
    )
    save_figure(fig, outputs)


def model_table_stage(
    model_json: str | Path, *, csv: str | Path, md: str | Path, **formats: str | Path
) -> None:
    """One model's table: CSV of the fixed effects (unrounded, with convergence) and the
    APA table (fixed effects, variance components, fit) as Markdown and any of
    ``html=``, ``tex=``, ``docx=``.
    """
    from .tables import fixed_effects_table, model_table, write_table_files

    result = io.read_json(model_json)
    io.write_table(fixed_effects_table(result), csv)
    write_table_files(model_table([result], name=result["name"]), [md, *formats.values()])


def manifest_stage(
    *, study: str, study_config: dict[str, Any], inputs, outputs, manifest: str | Path
) -> None:
    """Hashes of inputs and outputs, the resolved config and package versions."""
    from .report import build_manifest

    io.write_json(
        build_manifest(study=study, inputs=inputs, outputs=outputs, config=study_config), manifest
    )


# --------------------------------------------------------------------------- figures and tables (issue 7)


def _min_cell(study: dict[str, Any]) -> int:
    return int((study.get("tables") or {}).get("min_cell", 5))


def _figure_options(study: dict[str, Any]) -> dict[str, Any]:
    return dict(study.get("figures") or {})


def _labels(study: dict[str, Any]) -> dict[str, str]:
    return {
        "alliance_label": f"alliance ({study['alliance']})",
        "outcome_label": f"outcome ({study['outcome']})",
    }


def models_table_stage(model_jsons, *, outputs) -> None:
    """Every model of a study side by side in one APA table (csv, md, html, tex, docx)."""
    from .tables import model_table, write_table_files

    results = [io.read_json(path) for path in model_jsons]
    write_table_files(model_table(results, name="models"), outputs)


def reliability_table_stage(reliability_csv: str | Path, *, outputs) -> None:
    """The reliability table (from the score stage's CSV) as html, tex and docx."""
    from .tables import reliability_table, write_table_files

    write_table_files(reliability_table(io.read_table(reliability_csv)), outputs)


def descriptive_table_stage(
    name: str,
    *,
    analysis: str | Path,
    patients: str | Path,
    sudden_gains: str | Path,
    study: dict[str, Any],
    outputs,
) -> None:
    """One of the descriptive tables (``table1``, ``intake_correlations``,
    ``clinical_significance``, ``sudden_gains``, ``ruptures``) in every format asked for,
    with the study's small-cell threshold ``tables.min_cell`` (default 5).
    """
    from . import tables

    min_cell = _min_cell(study)
    frame = io.read_table(analysis)
    people = io.read_table(patients)
    if name == "table1":
        categorical = {}
        if "ending" in people and people["ending"].astype(str).ne("unknown").any():
            sources = set(people["ending_source"].astype(str)) - {"none"}
            label = {
                frozenset({"recorded"}): "Ending",
                frozenset({"inferred"}): "Ending (inferred from the gap before extraction)",
            }
            categorical = {
                "ending": label.get(
                    frozenset(sources),
                    "Ending (recorded, or inferred from the gap before extraction)",
                )
            }
        table = tables.table1(
            frame,
            patients=people,
            categorical=categorical,
            min_cell=min_cell,
            therapist="therapist" if "therapist" in frame else None,
            by="condition" if "condition" in frame else None,
        )
    elif name == "intake_correlations":
        table = tables.intake_correlations(frame, min_cell=min_cell)
    elif name == "clinical_significance":
        table = tables.clinical_significance_table(people, min_cell=min_cell)
    elif name == "sudden_gains":
        table = tables.sudden_gains_table(people, io.read_table(sudden_gains), min_cell=min_cell)
    elif name == "ruptures":
        table = tables.ruptures_table(people, min_cell=min_cell)
    else:
        raise ValueError(
            f"`name` must be 'table1', 'intake_correlations', 'clinical_significance', "
            f"'sudden_gains' or 'ruptures'; got {name!r}."
        )
    tables.write_table_files(table, outputs)


def trajectories_figure_stage(
    analysis: str | Path, model_json: str | Path, study: dict[str, Any], *, outputs
) -> None:
    """Individual trajectories with the model-implied mean and band of one model."""
    from .figures import plot_trajectories, save_figure

    fig = plot_trajectories(
        io.read_table(analysis),
        io.read_json(model_json),
        outcome_label=_labels(study)["outcome_label"],
    )
    save_figure(fig, outputs)


def forest_figure_stage(model_jsons, *, outputs) -> None:
    """Forest plot of the fixed effects of every model of the study."""
    from .figures import plot_forest, save_figure

    save_figure(plot_forest([io.read_json(p) for p in model_jsons]), outputs)


def caterpillar_figure_stage(model_json: str | Path, study: dict[str, Any], *, outputs) -> None:
    """Caterpillar plot of the therapists' (``figures.caterpillar_group``) random intercepts."""
    from .figures import plot_caterpillar, save_figure

    group = _figure_options(study).get("caterpillar_group", "therapist")
    save_figure(plot_caterpillar(io.read_json(model_json), group=group), outputs)


def arm_counts(sessions, *, arm: str = "condition") -> dict[str, dict[str, int]] | None:
    """Patients and sessions per study arm of the clean table (for the flow diagram);
    None when the study has no arm column.
    """
    if arm not in sessions:
        return None
    return {
        str(name): {"patients": int(rows["patient"].nunique()), "sessions": int(len(rows))}
        for name, rows in sessions.groupby(sessions[arm].astype(str), sort=True)
    }


def flow_figure_stage(flow: str | Path, sessions: str | Path, model_jsons, *, outputs) -> None:
    """CONSORT-style flow diagram: read, excluded (by rule), kept, by arm, analysed."""
    from .figures import plot_flow, save_figure

    arms = arm_counts(io.read_table(sessions))
    analysed = {}
    for path in model_jsons:
        r = io.read_json(path)
        analysed[r["name"]] = {k: r[k] for k in ("n_obs", "n_groups", "n_dropped_missing")}
    save_figure(plot_flow(io.read_json(flow), arms=arms, analysed=analysed or None), outputs)


def feedback_figure_stage(analysis: str | Path, study: dict[str, Any], *, outputs) -> None:
    """Mean outcome by arm × on-track status."""
    from .figures import plot_feedback_curves, save_figure

    fig = plot_feedback_curves(
        io.read_table(analysis),
        min_n=_min_cell(study),
        outcome_label=_labels(study)["outcome_label"],
    )
    save_figure(fig, outputs)


def expected_response_figure_stage(analysis: str | Path, study: dict[str, Any], *, outputs) -> None:
    """One patient's outcome against the expected-treatment-response band (the patient is
    ``figures.example_patient`` or the first off-track patient with six sessions).
    """
    from .figures import plot_expected_response, save_figure

    fig = plot_expected_response(
        io.read_table(analysis),
        _figure_options(study).get("example_patient"),
        outcome_label=_labels(study)["outcome_label"],
    )
    save_figure(fig, outputs)


def ruptures_figure_stage(analysis: str | Path, study: dict[str, Any], *, outputs) -> None:
    """Mean alliance around detected ruptures, by repair status."""
    from .figures import plot_ruptures, save_figure

    fig = plot_ruptures(
        io.read_table(analysis),
        min_n=_min_cell(study),
        alliance_label=_labels(study)["alliance_label"],
    )
    save_figure(fig, outputs)


def sudden_gains_figure_stage(
    analysis: str | Path, sudden_gains: str | Path, study: dict[str, Any], *, outputs
) -> None:
    """Outcome around each sudden gain, aligned at the pre-gain session."""
    from .figures import plot_sudden_gains, save_figure

    fig = plot_sudden_gains(
        io.read_table(analysis),
        io.read_table(sudden_gains),
        outcome_label=_labels(study)["outcome_label"],
    )
    save_figure(fig, outputs)


def reliable_change_figure_stage(patients: str | Path, study: dict[str, Any], *, outputs) -> None:
    """Intake vs last score with the reliable-change band and the cut-off of the outcome
    instrument (its ``rci``, ``cutoff`` and ``direction``, with the study's overrides).
    """
    from .figures import plot_reliable_change, save_figure

    inst = instrument_of(study, study["outcome"])
    alliance = instrument_of(study, study["alliance"])
    components = (
        {sub: f"{alliance.id}_{sub}" for sub in alliance.subscales}
        if study["alliance"] == f"{alliance.id}_total"
        else {}
    )
    fig = plot_reliable_change(
        io.read_table(patients),
        rci=inst.rci,
        cutoff=inst.cutoff,
        direction=inst.direction,
        outcome_label=_labels(study)["outcome_label"],
    )
    save_figure(fig, outputs)
