"""End to end: real Snakemake on a temporary copy of the example studies.

The quick tier builds ``.test/config.yaml`` (three of the example's models, a short omega
bootstrap); CI builds ``config.yaml`` itself (see tests/conftest.py).
"""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import FULL

from allianceflow.io import sha256_file
from allianceflow.simulate import EXAMPLE_DESIGN

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

#: One Snakemake call may take this long before the test gives up (a loaded 2-core machine
#: builds the full example in about 4 minutes; a timeout this long means a hung job).
SNAKEMAKE_TIMEOUT = 3600


def _snakemake(workdir: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "snakemake", "--cores", "2", *args]
    try:
        return subprocess.run(
            command,
            cwd=workdir,
            capture_output=True,
            text=True,
            timeout=SNAKEMAKE_TIMEOUT,
            env=env,
        )
    except subprocess.TimeoutExpired as error:
        output = (error.stderr or b"")[-3000:]
        if isinstance(output, bytes):
            output = output.decode(errors="replace")
        pytest.fail(
            f"TIMEOUT: `{' '.join(command[2:])}` in {workdir} did not finish within "
            f"{SNAKEMAKE_TIMEOUT} s; this is a time-out, not a failed assertion. "
            f"Last output:\n{output}",
            pytrace=False,
        )


def _result_hashes(workdir: Path, folder: str = "results") -> dict[str, str]:
    """Hash every file under *folder* (sha256).

    Snakemake's report.html is left out: it embeds the
    run's job start and end times (its runtime statistics) and so differs on every run.
    """
    return {
        p.relative_to(workdir).as_posix(): sha256_file(p)
        for p in sorted((workdir / folder).rglob("*"))
        if p.is_file() and p.name != "report.html"
    }


@pytest.fixture(scope="module")
def run(tmp_path_factory, copy_project):
    workdir = copy_project(tmp_path_factory.mktemp("run"), small=not FULL)
    raw = workdir / "data/raw/example/sessions_export.csv"
    raw_hash = sha256_file(raw)
    proc = _snakemake(workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"dir": workdir, "raw_hash_before": raw_hash, "raw": raw}


def test_alliance_effects_against_the_truth(run):
    """The pipeline's alliance-outcome model against the simulator's truths.

    The simulator's truths are per WAI-SR item-mean point; the WAI-SR total is the sum of
    its 12 items, so one total-score point is 1/12 of an item-mean point. The between-patient
    interval holds its truth; the within-patient one misses it at the configured seed (its
    estimate, 1.28 per item-mean point against 2.0, is the miss the example README states;
    over 100 replications of the design the interval covers at its nominal rate, see
    benchmarks/results/example_truths.txt).
    """
    result = json.loads((run["dir"] / "results/example/models/alliance_outcome.json").read_text())
    fixed = {row["term"]: row for row in result["fixed"]}
    between = fixed["alliance_between"]
    assert between["ci_low"] < EXAMPLE_DESIGN.between_effect / 12 < between["ci_high"]
    within = fixed["alliance_within_lag"]
    assert within["ci_high"] < EXAMPLE_DESIGN.within_effect / 12
    assert within["estimate"] * 12 == pytest.approx(1.2825, abs=5e-5)
    assert result["convergence"]["converged"] is True
    assert result["n_groups"] == {"patient": 299, "therapist": 30}


def test_flow_reconciles_with_the_raw_file_and_the_clean_table(run):
    flow = json.loads((run["dir"] / "data/processed/example/flow.json").read_text())
    raw_rows = len(pd.read_csv(run["raw"], dtype=str))
    sessions = pd.read_parquet(run["dir"] / "data/processed/example/sessions.parquet")
    exclusions = pd.read_csv(run["dir"] / "data/processed/example/exclusions.csv")
    s = flow["sessions"]
    assert s["read"] == raw_rows == 3374
    assert s["read"] == s["kept"] + s["excluded"]
    assert s["kept"] == len(sessions)
    actions = exclusions["action"].value_counts().to_dict()
    assert s["excluded"] == actions.get("excluded", 0) == 0
    # Unrecorded sessions (the simulator's p_unrecorded) leave gaps, flagged not excluded.
    assert s["flagged_by_rule"] == {"session_gap": actions["flagged"]} and actions["flagged"] == 82
    assert flow["patients"]["read"] == flow["patients"]["kept"] + flow["patients"]["excluded"]


