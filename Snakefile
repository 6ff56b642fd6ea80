# allianceflow: clean -> score -> derive -> fit -> figures/tables -> manifest, per study.
# Run:  snakemake --cores all          (see README.md)
from snakemake.utils import min_version

min_version("8.20")


configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"


wildcard_constraints:
    study="|".join(STUDIES),
    model="|".join(MODELS),
    comparison="[A-Za-z][A-Za-z0-9_-]*_vs_[A-Za-z][A-Za-z0-9_-]*",
    design="|".join(POWER_DESIGNS) or "no-power-design",
    chunk=r"\d+",


include: "workflow/rules/clean.smk"
include: "workflow/rules/score.smk"
include: "workflow/rules/derive.smk"
include: "workflow/rules/fit.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/tables.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/pool.smk"
include: "workflow/rules/power.smk"


rule all:
    default_target: True
    input:
        get_final_outputs(),
