"""Shared fixtures and the two tiers of the suite.

Figures draw on the Agg backend; paths are relative to the project.

``make test`` runs the quick tier: the end-to-end tests build the small ``.test/config.yaml``
study set, hypothesis draws few examples, and the lme4 and SLURM tests run only where their
tools are installed. With ``CI=true`` (``.ci/run``, ``make test-all``) the suite runs in full:
the end-to-end tests build the real ``config.yaml``, hypothesis uses its thorough ``ci``
profile, and the lme4 and SLURM tests fail, instead of skipping, when R or SLURM is missing.
"""

import os
import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

#: True under CI (``CI=true``, as .ci/run and ``make test-all`` set): run every test in full.
FULL = os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}

# Property tests: a quick default, and a thorough profile for CI. Neither has a deadline:
# one example can take a second on a loaded 2-core machine, and time is not what they test.
settings.register_profile(
    "quick", max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "ci", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if FULL else "quick"))


def require_tool(available: bool, what: str, enable: str) -> None:
    """Skip a test whose external tool is missing, or fail under CI, where it must run.

    *what* names the tool; *enable* says how to install it (one line each).
    """
    if available:
        return
    if FULL:
        pytest.fail(f"{what} is missing, and CI must run this test: {enable}", pytrace=False)
    pytest.skip(f"{what} is not installed; to run this test: {enable}")


@pytest.fixture(scope="session")
def root() -> Path:
    """The project folder."""
    return ROOT


#: What a temporary copy of the project needs to run the pipeline
#: (never results/ or data/processed/).
PROJECT_FILES = ["Snakefile", "config.yaml", "workflow", "data/raw", "requirements.lock"]

#: The small configuration of the quick tier (the workflow catalogue's ``.test/`` convention).
TEST_CONFIG = ROOT / ".test" / "config.yaml"


def _copy_project(root: Path, target: Path, *, small: bool) -> Path:
    for name in PROJECT_FILES:
        source, dest = root / name, target / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, dest)
        else:
            shutil.copy2(source, dest)
    if small:
        shutil.copy2(TEST_CONFIG, target / "config.yaml")
    return target


@pytest.fixture(scope="session")
def copy_project(root):
    """A function that copies the project's pipeline files into a folder and returns it.

    ``copy_project(folder)`` copies ``config.yaml`` as it is; ``copy_project(folder,
    small=True)`` puts ``.test/config.yaml`` in its place.
    """
    return lambda target, small=False: _copy_project(root, Path(target), small=small)


#: The outcome numbers the example study gives derive_tables for the ORS: its direction,
#: the shipped cut-off (25, below it clinical) and the reliable-change value the study sets
#: in config.yaml (5 points; the instrument file leaves it unconfirmed).
EXAMPLE_ORS = {
    "direction": "higher_is_better",
    "rci": 5.0,
    "cutoff": 25.0,
    "clinical_range": "below",
}


def random_session_keys(rng: np.random.Generator, *, text_ids: bool) -> pd.DataFrame:
    """Patient and session keys of a random design: 1-24 patients, 1-11 sessions each.

    Sessions are drawn from 1-15 without repeats and sorted within patient; ids are text
    (``p123``) or integers. For the tests that compare a fast path on sorted tables with the
    path for any order.
    """
    frames = []
    for p in rng.choice(10**5, size=int(rng.integers(1, 25)), replace=False):
        k = int(rng.integers(1, 12))
        sessions = np.sort(rng.choice(np.arange(1, 16), size=k, replace=False))
        pid = f"p{p}" if text_ids else int(p)
        frames.append(pd.DataFrame({"patient": pid, "session": sessions}))
    return pd.concat(frames, ignore_index=True)


def simulate_three_level(seed=7, n_therapists=12, n_patients=120, n_sessions=10):
    """A small three-level study: patients in therapists, crossed raters.

    The patient intercepts and slopes are correlated. For the lme4 comparisons and the
    engine tests.
    """
    rng = np.random.default_rng(seed)
    rows = []
    ther = np.arange(n_patients) % n_therapists
    v = rng.normal(0, 1.5, n_therapists)
    # patient intercepts and slopes correlate (-0.4), so the covariance is well determined
    u0, u1 = rng.multivariate_normal(
        [0.0, 0.0], [[4.5**2, -0.4 * 4.5 * 0.4], [-0.4 * 4.5 * 0.4, 0.4**2]], n_patients
    ).T
    for i in range(n_patients):
        n = rng.integers(3, n_sessions + 1)
        a = 3.6 + rng.normal(0, 0.45) + rng.normal(0, 0.3, n)
        for s in range(1, n + 1):
            rows.append(
                {
                    "therapist": f"T{ther[i]:02d}",
                    "patient": f"P{i % 10}",  # ids reused across therapists
                    "pid": f"T{ther[i]:02d}P{i:03d}",
                    "rater": f"R{rng.integers(0, 6)}",
                    "session": s,
                    "alliance": a[s - 1],
                    "y0": 19 + v[ther[i]] + u0[i] + (0.5 + u1[i]) * (s - 1),
                }
            )
    d = pd.DataFrame(rows)
    d["rater_eff"] = d["rater"].map({f"R{k}": e for k, e in enumerate(rng.normal(0, 1.0, 6))})
    pm = d.groupby("pid")["alliance"].transform("mean")
    d["alliance_within"] = d["alliance"] - pm
    d["alliance_between"] = pm - pm.mean()
    d["alliance_within_lag"] = d.groupby("pid")["alliance_within"].shift(1)
    d["outcome"] = (
        d["y0"]
        + d["rater_eff"]
        + 2.0 * d["alliance_within_lag"].fillna(0)
        + 4.0 * d["alliance_between"]
        + rng.normal(0, 3.5, len(d))
    )
    return d.dropna(subset=["alliance_within_lag"]).reset_index(drop=True)


@pytest.fixture(scope="session")
def three_level_data() -> pd.DataFrame:
    """:func:`simulate_three_level` with its default seed."""
    return simulate_three_level()


def run_study_stages(sessions, block, models, names, out):
    """Score, derive and fit *names* (session-level presets, Satterthwaite df) as the rules do.

    *block* is a study's config block, *models* the config's ``models`` section and *out* a
    folder. Returns the derive stage's files and the fitted models' JSON paths.
    """
    from allianceflow import io, stages
    from allianceflow.score import score_sessions

    io.write_table(
        score_sessions(sessions, block["measures"]["instruments"]), out / "scored.parquet"
    )
    files = {n: out / f"{n}.parquet" for n in ("analysis", "patients", "sudden_gains")}
    stages.derive_stage(
        out / "scored.parquet",
        measures=block["measures"],
        derive=block["derive"],
        expected=out / "expected.json",
        **files,
    )
    paths = []
    for name in names:
        spec = {**models[name], "ddf": "satterthwaite"}
        json = out / f"{name}.json"
        stages.fit_stage(
            files["analysis"],
            spec,
            name=name,
            json=json,
            txt=out / f"{name}.txt",
            patients=files["patients"],
        )
        paths.append(json)
    return files, paths
