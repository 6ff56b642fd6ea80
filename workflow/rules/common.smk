# Validation of the config and every helper the rules use; no logic lives in the rules.
from functools import cache
from pathlib import Path

import dataclasses

from snakemake.io import report as report_entry  # `report` starts a directive here

from allianceflow.config import validate_config
from allianceflow.io import package_versions, source_fingerprint
from allianceflow.power import check_power_config, chunk_seeds
from allianceflow.stages import (
    CLEAN_OVERRIDES,
    FIGURE_FORMATS,
    RELIABILITY_OVERRIDES,
    SCORE_OVERRIDES,
    TABLE_FORMATS,
    figure_steps,
    instrument_overrides,
    step_files,
    table_settings,
    table_steps,
)

# Validate before any job runs; fills in the schema's defaults in place.
config.update(
    validate_config(
        config, Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.yaml"
    )
)

# A hash of the package's own files and the versions of the libraries that compute results.
# Every rule gets it as a parameter, so results made by other code (an upgrade, a fix) are
# rebuilt instead of silently kept; a rerun with the same code and inputs has nothing to do.
SOURCE_FINGERPRINT = {
    "allianceflow_source_sha256": source_fingerprint(),
    "versions": {k: v for k, v in package_versions().items() if k != "snakemake"},
}

STUDIES = sorted(config["studies"])
MODELS = sorted(config["models"])
POWER_DESIGNS = (
    check_power_config(
        config["power"],
        pool_model=(
            config["pool"]["model"],
            config["models"].get(config["pool"]["model"]),
        ),
    )
    if config["power"]["enabled"]
    else {}
)
POWER_ANALYSES = config["power"]["analyses"] if config["power"]["enabled"] else []


# ---- settings computed once per run: Snakemake evaluates a job's params again at every
# scheduling round while the job waits, and labels and instrument numbers are read from the
# instrument files (the config does not change during a run)


@cache
def get_labels_of_study(study):
    """Labels of one study's variables and terms in words (config and instrument files)."""
    from allianceflow.labels import Labels

    return Labels.from_config(config["studies"][study]).to_dict()


@cache
def get_table_settings_of(table, study):
    """The number and labels of one table of one study (allianceflow.stages.table_settings)."""
    return table_settings(table, config["studies"][study], config["models"])


# ---- one helper per section of a study block: a rule receives only the sections it reads,
# so that changing a setting reruns only the rules that read it


def get_read(wildcards):
    """The study's `read` section: where the raw export is and how to read it."""
    return config["studies"][wildcards.study]["read"]


def get_privacy(wildcards):
    """The study's `privacy` section: dropped, exempted and hashed columns."""
    return config["studies"][wildcards.study]["privacy"]


def get_clean(wildcards):
    """The study's `clean` section: the policy of each clean rule."""
    return config["studies"][wildcards.study]["clean"]


def get_instruments(wildcards):
    """The study's instruments (`measures.instruments`), with every override."""
    return config["studies"][wildcards.study]["measures"]["instruments"]


def get_clean_instruments(wildcards):
    """The study's instruments with only the overrides that cleaning reads (item key,
    proration limits): a new `rci` or `cutoff` does not rerun clean."""
    return instrument_overrides(get_instruments(wildcards), CLEAN_OVERRIDES)


def get_score_instruments(wildcards):
    """The study's instruments with only the overrides that scoring reads (item key,
    proration limits): a new `rci` or `cutoff` does not rescore."""
    return instrument_overrides(get_instruments(wildcards), SCORE_OVERRIDES)


def get_reliability_instruments(wildcards):
    """The study's instruments with only the overrides the reliability table reads (item
    key): a new `rci`, `cutoff` or proration limit does not rerun its bootstrap."""
    return instrument_overrides(get_instruments(wildcards), RELIABILITY_OVERRIDES)


def get_reliability_bootstrap(wildcards):
    """Bootstrap resamples of the omega intervals (`measures.reliability_bootstrap`)."""
    return config["studies"][wildcards.study]["measures"]["reliability_bootstrap"]


def get_alpha_missing(wildcards):
    """How alpha treats missing answers (`measures.alpha_missing`: listwise or pairwise)."""
    return config["studies"][wildcards.study]["measures"]["alpha_missing"]


def get_derive_measures(wildcards):
    """What derive reads of the study's `measures`: the alliance and outcome scores and the
    instruments (with overrides) their numbers come from, not the reliability settings.
    """
    measures = config["studies"][wildcards.study]["measures"]
    return {key: measures[key] for key in ("instruments", "alliance", "outcome")}


def get_derive(wildcards):
    """The study's `derive` section: settings of the derived clinical variables."""
    return config["studies"][wildcards.study]["derive"]


