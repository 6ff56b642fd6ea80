"""Snakemake adapter: a published table (allianceflow.pipeline.*_table_stage), chosen by rule."""

from allianceflow import pipeline

outputs = list(snakemake.output)
inp = snakemake.input
with pipeline.run_step(snakemake.log[0]):
    if snakemake.rule == "tabulate_models":
        pipeline.models_table_stage(inp.models, outputs=outputs)
    elif snakemake.rule == "render_reliability":
        pipeline.reliability_table_stage(inp.csv, outputs=outputs)
    else:
        pipeline.descriptive_table_stage(
            snakemake.wildcards.table,
            analysis=inp.analysis,
            patients=inp.patients,
            sudden_gains=inp.sudden_gains,
            study=snakemake.params.study,
            outputs=outputs,
        )
