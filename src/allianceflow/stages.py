"""One function per pipeline stage, from input paths to output paths: the only file IO.

Every ``*_stage`` function reads its inputs with :mod:`allianceflow.io`, calls the
statistics of one topic module (clean, score, derive, models, tables, figures, pool,
power, manifest) and writes its outputs. The Snakemake scripts in ``workflow/scripts/``
are thin adapters that call these; tests and notebooks can call them directly.
:func:`run_step` turns the errors a researcher can fix (bad data, bad config) into one
plain paragraph instead of a traceback.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, NamedTuple

# Only what every job needs is imported here (io: pandas, pyarrow); each stage imports its
# own statistics (clean and its data contract, scipy, matplotlib, the models) when it runs,
# so a job pays for the modules of its own stage alone.
from . import io
from .io import DataError

__all__ = [
    "run_step",
    "tune_allocator",
    "read_export",
    "clean_settings",
    "CLEAN_OVERRIDES",
    "SCORE_OVERRIDES",
    "RELIABILITY_OVERRIDES",
    "ITEM_OVERRIDES",
    "instrument_overrides",
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
    "one_stage_spec",
    "comparison_stage",
    "patient_fit_stage",
    "binary_effects_stage",
    "binary_rates_figure_stage",
    "dropout_curve_figure_stage",
    "FIGURES",
    "Figure",
    "figure_settings",
    "figure_stage",
    "outcome_numbers",
    "study_figures",
    "within_between_figure_stage",
    "model_table_stage",
    "models_table_stage",
    "reliability_table_stage",
    "descriptive_table_stage",
    "trajectories_figure_stage",
    "model_forest_figure_stage",
    "caterpillar_figure_stage",
    "flow_figure_stage",
    "feedback_figure_stage",
    "expected_response_figure_stage",
    "ruptures_figure_stage",
    "sudden_gains_figure_stage",
    "reliable_change_figure_stage",
    "pool_stage",
    "meta_forest_figure_stage",
    "power_chunk_stage",
    "power_summary_stage",
    "power_curve_stage",
    "manifest_stage",
    "summary_stage",
    "study_files",
    "figure_inputs",
    "figure_steps",
    "table_steps",
    "step_files",
    "OUTPUT_STAGES",
    "outputs_stage",
]

log = logging.getLogger("allianceflow")


@contextmanager
def run_step(
    log_path: str | Path | None,
    *,
    debug: bool = False,
    own_process: bool = False,
    reuse_memory: bool = False,
) -> Iterator[logging.Logger]:
    """Log a step to *log_path* and turn a researcher's error into one paragraph.

    On a :class:`DataError` or :class:`ConfigError` the step prints the error's paragraph to
    stderr and exits with status 1 (the traceback goes to the log only, or is raised with
    *debug*). A step that ends normally logs the CPU time of its process, and how much
    of it went before the step began (interpreter start and imports).

    It sets the process's logging and its Matplotlib backend: it is made for a job's own
    process. With *own_process* (every Snakemake script passes it: the step is all its
    process does) it also hands what the job has imported when the step begins, and
    everything left when it ends, to the garbage collector's permanent generation
    (:func:`gc.freeze`), which the step's full collections and the interpreter's
    collections at exit do not walk. An object there that becomes garbage is still freed by
    reference counting; only a reference cycle among them waits for the exit, which is why
    a notebook or another long-lived process should leave *own_process* off. Exit alone
    cost a job with pandas, SciPy and Matplotlib loaded about 0.35 CPU-s, almost all of it
    those collections, and 0.04 with them frozen (``benchmarks/results/pipeline_cpu.txt``).
    With *own_process* and *reuse_memory* (the clean and derive scripts, which allocate and
    free hundreds of megabytes of columns on large studies) it also lets the C allocator
    keep the memory the step frees for reuse (:func:`tune_allocator`).
    """
    started = time.process_time()
    if own_process:
        gc.freeze()
        if reuse_memory:
            tune_allocator()
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
        log.info(
            "CPU time: %.2f s in this process, %.2f s of it before the step began",
            time.process_time(),
            started,
        )
        if own_process:
            gc.freeze()
    except ValueError as error:
        if debug or not isinstance(error, _researcher_errors()):
            raise
        log.debug("".join(traceback.format_exception(error)))
        if log_path is not None:
            with open(log_path, "a", encoding="utf-8") as handle:
                handle.write("".join(traceback.format_exception(error)))
        print(f"\nallianceflow: {error}\n", file=sys.stderr)
        sys.exit(1)


#: ``mallopt`` parameters of glibc's ``<malloc.h>``.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
#: The upper limit mallopt(3) gives the mmap threshold on 64-bit systems
#: (``DEFAULT_MMAP_THRESHOLD_MAX``, 4 * 1024 * 1024 * sizeof(long)), and a trim threshold
#: far above what a step frees at a time.
_MMAP_THRESHOLD, _TRIM_THRESHOLD = 32 << 20, 1 << 30


def tune_allocator() -> bool:
    """Let glibc's ``malloc`` reuse the memory a step frees instead of returning it at once.

    By default glibc serves each allocation above its mmap threshold (128 KiB, raised
    as such blocks are freed) with a mapping of its own, unmapped again when it is freed,
    and it returns free memory at the top of the heap to the kernel. A step on 10^6 rows
    allocates and frees thousands of column arrays of 1–10 MB, and the kernel hands over
    every new mapping one zero-filled page at a time. With the mmap threshold fixed at
    32 MiB (the upper limit mallopt(3) documents for 64-bit systems) and the trim threshold
    at 1 GiB, such arrays reuse freed heap memory (mallopt(3): ``M_MMAP_THRESHOLD``,
    ``M_TRIM_THRESHOLD``; the GNU C Library manual, "Malloc Tunable Parameters").

    At 10^6 session rows, 4 alternating runs each with and without it: clean 16.0 → 15.0 s
    (system time 3.5 → 2.3 s, minor page faults 459,000 → 333,000), derive 12.2 → 11.3 s,
    score no faster; peaks 7 and 20 MB higher (``benchmarks/results/pipeline_scale.txt``).
    The price: memory the step frees stays with the process until it exits, so that its
    resident size stays near its peak. :func:`run_step` sets it only where it was measured
    to help (``reuse_memory=True``: the clean and derive jobs), never in a notebook.

    Returns
    -------
    bool
        True when glibc accepted both settings; False elsewhere (macOS, Windows, musl), or
        when it refused the mmap threshold (then nothing is changed).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt  # glibc's name; musl's libc is another
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success and 0 when it refuses a value.
    if mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD) != 1:
        return False
    return mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD) == 1


def _researcher_errors() -> tuple[type[ValueError], ...]:
    """The errors :func:`run_step` prints as a paragraph: DataError, and ConfigError.

    ConfigError is looked up only when :mod:`allianceflow.config` has been imported (nothing
    else raises it), so that a job does not import the config validator just to catch it.
    """
    config = sys.modules.get(f"{__package__}.config")
    return (DataError, config.ConfigError) if config is not None else (DataError,)


def read_export(raw: str | Path, read: Mapping[str, Any], *, config: str = "config.yaml"):
    """Read a raw export as the study's ``read`` section describes it.

    The section gives the delimiter, encoding, Excel sheet, title rows to skip and header
    rows (:func:`allianceflow.io.read_raw`); messages name *config*, the file that holds
    the section.
    """
    return io.read_raw(
        raw,
        delimiter=read.get("delimiter"),
        encoding=read.get("encoding", "utf-8-sig"),
        sheet=read.get("sheet"),
        header_rows=read.get("header_rows", 1),
        skip_rows=read.get("skip_rows", 0),
        config=config,
    )


#: The overrides of an instrument (:data:`allianceflow.instruments.OVERRIDE_KEYS`) that say
#: what an item's answer means: its response range, the reverse-keyed items, the items of
#: each subscale (the scoring key a study supplies where a built-in file could not confirm
#: it) and the "does not apply" code. Every stage that reads items needs them.
ITEM_OVERRIDES = ("response", "reverse", "subscales", "not_applicable")
#: The overrides that the clean stage reads: the item key (values are checked against the
#: response range) and the proration limits (sessions whose score will be lost are counted).
CLEAN_OVERRIDES = (*ITEM_OVERRIDES, "max_missing", "subscale_max_missing")
#: The overrides that scoring reads: the item key and the proration limits.
SCORE_OVERRIDES = (*ITEM_OVERRIDES, "max_missing", "subscale_max_missing")
#: The overrides that the reliability table reads: the item key (it uses complete cases, so
#: no proration limit).
RELIABILITY_OVERRIDES = ITEM_OVERRIDES


