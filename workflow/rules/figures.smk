# Figures: PNG (300 dpi), PDF and SVG of every figure; plotting only, so a change of colour
# or size reruns these rules and never a model fit. Each rule runs one entry of the package's
# figure registry (allianceflow.stages.FIGURES) and receives only the settings it reads, so a
# changed figure setting reruns that figure alone. Adding a figure: a registry entry, a rule
# here and a caption in workflow/report/.


rule plot_within_between:
    input:
        analysis=rules.derive_variables.output.analysis,
        models=get_model_results,
    output:
        png=report(
            "results/{study}/figures/within_between.png",
            caption="../report/within_between.rst",
            category="3. Figures",
            subcategory="{study}",
            labels=get_report_labels("figure", "within_between"),
        ),
        pdf="results/{study}/figures/within_between.pdf",
        svg="results/{study}/figures/within_between.svg",
    log:
        "logs/{study}/plot_within_between.log",
    benchmark:
        "logs/{study}/benchmarks/plot_within_between.tsv"
    conda:
        "../envs/allianceflow.yaml"
    params:
        allianceflow_source=SOURCE_FINGERPRINT,
        figure="within_between",
        settings=get_figure_settings("within_between"),
    script:
        "../scripts/plot_figure.py"


rule plot_trajectories:
    input:
        analysis=rules.derive_variables.output.analysis,
        model=get_trajectory_model,
    output:
        png=report(
            "results/{study}/figures/trajectories.png",
            caption="../report/trajectories.rst",
            category="3. Figures",
            subcategory="{study}",
            labels=get_report_labels("figure", "trajectories"),
        ),
        pdf="results/{study}/figures/trajectories.pdf",
        svg="results/{study}/figures/trajectories.svg",
    log:
        "logs/{study}/plot_trajectories.log",
    benchmark:
        "logs/{study}/benchmarks/plot_trajectories.tsv"
    conda:
        "../envs/allianceflow.yaml"
    params:
        allianceflow_source=SOURCE_FINGERPRINT,
        figure="trajectories",
        settings=get_figure_settings("trajectories"),
    script:
        "../scripts/plot_figure.py"


rule plot_forest:
    input:
        model=rules.fit_model.output.json,
    output:
        png=report(
            "results/{study}/figures/forest_{model}.png",
            caption="../report/forest.rst",
            category="3. Figures",
            subcategory="{study}",
            labels=get_report_labels("figure", "forest"),
        ),
        pdf="results/{study}/figures/forest_{model}.pdf",
        svg="results/{study}/figures/forest_{model}.svg",
    log:
        "logs/{study}/plot_forest_{model}.log",
    benchmark:
        "logs/{study}/benchmarks/plot_forest_{model}.tsv"
    conda:
        "../envs/allianceflow.yaml"
    params:
        allianceflow_source=SOURCE_FINGERPRINT,
        figure="forest",
        settings=get_figure_settings("forest"),
    script:
        "../scripts/plot_figure.py"


rule plot_caterpillar:
    input:
        model=get_trajectory_model,
    output:
        png=report(
            "results/{study}/figures/caterpillar.png",
            caption="../report/caterpillar.rst",
            category="3. Figures",
            subcategory="{study}",
            labels=get_report_labels("figure", "caterpillar"),
        ),
        pdf="results/{study}/figures/caterpillar.pdf",
        svg="results/{study}/figures/caterpillar.svg",
    log:
        "logs/{study}/plot_caterpillar.log",
    benchmark:
        "logs/{study}/benchmarks/plot_caterpillar.tsv"
    conda:
        "../envs/allianceflow.yaml"
    params:
        allianceflow_source=SOURCE_FINGERPRINT,
        figure="caterpillar",
        settings=get_figure_settings("caterpillar"),
    script:
        "../scripts/plot_figure.py"


