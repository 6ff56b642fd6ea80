rule clean_sessions:
    input:
        raw=get_raw,
    output:
        sessions="data/processed/{study}/sessions.parquet",
        exclusions="data/processed/{study}/exclusions.csv",
        flow="data/processed/{study}/flow.json",
    params:
        study=get_study,
    log:
        "logs/{study}/clean_sessions.log",
    benchmark:
        "logs/{study}/benchmarks/clean_sessions.tsv"
    script:
        "../scripts/clean_sessions.py"