def get_resolved_config(wildcards):
    """The resolved config that shapes one study's results (recorded in its manifest)."""
    study = config["studies"][wildcards.study]
    models = {m: config["models"][m] for m in study["models"]}
    return {"seed": config["seed"], "study": study, "models": models}


def get_raw(wildcards):
    """The raw export of one study."""
    return config["studies"][wildcards.study]["read"]["raw"]


def get_reference_scored(wildcards):
    """The reference study's scored sessions when the expected treatment response is fitted
    on a reference sample, else nothing."""
    on_track = config["studies"][wildcards.study]["derive"]["on_track"]
    if on_track["reference"] != "reference":
        return []
    return [f"data/processed/{on_track['reference_study']}/scored.parquet"]


def get_model(wildcards):
    """The specification of one model."""
    return config["models"][wildcards.model]


def get_comparisons(study):
    """Names "<simpler>_vs_<larger>" of the configured comparisons this study fits both of."""
    models = set(config["studies"][study]["models"])
    return [
        f"{a}_vs_{b}" for a, b in config["comparisons"] if a in models and b in models
    ]


def get_comparison_models(wildcards):
    """The two model specifications of one comparison, simpler first."""
    a, b = wildcards.comparison.split("_vs_")
    return {a: config["models"][a], b: config["models"][b]}


def get_model_results(wildcards):
    """The fitted-model JSON files of one study (the summary answers each of them)."""
    models = config["studies"][wildcards.study]["models"]
    return [f"results/{wildcards.study}/models/{m}.json" for m in models]


def get_reliability_table_settings(wildcards):
    """The reliability table's number and the study's labels."""
    return get_table_settings_of("reliability", wildcards.study)


def get_study_outputs(study):
    """Every result of one study except its manifest."""
    models = config["studies"][study]["models"]
    return (
        [f"results/{study}/models/{m}.{ext}" for m in models for ext in ("json", "txt")]
        + [f"results/{study}/models/expected_response.json"]
        + [
            f"results/{study}/models/lrt_{c}.{ext}"
            for c in get_comparisons(study)
            for ext in ("json", "txt")
        ]
        + [f"results/{study}/summary.{ext}" for ext in ("md", "rst")]
        + [f"results/{study}/tables/reliability.{ext}" for ext in TABLE_FORMATS]
        + step_files(get_table_steps(study), outputs=True)
        + step_files(get_figure_steps(study), outputs=True)
    )


def get_benchmark():
    """The meta-analytic benchmark (`pool.benchmark`) quoted in the summaries."""
    return config["pool"]["benchmark"]


# ---- one figure job and one table job per study (allianceflow.stages.figure_steps and
# table_steps): a study's figures are drawn in one process and its tables written in another,
# so that the interpreter, pandas, matplotlib and Word start once per study, not per file


@cache
def get_figure_steps(study):
    """The figures of one study as the steps of its figure job."""
    return figure_steps(study, config["studies"][study], config["models"])


@cache
def get_table_steps(study):
    """The tables of one study (all but reliability) as the steps of its table job."""
    return table_steps(study, config["studies"][study], config["models"])


def get_job_inputs(steps):
    """The files a figure or table job reads (every step's inputs, each once)."""
    return step_files(steps, outputs=False)


#: The caption file (workflow/report/) of a kind of figure or table whose caption is not
#: named after the kind (the others: workflow/report/<kind>.rst).
CAPTIONS = {"simple_slopes_figure": "simple_slopes"}


def _report_kind(step, stem):
    """(kind, model) of a step for its caption and name in words: e.g. ("forest", "growth")."""
    stage = step["stage"]
    if stage == "figure" and step["name"] == "forest":
        return "forest", stem.removeprefix("forest_")
    if stage == "figure":
        figure = step["name"]
        return (
            f"{figure}_figure" if figure in ("ruptures", "sudden_gains") else figure
        ), None
    if stage in ("simple_slopes_figure", "simple_slopes_table"):
        return stage, stem.removeprefix("simple_slopes_")
    if stage == "model_table":
        return stage, stem
    if stage == "descriptive_table" and step["name"] in ("sudden_gains", "ruptures"):
        return f"{step['name']}_table", None
    if stage == "descriptive_table":
        return step["name"], None
    return stage, None