rule plot_flow:
    input:
        flow=rules.clean_sessions.output.flow,
        sessions=rules.clean_sessions.output.sessions,
        models=get_model_results,
    output:
        png=report(
            "results/{study}/figures/flow.png",
            caption="../report/flow.rst",
            category="3. Figures",
            subcategory="{study}",
            labels=get_report_labels("figure", "flow"),
        ),
        pdf="results/{study}/figures/flow.pdf",
        svg="results/{study}/figures/flow.svg",
    log:
        "logs/{study}/plot_flow.log",
    benchmark:
        "logs/{study}/benchmarks/plot_flow.tsv"
    conda:
        "../envs/allianceflow.yaml"
    params:
        allianceflow_source=SOURCE_FINGERPRINT,
        figure="flow",
        settings=get_figure_settings("flow"),
    script:
        "../scripts/plot_figure.py"


rule plot_feedback:
    input:
        analysis=rules.derive_variables.output.analysis,
    output:
        png=report(
            "results/{study}/figures/feedback.png",
            caption="../report/feedback.rst",
            category="3. Figures",
            subcategory="{study}",
            labels=get_report_labels("figure", "feedback"),
        ),
        pdf="results/{study}/figures/feedback.pdf",
        svg="results/{study}/figures/feedback.svg",
    log:
        "logs/{study}/plot_feedback.log",
    benchmark:
        "logs/{study}/benchmarks/plot_feedback.tsv"
    conda:
        "../envs/allianceflow.yaml"
    params:
        allianceflow_source=SOURCE_FINGERPRINT,
        figure="feedback",
        settings=get_figure_settings("feedback"),
    script:
        "../scripts/plot_figure.py"


rule plot_expected_response:
    input:
        analysis=rules.derive_variables.output.analysis,
    output:
        png=report(
            "results/{study}/figures/expected_response.png",
            caption="../report/expected_response.rst",
            category="3. Figures",
            subcategory="{study}",
            labels=get_report_labels("figure", "expected_response"),
        ),
        pdf="results/{study}/figures/expected_response.pdf",
        svg="results/{study}/figures/expected_response.svg",
    log:
        "logs/{study}/plot_expected_response.log",
    benchmark:
        "logs/{study}/benchmarks/plot_expected_response.tsv"
    conda:
        "../envs/allianceflow.yaml"
    params:
        allianceflow_source=SOURCE_FINGERPRINT,
        figure="expected_response",
        settings=get_figure_settings("expected_response"),
    script:
        "../scripts/plot_figure.py"


rule plot_ruptures:
    input:
        analysis=rules.derive_variables.output.analysis,
    output:
        png=report(
            "results/{study}/figures/ruptures.png",
            caption="../report/ruptures_figure.rst",
            category="3. Figures",
            subcategory="{study}",
            labels=get_report_labels("figure", "ruptures"),
        ),
        pdf="results/{study}/figures/ruptures.pdf",
        svg="results/{study}/figures/ruptures.svg",
    log:
        "logs/{study}/plot_ruptures.log",
    benchmark:
        "logs/{study}/benchmarks/plot_ruptures.tsv"
    conda:
        "../envs/allianceflow.yaml"
    params:
        allianceflow_source=SOURCE_FINGERPRINT,
        figure="ruptures",
        settings=get_figure_settings("ruptures"),
    script:
        "../scripts/plot_figure.py"


rule plot_sudden_gains:
    input:
        analysis=rules.derive_variables.output.analysis,
        sudden_gains=rules.derive_variables.output.sudden_gains,
    output:
        png=report(
            "results/{study}/figures/sudden_gains.png",
            caption="../report/sudden_gains_figure.rst",
            category="3. Figures",
            subcategory="{study}",
            labels=get_report_labels("figure", "sudden_gains"),
        ),
        pdf="results/{study}/figures/sudden_gains.pdf",
        svg="results/{study}/figures/sudden_gains.svg",
    log:
        "logs/{study}/plot_sudden_gains.log",
    benchmark:
        "logs/{study}/benchmarks/plot_sudden_gains.tsv"
    conda:
        "../envs/allianceflow.yaml"
    params:
        allianceflow_source=SOURCE_FINGERPRINT,
        figure="sudden_gains",
        settings=get_figure_settings("sudden_gains"),
    script:
        "../scripts/plot_figure.py"


