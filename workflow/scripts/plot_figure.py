"""Snakemake adapter: one figure (allianceflow.pipeline.<figure>_figure_stage), chosen by rule."""

from allianceflow import pipeline

outputs = [snakemake.output.png, snakemake.output.pdf, snakemake.output.svg]
study = snakemake.params.study
inp = snakemake.input
stages = {
    "plot_trajectories": lambda: pipeline.trajectories_figure_stage(
        inp.analysis, inp.model, study, outputs=outputs
    ),
    "plot_forest": lambda: pipeline.forest_figure_stage(inp.models, outputs=outputs),
    "plot_caterpillar": lambda: pipeline.caterpillar_figure_stage(
        inp.model, study, outputs=outputs
    ),
    "plot_flow": lambda: pipeline.flow_figure_stage(
        inp.flow, inp.sessions, inp.models, outputs=outputs
    ),
    "plot_feedback": lambda: pipeline.feedback_figure_stage(inp.analysis, study, outputs=outputs),
    "plot_expected_response": lambda: pipeline.expected_response_figure_stage(
        inp.analysis, study, outputs=outputs
    ),
    "plot_ruptures": lambda: pipeline.ruptures_figure_stage(inp.analysis, study, outputs=outputs),
    "plot_sudden_gains": lambda: pipeline.sudden_gains_figure_stage(
        inp.analysis, inp.sudden_gains, study, outputs=outputs
    ),
    "plot_reliable_change": lambda: pipeline.reliable_change_figure_stage(
        inp.patients, study, outputs=outputs
    ),
}
with pipeline.run_step(snakemake.log[0]):
    stages[snakemake.rule]()
