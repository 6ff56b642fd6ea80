# Simulation-based power for a planned design: one job per analysis (power.analyses), design
# and chunk of replications (so the work spreads over local cores or cluster nodes), each
# logging a line per replication, merged into one table and a power curve.
# Helpers (get_power_*) live in common.smk.


rule simulate_power_chunk:
    input:
        fitted=get_power_fitted,
    output:
        chunk="results/power/chunks/{analysis}/{design}/{chunk}.csv",
    log:
        "logs/power/{analysis}/{design}/simulate_power_chunk_{chunk}.log",
    benchmark:
        "logs/power/{analysis}/{design}/benchmarks/simulate_power_chunk_{chunk}.tsv"
    wildcard_constraints:
        analysis=get_power_analysis_pattern(),
    conda:
        "../envs/allianceflow.yaml"
    params:
        allianceflow_source=SOURCE_FINGERPRINT,
        design=get_power_design,
        seeds=get_power_seeds,
        settings=get_power_settings,
        alliance_items=config["power"]["alliance_items"],
        alpha=config["power"]["alpha"],
        vary=get_power_varied(),
    script:
        "../scripts/simulate_power_chunk.py"


rule summarise_power:
    input:
        chunks=get_power_chunks(),
    output:
        csv="results/power/tables/power.csv",
        md=report(
            "results/power/tables/power.md",
            caption="../report/power_table.rst",
            category="6. Power",
            labels={"table": "Power by design"},
        ),
    log:
        "logs/power/summarise_power.log",
    benchmark:
        "logs/power/benchmarks/summarise_power.tsv"
    conda:
        "../envs/allianceflow.yaml"
    params:
        allianceflow_source=SOURCE_FINGERPRINT,
        designs=get_power_designs(),
    script:
        "../scripts/summarise_power.py"


rule plot_power_curve:
    input:
        summary=rules.summarise_power.output.csv,
    output:
        png=report(
            "results/power/figures/power_curve.png",
            caption="../report/power_curve.rst",
            category="6. Power",
            labels={"figure": "Power curve"},
        ),
        pdf="results/power/figures/power_curve.pdf",
        svg="results/power/figures/power_curve.svg",
    log:
        "logs/power/plot_power_curve.log",
    benchmark:
        "logs/power/benchmarks/plot_power_curve.tsv"
    conda:
        "../envs/allianceflow.yaml"
    params:
        allianceflow_source=SOURCE_FINGERPRINT,
        x=get_power_x(),
    script:
        "../scripts/plot_power_curve.py"