rule plot_reliable_change:
    input:
        patients=rules.derive_variables.output.patients,
    output:
        png=report(
            "results/{study}/figures/reliable_change.png",
            caption="../report/reliable_change.rst",
            category="3. Figures",
            subcategory="{study}",
            labels=get_report_labels("figure", "reliable_change"),
        ),
        pdf="results/{study}/figures/reliable_change.pdf",
        svg="results/{study}/figures/reliable_change.svg",
    log:
        "logs/{study}/plot_reliable_change.log",
    benchmark:
        "logs/{study}/benchmarks/plot_reliable_change.tsv"
    conda:
        "../envs/allianceflow.yaml"
    params:
        allianceflow_source=SOURCE_FINGERPRINT,
        figure="reliable_change",
        settings=get_figure_settings("reliable_change"),
    script:
        "../scripts/plot_figure.py"


rule plot_binary_rates:
    input:
        patients=rules.derive_variables.output.patients,
    output:
        png=report(
            "results/{study}/figures/binary_rates.png",
            caption="../report/binary_rates.rst",
            category="Figures",
            subcategory="{study}",
        ),
        pdf="results/{study}/figures/binary_rates.pdf",
        svg="results/{study}/figures/binary_rates.svg",
    log:
        "logs/{study}/plot_binary_rates.log",
    benchmark:
        "logs/{study}/benchmarks/plot_binary_rates.tsv"
    conda:
        "../envs/allianceflow.yaml"
    params:
        allianceflow_source=SOURCE_FINGERPRINT,
        figure="binary_rates",
        settings=get_figure_settings("binary_rates"),
    script:
        "../scripts/plot_figure.py"


rule plot_dropout_curve:
    input:
        model="results/{study}/models/dropout.json",
        patients=rules.derive_variables.output.patients,
    output:
        png=report(
            "results/{study}/figures/dropout_curve.png",
            caption="../report/dropout_curve.rst",
            category="Figures",
            subcategory="{study}",
        ),
        pdf="results/{study}/figures/dropout_curve.pdf",
        svg="results/{study}/figures/dropout_curve.svg",
    log:
        "logs/{study}/plot_dropout_curve.log",
    benchmark:
        "logs/{study}/benchmarks/plot_dropout_curve.tsv"
    conda:
        "../envs/allianceflow.yaml"
    params:
        allianceflow_source=SOURCE_FINGERPRINT,
        figure="dropout_curve",
        settings=get_figure_settings("dropout_curve"),
    script:
        "../scripts/plot_figure.py"


rule plot_couple_trajectories:
    input:
        analysis=rules.derive_variables.output.analysis,
    output:
        png=report(
            "results/{study}/figures/couple_trajectories.png",
            caption="../report/couple_trajectories.rst",
            category="3. Figures",
            subcategory="{study}",
            labels=get_report_labels("figure", "couple_trajectories"),
        ),
        pdf="results/{study}/figures/couple_trajectories.pdf",
        svg="results/{study}/figures/couple_trajectories.svg",
    log:
        "logs/{study}/plot_couple_trajectories.log",
    benchmark:
        "logs/{study}/benchmarks/plot_couple_trajectories.tsv"
    conda:
        "../envs/allianceflow.yaml"
    params:
        allianceflow_source=SOURCE_FINGERPRINT,
        figure="couple_trajectories",
        settings=get_figure_settings("couple_trajectories"),
    script:
        "../scripts/plot_figure.py"


rule plot_split_outcome:
    input:
        analysis=rules.derive_variables.output.analysis,
        models=get_model_results,
    output:
        png=report(
            "results/{study}/figures/split_outcome.png",
            caption="../report/split_outcome.rst",
            category="3. Figures",
            subcategory="{study}",
            labels=get_report_labels("figure", "split_outcome"),
        ),
        pdf="results/{study}/figures/split_outcome.pdf",
        svg="results/{study}/figures/split_outcome.svg",
    log:
        "logs/{study}/plot_split_outcome.log",
    benchmark:
        "logs/{study}/benchmarks/plot_split_outcome.tsv"
    conda:
        "../envs/allianceflow.yaml"
    params:
        allianceflow_source=SOURCE_FINGERPRINT,
        figure="split_outcome",
        settings=get_figure_settings("split_outcome"),
    script:
        "../scripts/plot_figure.py"
