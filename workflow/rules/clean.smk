rule clean_sessions:
    input:
        raw=get_raw,
    output:
        sessions="data/processed/{study}/sessions.parquet",
        exclusions="data/processed/{study}/exclusions.csv",
        flow="data/processed/{study}/flow.json",
    log:
        "logs/{study}/clean_sessions.log",
    benchmark:
        "logs/{study}/benchmarks/clean_sessions.tsv"
    params:
        allianceflow_source=SOURCE_FINGERPRINT,
        study=get_study,
        name="{study}",
    script:
        "../scripts/clean_sessions.py"
