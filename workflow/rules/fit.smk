rule fit_model:
    input:
        analysis=rules.derive_variables.output.analysis,
        # patient-level presets (deterioration, improvement, dropout, attendance)
        patients=rules.derive_variables.output.patients,
    output:
        json="results/{study}/models/{model}.json",
        txt=report(
            "results/{study}/models/{model}.txt",
            caption="../report/model_text.rst",
            category="4. Model outputs",
            subcategory="{study}",
            labels=get_report_labels("model"),
        ),
    log:
        "logs/{study}/fit_model_{model}.log",
    benchmark:
        "logs/{study}/benchmarks/fit_model_{model}.tsv"
    conda:
        "../envs/allianceflow.yaml"
    params:
        allianceflow_source=SOURCE_FINGERPRINT,
        model=get_model,
    script:
        "../scripts/fit_model.py"


rule compare_models:
    input:
        analysis=rules.derive_variables.output.analysis,
    output:
        json="results/{study}/models/lrt_{comparison}.json",
        txt="results/{study}/models/lrt_{comparison}.txt",
    log:
        "logs/{study}/compare_models_{comparison}.log",
    benchmark:
        "logs/{study}/benchmarks/compare_models_{comparison}.tsv"
    conda:
        "../envs/allianceflow.yaml"
    params:
        allianceflow_source=SOURCE_FINGERPRINT,
        models=get_comparison_models,
    script:
        "../scripts/compare_models.py"
