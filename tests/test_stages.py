"""The stage layer's registry of study figures and the settings each stage receives."""

from pathlib import Path

import pytest

from allianceflow import stages
from allianceflow.config import load_config


@pytest.fixture(scope="module")
def studies(root):
    return load_config(root / "config.yaml")["studies"]


@pytest.fixture(scope="module")
def models(root):
    return load_config(root / "config.yaml")["models"]


def test_every_figure_is_drawn_by_the_study_figure_job_with_a_caption(root):
    rules = (root / "workflow" / "rules" / "figures.smk").read_text(encoding="utf-8")
    assert 'f"plot_figures_{study}"' in rules and "steps=get_figure_steps(study)" in rules
    captions = {p.stem for p in (root / "workflow" / "report").glob("*.rst")}
    for name in stages.FIGURES:
        assert name in captions or f"{name}_figure" in captions, name
    for name in stages.DESCRIPTIVE_TABLES:
        assert name in captions or f"{name}_table" in captions, name


def test_each_figure_gets_exactly_the_files_and_settings_its_stage_takes(studies):
    """The planned inputs and settings of every figure are the keywords its stage requires.

    A figure stage's keywords are its input files, its settings and ``outputs``; a planned
    step that missed one would fail in the job, one too many would be an unused input that
    reruns the figure job for nothing.
    """
    import inspect

    block = studies["example"]
    for name, figure in stages.FIGURES.items():
        stem = f"forest_{block['models'][0]}" if name == "forest" else name
        params = inspect.signature(figure.stage).parameters
        required = {k for k, p in params.items() if p.default is inspect.Parameter.empty}
        given = set(stages.figure_inputs(stem, "example", block)) | set(figure.settings)
        assert required - {"outputs"} <= given <= set(params) - {"outputs"}, name


def test_the_figure_and_table_jobs_write_every_file_of_their_study_once(studies, models):
    block = studies["example2"]
    figures = stages.figure_steps("example2", block, models)
    tables = stages.table_steps("example2", block, models)
    stems = [Path(p).stem for p in stages.step_files(figures, outputs=True)[::3]]
    assert stems == stages.study_figures(block) + [
        f"simple_slopes_{m}" for m in stages.moderated_models(block, models)
    ]
    assert stems[-1] == "simple_slopes_alliance_outcome_modality"
    written = stages.step_files(tables, outputs=True)
    assert len(written) == len(set(written)) == 5 * len(tables)
    assert [Path(p).stem for p in written[::5]] == [
        "table1",
        "intake_correlations",
        "clinical_significance",
        "sudden_gains",
        "ruptures",
        "alliance_outcome",
        "alliance_outcome_modality",
        "models",
        "binary_effects",
        "simple_slopes_alliance_outcome_modality",
    ]
    numbers = [step["number"] for step in tables]
    assert numbers == [1, 3, 4, 5, 6, 7, 8, 9, 10, 11]  # Table 2 is reliability, its own job
    assert stages.step_files(tables, outputs=False) == [
        "data/processed/example2/analysis.parquet",
        "data/processed/example2/patients.parquet",
        "data/processed/example2/sudden_gains.csv",
        "results/example2/models/alliance_outcome.json",
        "results/example2/models/alliance_outcome_modality.json",
    ]


def test_step_files_separates_what_a_step_reads_from_what_it_writes():
    steps = [
        {
            "stage": "figure",
            "name": "flow",
            "inputs": {
                "flow": "data/processed/s/flow.json",
                "models": ["results/s/models/a.json", "results/s/models/b.json"],
            },
            "settings": {"labels": {"x": "y.z"}, "outcome": "phq.9"},
            "outputs": ["results/s/figures/flow.png", "results/s/figures/flow.pdf"],
        },
        {
            "stage": "model_table",
            "model_json": "results/s/models/a.json",
            "alliance": "wai.sr",  # a column named with a dot is a setting, not a file
            "csv": "results/s/tables/a.csv",
            "md": "results/s/tables/a.md",
        },
    ]
    assert stages.step_files(steps, outputs=False) == [
        "data/processed/s/flow.json",
        "results/s/models/a.json",
        "results/s/models/b.json",
    ]
    assert stages.step_files(steps, outputs=True) == [
        "results/s/figures/flow.png",
        "results/s/figures/flow.pdf",
        "results/s/tables/a.csv",
        "results/s/tables/a.md",
    ]


def test_an_unknown_step_is_named_with_the_known_stages():
    with pytest.raises(KeyError, match=r"`stage` must be one of 'figure', .*; got 'violin'\."):
        stages.outputs_stage([{"stage": "violin"}])


