r"""Do the example pipeline's models recover the simulator's truths? Bias or chance (issues 19, 22).

For each of ``--reps`` replications, the designs of the two embedded example studies are
simulated with every mechanism of :func:`allianceflow.simulate.simulate_study` switched on
(alliance-dependent early endings, deterioration episodes that feedback repairs, and for
the second example the session modality that weakens the within-patient link by video):

* ``example``: :data:`~allianceflow.simulate.EXAMPLE_DESIGN` (300 patients, WAI-SR + ORS);
* ``example2``: :data:`~allianceflow.simulate.EXAMPLE2_DESIGN` with
  :data:`~allianceflow.simulate.EXAMPLE2_MODALITY` (120 patients, SRS + PHQ-9).

Seeds are derived from one base seed (``numpy.random.SeedSequence(base).generate_state``).
Each simulated table goes through the package's score and derive functions with the
study's blocks of ``config.yaml`` (:func:`allianceflow.score.score_sessions`,
:func:`allianceflow.stages.derive_study`); the clean stage is skipped because the
simulated table is already canonical (at the configured seed the path through the export
and :func:`allianceflow.stages.prepare_study` gives the same within-patient estimate to the
last digit).
The derive steps no model here reads (sudden gains, ruptures; for example2 also on-track
status, reliable change and the endings, which example2 infers from the export date) are
switched off to save time. The models are the configured ones
(:func:`allianceflow.stages.model_formula`, REML for linear models, the patient-level
presets as binomial GLMMs by the Laplace approximation); linear models use containment
denominator df instead of the pipeline's Kenward–Roger df to keep the run affordable
(with 1,000–3,000 sessions both give t quantiles within 0.1% of the normal one).

Reported per truth (Morris, White & Crowther 2019, Table 6): mean estimate, bias and its
Monte Carlo SE (empirical SE / sqrt(n)), empirical SE (with MCSE
:math:`\widehat{SE}_{emp}/\sqrt{2(n-1)}`), model SE (root mean of the squared model SEs,
with MCSE :math:`\sqrt{\widehat{Var}(SE^2)/(4 n\, \widehat{SE}_{mod}^2)}`) and the coverage
of the model's 95% CI with MCSE :math:`\sqrt{p(1-p)/n}`.

Truths, per point of the alliance *total* score the pipeline uses (WAI-SR: sum of 12
items; SRS: sum of 4), so an item-mean truth is divided by 12 or 4:

* within- and between-patient alliance effects (``alliance_outcome``): ``within_effect``
  and ``between_effect``; in example2 the unmoderated within truth is the
  modality-weighted mean of the per-session effects (modality is drawn independently of
  the alliance, so each modality's lagged alliance has the same variance);
* modality simple slopes (``alliance_outcome_modality``): each level's within effect, and
  the interaction (video minus in person);
* early alliance -> early ending (``dropout``): ``dropout_alliance_effect``;
* feedback -> reliable deterioration (``deterioration`` in all patients,
  ``deterioration_not_on_track`` in the patients ever flagged): the simulator's
  mechanism truth is the log odds ratio of a *lasting episode*,
  ``feedback_deterioration_effect``; measured reliable deterioration (first to last ORS
  total) is a different event, so its model's population value is also computed here by
  Monte Carlo: the same derive and the same fixed effects fitted by logistic regression to
  one large simulated study (``--truth-patients`` patients, a seed of its own).

Run:  python benchmarks/example_truths.py --reps 100 --workers 2
Output: benchmarks/results/example_truths.txt (and printed).

References
----------
Morris, T. P., White, I. R., & Crowther, M. J. (2019). Using simulation studies to
evaluate statistical methods. *Statistics in Medicine*, 38(11), 2074–2102.
https://doi.org/10.1002/sim.8086
"""

from __future__ import annotations

import argparse
import copy
import math
import platform
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import statsmodels.formula.api as smf

from allianceflow import simulate as sim
from allianceflow import stages
from allianceflow.config import load_config
from allianceflow.models import fit_model
from allianceflow.models.moderation import fit_moderated
from allianceflow.models.presets import preset_family, preset_rows
from allianceflow.score import score_sessions

ROOT = Path(__file__).resolve().parents[1]
BASE_SEED = 20261125
DDF = "containment"
PATIENT_MODELS = ("dropout", "deterioration", "deterioration_not_on_track")