def test_tables_have_the_expected_rows(run):
    table = pd.read_csv(run["dir"] / "results/example/tables/alliance_outcome.csv")
    assert table["term"].tolist() == [
        "Intercept",
        "alliance_within_lag",
        "alliance_between",
        "session",
    ]
    assert table["converged"].all()
    reliability = pd.read_csv(run["dir"] / "results/example/tables/reliability.csv")
    assert set(zip(reliability["instrument"], reliability["scale"], strict=True)) == {
        ("wai_sr", "total"),
        ("wai_sr", "task"),
        ("wai_sr", "bond"),
        ("wai_sr", "goal"),
        ("ors", "total"),
    }


def test_manifest_lists_inputs_and_every_output(run):
    workdir = run["dir"]
    manifest = json.loads((workdir / "results/example/manifest.json").read_text())
    assert manifest["inputs"]["data/raw/example/sessions_export.csv"] == run["raw_hash_before"]
    assert manifest["inputs"]["config.yaml"] == sha256_file(workdir / "config.yaml")
    outputs = {
        k: v
        for k, v in _result_hashes(workdir, "results/example").items()
        if not k.endswith("manifest.json")
    }
    assert manifest["outputs"] == outputs
    assert manifest["config"]["study"]["measures"]["alliance"] == "wai_sr_total"
    assert manifest["lock_sha256"] == sha256_file(workdir / "requirements.lock")
    assert manifest["versions"]["statsmodels"]
    verify = subprocess.run(
        [sys.executable, "-m", "allianceflow", "verify", "results/example/manifest.json"],
        cwd=workdir,
        capture_output=True,
        text=True,
    )
    assert verify.returncode == 0 and "all files match" in verify.stdout


def test_raw_file_is_never_written(run):
    assert sha256_file(run["raw"]) == run["raw_hash_before"]


def test_second_run_has_nothing_to_do(run):
    proc = _snakemake(run["dir"], "--dry-run")
    assert proc.returncode == 0
    assert "Nothing to be done" in proc.stdout + proc.stderr


