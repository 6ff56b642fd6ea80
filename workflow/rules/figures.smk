# Figures: PNG (300 dpi), PDF and SVG of every figure of a study, drawn by one job per study
# (plot_figures_<study>) from the fitted models and derived tables: plotting only, so a change
# of colour or size reruns this job and never a model fit or a table. The job runs the steps
# allianceflow.stages.figure_steps plans (one entry of the figure registry FIGURES each, with
# only the settings that figure reads); one process draws them all, so the interpreter,
# pandas and matplotlib start once per study instead of once per figure. Adding a figure: a
# registry entry, its inputs in stages.figure_inputs and a caption in workflow/report/.
for study in STUDIES:

    rule:
        name:
            f"plot_figures_{study}"
        input:
            get_job_inputs(get_figure_steps(study)),
        output:
            get_job_outputs(
                study, get_figure_steps(study), ".png", "3. Figures", "figure"
            ),
        log:
            f"logs/{study}/plot_figures.log",
        benchmark:
            f"logs/{study}/benchmarks/plot_figures.tsv"
        conda:
            "../envs/allianceflow.yaml"
        params:
            allianceflow_source=SOURCE_FINGERPRINT,
            steps=get_figure_steps(study),
        script:
            "../scripts/write_outputs.py"