def get_job_outputs(study, steps, entry, category, key):
    """The files a study's figure or table job writes; the *entry* file of each (its PNG
    or HTML) is an entry of Snakemake's report, with its caption and name in words."""
    outputs = []
    for step in steps:
        files = step_files([step], outputs=True)
        stem = Path(files[0]).stem
        kind, model = _report_kind(step, stem)
        words = REPORT_NAMES.get(kind, kind.replace("_", " ")).format(model=model)
        for path in files:
            if not path.endswith(entry):
                outputs.append(path)
                continue
            outputs.append(
                report_entry(
                    path,
                    caption=f"../report/{CAPTIONS.get(kind, kind)}.rst",
                    category=category,
                    subcategory=study,
                    labels={"study": study, key: words},
                )
            )
    return outputs


#: Names in words of the entries of Snakemake's report (labels of report(...)).
REPORT_NAMES = {
    "table1": "Table 1: sample characteristics by arm",
    "intake_correlations": "Correlations at intake",
    "clinical_significance": "Reliable and clinically significant change",
    "reliability": "Reliability (alpha and omega)",
    "model_table": "Model {model}",
    "binary_effects": "Binary outcomes by arm",
    "simple_slopes_table": "Simple slopes of model {model}",
    "simple_slopes_figure": "Simple slopes of model {model}",
    "dropout_curve": "Dropout over sessions",
    "binary_rates": "Binary outcomes by arm",
    "sudden_gains_figure": "Sudden gains",
    "ruptures_figure": "Alliance ruptures and repair",
    "sudden_gains_table": "Sudden gains",
    "ruptures_table": "Alliance ruptures and repair",
    "models_table": "Every model side by side",
    "within_between": "Alliance and outcome within and between patients",
    "trajectories": "Outcome trajectories",
    "forest": "Fixed effects of model {model} (forest plot)",
    "caterpillar": "Therapist random effects (caterpillar plot)",
    "flow": "Flow of patients and sessions",
    "feedback": "Outcome by arm and on-track status",
    "expected_response": "Expected treatment response",
    "reliable_change": "Reliable and clinically significant change",
    "couple_trajectories": "Partners' alliance over sessions, per couple",
    "split_outcome": "Split alliance and outcome within and between couples",
}


def get_report_labels(kind, name=None):
    """A function of the wildcards giving one report entry's labels: its study and its name
    in words (*name*, else the wildcard *kind*, e.g. the model or table; a name may use the
    rule's wildcards, as "{model}")."""

    def get_labels(wildcards):
        key = name or getattr(wildcards, kind)
        if kind == "model":
            words = f"model {key}"
        else:
            words = REPORT_NAMES.get(key, key.replace("_", " "))
        return {"study": wildcards.study, kind: words.format(**dict(wildcards.items()))}

    get_labels.__name__ = f"get_{kind}_labels"
    return get_labels


def get_study_labels(wildcards):
    """Labels of one study's variables and terms in words (config and instrument files)."""
    return get_labels_of_study(wildcards.study)


def get_manifest_outputs(wildcards):
    """What the manifest of a study hashes as outputs."""
    return get_study_outputs(wildcards.study)


def get_lock_file():
    """The lock file the environment was installed from, when the project has one (its
    hash goes into the manifest)."""
    return [name for name in ["requirements.lock"] if Path(name).exists()]


def get_config_name():
    """The name of the config file the study settings came from (the last one given), for
    messages that tell the researcher where to fix a setting."""
    return (
        Path(workflow.configfiles[-1]).name if workflow.configfiles else "config.yaml"
    )


def get_config_files():
    """The config file(s) Snakemake read, hashed as inputs in the manifest."""
    return [str(Path(f)) for f in workflow.configfiles]


# ---- pooling across studies


def get_pool_studies():
    """Studies pooled: pool.studies, else every study that fits pool.model."""
    pool = config["pool"]
    names = pool["studies"] or [
        s for s in STUDIES if pool["model"] in config["studies"][s]["models"]
    ]
    return sorted(names)


def pool_enabled():
    """Pool when enabled and at least two studies fit the pooled model."""
    return config["pool"]["enabled"] and len(get_pool_studies()) >= 2


def get_pool_models(wildcards):
    """Study -> fitted model JSON of pool.model."""
    return {
        s: f"results/{s}/models/{config['pool']['model']}.json"
        for s in get_pool_studies()
    }


def get_pool_analyses(wildcards):
    """Study -> analysis table (for the one-stage model)."""
    return {s: f"data/processed/{s}/analysis.parquet" for s in get_pool_studies()}


def get_pool_inputs(wildcards):
    """Named inputs of pool_studies: model_<study> and analysis_<study>."""
    models = {f"model_{s}": p for s, p in get_pool_models(wildcards).items()}
    analyses = {f"analysis_{s}": p for s, p in get_pool_analyses(wildcards).items()}
    return {**models, **analyses}


def get_pool_directions(wildcards):
    """Study -> direction of improvement of its outcome instrument."""
    from allianceflow.pool import outcome_direction

    return {
        s: outcome_direction(config["studies"][s]["measures"])
        for s in get_pool_studies()
    }