def test_figure_settings_are_only_what_each_figure_reads(studies):
    from allianceflow.labels import Labels

    example = studies["example"]
    labels = Labels.from_config(example).to_dict()
    assert labels["arms"]["tau"] == "treatment as usual"
    assert stages.figure_settings("caterpillar", example) == {
        "caterpillar_group": "therapist",
        "labels": labels,
    }
    assert stages.figure_settings("forest", example) == {"labels": labels}
    assert stages.figure_settings("feedback", example) == {"min_cell": 5, "labels": labels}
    assert stages.figure_settings("trajectories", example) == {
        "patient_lines": True,
        "min_cell": 5,
        "labels": labels,
    }
    # the study sets the ORS reliable change value (5); the cut-off (25) is the ORS file's
    assert stages.figure_settings("reliable_change", example) == {
        "rci": 5.0,
        "cutoff": 25.0,
        "direction": "higher_is_better",
        "labels": labels,
    }
    settings = stages.figure_settings("reliable_change", studies["example2"])
    assert {k: settings[k] for k in ("rci", "cutoff", "direction")} == {
        "rci": 6.0,
        "cutoff": 10.0,
        "direction": "lower_is_better",
    }
    assert settings["labels"]["variables"]["phq9_total"] == "PHQ-9 total"


def test_a_study_has_the_figures_whose_variables_and_columns_it_has(studies):
    every = list(stages.FIGURES)
    forests = [f"forest_{m}" for m in studies["example"]["models"]]
    couples = ["couple_trajectories", "split_outcome"]  # studies with a `system` column only
    individual = [f for f in every[3:] if f not in couples]
    assert stages.study_figures(studies["example"]) == every[:2] + forests + individual
    example3 = stages.study_figures(studies["example3"])
    assert example3[-2:] == couples and "feedback" not in example3 and "ruptures" not in example3
    study = {
        **studies["example2"],
        "derive": {
            **studies["example2"]["derive"],
            "on_track": {"enabled": False},
            "ruptures": {"enabled": False},
        },
        "report": {"figures": {"caterpillar_group": "site"}},
    }
    assert stages.study_figures(study) == [
        "within_between",
        "trajectories",
        *[f"forest_{m}" for m in studies["example2"]["models"]],
        "flow",
        "sudden_gains",
        "reliable_change",
    ]


def test_an_unknown_figure_is_named_with_the_known_ones(studies):
    with pytest.raises(KeyError, match="`name` must be one of 'within_between', 'trajectories'"):
        stages.figure_settings("violin", studies["example"])


def test_clean_settings_lays_the_sections_side_by_side(studies):
    study = studies["example"]
    settings = stages.clean_settings(
        read=study["read"], clean=study["clean"], instruments=study["measures"]["instruments"]
    )
    assert settings["raw"] == "data/raw/example/sessions_export.csv"
    assert settings["rules"]["session_gap"] == "flag"
    assert settings["instruments"] == {"wai_sr": {"max_missing": 1}, "ors": {"rci": 5}}
    assert "hash_ids" not in settings and "alliance" not in settings


_RUN_STEP_GC = """
import gc, weakref
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import allianceflow.stages as stages
from allianceflow.stages import run_step

tuned = []
tune = stages.tune_allocator
stages.tune_allocator = lambda: tuned.append(tune())
fig = plt.figure()
alive = weakref.ref(fig)
with run_step(None):
    pass
plt.close(fig)
del fig
gc.collect()
print(gc.get_freeze_count() == 0, alive() is None, tuned)
with run_step(None, own_process=True):
    pass
print(gc.get_freeze_count() > 0, tuned)
with run_step(None, own_process=True, reuse_memory=True):
    pass
print(tuned)
"""


def test_only_a_job_process_hands_its_objects_to_the_permanent_generation():
    """run_step freezes the garbage collector only with own_process, tunes malloc on request.

    Without own_process (a notebook) a figure closed after a step is still collected and
    the allocator is left alone; with it (the Snakemake scripts) the allocator is tuned only
    with reuse_memory, and glibc accepts both settings (elsewhere nothing is set).
    """
    import platform
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", _RUN_STEP_GC], capture_output=True, text=True, check=True
    )
    glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert out.stdout.splitlines() == ["True True []", "True []", f"[{glibc}]"]


