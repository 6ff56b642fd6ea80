# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 06 · Ruptures and sudden gains
#
# In this notebook you detect two kinds of *events* in session-by-session data:
# **alliance ruptures** (a marked drop in the patient's alliance rating) and whether they
# are **repaired** (the alliance returns to its earlier level), and **sudden gains** (a
# large, stable improvement in the outcome between two sessions) and sudden losses. You
# will see the rules that define each event, how many events the rules find, and, most
# importantly, how many they find in data that contain **no such events at all**.
#
# **Why it matters clinically.** Ruptures and their repair are thought to be moments where
# therapy can deepen; a meta-analysis found that rupture–repair episodes go with better
# outcomes (Eubanks, Muran & Safran, 2018). Sudden gains often occur early and predict
# lasting improvement (Tang & DeRubeis, 1999; Aderka et al., 2012). Both are detected
# from noisy ratings, so a clinician or researcher must know how often the detection rule
# fires by chance before reading meaning into an event.

# %%
import warnings
from pathlib import Path

import pandas as pd

import allianceflow
from allianceflow import config, figures, models, ruptures, stages, suddengains

# allianceflow.figures selects matplotlib's file-only "Agg" backend; switch back to inline
# figures so they show in the notebook.
# %matplotlib inline
print("allianceflow", allianceflow.__version__)

# %% tags=["parameters"]
PROJECT = Path("..")
STUDY = "example"
# Rupture thresholds (multiples of the patient's own alliance SD) to compare.
THRESHOLDS = [1.0, 1.5, 2.0]

# %% [markdown]
# ## 1. The analysis table
#
# The pipeline's clean, score and derive steps, in memory with `stages.prepare_study` (notebooks
# 01–03). The derive stage already detected ruptures and sudden gains with the study's
# settings; we redo both step by step.

# %%
cfg = config.load_config(PROJECT / "config.yaml")
study = cfg["studies"][STUDY]
# Clean, score and derive in memory: the same functions as the pipeline's stages.
# Scoring warns about sessions with too many blank items (notebook 02): we collect the
# warnings and print each message as a sentence.
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    prepared = stages.prepare_study(study, root=PROJECT, name=STUDY)
for warning in caught:
    print("Note:", warning.message)
analysis = prepared.analysis
ors = stages.instrument_of(study["measures"], study["measures"]["outcome"])
for part in ("ruptures", "sudden_gains"):
    settings = study["derive"][part]
    print(f"{part} settings:", ", ".join(f"{key} = {value}" for key, value in settings.items()))
print("ORS reliable change:", ors.rci)

# %% [markdown]
# ### What the simulation contains
#
# Read the generating model in `data/raw/example/README.md` again. Each patient's latent
# alliance is a smooth trend plus independent session-to-session noise (SD 0.3 item
# points), and the outcome is a straight-line trend plus the lagged alliance effect plus
# independent noise (SD 3.5). There is **no rupture process, no repair process and no
# sudden-gain process**. The one sudden event in the simulation is the outcome's
# **deterioration episode**: 15% of the patients drop 12 ORS points at a session between
# 2 and 5 and stop improving, and in the feedback arm a share of them returns to their
# course two sessions later. Those drops can be detected as sudden *losses*, and those
# returns as sudden *gains*. Every rupture this notebook detects, and many of its sudden
# gains, are therefore what the rules find in noise: the base rate against which real
# data must be judged.

# %% [markdown]
# ## 2. Ruptures
#
# Without observer coding, ruptures are detected from session ratings as a drop
# (Stiles et al., 2004; Eubanks et al., 2018): at session $s$,
#
# $$D_s = A_{s-1} - A_s \ge k \cdot SD_i,$$
#
# the drop from last session reaches $k$ times the patient's own alliance SD (here
# $k = 1.5$; the threshold is a project default, not a published value). The rupture is
# **repaired** when the alliance returns to at least its pre-rupture level within 3
# sessions, and **censored** when the patient's data end before that window closes.
# `ruptures.detect_ruptures` on a four-session toy patient:

# %%
toy = pd.DataFrame({"patient": "a", "session": [1, 2, 3, 4], "alliance": [50.0, 38.0, 44.0, 51.0]})
ruptures.detect_ruptures(toy, method="fixed", threshold=8)

# %% [markdown]
# Now the example study, at several thresholds. `ruptures.rupture_summary` counts per
# patient.

