# Tables: CSV (the unrounded numbers) and the APA table as Markdown, HTML, LaTeX and Word, of
# every table of a study but reliability (written by compute_reliability, whose bootstrap is
# costly), by one job per study (tabulate_tables_<study>): the descriptive tables, one per
# model, all models side by side, the binary outcomes' arm contrasts and the simple slopes of
# moderated models, numbered in the order a paper cites them. The job runs the steps
# allianceflow.stages.table_steps plans, each with only its own number and labels.
for study in STUDIES:

    rule:
        name:
            f"tabulate_tables_{study}"
        input:
            get_job_inputs(get_table_steps(study)),
        output:
            get_job_outputs(
                study, get_table_steps(study), ".html", "2. Tables", "table"
            ),
        log:
            f"logs/{study}/tabulate_tables.log",
        benchmark:
            f"logs/{study}/benchmarks/tabulate_tables.tsv"
        conda:
            "../envs/allianceflow.yaml"
        params:
            allianceflow_source=SOURCE_FINGERPRINT,
            steps=get_table_steps(study),
        script:
            "../scripts/write_outputs.py"
