# The summary in words (the report's front page) and the manifest of each study.


rule write_summary:
    input:
        models=get_model_results,
        flow=rules.clean_sessions.output.flow,
    output:
        md=report(
            "results/{study}/summary.md",
            caption="../report/summary.rst",
            category="1. Summary",
            subcategory="{study}",
            labels={"study": "{study}", "result": "each question answered in words"},
        ),
        rst="results/{study}/summary.rst",
    log:
        "logs/{study}/write_summary.log",
    benchmark:
        "logs/{study}/benchmarks/write_summary.tsv"
    conda:
        "../envs/allianceflow.yaml"
    params:
        allianceflow_source=SOURCE_FINGERPRINT,
        measures=get_derive_measures,
        benchmark=get_benchmark(),
        labels=get_study_labels,
    script:
        "../scripts/write_summary.py"


rule write_manifest:
    input:
        raw=get_raw,
        config=get_config_files(),
        outputs=get_manifest_outputs,
        lock=get_lock_file(),
    output:
        manifest=report(
            "results/{study}/manifest.json",
            caption="../report/manifest.rst",
            category="7. Provenance",
            subcategory="{study}",
            labels={"study": "{study}", "result": "manifest"},
        ),
    log:
        "logs/{study}/write_manifest.log",
    benchmark:
        "logs/{study}/benchmarks/write_manifest.tsv"
    conda:
        "../envs/allianceflow.yaml"
    params:
        allianceflow_source=SOURCE_FINGERPRINT,
        resolved=get_resolved_config,
    script:
        "../scripts/write_manifest.py"