def _config():
    return load_config(ROOT / "config.yaml")


def _derive(frame: pd.DataFrame, study: dict, *, keep: tuple[str, ...]):
    """Score and derive as the pipeline does, with the derive steps outside *keep* off."""
    study = copy.deepcopy(study)
    derive = study.setdefault("derive", {})
    for step in ("sudden_gains", "ruptures", "on_track", "reliable_change"):
        if step not in keep:
            derive[step] = {**(derive.get(step) or {}), "enabled": False}
    if "endings" not in keep:
        derive.pop("endings", None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scored = score_sessions(frame, study["measures"]["instruments"])
        return stages.derive_study(scored, study)


def _row(record: dict, term: str) -> dict:
    for row in record["fixed"]:
        if row["term"] == term:
            return row
    raise KeyError(term)


def _keep(out: dict, key: str, est: float, se: float, lo: float, hi: float) -> None:
    out[key + ":est"], out[key + ":se"], out[key + ":lo"], out[key + ":hi"] = est, se, lo, hi


def _patient_fit(patients: pd.DataFrame, spec: dict) -> dict:
    data = patients
    for column, value in preset_rows(spec["preset"], **spec.get("options", {})).items():
        data = data[data[column] == value]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fit_model(
            data, stages.model_formula(spec), family=preset_family(spec["preset"]), min_levels=5
        ).to_dict()


def one_example(seed: int) -> dict:
    """One replication of the first example's design: four models."""
    cfg = _config()
    study, models = cfg["studies"]["example"], cfg["models"]
    frame = sim.simulate_study(sim.EXAMPLE_DESIGN, seed=int(seed))
    derived = _derive(frame, study, keep=("on_track", "reliable_change", "endings"))
    out: dict = {"seed": int(seed)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rec = fit_model(
            derived.analysis, models["alliance_outcome"]["formula"], reml=True, ddf=DDF
        ).to_dict()
    out["alliance_outcome:converged"] = rec["convergence"]["converged"]
    for term in ("alliance_within_lag", "alliance_between"):
        r = _row(rec, term)
        _keep(out, f"alliance_outcome:{term}", r["estimate"], r["se"], r["ci_low"], r["ci_high"])
    for name, term in (
        ("dropout", "early_alliance"),
        ("deterioration", "feedback"),
        ("deterioration_not_on_track", "feedback"),
    ):
        rec = _patient_fit(derived.patients, models[name])
        out[f"{name}:converged"] = rec["convergence"]["converged"]
        r = _row(rec, term)
        _keep(out, f"{name}:{term}", r["estimate"], r["se"], r["ci_low"], r["ci_high"])
    return out


def one_example2(seed: int) -> dict:
    """One replication of the second example's design: plain and modality-moderated models."""
    cfg = _config()
    study, models = cfg["studies"]["example2"], cfg["models"]
    frame = sim.simulate_study(
        sim.EXAMPLE2_DESIGN, seed=int(seed), instruments="srs+phq9", modality=sim.EXAMPLE2_MODALITY
    )
    derived = _derive(frame, study, keep=())
    out: dict = {"seed": int(seed)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rec = fit_model(
            derived.analysis, models["alliance_outcome"]["formula"], reml=True, ddf=DDF
        ).to_dict()
        spec = models["alliance_outcome_modality"]
        _, mod = fit_moderated(
            derived.analysis, spec["preset"], spec["options"], reml=True, ddf=DDF
        )
    out["alliance_outcome:converged"] = rec["convergence"]["converged"]
    out["alliance_outcome_modality:converged"] = mod["convergence"]["converged"]
    for term in ("alliance_within_lag", "alliance_between"):
        r = _row(rec, term)
        _keep(out, f"alliance_outcome:{term}", r["estimate"], r["se"], r["ci_low"], r["ci_high"])
    for s in mod["simple_slopes"]:
        _keep(out, f"slope:{s['level']}", s["slope"], s["se"], s["ci_low"], s["ci_high"])
    r = _row(mod, "alliance_within_lag:modality_video")
    _keep(out, "interaction:video", r["estimate"], r["se"], r["ci_low"], r["ci_high"])
    return out


def example2_truths() -> dict[str, float]:
    """Truths of example2's models per SRS total point (the item-mean truth / 4)."""
    d, m = sim.EXAMPLE2_DESIGN, sim.EXAMPLE2_MODALITY
    effect = {lv: m["within_effect"].get(lv, d.within_effect) for lv in m["shares"]}
    mixed = sum(share * effect[lv] for lv, share in m["shares"].items())
    return {
        "alliance_outcome:alliance_within_lag": mixed / 4,
        "alliance_outcome:alliance_between": d.between_effect / 4,
        **{f"slope:{lv}": e / 4 for lv, e in effect.items()},
        "interaction:video": (effect["video"] - effect["in_person"]) / 4,
    }


def measured_deterioration_truths(n_patients: int, seed: int) -> dict[str, tuple[float, float]]:
    """Population log odds ratios of *measured* reliable deterioration, by Monte Carlo.

    One study of *n_patients* patients of :data:`EXAMPLE_DESIGN` (10 per therapist, as in
    the example), derived as the pipeline derives it (on-track status fitted on the study
    itself), and ``deteriorated ~ feedback + outcome_baseline`` fitted by logistic
    regression in all patients and in those ever flagged not on track. Returns
    ``{model: (log odds ratio, its SE)}``; the SE is the Monte Carlo error. The therapist
    random intercept of the pipeline's model is left out: the example has no therapist
    effect on change, so its variance is near 0 and the conditional and marginal odds
    ratios agree.
    """
    cfg = _config()
    frame = sim.simulate_study(
        sim.EXAMPLE_DESIGN, seed=seed, n_patients=n_patients, n_therapists=n_patients // 10
    )
    patients = _derive(
        frame, cfg["studies"]["example"], keep=("on_track", "reliable_change")
    ).patients
    out = {}
    for name, rows in (("deterioration", patients), ("deterioration_not_on_track", None)):
        data = rows if rows is not None else patients[patients["off_track"] == 1]
        data = data.dropna(subset=["deteriorated", "feedback", "outcome_baseline"])
        fit = smf.logit("deteriorated ~ feedback + outcome_baseline", data).fit(disp=0)
        out[name] = (float(fit.params["feedback"]), float(fit.bse["feedback"]))
    return out


def performance(df: pd.DataFrame, key: str, truth: float) -> dict:
    """Morris, White & Crowther (2019) performance measures with Monte Carlo SEs."""
    est = df[key + ":est"].to_numpy(float)
    se = df[key + ":se"].to_numpy(float)
    ok = np.isfinite(est) & np.isfinite(se)
    est, se = est[ok], se[ok]
    lo, hi = df[key + ":lo"].to_numpy(float)[ok], df[key + ":hi"].to_numpy(float)[ok]
    n = len(est)
    emp = est.std(ddof=1)
    mod = math.sqrt(np.mean(se**2))
    cover = float(np.mean((lo <= truth) & (truth <= hi)))
    return {
        "n": n,
        "truth": truth,
        "mean": est.mean(),
        "bias": est.mean() - truth,
        "bias_mcse": emp / math.sqrt(n),
        "emp_se": emp,
        "emp_se_mcse": emp / math.sqrt(2 * (n - 1)),
        "mod_se": mod,
        "mod_se_mcse": math.sqrt(np.var(se**2, ddof=1) / (4 * n * mod**2)),
        "cover": cover,
        "cover_mcse": math.sqrt(cover * (1 - cover) / n),
    }


def _table(rows: list[tuple[str, dict]]) -> list[str]:
    head = (
        f"{'truth of':<46}{'true':>9}{'mean est':>10}{'bias (MCSE)':>19}"
        f"{'emp SE (MCSE)':>19}{'model SE (MCSE)':>19}{'cover95 (MCSE)':>17}"
    )
    lines = [head]
    for label, p in rows:
        lines.append(
            f"{label:<46}{p['truth']:>9.4f}{p['mean']:>10.4f}"
            f"{p['bias']:>10.4f} ({p['bias_mcse']:.4f})"
            f"{p['emp_se']:>10.4f} ({p['emp_se_mcse']:.4f})"
            f"{p['mod_se']:>10.4f} ({p['mod_se_mcse']:.4f})"
            f"{p['cover']:>9.3f} ({p['cover_mcse']:.3f})"
        )
    return lines


def summarise(ex: pd.DataFrame, ex2: pd.DataFrame, measured: dict, args, wall: float) -> str:
    d = sim.EXAMPLE_DESIGN
    t2 = example2_truths()
    conv = {
        "example": {
            c.split(":")[0]: int(ex[c].sum()) for c in ex.columns if c.endswith(":converged")
        },
        "example2": {
            c.split(":")[0]: int(ex2[c].sum()) for c in ex2.columns if c.endswith(":converged")
        },
    }
    rows1 = [
        (
            "alliance_outcome: within (2.0/12)",
            performance(ex, "alliance_outcome:alliance_within_lag", d.within_effect / 12),
        ),
        (
            "alliance_outcome: between (4.0/12)",
            performance(ex, "alliance_outcome:alliance_between", d.between_effect / 12),
        ),
        (
            "dropout: early alliance (-1.0/12)",
            performance(ex, "dropout:early_alliance", d.dropout_alliance_effect / 12),
        ),
    ]
    for name in ("deterioration", "deterioration_not_on_track"):
        rows1.append(
            (
                f"{name}: feedback, lasting-episode truth",
                performance(ex, f"{name}:feedback", d.feedback_deterioration_effect),
            )
        )
        rows1.append(
            (
                f"{name}: feedback, measured-event truth",
                performance(ex, f"{name}:feedback", measured[name][0]),
            )
        )
    rows2 = [
        ("alliance_outcome: within (mixed -0.82/4)", t2["alliance_outcome:alliance_within_lag"]),
        ("alliance_outcome: between (-1.5/4)", t2["alliance_outcome:alliance_between"]),
        ("modality slope: in person (-1.0/4)", t2["slope:in_person"]),
        ("modality slope: video (-0.4/4)", t2["slope:video"]),
        ("modality slope: telephone (-1.0/4)", t2["slope:telephone"]),
        ("interaction: video - in person (0.6/4)", t2["interaction:video"]),
    ]
    keys2 = [
        "alliance_outcome:alliance_within_lag",
        "alliance_outcome:alliance_between",
        "slope:in_person",
        "slope:video",
        "slope:telephone",
        "interaction:video",
    ]
    lines = [
        "Recovery of the simulator's truths by the example pipeline's models (issues 19, 22)",
        f"replications: {len(ex)} (example), {len(ex2)} (example2); seeds: "
        f"SeedSequence({args.base_seed}).generate_state({args.reps}) (example), the next "
        f"{args.reps} states (example2)",
        "estimates per point of the alliance total score (WAI-SR sum of 12 items; SRS sum of 4);"
        " linear models REML with containment df, patient-level models binomial GLMMs (Laplace)",
        f"converged fits: {conv}",
        "",
        "example: EXAMPLE_DESIGN (300 patients of 30 therapists, 16 sessions, WAI-SR + ORS)",
        *_table(rows1),
        "",
        f"measured-event truths (logistic regression on one simulated study of "
        f"{args.truth_patients} patients, seed {args.truth_seed}; Monte Carlo SE in brackets):",
        *(f"  {name}: log OR {v:.4f} ({se:.4f})" for name, (v, se) in measured.items()),
        "",
        "example2: EXAMPLE2_DESIGN + EXAMPLE2_MODALITY (120 patients of 12 counsellors, "
        "12 sessions, SRS + PHQ-9)",
        *_table([(label, performance(ex2, k, truth)) for (label, truth), k in zip(rows2, keys2)]),
        "",
        f"wall {wall:.0f} s on {args.workers} worker(s); python {platform.python_version()}",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=100)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--base-seed", type=int, default=BASE_SEED)
    ap.add_argument("--truth-patients", type=int, default=20_000)
    ap.add_argument("--truth-seed", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "example_truths.txt"))
    a = ap.parse_args(argv)
    seeds = np.random.SeedSequence(a.base_seed).generate_state(2 * a.reps)
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=a.workers) as ex:
        rows1 = list(ex.map(one_example, seeds[: a.reps], chunksize=5))
        rows2 = list(ex.map(one_example2, seeds[a.reps :], chunksize=5))
    measured = measured_deterioration_truths(a.truth_patients, a.truth_seed)
    text = summarise(
        pd.DataFrame(rows1), pd.DataFrame(rows2), measured, a, time.perf_counter() - t0
    )
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(text)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