# %%
rows = []
for k in THRESHOLDS:
    detected = ruptures.detect_ruptures(
        analysis,
        alliance="alliance",
        method="patient_sd",
        threshold=k,
        repair_within=study["derive"]["ruptures"]["repair_within"],
    )
    per_patient = ruptures.rupture_summary(detected)
    rows.append(
        {
            "threshold (x patient SD)": k,
            "patients with a rupture": (per_patient["n_ruptures"] > 0).mean(),
            "ruptures": per_patient["n_ruptures"].sum(),
            "repaired": per_patient["n_repaired"].sum(),
            "unrepaired": per_patient["n_unrepaired"].sum(),
            "censored": per_patient["n_censored"].sum(),
        }
    )
pd.DataFrame(rows).round(2)

# %% [markdown]
# At the study's threshold of 1.5 SDs most patients have at least one "rupture", and more
# than half of the uncensored ones are "repaired" (the table above), although the
# simulation contains neither. A rule defined relative to the patient's own SD always
# finds the largest dips of every patient. And "repair" is **regression to the mean**: a
# session that fell unusually low is usually followed by a more typical one.
#
# The figure shows the mean alliance around each detected rupture, by repair status:

# %%
fig = figures.plot_ruptures(analysis, alliance_label="WAI-SR total")

# %% [markdown]
# The V shape of repaired ruptures (Stiles et al., 2004) appears here from noise alone,
# because the events were *selected* for a drop and then for a recovery. Look also at the
# session before the rupture (−1): it is unusually *high*. A large drop is as often a
# fall from a chance peak as into a chance trough, and a patient whose ratings fluctuate
# more does not get more ruptures under a patient-SD rule, only larger ones.
#
# ### Does repair predict outcome?
#
# The `rupture_repair` preset asks whether the ruptures a patient has had so far, and how
# many of them were repaired, predict this session's outcome beyond the within- and
# between-patient alliance.

# %%
rr = models.fit_model(
    analysis, stages.model_formula(cfg["models"]["rupture_repair"]), name="rupture_repair"
)
rr.fixed.round(3)

# %% [markdown]
# **Against the truth**: the outcome depends on the alliance through last session's level
# only (its deterioration episodes are independent of the alliance), so the true
# coefficients of `ruptures_before` and `repairs_before` are **0**, and both
# estimates are close to 0 with wide intervals; the within effect hardly differs from the
# `alliance_outcome` model's in notebook 04 (which at this seed falls below its truth
# 0.167, a chance miss that notebook explains). This is the reassuring half: the model
# does not invent an effect that the alliance level already explains. Both counts use only
# sessions *before* the one whose outcome they predict: a rupture counts as repaired only
# once its repair has happened, so the model never looks ahead. One caution for real data:
# detected ruptures are a noisy proxy for the observer-coded ruptures of the literature
# (Eubanks et al., 2018).

# %% [markdown]
# ## 3. Sudden gains
#
# Tang & DeRubeis (1999) defined a sudden gain between the pregain session $n$ and the
# postgain session $n+1$ by three criteria:
#
# 1. the gain is large in absolute terms: at least a cut-off, here the ORS reliable change
#    value of 5 points;
# 2. it is large relative to the pregain score: at least 25% of it;
# 3. it is large relative to the fluctuation around it: the mean of the three sessions
#    before ($n-2 \ldots n$) and the three after ($n+1 \ldots n+3$) differ by more than
#    $t_{crit}$ times their pooled SD (2.776 with six scores; larger with missing ones,
#    Lutz et al., 2013).
#
# A sudden gain is **reversed** when later scores lose more than half of it. The
# functions follow the R package `suddengains` (Wiedemann et al., 2020).
# `suddengains.check_interval` checks one interval by hand:

# %%
# one row per interval checked: the criteria (1 = met) and whether it is a sudden gain
pd.DataFrame(
    [
        suddengains.check_interval(pre, post, cutoff=ors.rci, direction=ors.direction)
        for pre, post in (([18, 17, 19], [27, 26, 28]), ([18, 24, 17], [27, 21, 28]))
    ],
    index=["stable plateaus", "noisy plateaus"],
).round(2)

# %% [markdown]
# The first pattern is a sudden gain (an 8-point step between stable plateaus). The
# second has an even larger step (10 points), but the surrounding sessions jump about so
# much that criterion 3 fails: that is the criterion that separates a sudden gain from
# noise.
#
# On the example study:

