# Validation of the config and every helper the rules use; no logic lives in the rules.
from pathlib import Path

from allianceflow.config import validate_config

# Validate before any job runs; fills in the schema's defaults in place.
config.update(
    validate_config(
        config, Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.yaml"
    )
)

STUDIES = sorted(config["studies"])
MODELS = sorted(config["models"])
FIGURE_FORMATS = ["png", "pdf", "svg"]
TABLE_FORMATS = ["csv", "md"]


def get_study(wildcards):
    """The validated config block of one study."""
    return config["studies"][wildcards.study]


def get_resolved_config(wildcards):
    """The resolved config that shapes one study's results (recorded in its manifest)."""
    study = config["studies"][wildcards.study]
    models = {m: config["models"][m] for m in study["models"]}
    return {"seed": config["seed"], "study": study, "models": models}


def get_raw(wildcards):
    """The raw export of one study."""
    return config["studies"][wildcards.study]["raw"]


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
    """The fitted-model JSON files of one study (figures and tables that compare models)."""
    models = config["studies"][wildcards.study]["models"]
    return [f"results/{wildcards.study}/models/{m}.json" for m in models]


def get_trajectory_model(wildcards):
    """The model whose implied mean the trajectory figure draws (the study's first model)."""
    study = config["studies"][wildcards.study]
    name = (study.get("figures") or {}).get("trajectory_model") or study["models"][0]
    return f"results/{wildcards.study}/models/{name}.json"


def get_study_outputs(study):
    """Every result of one study except its manifest (figures and tables of issue 7)."""
    models = config["studies"][study]["models"]
    published = ["csv", "md", "html", "tex", "docx"]
    tables = [
        "table1",
        "intake_correlations",
        "clinical_significance",
        "sudden_gains",
        "ruptures",
    ]
    figures = [
        "within_between",
        "trajectories",
        "forest",
        "flow",
        "feedback",
        "expected_response",
        "ruptures",
        "sudden_gains",
        "reliable_change",
        "caterpillar",
    ]
    return (
        [f"results/{study}/models/{m}.{ext}" for m in models for ext in ("json", "txt")]
        + [f"results/{study}/models/expected_response.json"]
        + [
            f"results/{study}/models/lrt_{c}.{ext}"
            for c in get_comparisons(study)
            for ext in ("json", "txt")
        ]
        + [f"results/{study}/tables/{m}.{ext}" for m in models for ext in published]
        + [f"results/{study}/tables/models.{ext}" for ext in published]
        + [f"results/{study}/tables/reliability.{ext}" for ext in published]
        + [f"results/{study}/tables/{t}.{ext}" for t in tables for ext in published]
        + [
            f"results/{study}/figures/{f}.{ext}"
            for f in figures
            for ext in FIGURE_FORMATS
        ]
    )


def get_manifest_outputs(wildcards):
    """What the manifest of a study hashes as outputs."""
    return get_study_outputs(wildcards.study)


def get_config_files():
    """The config file(s) Snakemake read, hashed as inputs in the manifest."""
    return [str(Path(f)) for f in workflow.configfiles]


def get_final_outputs():
    """Targets of the default target: every study's results and manifest."""
    targets = []
    for study in STUDIES:
        targets += get_study_outputs(study)
        targets.append(f"results/{study}/manifest.json")
    return targets
