# Validation of the config and every helper the rules use. No logic lives in the rules.
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


wildcard_constraints:
    study="|".join(STUDIES),
    model="|".join(MODELS),


def get_study(wildcards):
    """The validated config block of one study."""
    return config["studies"][wildcards.study]


def get_raw(wildcards):
    """The raw export of one study."""
    return config["studies"][wildcards.study]["raw"]


def get_model(wildcards):
    """The specification of one model."""
    return config["models"][wildcards.model]


def get_study_outputs(study):
    """Every result of one study except its manifest."""
    models = config["studies"][study]["models"]
    return (
        [f"results/{study}/models/{m}.{ext}" for m in models for ext in ("json", "txt")]
        + [f"results/{study}/tables/{m}.{ext}" for m in models for ext in TABLE_FORMATS]
        + [f"results/{study}/tables/reliability.{ext}" for ext in TABLE_FORMATS]
        + [f"results/{study}/figures/within_between.{ext}" for ext in FIGURE_FORMATS]
    )


def get_manifest_outputs(wildcards):
    """What the manifest of a study hashes as outputs."""
    return get_study_outputs(wildcards.study)


def get_config_files():
    """The config file(s) Snakemake read, hashed as inputs in the manifest."""
    return [str(Path(f)) for f in workflow.configfiles]


def get_final_outputs():
    """Targets of `rule all`: every study's results and manifest."""
    targets = []
    for study in STUDIES:
        targets += get_study_outputs(study)
        targets.append(f"results/{study}/manifest.json")
    return targets
