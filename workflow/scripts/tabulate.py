"""Snakemake adapter: a published table (allianceflow.stages.*_table_stage), chosen by rule."""

from allianceflow import stages

outputs = list(snakemake.output)
inp = snakemake.input
with stages.run_step(snakemake.log[0]):
    if snakemake.rule == "tabulate_models":
        stages.models_table_stage(inp.models, outputs=outputs)
    elif snakemake.rule == "render_reliability":
        stages.reliability_table_stage(inp.csv, outputs=outputs)
    else:
        stages.descriptive_table_stage(
            snakemake.wildcards.table,
            analysis=inp.analysis,
            patients=inp.patients,
            sudden_gains=inp.sudden_gains,
            study=snakemake.params.study,
            outputs=outputs,
        )