_MALLOC = """
import ctypes, platform, sys

MiB = 1 << 20
if not (sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"):
    from allianceflow.stages import tune_allocator
    print("other", tune_allocator())
    raise SystemExit

class Info(ctypes.Structure):  # struct mallinfo2 of <malloc.h> (glibc 2.33 and later)
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
if not hasattr(libc, "mallinfo2"):
    from allianceflow.stages import tune_allocator
    print("old glibc", tune_allocator())
    raise SystemExit
libc.mallinfo2.restype = Info
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]

def served(size):
    # Whether a fresh block got a mapping of its own, and whether the heap, which grew for
    # it, still holds it once it is freed (within a MiB: the heap grows by whole pages, less
    # what its top had free).
    before = libc.mallinfo2()
    block = libc.malloc(size)
    during = libc.mallinfo2()
    libc.free(block)
    after = libc.mallinfo2()
    return during.hblkhd - before.hblkhd >= size, after.arena - before.arena >= size - MiB

print("default", *served(30 * MiB))
from allianceflow.stages import tune_allocator
print("tuned", tune_allocator(), *served(30 * MiB), *served(48 * MiB))
"""


def test_the_tuned_allocator_keeps_blocks_below_32_mib_on_the_heap_after_they_are_freed():
    """The C library's own counters (glibc's mallinfo2) show what tune_allocator changes.

    By default a 30 MiB block gets a mapping of its own, returned when it is freed; tuned,
    it comes from the heap, which keeps it once freed, and a 48 MiB block (above the
    32 MiB threshold) is still mapped on its own. Elsewhere than glibc nothing is set; a
    glibc older than 2.33 has no mallinfo2, and only the settings' acceptance is checked.
    The allocator's environment variables are removed, as they would fix the thresholds.
    """
    import os
    import platform
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES"))}
    out = subprocess.run(
        [sys.executable, "-c", _MALLOC], capture_output=True, text=True, check=True, env=env
    ).stdout.splitlines()
    if not (sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"):
        assert out == ["other False"]
    elif out[0].startswith("old glibc"):
        assert out == ["old glibc True"]
    else:
        assert out == ["default True False", "tuned True False True True False"]


def test_every_snakemake_script_runs_its_step_as_its_own_process(root):
    """Each adapter in workflow/scripts wraps its work in run_step(..., own_process=True).

    Only clean and derive, measured to gain from it, let the allocator reuse freed memory.
    """
    scripts = sorted((root / "workflow" / "scripts").glob("*.py"))
    assert scripts
    reusing = []
    for script in scripts:
        text = script.read_text(encoding="utf-8")
        plain = text.count("with run_step(snakemake.log[0], own_process=True):")
        reuse = text.count("with run_step(snakemake.log[0], own_process=True, reuse_memory=True):")
        assert plain + reuse == 1, script.name
        if reuse:
            reusing.append(script.name)
    assert reusing == ["clean_sessions.py", "derive_variables.py"]


def test_clean_score_and_reliability_receive_the_study_s_item_key():
    """A study's item key reaches every stage that reads items, the clinical numbers none.

    The item key: response range, reverse items, subscale items, "does not apply". The score
    job scored the shipped WAI-SR when a study keyed item 3 in reverse (its
    overrides were dropped on the way): 39 instead of 37 on this patient's first session.
    """
    import warnings

    from allianceflow.instruments import load_instrument
    from allianceflow.score import score_sessions
    from allianceflow.simulate import simulate_study

    study = {
        "wai_sr": {
            "reverse": [3],
            "subscales": {"task": [1, 2, 10]},
            "response": {"min": 1, "max": 5},
            "max_missing": 2,
        },
        "ors": {"not_applicable": 99, "rci": 5, "cutoff": 25},
    }
    for keys in (stages.CLEAN_OVERRIDES, stages.SCORE_OVERRIDES, stages.RELIABILITY_OVERRIDES):
        received = stages.instrument_overrides(study, keys)
        for name, spec in study.items():
            full, job = (
                load_instrument(name, overrides=spec),
                load_instrument(name, overrides=received[name]),
            )
            assert (job.response_min, job.response_max) == (full.response_min, full.response_max)
            assert job.reverse == full.reverse and job.not_applicable == full.not_applicable
            assert {s: job.scale_items(s) for s in job.subscales} == {
                s: full.scale_items(s) for s in full.subscales
            }
        assert "rci" not in received["ors"] and "cutoff" not in received["ors"]
    assert stages.instrument_overrides(study, stages.RELIABILITY_OVERRIDES)["wai_sr"] == {
        "reverse": [3],
        "subscales": {"task": [1, 2, 10]},
        "response": {"min": 1, "max": 5},
    }
    sessions = simulate_study(seed=1, n_therapists=3, n_patients=20)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # rows with too many missing items
        full = score_sessions(sessions, study)["wai_sr_total"]
        job = score_sessions(sessions, stages.instrument_overrides(study, stages.SCORE_OVERRIDES))[
            "wai_sr_total"
        ]
        shipped = score_sessions(sessions, ["wai_sr", "ors"])["wai_sr_total"]
    assert job.equals(full)
    assert (float(full.iloc[0]), float(shipped.iloc[0])) == (37.0, 39.0)