def instrument_overrides(instruments: Any, keys: Sequence[str]) -> Any:
    """Keep only the overrides named *keys* of a study's ``measures.instruments``.

    A stage that receives only what it reads is rerun by Snakemake only when that changes:
    with ``keys=CLEAN_OVERRIDES`` a new reliable-change value (``rci``) or cut-off leaves
    the clean data alone. Instruments a study defines itself (a mapping with ``items``) and
    a list of ids are returned as they are.

    Examples
    --------
    >>> instrument_overrides({"wai_sr": {"max_missing": 1}, "ors": {"rci": 5}}, CLEAN_OVERRIDES)
    {'wai_sr': {'max_missing': 1}, 'ors': None}
    """
    if not isinstance(instruments, Mapping):
        return instruments
    kept = {}
    for name, spec in instruments.items():
        if isinstance(spec, Mapping) and "items" not in spec:
            spec = {key: value for key, value in spec.items() if key in keys} or None
        kept[name] = spec
    return kept


def clean_settings(
    *,
    read: Mapping[str, Any],
    privacy: Mapping[str, Any] | None = None,
    clean: Mapping[str, Any] | None = None,
    instruments: Any,
) -> dict[str, Any]:
    """Lay out the settings :func:`allianceflow.clean.clean_sessions` reads side by side.

    They come from the study's ``read``, ``privacy`` and ``clean`` sections and its
    instruments (for item ranges) (:func:`allianceflow.config.flat_study`).
    """
    from .config import flat_study

    return flat_study(
        {
            "read": read,
            "privacy": privacy or {},
            "clean": clean or {},
            "measures": {"instruments": instruments},
        }
    )


def clean_stage(
    raw: str | Path,
    *,
    read: Mapping[str, Any],
    privacy: Mapping[str, Any] | None = None,
    clean: Mapping[str, Any] | None = None,
    instruments: Any,
    sessions: str | Path,
    exclusions: str | Path,
    flow: str | Path,
    name: str | None = None,
    config: str = "config.yaml",
) -> None:
    """Clean one raw export into the canonical table, its exclusions and flow counts.

    *read*, *privacy* and *clean* are the study's sections of those names, *instruments*
    its ``measures.instruments``; *name* is the study's key in the configuration file
    *config*, and messages name both.
    """
    from .clean import clean_sessions

    raw = Path(raw)
    settings = clean_settings(read=read, privacy=privacy, clean=clean, instruments=instruments)
    result = clean_sessions(
        read_export(raw, read, config=config), settings, source=raw.name, name=name, config=config
    )
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


def score_stage(sessions: str | Path, *, instruments: Any, scored: str | Path) -> None:
    """Score every instrument of the study (its ``measures.instruments``)."""
    from .score import score_sessions

    io.write_table(score_sessions(io.read_table(sessions), instruments), scored)


def reliability_stage(
    sessions: str | Path,
    *,
    instruments: Any,
    seed: int,
    n_boot: int = 1000,
    alpha_missing: Literal["listwise", "pairwise"] = "listwise",
    csv: str | Path,
    md: str | Path,
) -> None:
    """Write alpha and omega with 95% CIs per instrument and subscale.

    *instruments* is the study's ``measures.instruments``, *n_boot* its
    ``measures.reliability_bootstrap`` and *alpha_missing* its ``measures.alpha_missing``
    (the rows alpha uses: complete cases, or psych's pairwise covariances; see
    :func:`allianceflow.score.reliability`).
    """
    from .score import reliability
    from .tables import reliability_markdown

    table = reliability(
        io.read_table(sessions),
        instruments,
        seed=seed,
        n_boot=n_boot,
        alpha_missing=alpha_missing,
    )
    io.write_table(table, csv)
    io.write_text(reliability_markdown(table), md)


def instrument_of(measures: Mapping[str, Any], column: str):
    """Find the instrument (with the study's overrides) whose score *column* is.

    *measures* is the study's ``measures`` section; *column* e.g. its ``outcome`` or
    ``alliance``.

    Raises
    ------
    ConfigError
        When none of the study's instruments produces *column*.
    """
    from .config import ConfigError
    from .instruments import load_instrument
    from .score import score_columns

    specs = measures["instruments"]
    items = specs.items() if isinstance(specs, dict) else ((name, None) for name in specs)
    for name, spec in items:
        own_definition = isinstance(spec, dict) and "items" in spec
        inst = load_instrument(
            spec if own_definition else name, overrides=None if own_definition else spec
        )
        if column in score_columns(inst):
            return inst
    raise ConfigError(
        f"config.yaml: the study uses the score {column!r}, which none of its "
        f"`measures.instruments` produces; scores are named '<instrument>_total' or "
        f"'<instrument>_<subscale>', e.g. 'ors_total' or 'wai_sr_bond'."
    )