# %%
gains = suddengains.sudden_gains(analysis, score="outcome", direction=ors.direction, cutoff=ors.rci)
counts = suddengains.sudden_gains_by_patient(gains, analysis["patient"].unique())
print(gains["event"].value_counts())
print(
    f"patients with a sudden gain: {(counts['n_sudden_gains'] > 0).mean():.1%};"
    f" gains reversed: {gains.loc[gains['event'] == 'gain', 'reversed'].mean():.0%}"
)
gains.head()

# %%
fig = figures.plot_sudden_gains(analysis, gains, outcome_label="ORS total")

# %% [markdown]
# The printed share of patients with a "sudden gain" is well above zero, and many of
# those gains reverse, in data with no sudden-gain mechanism (apart from the returns of
# repaired deterioration episodes). Criterion 3 keeps the rate down, but with residual
# noise of SD 3.5 ORS points and a steady upward trend, some steps pass all three
# criteria by chance. Tang & DeRubeis (1999) found sudden gains in 39% of their patients,
# far above such a base rate, and they were stable; that contrast, not the count alone,
# is the evidence. To judge events in your own data, compare them with a simulation like
# this one, or with the rate of sudden *losses* (which a treatment should not produce):
# here there are fewer losses than gains, because the steady improvement makes large
# upward steps likelier than large downward ones, and some of the losses are real, the
# onsets of deterioration episodes.

# %% [markdown]
# ## Summary
#
# * `ruptures.detect_ruptures` flags drops in session alliance beyond a threshold and
#   classifies their repair; `ruptures.rupture_summary` counts them per patient.
# * `suddengains.check_interval`, `suddengains.sudden_gains` and
#   `suddengains.sudden_gains_by_patient` apply the Tang & DeRubeis criteria as the R
#   package `suddengains` does.
# * The example study contains no ruptures and no sudden-gain process, yet at the study's
#   settings most patients have a detected rupture, more than half of them "repaired" by
#   regression to the mean, and some patients have a sudden gain. These base rates are
#   the yardstick for real data.
# * The rupture–repair model correctly finds no effect beyond the alliance level.
#
# **References**
#
# Aderka, I. M., Nickerson, A., Bøe, H. J., & Hofmann, S. G. (2012). Sudden gains during
# psychological treatments of anxiety and depression: A meta-analysis. *Journal of
# Consulting and Clinical Psychology, 80*(1), 93–101. https://doi.org/10.1037/a0026455
# Eubanks, C. F., Muran, J. C., & Safran, J. D. (2018). Alliance rupture repair: A
# meta-analysis. *Psychotherapy, 55*(4), 508–519. https://doi.org/10.1037/pst0000185
# Lutz, W., Ehrlich, T., Rubel, J., Hallwachs, N., Röttger, M.-A., Jorasz, C., Mocanu, S.,
# Vocks, S., Schulte, D., & Tschitsaz-Stucki, A. (2013). The ups and downs of
# psychotherapy: Sudden gains and sudden losses identified with session reports.
# *Psychotherapy Research, 23*(1), 14–24. https://doi.org/10.1080/10503307.2012.693837
# Stiles, W. B., Glick, M. J., Osatuke, K., Hardy, G. E., Shapiro, D. A., Agnew-Davies, R.,
# Rees, A., & Barkham, M. (2004). Patterns of alliance development and the rupture–repair
# hypothesis: Are productive relationships U-shaped or V-shaped? *Journal of Counseling
# Psychology, 51*(1), 81–92. https://doi.org/10.1037/0022-0167.51.1.81
# Tang, T. Z., & DeRubeis, R. J. (1999). Sudden gains and critical sessions in
# cognitive–behavioral therapy for depression. *Journal of Consulting and Clinical
# Psychology, 67*(6), 894–904. https://doi.org/10.1037/0022-006X.67.6.894
# Wiedemann, M., Thew, G. R., Stott, R., & Ehlers, A. (2020). suddengains: An R package to
# identify sudden gains in longitudinal data. *PLOS ONE, 15*(3), e0230276.
# https://doi.org/10.1371/journal.pone.0230276
#
# ## Exercise
#
# 1. Rerun the sudden-gain detection with `crit3=False`. How many more gains are found,
#    and what share of them reverse? What does this tell you about studies that use only
#    criteria 1 and 2?
# 2. Use `method="fixed"` in `ruptures.detect_ruptures` with a threshold of 6 WAI-SR
#    points (half an item point on every item). How do the counts compare with the
#    patient-SD rule, and which patients does each rule favour?
