"""Snakemake adapter: one figure (allianceflow.stages.<figure>_figure_stage), chosen by rule."""

from allianceflow import stages

outputs = [snakemake.output.png, snakemake.output.pdf, snakemake.output.svg]
study = snakemake.params.study
inp = snakemake.input
stages = {
    "plot_trajectories": lambda: stages.trajectories_figure_stage(
        inp.analysis, inp.model, study, outputs=outputs
    ),
    "plot_forest": lambda: stages.model_forest_figure_stage(inp.models, outputs=outputs),
    "plot_caterpillar": lambda: stages.caterpillar_figure_stage(inp.model, study, outputs=outputs),
    "plot_flow": lambda: stages.flow_figure_stage(
        inp.flow, inp.sessions, inp.models, outputs=outputs
    ),
    "plot_feedback": lambda: stages.feedback_figure_stage(inp.analysis, study, outputs=outputs),
    "plot_expected_response": lambda: stages.expected_response_figure_stage(
        inp.analysis, study, outputs=outputs
    ),
    "plot_ruptures": lambda: stages.ruptures_figure_stage(inp.analysis, study, outputs=outputs),
    "plot_sudden_gains": lambda: stages.sudden_gains_figure_stage(
        inp.analysis, inp.sudden_gains, study, outputs=outputs
    ),
    "plot_reliable_change": lambda: stages.reliable_change_figure_stage(
        inp.patients, study, outputs=outputs
    ),
}
with stages.run_step(snakemake.log[0]):
    stages[snakemake.rule]()