def _planned_jobs(workdir: Path, *args: str, env: dict | None = None) -> tuple[dict[str, int], str]:
    """Jobs per rule that a dry run would run (Snakemake's ``--quiet rules`` table)."""
    proc = _snakemake(workdir, *args, "--dry-run", "--quiet", "rules", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    counts = {}
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            counts[parts[0]] = int(parts[1])
    return counts, proc.stdout + proc.stderr


def test_changed_package_code_rebuilds_every_result(run, tmp_path):
    # A copy of the package with one comment added, imported first through PYTHONPATH: the
    # same version number, other code. Every rule's `allianceflow_source` parameter changes,
    # so the dry run plans exactly the jobs of a full build (--forceall).
    import os
    import shutil

    import allianceflow

    package = tmp_path / "pkg" / "allianceflow"
    shutil.copytree(
        Path(allianceflow.__file__).parent, package, ignore=shutil.ignore_patterns("__pycache__")
    )
    with (package / "__init__.py").open("a", encoding="utf-8") as handle:
        handle.write("\n# a local fix\n")
    changed, text = _planned_jobs(
        run["dir"], env={**os.environ, "PYTHONPATH": str(tmp_path / "pkg")}
    )
    full, _ = _planned_jobs(run["dir"], "--forceall")
    assert changed == full
    assert full["clean_sessions"] == (3 if FULL else 2)
    assert full["plot_figures_example"] == full["tabulate_tables_example"] == 1
    # per study: clean, score, reliability, derive, a fit per model, figures, tables,
    # summary, manifest; one comparison, the pooling and its forest plot, and `all`
    assert full["total"] == (48 if FULL else 26)
    assert "params have changed since last execution" in text


def test_rerun_elsewhere_gives_identical_bytes(run, tmp_path, copy_project):
    first = _result_hashes(run["dir"])
    manifest = json.loads((run["dir"] / "results/example/manifest.json").read_text())
    example = {k for k in first if k.startswith("results/example/")}
    assert example == set(manifest["outputs"]) | {"results/example/manifest.json"}
    studies = {"example", "example2", "pooled"} | ({"example3"} if FULL else set())
    assert {k.split("/")[1] for k in first} == studies
    # m models x (json, txt, 5 table formats) + 1 comparison x (json, txt) + models,
    # reliability, 5 descriptive tables and the binary arm contrasts in 5 formats + (11
    # figures + a forest plot per model) x 3 formats + expected_response.json (derive) +
    # summary (md, rst) + manifest: m = 13 in config.yaml, 4 in .test/
    models = 13 if FULL else 4
    expected = models * 7 + 2 + 8 * 5 + (11 + models) * 3 + 1 + 2 + 1
    assert len(example) == expected == (209 if FULL else 119)
    assert {k.rsplit(".", 1)[1] for k in first} == {
        "rst",
        "json",
        "txt",
        "csv",
        "md",
        "html",
        "tex",
        "docx",
        "png",
        "pdf",
        "svg",
    }
    # CI rebuilds everything in a second folder; the quick tier rebuilds the smaller
    # example2 study (every per-study rule but the model comparison) and compares its bytes.
    again = copy_project(tmp_path, small=not FULL)
    proc = _snakemake(again, *([] if FULL else ["results/example2/manifest.json"]))
    assert proc.returncode == 0, proc.stderr[-3000:]
    second = _result_hashes(again)
    if not FULL:
        first = {k: v for k, v in first.items() if k.startswith("results/example2/")}
        assert len(first) > 60
    assert first == second


def test_report_has_a_caption_per_figure_and_table(run):
    proc = _snakemake(run["dir"], "--report", "results/example/report.html")
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = (run["dir"] / "results/example/report.html").read_text(encoding="utf-8")
    for phrase in (
        "Flow of patients and sessions",
        "Fixed effects of one model",
        "Sample characteristics by arm",
        "reliable change index around it",
    ):
        assert phrase in text
    # the front page is the summary in words, answers first
    front = text[text.index("workflow_desc") :]
    assert front.index("Results: example") < front.index("How these results were made")


def test_summary_answers_each_model_from_its_json(run):
    """results/<study>/summary.md: one paragraph per configured model, numbers from its JSON."""
    workdir = run["dir"]
    text = (workdir / "results/example/summary.md").read_text(encoding="utf-8")
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    for name in config["studies"]["example"]["models"]:
        result = json.loads((workdir / f"results/example/models/{name}.json").read_text())
        assert f"(model {name})" in text
        rows = "patients" if "family" in result else "sessions"  # GLMMs: one row per patient
        assert f"The model used {result['n_obs']:,} {rows} of" in text
    main = json.loads((workdir / "results/example/models/alliance_outcome.json").read_text())
    within = next(r for r in main["fixed"] if r["term"] == "alliance_within_lag")
    assert (
        "A session whose WAI-SR total was 1 point above the patient's usual level was followed "
        f"at the next session by an ORS total {within['estimate']:.2f} points higher (better) "
        f"(*b* = {within['estimate']:.2f}, 95% CI [{within['ci_low']:.2f}, "
        f"{within['ci_high']:.2f}]"
    ) in text
    assert "Flückiger et al. (2018)" in text
    flow = json.loads((workdir / "data/processed/example/flow.json").read_text())
    assert f"The export held {flow['sessions']['read']:,} session rows" in text


def test_invalid_config_fails_before_any_job(tmp_path, copy_project):
    workdir = copy_project(tmp_path)
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    config["models"]["alliance_outcome"]["reml"] = "sometimes"
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    proc = _snakemake(workdir)
    assert proc.returncode != 0
    assert (
        "`models.alliance_outcome.reml` is 'sometimes'; it must be of type boolean." in proc.stderr
    )
    assert not (workdir / "data/processed").exists()
    assert not (workdir / "results").exists()


def test_derive_study_in_memory_equals_the_stage_output(run):
    """derive_study (what notebooks call) gives exactly the analysis table the rule wrote."""
    from allianceflow.config import load_config
    from allianceflow.stages import arm_counts, derive_study

    workdir = run["dir"]
    study = load_config(workdir / "config.yaml")["studies"]["example"]
    scored = pd.read_parquet(workdir / "data/processed/example/scored.parquet")
    result = derive_study(scored, study)
    pd.testing.assert_frame_equal(
        result.analysis, pd.read_parquet(workdir / "data/processed/example/analysis.parquet")
    )
    sessions = pd.read_parquet(workdir / "data/processed/example/sessions.parquet")
    counts = arm_counts(sessions)
    assert sum(c["sessions"] for c in counts.values()) == len(sessions) == 3374
    assert sum(c["patients"] for c in counts.values()) == 300
    assert arm_counts(sessions.drop(columns="condition")) is None


def test_several_informants_without_a_choice_get_a_config_error(run):
    from allianceflow.config import ConfigError, load_config
    from allianceflow.stages import derive_study

    study = load_config(run["dir"] / "config.yaml")["studies"]["example"]
    scored = pd.read_parquet(run["dir"] / "data/processed/example/scored.parquet")
    both = pd.concat(
        [scored.assign(informant="patient"), scored.assign(informant="therapist")],
        ignore_index=True,
    )
    with pytest.raises(
        ConfigError,
        match=r"several informants per session \(patient, therapist\); .* "
        r"Set `derive: \{informant: <one of patient, therapist>\}`",
    ):
        derive_study(both, study)


def test_two_informants_feed_the_informants_preset(run):
    """Therapist-rated alliance is lined up beside the patient's.

    The derive stage lines both raters up
    by patient and session, and the informants preset fits them side by side.
    """
    import copy

    import numpy as np

    from allianceflow.config import load_config
    from allianceflow.models import fit_model, preset_formula
    from allianceflow.stages import derive_study

    study = copy.deepcopy(load_config(run["dir"] / "config.yaml")["studies"]["example"])
    study["derive"]["informant"] = "patient"
    scored = pd.read_parquet(run["dir"] / "data/processed/example/scored.parquet")
    rng = np.random.default_rng(1)
    therapist = scored.assign(
        informant="therapist", wai_sr_total=scored["wai_sr_total"] + rng.normal(0, 3, len(scored))
    )
    both = pd.concat([scored.assign(informant="patient"), therapist], ignore_index=True)
    analysis = derive_study(both, study).analysis
    assert len(analysis) == len(scored)  # one row per session of the outcome's informant
    pd.testing.assert_series_equal(
        analysis["alliance_rater_patient_within"], analysis["alliance_within"], check_names=False
    )
    lagged = analysis.dropna(subset=["alliance_rater_therapist_within_lag"])
    assert len(lagged) > 2000
    res = fit_model(analysis, preset_formula("informants"), name="informants").to_dict()
    terms = [row["term"] for row in res["fixed"]]
    assert terms[1:5] == [
        "alliance_rater_patient_within_lag",
        "alliance_rater_patient_between",
        "alliance_rater_therapist_within_lag",
        "alliance_rater_therapist_between",
    ]
    assert res["convergence"]["converged"]


def test_prepare_study_in_memory_equals_the_pipeline_files(run):
    from allianceflow.config import load_config
    from allianceflow.stages import prepare_study

    workdir = run["dir"]
    study = load_config(workdir / "config.yaml")["studies"]["example"]
    prepared = prepare_study(study, root=workdir, name="example")
    processed = workdir / "data/processed/example"
    pd.testing.assert_frame_equal(
        prepared.sessions, pd.read_parquet(processed / "sessions.parquet")
    )
    pd.testing.assert_frame_equal(
        prepared.analysis, pd.read_parquet(processed / "analysis.parquet")
    )
    pd.testing.assert_frame_equal(
        prepared.patients, pd.read_parquet(processed / "patients.parquet")
    )
    assert prepared.flow == json.loads((processed / "flow.json").read_text())


def test_expected_response_from_a_reference_sample(run):
    """The expected response is fitted on a reference sample when asked.

    on_track.reference = reference fits the expected treatment response on the reference
    study's scored sessions, not on the study itself.
    """
    import copy

    from allianceflow.config import load_config
    from allianceflow.ontrack import fit_expected_response
    from allianceflow.stages import derive_study

    study = copy.deepcopy(load_config(run["dir"] / "config.yaml")["studies"]["example"])
    study["derive"]["on_track"]["reference"] = "reference"
    scored = pd.read_parquet(run["dir"] / "data/processed/example/scored.parquet")
    reference = scored[scored["condition"] == "tau"]
    expected = fit_expected_response(reference, score="ors_total").to_dict()
    result = derive_study(scored, study, reference=reference)
    assert result.expected_response == expected
    own = derive_study(
        scored, load_config(run["dir"] / "config.yaml")["studies"]["example"]
    ).expected_response
    assert own != expected


def test_pooling_a_preset_model(tmp_path, copy_project):
    # pool.model may name a preset model, not only one written as a formula
    work = copy_project(tmp_path)
    config = yaml.safe_load((work / "config.yaml").read_text(encoding="utf-8"))
    config["models"]["ao_preset"] = {"preset": "alliance_outcome"}
    for study in config["studies"].values():
        study["models"] = ["ao_preset"]
    config["comparisons"] = []
    config["pool"]["model"] = "ao_preset"
    (work / "config.yaml").write_text(
        yaml.safe_dump(config, sort_keys=False, allow_unicode=True), encoding="utf-8"
    )
    proc = _snakemake(work, "results/pooled/meta_analysis.json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = json.loads((work / "results/pooled/models/one_stage.json").read_text())
    assert "(1 + session | patient)" in one["formula"] and "study" in one["formula"]
    meta = json.loads((work / "results/pooled/meta_analysis.json").read_text())
    # every configured study fits the preset, so every one is pooled
    assert meta["k"] == len(config["studies"])
    assert sorted(row["study"] for row in meta["studies"]) == sorted(config["studies"])


def test_a_figure_setting_reruns_only_the_figures(tmp_path, copy_project):
    """A figure setting reruns only the study's figure job.

    Each rule receives only its own settings: after a build, changing
    report.figures.caterpillar_group leaves cleaning, derived variables, model fits and the
    tables as they are, and only the study's figures are redrawn (one job draws them all).
    """
    work = copy_project(tmp_path)
    targets = [
        "results/example2/figures/caterpillar.png",
        "results/example2/figures/within_between.png",
    ]
    built = _snakemake(work, *targets)
    assert built.returncode == 0, built.stderr[-3000:]
    assert _planned_jobs(work, *targets)[0] == {}  # built: nothing to do

    config = yaml.safe_load((work / "config.yaml").read_text(encoding="utf-8"))
    config["studies"]["example2"].setdefault("report", {})["figures"] = {
        "caterpillar_group": "patient"
    }
    (work / "config.yaml").write_text(
        yaml.safe_dump(config, sort_keys=False, allow_unicode=True), encoding="utf-8"
    )
    counts, output = _planned_jobs(work, *targets)
    assert counts == {"plot_figures_example2": 1, "total": 1}
    reasons = output[output.index("Reasons:") :]
    assert "params have changed" in reasons.lower() and "plot_figures_example2" in reasons


#: example3's outputs besides the per-model ones: its two couples figures and the figures,
#: descriptive tables and summary every study with its derived variables gets.
EXAMPLE3_FIGURES = [
    "within_between",
    "trajectories",
    "flow",
    "reliable_change",
    "caterpillar",
    "couple_trajectories",
    "split_outcome",
]


def test_example3_is_built_by_the_full_tier_only(run):
    """The couples study: CI builds it from config.yaml; the quick tier leaves it out.

    Under CI its figures, tables and summary exist, its actor, partner and split CIs hold
    the README's truths, and its manifest lists each output.
    """
    workdir = run["dir"]
    folder = workdir / "results/example3"
    if not FULL:
        assert not folder.exists()
        assert "example3" not in yaml.safe_load((workdir / "config.yaml").read_text())["studies"]
        return
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    models = config["studies"]["example3"]["models"]
    manifest = json.loads((folder / "manifest.json").read_text())
    expected = {
        f"results/example3/figures/{name}.{ext}"
        for name in EXAMPLE3_FIGURES + [f"forest_{m}" for m in models]
        for ext in ("png", "pdf", "svg")
    } | {
        f"results/example3/tables/{name}.{ext}"
        for name in models + ["models", "table1", "intake_correlations", "clinical_significance"]
        for ext in ("csv", "md", "html", "tex", "docx")
    }
    assert expected <= set(manifest["outputs"])
    assert not any("ruptures" in k or "sudden_gains" in k for k in manifest["outputs"])
    from allianceflow.simulate import EXAMPLE3_DESIGN as D

    truths = {
        "couple_alliance_outcome": {
            "alliance_within_lag": D.actor_within,
            "alliance_between": D.actor_between,
            "alliance_partner_within_lag": D.partner_within,
            "alliance_partner_between": D.partner_between,
        },
        "split_alliance": {
            "alliance_split_within_lag": D.split_within,
            "alliance_split_between": D.split_between,
        },
    }
    summary = (folder / "summary.md").read_text(encoding="utf-8")
    for name, wanted in truths.items():
        result = json.loads((folder / f"models/{name}.json").read_text())
        rows = {f["term"]: f for f in result["fixed"]}
        for term, truth in wanted.items():
            assert rows[term]["ci_low"] < truth < rows[term]["ci_high"], (name, term)
        n = result["n_groups"]
        assert n == {"therapist": 20, "system": 150, "patient": 300}
        assert (
            f"The model used {result['n_obs']:,} sessions of 300 clients, 150 couples and 20 "
            "therapists."
        ) in summary
    assert "Partner effect: a session at which the partner's SRS total" in summary
    flow = json.loads((workdir / "data/processed/example3/flow.json").read_text())
    assert flow["systems"]["read"] == flow["systems"]["kept"] == 150
