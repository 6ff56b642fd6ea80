rule fit_model:
    input:
        analysis=rules.derive_variables.output.analysis,
    output:
        json="results/{study}/models/{model}.json",
        txt="results/{study}/models/{model}.txt",
    params:
        model=get_model,
    log:
        "logs/{study}/fit_model_{model}.log",
    benchmark:
        "logs/{study}/benchmarks/fit_model_{model}.tsv"
    script:
        "../scripts/fit_model.py"