def get_pool_labels(wildcards):
    """Study -> its labels (Labels.to_dict()): the studies named in words."""
    from allianceflow.labels import Labels

    return {
        s: Labels.from_config(config["studies"][s]).to_dict()
        for s in get_pool_studies()
    }


#: The `pool` settings the pooling itself reads (not `benchmark`, which only the forest
#: plot draws, nor `enabled`, `studies` and `model`, which choose its inputs).
POOL_SETTINGS = (
    "term",
    "method",
    "hksj",
    "hksj_adhoc",
    "alpha",
    "pi_type",
    "one_stage",
    "standardise",
)


def get_pool_settings():
    """The settings of the meta-analysis and the one-stage model (`POOL_SETTINGS`)."""
    return {key: config["pool"][key] for key in POOL_SETTINGS if key in config["pool"]}


def get_pool_model_spec(wildcards):
    """The specification of the pooled model."""
    return config["models"][config["pool"]["model"]]


def get_pool_outputs():
    """Pooled targets of the default target (none with fewer than two studies)."""
    if not pool_enabled():
        return []
    return (
        [
            "results/pooled/meta_analysis.json",
            "results/pooled/models/one_stage.json",
            "results/pooled/tables/one_vs_two_stage.csv",
        ]
        + [f"results/pooled/tables/meta_analysis.{ext}" for ext in TABLE_FORMATS]
        + [f"results/pooled/figures/meta_forest.{ext}" for ext in FIGURE_FORMATS]
    )


# ---- power


def get_power_designs():
    """Design name -> PowerDesign parameters (for the summary's size columns)."""
    return {name: dataclasses.asdict(d) for name, d in POWER_DESIGNS.items()}


def get_power_design(wildcards):
    """The configured parameters of one design (only those given, so that a fitted study
    can supply the rest)."""
    power = config["power"]
    design = dict(power["design"])
    if power["vary"]:
        values = dict(zip(POWER_DESIGNS, power["vary"]["values"]))
        design[power["vary"]["parameter"]] = values[wildcards.design]
    return design


def get_power_seeds(wildcards):
    """Seeds of one chunk (the same seeds for every design: common random numbers)."""
    power = config["power"]
    seed = config["seed"] if power["seed"] is None else power["seed"]
    return chunk_seeds(
        seed, power["replications"], power["chunk_size"], int(wildcards.chunk)
    )


def get_power_varied():
    """The parameter the power curve varies (it wins over a fitted study's value), or None."""
    vary = config["power"]["vary"]
    return vary["parameter"] if vary else None


def get_power_fitted(wildcards):
    """The fitted model that supplies effects and ICCs, or nothing."""
    study = config["power"]["from_study"]
    return [f"results/{study}/models/{config['pool']['model']}.json"] if study else []


def get_power_settings(wildcards):
    """The settings of one power analysis only (so that changing another analysis's settings
    reruns none of its jobs)."""
    power = config["power"]
    return {
        "alliance_outcome": {"formula": power["formula"], "ddf": power["ddf"]},
        "deterioration": {"rci": power["rci"]},
        "dropout": {},
        "moderation": {"ddf": power["ddf"], "modality": power["moderation"]},
    }[wildcards.analysis]


def get_power_analysis_pattern():
    """Wildcard constraint of the power analyses asked for."""
    return "|".join(POWER_ANALYSES) or "no-power-analysis"


def get_power_chunks():
    """Every chunk of every design of every analysis."""
    power = config["power"]
    n_chunks = -(-power["replications"] // power["chunk_size"])
    return [
        f"results/power/chunks/{a}/{d}/{c}.csv"
        for a in POWER_ANALYSES
        for d in POWER_DESIGNS
        for c in range(n_chunks)
    ]


def get_power_x():
    """x axis of the power curve: the varied size, else total patients."""
    vary = config["power"]["vary"]
    sizes = ("n_therapists", "patients_per_therapist", "sessions")
    return vary["parameter"] if vary and vary["parameter"] in sizes else "n_patients"


def get_power_outputs():
    """Power targets of the default target (none unless power.enabled)."""
    if not config["power"]["enabled"]:
        return []
    return [f"results/power/tables/power.{ext}" for ext in ("csv", "md")] + [
        f"results/power/figures/power_curve.{ext}" for ext in FIGURE_FORMATS
    ]


def get_final_outputs():
    """Targets of the default target: every study's results and manifest."""
    targets = []
    for study in STUDIES:
        targets += get_study_outputs(study)
        targets.append(f"results/{study}/manifest.json")
    return targets + get_pool_outputs() + get_power_outputs()