def derive_study(scored, study: Mapping[str, Any], *, reference=None):
    """Derive every variable of one study in memory.

    The instrument numbers (direction, reliable change value, cut-off, alliance subscales)
    are looked up from the study's instruments and overrides, then
    :func:`allianceflow.derive.derive_tables` runs.

    Parameters
    ----------
    scored : pandas.DataFrame
        The scored sessions (:func:`allianceflow.score.score_sessions`).
    study : dict
        The study's validated config block (only its ``measures`` and ``derive`` sections
        are read).
    reference : pandas.DataFrame, optional
        A scored reference sample for the expected treatment response.

    Returns
    -------
    allianceflow.derive.DerivedTables
        ``analysis``, ``patients``, ``sudden_gains`` and ``expected_response``.
    """
    from .config import ConfigError
    from .derive import derive_tables

    measures = study["measures"]
    settings = dict(study.get("derive") or {})
    lag_across_gaps = settings.pop("lag_across_gaps", False)
    if (
        "informant" in scored
        and not settings.get("informant")
        and scored.duplicated(["patient", "session"]).any()
    ):
        found = ", ".join(sorted(map(str, scored["informant"].dropna().unique())))
        raise ConfigError(
            f"config.yaml: the data hold several informants per session ({found}); the derive "
            f"stage works on one at a time. Set `derive: {{informant: <one of {found}>}}` for "
            f"this study."
        )
    inst = instrument_of(measures, measures["outcome"])
    alliance = instrument_of(measures, measures["alliance"])
    components = (
        {sub: f"{alliance.id}_{sub}" for sub in alliance.subscales}
        if measures["alliance"] == f"{alliance.id}_total"
        else {}
    )
    return derive_tables(
        scored,
        alliance=measures["alliance"],
        outcome=measures["outcome"],
        direction=inst.direction,
        rci=inst.rci,
        cutoff=inst.cutoff,
        clinical_range=inst.clinical_range,
        lag_across_gaps=lag_across_gaps,
        settings=settings,
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
    *root* is the folder the study's ``read.raw`` path is relative to.
    """
    from .clean import clean_sessions
    from .score import score_sessions

    read, instruments = study["read"], study["measures"]["instruments"]
    raw = Path(root) / read["raw"]
    settings = clean_settings(
        read=read, privacy=study.get("privacy"), clean=study.get("clean"), instruments=instruments
    )
    cleaned = clean_sessions(read_export(raw, read), settings, source=raw.name, name=name)
    scored = score_sessions(cleaned.sessions, instruments)
    derived = derive_study(scored, study)
    return PreparedStudy(cleaned.sessions, cleaned.exclusions, cleaned.flow, scored, *derived)


def derive_stage(
    scored: str | Path,
    *,
    measures: Mapping[str, Any],
    derive: Mapping[str, Any],
    analysis: str | Path,
    patients: str | Path,
    sudden_gains: str | Path,
    expected: str | Path,
    reference: str | Path | None = None,
) -> None:
    """Derive the analysis variables and write them (:func:`derive_study`).

    Within/between parts, lags, reliable change, on-track status, sudden gains, ruptures
    and endings of the configured alliance and outcome scores; *measures* and *derive* are
    the study's sections of those names. *reference* is the reference study's scored
    sessions, when the expected treatment response is fitted on them.
    """
    result = derive_study(
        io.read_table(scored),
        {"measures": measures, "derive": derive},
        reference=io.read_table(reference) if reference else None,
    )
    io.write_table(result.analysis, analysis)
    io.write_table(result.patients, patients)
    io.write_table(result.sudden_gains, sudden_gains)
    io.write_json(result.expected_response, expected)


def model_formula(model: dict[str, Any]) -> str:
    """Give the lme4 formula of a configured model.

    That is its ``formula``, or its ``preset`` with ``options`` through
    :func:`allianceflow.models.preset_formula`.

    A moderated preset (``options`` with a ``moderator``) has no formula without its data
    (the moderator's levels, and whether it varies within patients, decide its terms), so
    it is refused: use :func:`allianceflow.models.moderation.moderated_formula` with the
    data (:func:`fit_stage` does), or :func:`one_stage_spec` for the one-stage model.
    """
    from .models import preset_formula

    if "formula" in model:
        return model["formula"]
    if (model.get("options") or {}).get("moderator"):
        raise ValueError(
            f"model {model!r} is moderated by {model['options']['moderator']!r}, and its formula "
            "depends on the data (the moderator's levels and whether it varies within "
            "patients); build it with allianceflow.models.moderation.moderated_formula(data, "
            "preset, options)."
        )
    return preset_formula(model["preset"], **model.get("options", {}))


def one_stage_spec(model: dict[str, Any]) -> dict[str, Any]:
    """The ``formula`` and ``moderation`` arguments of :func:`pool_stage` for a model spec.

    An unmoderated model gives its formula (:func:`model_formula`); a moderated preset gives
    ``formula=None`` and ``moderation={"preset", "options"}``, so that the one-stage model
    makes the moderator's columns and formula from the stacked data.
    """
    if "preset" in model and (model.get("options") or {}).get("moderator"):
        return {
            "formula": None,
            "moderation": {"preset": model["preset"], "options": dict(model["options"])},
        }
    return {"formula": model_formula(model), "moderation": None}


#: Denominator df of fixed effects when a model spec has no ``ddf`` (the schema's default:
#: Kenward–Roger, after benchmarks/coverage_df.py and Luke 2017; see the schema's ``ddf``).
MODEL_DDF = "kenward-roger"
#: Fewest levels of a grouping factor for its random effect (the schema's ``min_levels``).
MODEL_MIN_LEVELS = 5


def fit_stage(
    analysis: str | Path,
    model: dict[str, Any],
    *,
    name: str,
    json: str | Path,
    txt: str | Path,
    patients: str | Path | None = None,
) -> None:
    """Fit one model and write its tidy results and a readable summary.

    *model* is a configured model spec: ``formula`` or ``preset`` (with ``options``),
    ``reml`` (default true), ``ddf``, the denominator df of the fixed effects' tests and
    intervals (default :data:`MODEL_DDF`), and ``min_levels``, the fewest levels a grouping
    factor needs for its random effect (default :data:`MODEL_MIN_LEVELS`); see
    :func:`allianceflow.models.fit_model`. A patient-level preset
    (:data:`allianceflow.models.presets.PATIENT_PRESETS`) is fitted to *patients* instead
    (:func:`patient_fit_stage`).
    """
    from .models import fit_model
    from .models.presets import preset_level, preset_rows

    if "preset" in model and preset_level(model["preset"]) == "patient":
        patient_fit_stage(patients, model, name=name, json=json, txt=txt)
        return
    fit_options = {
        "reml": model.get("reml", True),
        "ddf": model.get("ddf", MODEL_DDF),
        "min_levels": model.get("min_levels", MODEL_MIN_LEVELS),
    }
    if "preset" in model and (model.get("options") or {}).get("moderator"):
        # a moderated preset: moderator columns, simple slopes and cautions in the JSON
        from .models.moderation import fit_moderated

        result, record = fit_moderated(
            io.read_table(analysis), model["preset"], model["options"], name=name, **fit_options
        )
    else:
        data = io.read_table(analysis)
        if "preset" in model:  # system-level presets keep one row per system session
            for column, value in preset_rows(model["preset"], **model.get("options", {})).items():
                data = data[data[column] == value]
        result = fit_model(data, model_formula(model), name=name, **fit_options)
        record = result.to_dict()
    io.write_json(record, json)
    extra = "".join(f"Note: {note}\n" for note in record.get("notes", []))
    io.write_text(result.summary() + ("\n" + extra if extra else ""), txt)
    conv = result.convergence
    log.info("%s: converged=%s with %s", name, conv["converged"], conv["optimizer"])


def patient_fit_stage(
    patients: str | Path | None,
    model: dict[str, Any],
    *,
    name: str,
    json: str | Path,
    txt: str | Path,
) -> None:
    """Fit a patient-level preset (binomial or Poisson GLMM) to the patients table.

    The family comes from the preset (:func:`allianceflow.models.presets.preset_family`),
    the rows from its options (:func:`allianceflow.models.presets.preset_rows`, e.g. the
    not-on-track patients); ``min_levels`` as for :func:`fit_stage`. REML and ``ddf`` do
    not apply to GLMMs (Wald z intervals, as ``glmer``).
    """
    from .models import fit_model
    from .models.presets import preset_family, preset_rows

    if patients is None:
        raise ValueError(
            f"model {name!r}: the {model['preset']!r} preset is fitted to the patients table; "
            "pass `patients` (data/processed/<study>/patients.parquet)."
        )
    data = io.read_table(patients)
    rows = preset_rows(model["preset"], **model.get("options", {}))
    for column, value in rows.items():
        data = data[data[column] == value]
    result = fit_model(
        data,
        model_formula(model),
        family=preset_family(model["preset"]),
        name=name,
        min_levels=model.get("min_levels", MODEL_MIN_LEVELS),
    )
    record = result.to_dict()
    if rows:  # the subgroup fitted, so that its title says whom the model is about
        record["rows"] = rows
    io.write_json(record, json)
    io.write_text(result.summary(), txt)
    conv = result.convergence
    log.info("%s: converged=%s with %s", name, conv["converged"], conv["optimizer"])


def binary_effects_stage(
    patients: str | Path,
    *,
    direction: str,
    csv: str | Path,
    outputs: Sequence[str | Path],
    labels: Mapping[str, Any] | None = None,
    number: int | None = None,
) -> None:
    """Rates, risk differences, NNTs and Hedges' *g* by arm beside the published benchmarks.

    Writes the unrounded contrasts (:func:`allianceflow.effects.arm_contrasts`) to *csv*
    and the APA table (:func:`allianceflow.tables.binary_effects_table`) to *outputs*
    (Markdown, HTML, LaTeX, Word by suffix). *direction* is the outcome's; *labels* and
    *number* as :func:`table_settings` gives them.
    """
    from .effects import BENCHMARKS, arm_contrasts
    from .tables import binary_effects_table, write_table_files

    contrasts = arm_contrasts(
        io.read_table(patients), higher_is_better=direction == "higher_is_better"
    )
    io.write_table(contrasts, csv)
    table = binary_effects_table(contrasts, BENCHMARKS, labels=labels, number=number)
    write_table_files(table, outputs)


def comparison_stage(
    analysis: str | Path, models: dict[str, dict[str, Any]], *, json: str | Path, txt: str | Path
) -> None:
    """Likelihood-ratio test of two configured models (simpler first) on the same rows.

    Both are refitted on the rows complete for both, by ML when their fixed effects differ.
    The models' ``ddf`` is not used: the test compares likelihoods, and the refitted models'
    fixed-effect rows are not written.
    """
    from .models import likelihood_ratio_test

    (name0, spec0), (name1, spec1) = models.items()
    data = io.read_table(analysis)
    formulas = []
    for spec in (spec0, spec1):
        if "preset" in spec and (spec.get("options") or {}).get("moderator"):
            # a moderated preset: its formula names the moderator's columns, made here
            from .models.moderation import moderated_formula

            data, formula, _ = moderated_formula(data, spec["preset"], spec["options"])
            formulas.append(formula)
        else:
            formulas.append(model_formula(spec))
    # both refits use the larger model's min_levels, so a random term the fits keep is
    # not silently dropped from one of the compared models
    result = likelihood_ratio_test(
        data,
        formulas[0],
        formulas[1],
        names=(name0, name1),
        min_levels=spec1.get("min_levels", MODEL_MIN_LEVELS),
    )
    summary = {k: v for k, v in result.items() if k not in ("fit0", "fit1")}
    io.write_json(summary, json)
    lines = [f"Likelihood-ratio test: {name0} (simpler) vs {name1}"]
    lines += [f"  {key}: {summary[key]}" for key in sorted(summary)]
    io.write_text("\n".join(lines) + "\n", txt)


def model_table_stage(
    model_json: str | Path,
    *,
    csv: str | Path,
    md: str | Path,
    labels: Mapping[str, Any] | None = None,
    number: int | None = None,
    **formats: str | Path,
) -> None:
    """Write one model's tables.

    A CSV of the fixed effects (unrounded, with convergence) and the APA table (fixed
    effects, variance components, fit) as Markdown and any of ``html=``, ``tex=``,
    ``docx=``, titled by the model's research question; *labels* is the study's
    :meth:`allianceflow.labels.Labels.to_dict` record and *number* the table's number
    (:func:`table_settings`).
    """
    from .labels import Labels
    from .tables import fixed_effects_table, model_table, ratio_table, write_table_files

    result = io.read_json(model_json)
    io.write_table(fixed_effects_table(result), csv)
    if result.get("family", "gaussian") != "gaussian":  # OR / IRR table of a GLMM
        table = ratio_table(result, labels=Labels.from_dict(labels), number=number)
        write_table_files(table, [md, *formats.values()])
        return
    table = model_table(
        [result], name=result["name"], labels=Labels.from_dict(labels), number=number
    )
    write_table_files(table, [md, *formats.values()])


def manifest_stage(
    *,
    study: str,
    study_config: dict[str, Any],
    inputs,
    outputs,
    manifest: str | Path,
    lock: str | Path | None = None,
) -> None:
    """Write the manifest of one study (:func:`allianceflow.manifest.build_manifest`).

    It holds the hashes of inputs, outputs and the lock file, the resolved config and the
    package versions.
    """
    from .manifest import build_manifest

    io.write_json(
        build_manifest(study=study, inputs=inputs, outputs=outputs, config=study_config, lock=lock),
        manifest,
    )


def summary_stage(
    model_jsons: Sequence[str | Path],
    *,
    flow: str | Path,
    study: str,
    measures: Mapping[str, Any],
    benchmark: Mapping[str, Any] | None = None,
    labels: Mapping[str, Any] | None = None,
    md: str | Path,
    rst: str | Path | None = None,
) -> None:
    """Write the study's summary in words (:func:`allianceflow.summary.study_summary`).

    *model_jsons* are the study's model results in config order, *flow* its ``flow.json``,
    *measures* its ``measures`` section (the alliance and outcome scores, whose units the
    effects are in, and the outcome's direction of improvement), *benchmark* the
    meta-analytic benchmark (``pool.benchmark``; default
    :data:`allianceflow.summary.BENCHMARK`), *labels* the study's
    :meth:`allianceflow.labels.Labels.to_dict` (default: labels from *measures* and the
    instrument files). *md* gets the Markdown, *rst* (optional) the same text as
    reStructuredText for the report's front page.
    """
    from .labels import Labels
    from .summary import BENCHMARK, markdown_to_rst, study_summary

    text = study_summary(
        [io.read_json(path) for path in model_jsons],
        io.read_json(flow),
        study=study,
        alliance=measures["alliance"],
        outcome=measures["outcome"],
        outcome_direction=outcome_numbers(measures)["direction"],
        labels=Labels.from_dict(labels) if labels else Labels.from_config({"measures": measures}),
        benchmark=benchmark or BENCHMARK,
    )
    io.write_text(text, md)
    if rst is not None:
        io.write_text(markdown_to_rst(text), rst)


# --------------------------------------------------------------------------- tables


def _linear(results: list[dict]) -> list[dict]:
    """Keep the linear (gaussian) models of *results* (all of them when none is linear).

    A GLMM's log-odds or log-rate coefficients are on another scale, and each GLMM has its
    own OR/IRR table.
    """
    linear = [r for r in results if r.get("family", "gaussian") == "gaussian"]
    return linear or results


def models_table_stage(model_jsons, *, outputs, labels=None, number: int | None = None) -> None:
    """Every linear model of a study side by side in one APA table (csv, md, html, tex, docx).

    GLMMs (binomial, Poisson) are left out: their coefficients are on the log-odds or
    log-rate scale, and each has its own OR/IRR table (:func:`model_table_stage`).
    """
    from .labels import Labels
    from .tables import model_table, write_table_files

    results = _linear([io.read_json(path) for path in model_jsons])
    table = model_table(results, name="models", labels=Labels.from_dict(labels), number=number)
    write_table_files(table, outputs)


def reliability_table_stage(
    reliability_csv: str | Path, *, outputs, labels=None, number: int | None = None
) -> None:
    """Write the reliability table (from the score stage's CSV) as html, tex and docx."""
    from .tables import reliability_table, with_labels, write_table_files

    table = reliability_table(io.read_table(reliability_csv))
    write_table_files(with_labels(table, labels, number=number), outputs)


#: The order of a study's tables: descriptive first, then one per model, then all models.
DESCRIPTIVE_TABLES = (
    "table1",
    "reliability",
    "intake_correlations",
    "clinical_significance",
    "sudden_gains",
    "ruptures",
)
#: Files a study writes besides one per model (``tables/<model>.*``, ``models/<model>.json``):
#: its tables, and the expected-response model derive writes among the model results. A
#: model named like one of them (in any case: some file systems ignore it) would write the
#: same files, and so could a model whose name starts with ``simple_slopes_`` (a moderated
#: model's simple slopes) or ``lrt_`` (a comparison).
#: :func:`allianceflow.config.validate_config` refuses them.
RESERVED_MODEL_NAMES = (*DESCRIPTIVE_TABLES, "models", "binary_effects", "expected_response")
RESERVED_MODEL_PREFIXES = ("simple_slopes_", "lrt_")


def study_tables(study: dict[str, Any]) -> list[str]:
    """Descriptive tables of one study: those whose variables the study derives.

    ``reliability`` is made by the score stage and rendered by its own rule; the others
    by :func:`descriptive_table_stage`.
    """
    derive = study["derive"]
    optional = {
        "clinical_significance": "reliable_change",
        "sudden_gains": "sudden_gains",
        "ruptures": "ruptures",
    }
    return [
        name
        for name in DESCRIPTIVE_TABLES
        if name not in optional or derive[optional[name]]["enabled"]
    ]


def table_settings(
    name: str, study: dict[str, Any], models: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The number ("Table 3") and the labels of table *name* of a study.

    Tables are numbered in the order a paper cites them: the descriptive tables
    (:func:`study_tables`), one table per model in the study's order, ``models`` (all
    models side by side), then ``binary_effects`` (when the study has arms, on-track
    status and reliable change) and ``simple_slopes_<model>`` of each moderated model
    (:func:`moderated_models`; *models* is the top-level ``models`` block, needed for them).

    Raises
    ------
    KeyError
        *name* is not a table of the study.
    """
    from .labels import Labels

    order = study_tables(study) + list(study["models"]) + ["models"]
    order += ["binary_effects"] if _has_binary_rates(study) else []
    order += [f"simple_slopes_{m}" for m in moderated_models(study, models or {})]
    if name not in order:
        raise KeyError(f"`name` must be one of {', '.join(map(repr, order))}; got {name!r}.")
    return {"number": order.index(name) + 1, "labels": Labels.from_config(study).to_dict()}


def descriptive_table_stage(
    name: str,
    *,
    analysis: str | Path,
    patients: str | Path,
    sudden_gains: str | Path,
    min_cell: int = 5,
    labels=None,
    number: int | None = None,
    outputs,
) -> None:
    """Write one descriptive table in every format asked for.

    *name* is ``table1``, ``intake_correlations``, ``clinical_significance``,
    ``sudden_gains`` or ``ruptures``; counts of 1 to *min_cell* - 1 patients are suppressed
    (the study's ``tables.min_cell``). Arms and variables are named by *labels* (the
    study's :meth:`allianceflow.labels.Labels.to_dict` record); *number* is the table's
    number (:func:`table_settings`).
    """
    from . import tables

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
    tables.write_table_files(tables.with_labels(table, labels, number=number), outputs)


# --------------------------------------------------------------------------- figures
# Every figure stage takes its input files and its settings as keywords named as in
# figure_inputs and as the settings in FIGURES, so that figure_stage can call any of them.


def arm_counts(sessions, *, arm: str = "condition") -> dict[str, dict[str, int]] | None:
    """Count patients and sessions per study arm of the clean table (for the flow diagram).

    None when the study has no arm column.
    """
    if arm not in sessions:
        return None
    return {
        str(name): {"patients": int(rows["patient"].nunique()), "sessions": int(len(rows))}
        for name, rows in sessions.groupby(sessions[arm].astype(str), sort=True)
    }


def within_between_figure_stage(*, analysis, models=(), labels=None, outputs) -> None:
    """Draw the within- vs between-patient alliance–outcome figure in every format asked for.

    The lines and titles are the estimates of the first of *models* (fitted-model JSON
    files) with a within- and a between-patient alliance term; with none, OLS lines for
    orientation. *labels* is a :meth:`allianceflow.labels.Labels.to_dict` record.
    """
    from .figures import plot_within_between, save_figure, within_between_estimates

    chosen = None
    for path in models:
        result = io.read_json(path)
        try:
            within_between_estimates(result)
        except KeyError:
            continue
        chosen = result
        break
    fig = plot_within_between(io.read_table(analysis), chosen, labels=labels)
    save_figure(fig, outputs)


def trajectories_figure_stage(
    *, analysis, model, patient_lines: bool = True, min_cell: int = 5, labels=None, outputs
) -> None:
    """Draw trajectories (patients' lines or aggregate means) with one model's implied mean."""
    from .figures import plot_trajectories, save_figure

    fig = plot_trajectories(
        io.read_table(analysis),
        io.read_json(model),
        patient_lines=patient_lines,
        min_n=min_cell,
        labels=labels,
    )
    save_figure(fig, outputs)


def model_forest_figure_stage(*, model, labels=None, outputs) -> None:
    """Draw the forest plot of the fixed effects of one model (one research question)."""
    from .figures import plot_forest, save_figure
    from .labels import Labels

    result = io.read_json(model)
    words = Labels.from_dict(labels)
    save_figure(plot_forest(result, labels=words, title=words.question(result)), outputs)


def flow_figure_stage(*, flow, sessions, models, labels=None, outputs) -> None:
    """Draw the CONSORT-style flow diagram: read, excluded (by rule), kept, by arm, analysed.

    Each model is named by its research question (:meth:`allianceflow.labels.Labels.question`).
    """
    from .figures import plot_flow, save_figure
    from .labels import Labels

    arms = arm_counts(io.read_table(sessions))
    analysed = {}
    for path in models:
        r = io.read_json(path)
        words = Labels.from_dict(labels)
        key = words.question(r, random=False)
        if key in analysed:  # two models of one question differ in their random part
            key = words.question(r)
        while key in analysed:
            key += " (again)"
        analysed[key] = {k: r[k] for k in ("n_obs", "n_groups", "n_dropped_missing")}
    fig = plot_flow(io.read_json(flow), arms=arms, analysed=analysed or None, labels=labels)
    save_figure(fig, outputs)


def expected_response_figure_stage(
    *, analysis, example_patient: str | None, labels=None, outputs
) -> None:
    """Draw one patient's outcome against the expected-treatment-response band.

    The patient is *example_patient* (``report.figures.example_patient``) or, when None,
    the first off-track patient with six sessions.
    """
    from .figures import plot_expected_response, save_figure

    fig = plot_expected_response(io.read_table(analysis), example_patient, labels=labels)
    save_figure(fig, outputs)


def feedback_figure_stage(*, analysis, min_cell: int, labels=None, outputs) -> None:
    """Draw the mean outcome by arm × on-track status (groups under *min_cell* are hidden)."""
    from .figures import plot_feedback_curves, save_figure

    fig = plot_feedback_curves(io.read_table(analysis), min_n=min_cell, labels=labels)
    save_figure(fig, outputs)


def ruptures_figure_stage(*, analysis, min_cell: int, labels=None, outputs) -> None:
    """Draw the mean alliance around detected ruptures, by repair status."""
    from .figures import plot_ruptures, save_figure

    fig = plot_ruptures(io.read_table(analysis), min_n=min_cell, labels=labels)
    save_figure(fig, outputs)


def sudden_gains_figure_stage(*, analysis, sudden_gains, labels=None, outputs) -> None:
    """Draw the outcome around each sudden gain, aligned at the pre-gain session."""
    from .figures import plot_sudden_gains, save_figure

    fig = plot_sudden_gains(
        io.read_table(analysis),
        io.read_table(sudden_gains),
        labels=labels,
    )
    save_figure(fig, outputs)


def reliable_change_figure_stage(
    *, patients, rci: float, cutoff: float | None, direction: str, labels=None, outputs
) -> None:
    """Draw intake vs last score with the reliable-change band and the cut-off.

    *rci*, *cutoff* and *direction* are the outcome instrument's numbers with the study's
    overrides (:func:`outcome_numbers`).
    """
    from .figures import plot_reliable_change, save_figure

    fig = plot_reliable_change(
        io.read_table(patients),
        rci=rci,
        cutoff=cutoff,
        direction=direction,
        labels=labels,
    )
    save_figure(fig, outputs)


def caterpillar_figure_stage(*, model, caterpillar_group: str, labels=None, outputs) -> None:
    """Draw the caterpillar plot of one grouping factor's random intercepts."""
    from .figures import plot_caterpillar, save_figure

    fig = plot_caterpillar(io.read_json(model), group=caterpillar_group, labels=labels)
    save_figure(fig, outputs)


def binary_rates_figure_stage(*, patients, min_cell: int, labels=None, outputs) -> None:
    """Draw deterioration and improvement rates by arm × on-track status (Wilson CIs)."""
    from .figures import plot_binary_rates, save_figure

    fig = plot_binary_rates(io.read_table(patients), min_n=min_cell, labels=labels)
    save_figure(fig, outputs)


def dropout_curve_figure_stage(*, model, patients, labels=None, outputs) -> None:
    """Draw the predicted probability of an early ending across the early alliance."""
    from .figures import plot_dropout_curve, save_figure

    fig = plot_dropout_curve(io.read_json(model), io.read_table(patients), labels=labels)
    save_figure(fig, outputs)


def couple_trajectories_figure_stage(*, analysis, labels=None, outputs) -> None:
    """Draw both partners' alliance over sessions for a fixed sample of couples (families)."""
    from .figures import plot_couple_trajectories, save_figure

    save_figure(plot_couple_trajectories(io.read_table(analysis), labels=labels), outputs)


def split_outcome_figure_stage(*, analysis, models=(), labels=None, outputs) -> None:
    """Draw the split between partners' alliance against the outcome, within and between.

    The lines and titles are the estimates of the first of *models* (fitted-model JSON
    files) with the split terms (the ``split_alliance`` preset); with none, OLS lines for
    orientation (:func:`allianceflow.figures.plot_split_outcome`).
    """
    from .figures import plot_split_outcome, save_figure, split_estimates

    chosen = None
    for path in models:
        result = io.read_json(path)
        try:
            split_estimates(result)
        except KeyError:
            continue
        chosen = result
        break
    save_figure(plot_split_outcome(io.read_table(analysis), chosen, labels=labels), outputs)


def outcome_numbers(measures: Mapping[str, Any]) -> dict[str, Any]:
    """Look up the outcome instrument's ``rci``, ``cutoff`` and ``direction``.

    *measures* is the study's ``measures`` section; the numbers include its overrides
    (:func:`instrument_of`).
    """
    inst = instrument_of(measures, measures["outcome"])
    return {"rci": inst.rci, "cutoff": inst.cutoff, "direction": inst.direction}


def _mapped(study: dict[str, Any]) -> set[str]:
    return set(study["read"]["columns"].values())


def _derived(part: str):
    def applies(study: dict[str, Any]) -> bool:
        return bool(study["derive"][part]["enabled"])

    return applies


def _always(study: dict[str, Any]) -> bool:
    return True


def _has_arms_and_on_track(study: dict[str, Any]) -> bool:
    return _derived("on_track")(study) and "condition" in _mapped(study)


def _has_binary_rates(study: dict[str, Any]) -> bool:
    return _has_arms_and_on_track(study) and _derived("reliable_change")(study)


def _has_dropout_model(study: dict[str, Any]) -> bool:
    return "dropout" in study.get("models", ())


def _has_systems(study: dict[str, Any]) -> bool:
    return "system" in _mapped(study)


def _has_caterpillar_group(study: dict[str, Any]) -> bool:
    figures = (study.get("report") or {}).get("figures") or {}
    return figures.get("caterpillar_group", "therapist") in _mapped(study)


class Figure(NamedTuple):
    """A study figure: its stage, the settings it reads and when a study has it.

    ``stage`` is called with its input files (:func:`figure_inputs`), the settings named
    in ``settings`` (:func:`figure_settings`) and ``outputs``; ``applies`` tells from a
    study's config block whether the study has the figure (its variables are derived, its
    columns mapped).
    """

    stage: Callable[..., None]
    settings: tuple[str, ...] = ()
    applies: Callable[[dict[str, Any]], bool] = _always


#: Every study figure by name (the files ``results/<study>/figures/<name>.<format>``, drawn
#: by the study's figure job, :func:`figure_steps`). Adding a figure: an entry here, its
#: input files in :func:`figure_inputs` and its caption in workflow/report/.
FIGURES: dict[str, Figure] = {
    "within_between": Figure(within_between_figure_stage, ("labels",)),
    "trajectories": Figure(trajectories_figure_stage, ("patient_lines", "min_cell", "labels")),
    "forest": Figure(model_forest_figure_stage, ("labels",)),
    "flow": Figure(flow_figure_stage, ("labels",)),
    "expected_response": Figure(
        expected_response_figure_stage, ("example_patient", "labels"), _derived("on_track")
    ),
    "feedback": Figure(
        feedback_figure_stage,
        ("min_cell", "labels"),
        _has_arms_and_on_track,
    ),
    "ruptures": Figure(ruptures_figure_stage, ("min_cell", "labels"), _derived("ruptures")),
    "sudden_gains": Figure(sudden_gains_figure_stage, ("labels",), _derived("sudden_gains")),
    "reliable_change": Figure(
        reliable_change_figure_stage,
        ("rci", "cutoff", "direction", "labels"),
        _derived("reliable_change"),
    ),
    "caterpillar": Figure(
        caterpillar_figure_stage,
        ("caterpillar_group", "labels"),
        _has_caterpillar_group,
    ),
    "binary_rates": Figure(binary_rates_figure_stage, ("min_cell", "labels"), _has_binary_rates),
    # the model named "dropout" of the study (the dropout preset)
    "dropout_curve": Figure(dropout_curve_figure_stage, ("labels",), _has_dropout_model),
    # couple and family therapy (a `system` column)
    "couple_trajectories": Figure(couple_trajectories_figure_stage, ("labels",), _has_systems),
    "split_outcome": Figure(split_outcome_figure_stage, ("labels",), _has_systems),
}


def _check_figure(name: str) -> Figure:
    if name not in FIGURES:
        raise KeyError(f"`name` must be one of {', '.join(map(repr, FIGURES))}; got {name!r}.")
    return FIGURES[name]


def study_figures(study: dict[str, Any]) -> list[str]:
    """Files (stems) of the figures a study has (:data:`FIGURES` whose ``applies`` holds).

    The forest plot is drawn once per model: ``forest_<model>``.
    """
    names: list[str] = []
    for name, figure in FIGURES.items():
        if figure.applies(study):
            names += [f"forest_{m}" for m in study["models"]] if name == "forest" else [name]
    return names


def figure_settings(name: str, study: dict[str, Any]) -> dict[str, Any]:
    """Pick the settings figure *name* reads from a study's config block, and nothing else.

    A figure job that receives only these reruns when one of them changes and for no other
    setting. Keys: ``labels`` (:meth:`allianceflow.labels.Labels.to_dict` of the study),
    ``min_cell`` (``report.tables.min_cell``), ``example_patient``, ``caterpillar_group`` and
    ``patient_lines`` (``report.figures``), ``rci``, ``cutoff`` and ``direction``
    (:func:`outcome_numbers`).
    """
    wanted = _check_figure(name).settings
    measures, report = study["measures"], study.get("report") or {}
    figures = report.get("figures") or {}
    values: dict[str, Any] = {
        "alliance": measures["alliance"],
        "outcome": measures["outcome"],
        "min_cell": int((report.get("tables") or {}).get("min_cell", 5)),
        "example_patient": figures.get("example_patient"),
        "caterpillar_group": figures.get("caterpillar_group", "therapist"),
        "patient_lines": bool(figures.get("patient_lines", True)),
    }
    if "labels" in wanted:
        from .labels import Labels

        values["labels"] = Labels.from_config(study).to_dict()
    if {"rci", "cutoff", "direction"} & set(wanted):
        values.update(outcome_numbers(measures))
    return {key: values[key] for key in wanted}


def figure_stage(name: str, *, inputs: Mapping[str, Any], settings: Mapping[str, Any], outputs):
    """Run the stage of figure *name* (:data:`FIGURES`) on named *inputs* and *settings*."""
    _check_figure(name).stage(**inputs, **settings, outputs=outputs)


# --------------------------------------------------------------------------- across studies


def pool_stage(
    *,
    models: Mapping[str, Any],
    analyses: Mapping[str, Any],
    directions: Mapping[str, str],
    formula: str | None,
    moderation: Mapping[str, Any] | None = None,
    reml: bool = True,
    term: str = "alliance_within_lag",
    method: str = "pm",
    hksj: bool = True,
    hksj_adhoc: bool = True,
    alpha: float = 0.05,
    pi_type: str = "default",
    one_stage: bool = True,
    standardise: bool = True,
    meta_json,
    table_csv,
    table_md,
    one_stage_json,
    comparison_csv,
    table_formats: Sequence[str | Path] = (),
    labels: Mapping[str, Any] | None = None,
) -> None:
    """Pool the studies' fitted models (two stages) and refit the stacked data (one stage).

    *models* and *analyses* map study names to the fit stage's JSON and the derive stage's
    analysis table. Writes the meta-analysis (JSON), its table (CSV, Markdown, and any of
    *table_formats*: HTML, LaTeX, Word by suffix), the one-stage model (JSON;
    ``{"skipped": true}`` when ``one_stage`` is false) and the comparison of the two (CSV).
    *labels* maps study names to their :meth:`allianceflow.labels.Labels.to_dict` records:
    each study is named in words (:func:`allianceflow.pool.study_label`), in the JSON's
    ``label`` of its row, the table and the forest plot. A moderated pooled model gives
    ``formula=None`` and *moderation* (:func:`one_stage_spec`): its one-stage formula is made
    from the stacked data. Its *term* is then the slope at the moderator's reference level,
    which must be the same level in every study; the table says so.
    """
    import pandas

    from .pool import (
        compare_stages,
        effect_words,
        meta_analysis,
        meta_table,
        one_stage_model,
        study_effects,
        study_label,
    )
    from .tables import meta_analysis_table, write_table_files

    results = {name: io.read_json(path) for name, path in models.items()}
    at = _reference_level(results)
    effects = study_effects(results, term=term, directions=directions)
    meta = meta_analysis(
        effects, method=method, hksj=hksj, hksj_adhoc=hksj_adhoc, alpha=alpha, pi_type=pi_type
    )
    meta["term"] = term
    for row in meta["studies"]:
        row["label"] = study_label(row["study"], (labels or {}).get(row["study"]))
    comparison = None
    if one_stage:
        tables = {name: io.read_table(path) for name, path in analyses.items()}
        one = one_stage_model(
            tables,
            formula,
            directions=directions,
            reml=reml,
            standardise=standardise,
            moderation=moderation,
        )
        comparison = compare_stages(meta, one, term=term)
    else:
        one = {"skipped": True}
        comparison = pandas.DataFrame(
            columns=["approach", "r", "ci_low", "ci_high", "estimate", "se", "p"]
        )
    io.write_json(meta, meta_json)
    io.write_table(meta_table(meta), table_csv)
    table = meta_analysis_table(
        meta,
        comparison if one_stage else None,
        what=f"the {effect_words(term)}{at}",
        number=1,
    )
    write_table_files(table, [table_md, *table_formats])
    io.write_json(one, one_stage_json)
    io.write_table(comparison, comparison_csv)


def _reference_level(results: Mapping[str, Mapping[str, Any]]) -> str:
    """Words for the moderator level a moderated model's alliance terms hold (or "").

    The alliance terms of a moderated model are its slopes at the moderator's reference
    level (a categorical moderator) or at its grand mean (a continuous one); pooling them
    across studies compares like with like only when that level is the same everywhere.

    Raises
    ------
    ValueError
        The studies' moderated models have different moderators or reference levels.
    """
    found = {
        name: (
            r["moderation"]["moderator"],
            (r["moderation"].get("levels") or [None])[0],
        )
        for name, r in results.items()
        if r.get("moderation")
    }
    if not found:
        return ""
    if len(set(found.values())) > 1 or len(found) != len(results):
        raise ValueError(
            "The pooled model is moderated, and its alliance terms are the slopes at the "
            "moderator's reference level, which differ between the studies: "
            f"{ {n: list(v) for n, v in sorted(found.items())} } (moderator, reference level; "
            "a study missing here is not moderated). Give `moderator_levels` (the same "
            "reference first) in the model's options, or pool an unmoderated model."
        )
    moderator, reference = next(iter(found.values()))
    moderator = str(moderator).removeprefix("moderator_").replace("_", " ")
    if reference is None:
        return f" at the mean {moderator}"
    return f" at the reference {moderator} ({str(reference).replace('_', ' ')})"


def meta_forest_figure_stage(meta_json, *, benchmark: Mapping[str, Any] | None, outputs) -> None:
    """Draw the forest plot of a saved meta-analysis in every format asked for.

    The benchmark band is drawn only when the pooled term (``meta["term"]``, written by
    :func:`pool_stage`) is ``alliance_between``, the between-patient association the
    benchmark estimates; otherwise the figure notes that it is not comparable.
    """
    from .figures import save_figure
    from .pool import Benchmark, plot_forest

    mark = None if not benchmark else Benchmark(**benchmark)
    meta = io.read_json(meta_json)
    term = meta.get("term", "alliance_within_lag")
    save_figure(plot_forest(meta, benchmark=mark, comparable=term == "alliance_between"), outputs)


def power_chunk_stage(
    *,
    design: Mapping[str, Any],
    seeds: Sequence[int],
    label: str,
    analysis: str = "alliance_outcome",
    fitted=None,
    vary: str | None = None,
    alliance_items: int = 12,
    formula: str | None = None,
    ddf: str = "containment",
    rci: float = 5.0,
    modality: Mapping[str, Any] | None = None,
    alpha: float = 0.05,
    output,
) -> None:
    """Run one chunk of replications of one power analysis and write its rows (CSV).

    *analysis* is a key of :data:`allianceflow.power.ANALYSES`; *formula*, *ddf*, *rci*
    and *modality* are its settings (:func:`allianceflow.power.run_analysis_chunk`).
    With *fitted* (a fit stage JSON of a WAI-SR + ORS study) the effects and ICCs come
    from that fitted study (:func:`design_from_model`) and *design* supplies the rest
    (sizes, dropout, the feedback effect unless the model has one). *vary* names the
    parameter varied across designs (config ``power.vary.parameter``): its value in
    *design* is passed as an override, so it wins over the fitted model's value (else
    varying ``within_effect``, an ICC or ``outcome_variance`` would change nothing).
    """
    from .power import DEFAULT_FORMULA, _check_design, design_from_model, run_analysis_chunk

    formula = DEFAULT_FORMULA if formula is None else formula
    if vary is not None and vary not in design:
        raise KeyError(
            f"`vary` must name a parameter given in `design`; got {vary!r}, `design` has "
            f"{sorted(design)}."
        )
    if fitted:
        overrides = {vary: design[vary]} if vary is not None else {}
        plan = design_from_model(
            io.read_json(fitted), alliance_items=alliance_items, base=dict(design), **overrides
        )
    else:
        plan = _check_design(dict(design))
    rows = run_analysis_chunk(
        analysis,
        plan,
        seeds,
        alpha=alpha,
        label=label,
        formula=formula,
        ddf=ddf,
        rci=rci,
        modality=modality,
    )
    io.write_table(rows, output)


def power_summary_stage(
    chunks: Sequence[Any], *, designs: Mapping[str, Mapping[str, Any]], csv, md
) -> None:
    """Merge every chunk and write the power table (CSV, Markdown)."""
    from .power import _check_design, power_markdown, summarise_power

    summary = summarise_power(
        [io.read_table(path) for path in chunks],
        designs={k: _check_design(dict(v)) for k, v in designs.items()},
    )
    io.write_table(summary, csv)
    io.write_text(power_markdown(summary), md)


def power_curve_stage(summary_csv, *, x: str = "n_patients", outputs) -> None:
    """Draw the power curve from the power table in every format asked for."""
    from .figures import save_figure
    from .power import plot_power_curve

    save_figure(plot_power_curve(io.read_table(summary_csv), x=x), outputs)


def moderated_models(study: Mapping[str, Any], models: Mapping[str, Any]) -> list[str]:
    """The study's models that are moderated presets (their ``options`` name a moderator).

    *study* is the study's config block, *models* the top-level ``models`` block.
    """
    from .models.moderation import MODERATED_PRESETS

    return [
        name
        for name in study.get("models", [])
        if (models.get(name) or {}).get("preset") in MODERATED_PRESETS
        and ((models.get(name) or {}).get("options") or {}).get("moderator")
    ]


def _slope_words(result: Mapping[str, Any], labels: Mapping[str, Any] | None) -> dict[str, str]:
    """Words for a moderated model's terms and moderator, from the study's labels."""
    from .labels import Labels

    words = Labels.from_dict(labels)
    names = {row["term"]: words.term(row["term"]) for row in result.get("simple_slopes", [])}
    moderator = (result.get("moderation") or {}).get("moderator")
    if moderator and words.variable(moderator) != moderator:
        names[moderator] = words.variable(moderator)
    return names


def simple_slopes_table_stage(
    model_json: str | Path,
    *,
    outputs: Sequence[str | Path],
    labels: Mapping[str, Any] | None = None,
    number: int | None = None,
) -> None:
    """Write a moderated model's simple-slopes table (CSV numbers, rendered formats).

    *labels* is the study's :meth:`allianceflow.labels.Labels.to_dict` record: the
    alliance terms are named in its words; *number* is the table's (:func:`table_settings`).
    """
    from .tables import simple_slopes_table, write_table_files

    result = io.read_json(model_json)
    table = simple_slopes_table(result, labels=_slope_words(result, labels), number=number)
    write_table_files(table, outputs)


def simple_slopes_figure_stage(
    model_json: str | Path,
    *,
    outcome: str,
    outputs,
    labels: Mapping[str, Any] | None = None,
) -> None:
    """Draw a moderated model's simple slopes (alliance slope per moderator level)."""
    from .figures import plot_simple_slopes, save_figure
    from .labels import Labels, lower_first

    result = io.read_json(model_json)
    outcome_words = lower_first(Labels.from_dict(labels).variable(outcome))
    save_figure(
        plot_simple_slopes(
            result, labels=_slope_words(result, labels), outcome_label=outcome_words
        ),
        outputs,
    )


# --------------------------------------------------------------------------- a study's outputs
# A study's figures are drawn by one job and its tables written by another (the rules
# plot_figures_<study> and tabulate_tables_<study>): one process pays the interpreter,
# pandas, matplotlib and python-docx start-up once for all of them, instead of once per
# file (about 1.3 CPU-s a job). The job is a list of steps, each one call of a stage above
# with the files it reads and writes and the settings it reads; :func:`figure_steps` and
# :func:`table_steps` plan them from the config, :func:`outputs_stage` runs them. A changed
# figure setting reruns the study's figure job (seconds), never a table, a fit or clean.

FIGURE_FORMATS = ("png", "pdf", "svg")
TABLE_FORMATS = ("csv", "md", "html", "tex", "docx")


def study_files(study: str) -> dict[str, str]:
    """Where the clean and derive stages of *study* write (paths relative to the project).

    The same paths as the rules in ``workflow/rules/clean.smk`` and ``derive.smk``.
    """
    data = f"data/processed/{study}"
    return {
        "sessions": f"{data}/sessions.parquet",
        "flow": f"{data}/flow.json",
        "analysis": f"{data}/analysis.parquet",
        "patients": f"{data}/patients.parquet",
        "sudden_gains": f"{data}/sudden_gains.csv",
    }


def _model_json(study: str, model: str) -> str:
    return f"results/{study}/models/{model}.json"


def _figure_files(study: str, stem: str) -> list[str]:
    return [f"results/{study}/figures/{stem}.{ext}" for ext in FIGURE_FORMATS]


def _table_files(study: str, stem: str) -> list[str]:
    return [f"results/{study}/tables/{stem}.{ext}" for ext in TABLE_FORMATS]


def figure_inputs(name: str, study: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """The files figure *name* of *study* is drawn from, named as its stage's keywords.

    *config* is the study's block. ``forest_<model>`` draws that model; the trajectory and
    caterpillar plots draw ``report.figures.trajectory_model`` (else the first model).
    """
    files = study_files(study)
    models = [_model_json(study, m) for m in config["models"]]
    figures = (config.get("report") or {}).get("figures") or {}
    trajectory = _model_json(study, figures.get("trajectory_model") or config["models"][0])
    if name.startswith("forest_"):
        return {"model": _model_json(study, name.removeprefix("forest_"))}
    analysis = {"analysis": files["analysis"]}
    return {
        "within_between": {**analysis, "models": models},
        "trajectories": {**analysis, "model": trajectory},
        "caterpillar": {"model": trajectory},
        "flow": {"flow": files["flow"], "sessions": files["sessions"], "models": models},
        "feedback": analysis,
        "expected_response": analysis,
        "ruptures": analysis,
        "sudden_gains": {**analysis, "sudden_gains": files["sudden_gains"]},
        "reliable_change": {"patients": files["patients"]},
        "binary_rates": {"patients": files["patients"]},
        "dropout_curve": {
            "model": _model_json(study, "dropout"),
            "patients": files["patients"],
        },
        "couple_trajectories": analysis,
        "split_outcome": {**analysis, "models": models},
    }[name]


def figure_steps(
    study: str, config: Mapping[str, Any], models: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """Every figure of *study* as a step of its figure job (:func:`outputs_stage`).

    *config* is the study's block, *models* the top-level ``models`` block. The figures are
    those of :func:`study_figures` (a forest plot per model) and the simple slopes of each
    moderated model (:func:`moderated_models`); each step gets only the settings its figure
    reads (:func:`figure_settings`).
    """
    steps = []
    for stem in study_figures(dict(config)):
        name = "forest" if stem.startswith("forest_") else stem
        steps.append(
            {
                "stage": "figure",
                "name": name,
                "inputs": figure_inputs(stem, study, config),
                "settings": figure_settings(name, dict(config)),
                "outputs": _figure_files(study, stem),
            }
        )
    for model in moderated_models(config, models):
        settings = figure_settings("forest", dict(config))  # the labels
        steps.append(
            {
                "stage": "simple_slopes_figure",
                "model_json": _model_json(study, model),
                "outcome": config["measures"]["outcome"],
                "labels": settings["labels"],
                "outputs": _figure_files(study, f"simple_slopes_{model}"),
            }
        )
    return steps


def table_steps(
    study: str, config: Mapping[str, Any], models: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """Every table of *study* but reliability as a step of its table job (:func:`outputs_stage`).

    The descriptive tables (:func:`study_tables`), one table per model, all models side by
    side, the binary outcomes' arm contrasts (when the study has them) and the simple
    slopes of each moderated model, each with its number and labels (:func:`table_settings`).
    The reliability table is written by the job that computes it (its bootstrap is costly).
    """
    cfg, files = dict(config), study_files(study)
    min_cell = int(((cfg.get("report") or {}).get("tables") or {}).get("min_cell", 5))
    steps: list[dict[str, Any]] = []
    for name in study_tables(cfg):
        if name == "reliability":
            continue
        steps.append(
            {
                "stage": "descriptive_table",
                "name": name,
                "analysis": files["analysis"],
                "patients": files["patients"],
                "sudden_gains": files["sudden_gains"],
                "min_cell": min_cell,
                "outputs": _table_files(study, name),
                **table_settings(name, cfg, models),
            }
        )
    for model in cfg["models"]:
        csv, md, html, tex, docx = _table_files(study, model)
        steps.append(
            {
                "stage": "model_table",
                "model_json": _model_json(study, model),
                **dict(csv=csv, md=md, html=html, tex=tex, docx=docx),
                **table_settings(model, cfg, models),
            }
        )
    steps.append(
        {
            "stage": "models_table",
            "model_jsons": [_model_json(study, m) for m in cfg["models"]],
            "outputs": _table_files(study, "models"),
            **table_settings("models", cfg, models),
        }
    )
    if _has_binary_rates(cfg):
        csv, *rendered = _table_files(study, "binary_effects")
        steps.append(
            {
                "stage": "binary_effects",
                "patients": files["patients"],
                "direction": outcome_numbers(cfg["measures"])["direction"],
                "csv": csv,
                "outputs": rendered,
                **table_settings("binary_effects", cfg, models),
            }
        )
    for model in moderated_models(cfg, models):
        steps.append(
            {
                "stage": "simple_slopes_table",
                "model_json": _model_json(study, model),
                "outputs": _table_files(study, f"simple_slopes_{model}"),
                **table_settings(f"simple_slopes_{model}", cfg, models),
            }
        )
    return steps


#: The stages a figure or table job runs, by the ``stage`` of its steps.
OUTPUT_STAGES: dict[str, Callable[..., None]] = {
    "figure": figure_stage,
    "simple_slopes_figure": simple_slopes_figure_stage,
    "descriptive_table": descriptive_table_stage,
    "model_table": model_table_stage,
    "models_table": models_table_stage,
    "binary_effects": binary_effects_stage,
    "simple_slopes_table": simple_slopes_table_stage,
}


#: The folders the planned figure and table steps read from and write to.
STEP_TREES = ("data/processed/", "results/")


def step_files(steps: Sequence[Mapping[str, Any]], *, outputs: bool) -> list[str]:
    """The files *steps* read (``outputs=False``) or write (``outputs=True``), each once.

    Outputs are the values of the keywords ``outputs``, ``csv``, ``md``, ``html``, ``tex``
    and ``docx``; inputs are every other path, such as ``analysis`` or ``model_jsons``. A
    path is a string (or a list of them) in one of the trees the pipeline writes,
    ``data/processed/`` and ``results/`` (:data:`STEP_TREES`), where every planned step
    reads and writes; a setting's value, such as a column named ``phq.9``, is never taken
    for one.
    """
    written = {"outputs", "csv", "md", "html", "tex", "docx"}
    found: list[str] = []
    for step in steps:
        pairs = dict(step)
        pairs.update(pairs.pop("inputs", {}) or {})
        for key, value in pairs.items():
            if key in ("stage", "name", "settings", "labels") or (key in written) != outputs:
                continue
            values = value if isinstance(value, list | tuple) else [value]
            found += [v for v in values if isinstance(v, str) and v.startswith(STEP_TREES)]
    return list(dict.fromkeys(found))


def outputs_stage(steps: Sequence[Mapping[str, Any]]) -> None:
    """Run the steps of a study's figure or table job in order (:data:`OUTPUT_STAGES`).

    Each step is the keywords of one stage call plus ``stage``, its name; the log names
    each step and the CPU time it took. A step that fails stops the job with its own error.
    """
    for step in steps:
        stage = step["stage"]
        if stage not in OUTPUT_STAGES:
            raise KeyError(
                f"`stage` must be one of {', '.join(map(repr, OUTPUT_STAGES))}; got {stage!r}."
            )
        started = time.process_time()
        OUTPUT_STAGES[stage](**{k: v for k, v in step.items() if k != "stage"})
        written = step_files([step], outputs=True)
        log.info(
            "%s: %s (%.2f CPU-s)",
            stage,
            Path(written[0]).stem if written else "",
            time.process_time() - started,
        )
