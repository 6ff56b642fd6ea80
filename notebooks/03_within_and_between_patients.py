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
# # 03 · Within and between patients
#
# In this notebook you split each patient's alliance into two parts: the patient's
# **usual level** compared with other patients (the *between-patient* part) and **this
# session's deviation** from the patient's own usual level (the *within-patient* part).
# You will lag the within part so that last session's alliance predicts this session's
# outcome, see what a missed session does to a lag, and look at the two relations side by
# side.
#
# **Why it matters clinically.** "Patients with better alliances improve more" (Flückiger
# et al., 2018) can mean two different things. *Between* patients: people who form good
# alliances easily (less impaired, more securely attached) also do better, whatever the
# therapist does. *Within* patients: when *this* patient's alliance is better than usual,
# *this* patient improves more next week. Only the second speaks to whether working on the
# alliance helps a given patient (Zilcha-Mano, 2017). Mixing the two in one coefficient
# answers neither question (Curran & Bauer, 2011; Falkenström et al., 2017).

# %%
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

import allianceflow
from allianceflow import config, derive, figures, io, stages

# allianceflow.figures selects matplotlib's file-only "Agg" backend; switch back to inline
# figures so they show in the notebook.
# %matplotlib inline
print("allianceflow", allianceflow.__version__)

# %% tags=["parameters"]
PROJECT = Path("..")
STUDY = "example"

# %% [markdown]
# ## 1. Clean and score (the pipeline's first two stages)
#
# Notebooks 01 and 02 did this step by step. Here we call the same **stage functions**
# that Snakemake runs, writing into a temporary folder instead of `data/processed/`.
# (The notes about unscorable rows are explained in notebook 02.)

# %%
cfg = config.load_config(PROJECT / "config.yaml")
study = cfg["studies"][STUDY]
work = Path(tempfile.mkdtemp(prefix="allianceflow_"))
measures = study["measures"]
stages.clean_stage(
    PROJECT / study["read"]["raw"],
    read=study["read"],
    privacy=study["privacy"],
    clean=study["clean"],
    instruments=measures["instruments"],
    sessions=work / "sessions.parquet",
    exclusions=work / "exclusions.csv",
    flow=work / "flow.json",
    name=STUDY,
)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    stages.score_stage(
        work / "sessions.parquet",
        instruments=measures["instruments"],
        scored=work / "scored.parquet",
    )
for warning in caught:
    print("Note:", warning.message)
scored = io.read_table(work / "scored.parquet")
print(scored.shape, "alliance:", measures["alliance"], " outcome:", measures["outcome"])

# %% [markdown]
# ## 2. Person-mean centring on a toy example
#
# For patient *i* at session *t*, with $\bar x_i$ the patient's mean over their observed
# sessions and $\bar x$ the mean of the patient means (each patient counts once, whatever
# their number of sessions):
#
# $$x^{B}_i = \bar x_i - \bar x \quad\text{(between)}, \qquad
#   x^{W}_{it} = x_{it} - \bar x_i \quad\text{(within)}.$$
#
# The two parts add up to the grand-mean-centred score, and they are uncorrelated by
# construction across patients (Enders & Tofighi, 2007). `derive.within_between` does it:

# %%
toy = pd.DataFrame(
    {"patient": ["a", "a", "a", "b", "b", "b"], "alliance": [40.0, 44.0, 48.0, 30.0, 34.0, 32.0]}
)
derive.within_between(toy, "alliance", grand_mean=True)

# %% [markdown]
# Patient *a* has a usual level 6 points above the grand mean of 38 (between part +6) and
# sessions −4, 0 and +4 around their own mean (within part). Patient *b* is 6 points below.
#
# ## 3. The example study
#
# On real data we also split the between part once more, into the **therapist's** usual
# level (the mean of their patients' means) and the **patient's** deviation from their
# therapist (Baldwin, Wampold & Imel, 2007); notebook 04 uses it.

# %%
parts = derive.within_between(
    scored, measures["alliance"], prefix="alliance", therapist="therapist", grand_mean=True
)
cols = [
    "alliance_pmean",
    "alliance_between",
    "alliance_within",
    "alliance_gmc",
    "alliance_therapist",
    "alliance_patient",
]
parts.loc[
    parts["patient"] == "P001", ["patient", "therapist", "session", measures["alliance"], *cols]
]

# %%
print(
    "within + between = grand-mean centred:",
    np.allclose(
        parts["alliance_within"] + parts["alliance_between"], parts["alliance_gmc"], equal_nan=True
    ),
)
print(
    "therapist + patient = between:",
    np.allclose(
        parts["alliance_therapist"] + parts["alliance_patient"],
        parts["alliance_between"],
        equal_nan=True,
    ),
)
per_patient = parts.groupby("patient")["alliance_between"].first()
print(
    f"SD between patients: {per_patient.std():.2f} WAI-SR points;  "
    f"SD within patients: {parts['alliance_within'].std():.2f} points"
)

# %% [markdown]
# **Against the truth.** On the WAI-SR item-mean scale the simulator draws therapist
# intercepts with SD 0.2, patient intercepts with SD 0.45 and session deviations with SD
# 0.3, plus a small rise of 0.03 per session and item noise. On the 12-item total scale
# that is a between-patient SD of about $12\sqrt{0.2^2 + 0.45^2} \approx 5.9$ points and a
# session-to-session SD of about $12 \times 0.3 = 3.6$ points plus item noise (about 4 in
# all), close to the SDs printed above. (The observed between SD also contains each
# patient's own session noise, averaged over few sessions.) Most of the alliance's
# variation lies **between** patients: a single alliance rating tells you mostly who the
# patient is.

# %% [markdown]
# ## 4. Lagging: last session's alliance
#
# To ask whether the alliance predicts *later* change, the predictor must come before the
# outcome: last session's within-patient alliance predicting this session's outcome
# (Falkenström, Granström & Holmqvist, 2013). `derive.lag_within_patient` takes values
# from session $s - 1$. When session $s - 1$ is missing (the patient attended but no
# questionnaire was stored, the gaps flagged in notebook 01), the default leaves the
# lagged value missing: the previous *recorded* session may be weeks earlier, and
# treating it as "last session" would mix lags of different lengths. The study decides
# with `lag_across_gaps` in `config.yaml` (here: false).

# %%
gap_patient = parts.loc[
    parts["session"].diff().gt(1) & parts["patient"].eq(parts["patient"].shift()), "patient"
].iloc[0]
one = parts[parts["patient"] == gap_patient]
strict = derive.lag_within_patient(one, ["alliance_within"])
loose = derive.lag_within_patient(
    one, ["alliance_within"], across_gaps=True, suffix="_lag_across_gaps"
)
strict.assign(alliance_within_lag_across_gaps=loose["alliance_within_lag_across_gaps"])[
    [
        "patient",
        "session",
        "alliance_within",
        "alliance_within_lag",
        "alliance_within_lag_across_gaps",
    ]
]

# %% [markdown]
# ## 5. The derive stage
#
# `stages.derive_stage` does all of this at once for the configured alliance and
# outcome (and adds the on-track, rupture and sudden-gain variables of notebooks 05 and
# 06). Its `alliance_within_lag` is exactly what we built by hand above.

# %%
stages.derive_stage(
    work / "scored.parquet",
    measures=measures,
    derive=study["derive"],
    analysis=work / "analysis.parquet",
    patients=work / "patients.parquet",
    sudden_gains=work / "sudden_gains.csv",
    expected=work / "expected.json",
)
analysis = io.read_table(work / "analysis.parquet")
by_hand = derive.lag_within_patient(parts, ["alliance_within"]).sort_values(["patient", "session"])
print(
    "same as by hand:",
    np.allclose(by_hand["alliance_within_lag"], analysis["alliance_within_lag"], equal_nan=True),
)
analysis[["alliance_within_lag", "alliance_between", "outcome", "outcome_within"]].describe().round(
    2
)

# %% [markdown]
# ## 6. Looking at both relations
#
# `figures.plot_within_between` shows the within-patient relation (left: this session's
# outcome around the patient's own mean, against last session's alliance around the
# patient's own mean) and the between-patient relation (right: one dot per patient).

# %%
fig = figures.plot_within_between(
    analysis, alliance_label="WAI-SR total", outcome_label="ORS total"
)

# %%
# The figure's two OLS lines (their slopes are in the panel titles), computed again here
within_rows = analysis.dropna(subset=["alliance_within_lag", "outcome_within"])
patient_means = (
    analysis.groupby("patient", observed=True)[["alliance_pmean", "outcome_pmean"]].first().dropna()
)
ols_within = np.polyfit(within_rows["alliance_within_lag"], within_rows["outcome_within"], 1)[0]
ols_between = np.polyfit(patient_means["alliance_pmean"], patient_means["outcome_pmean"], 1)[0]
print(
    f"OLS slope within patients: {ols_within:.2f} (truth 2/12 ≈ 0.17); "
    f"between patients: {ols_between:.2f} (truth 4/12 ≈ 0.33) ORS points per WAI-SR point"
)

# %% [markdown]
# **Reading the slopes honestly.** The README of the example gives the truth: the
# within-patient effect of last session's alliance is 2.0 ORS points per WAI-SR *item-mean*
# point, i.e. $2/12 \approx 0.17$ per point of the 12–60 total, and the between-patient
# effect is $4/12 \approx 0.33$ per total point.
#
# * The **between** slope (printed above and in the figure's right title) is close to
#   0.33.
# * The **within** slope is **well above** the truth. The figure's lines are
#   ordinary least squares "for orientation only", and here they mislead: in the
#   simulation both the alliance (0.03 item points per session) and the outcome (about
#   0.5–0.65 ORS points per session) rise during treatment. Early sessions lie below a
#   patient's mean on both, late sessions above, so a shared **time trend** looks like a
#   within-patient effect. Person-mean centring removes stable differences between
#   patients, not trends within them.
#
# The remedy is to model time: add session as a covariate (notebook 04), or **detrend**
# the alliance by taking its deviation from each patient's own linear trend (Falkenström
# et al., 2017; the derive stage provides `alliance_within_detrended_lag`). A quick look:

# %%
comparison = pd.DataFrame(
    {
        "predictor": ["alliance_within_lag", "alliance_within_detrended_lag"],
        "correlation with session": [
            analysis[["alliance_within_lag", "session"]].corr().iloc[0, 1],
            analysis[["alliance_within_detrended_lag", "session"]].corr().iloc[0, 1],
        ],
    }
)
comparison.round(3)

# %% [markdown]
# The detrended alliance no longer tracks time. Whether to detrend is a substantive
# choice: if the alliance's growth is itself part of what helps, detrending removes some
# of the effect of interest.
#
# One more caution: the patient's mean includes *later* sessions, so the within part at
# session *t* partly depends on the future. In short series this can bias lagged effects a
# little (Falkenström et al., 2017). The simulator defines its truth on this same observed
# mean, so on the example the split is correctly specified; in real data it is an
# approximation worth a sensitivity analysis.

# %% [markdown]
# ## Summary
#
# * `derive.within_between` splits a time-varying score into a between-patient part
#   (patient mean minus the grand mean of patient means) and a within-patient part (session
#   minus patient mean), and optionally the between part into therapist and patient parts.
# * `derive.lag_within_patient` lags within patients; by default a missed session leaves
#   the lag missing rather than reaching back further.
# * `stages.derive_stage` builds all analysis variables, including
#   `alliance_within_lag` and `alliance_between`.
# * On the example, the between relation is close to the true 0.33 per WAI-SR point, but
#   the naive within slope is well above the true 0.17 because alliance and outcome share a
#   time trend. Centring does not remove trends: model time or detrend.
#
# **References**
#
# Baldwin, S. A., Wampold, B. E., & Imel, Z. E. (2007). Untangling the alliance–outcome
# correlation: Exploring the relative importance of therapist and patient variability in
# the alliance. *Journal of Consulting and Clinical Psychology, 75*(6), 842–852.
# https://doi.org/10.1037/0022-006X.75.6.842
# Curran, P. J., & Bauer, D. J. (2011). The disaggregation of within-person and
# between-person effects in longitudinal models of change. *Annual Review of Psychology,
# 62*, 583–619. https://doi.org/10.1146/annurev.psych.093008.100356
# Enders, C. K., & Tofighi, D. (2007). Centering predictor variables in cross-sectional
# multilevel models: A new look at an old issue. *Psychological Methods, 12*(2), 121–138.
# https://doi.org/10.1037/1082-989X.12.2.121
# Falkenström, F., Finkel, S., Sandell, R., Rubel, J. A., & Holmqvist, R. (2017). Dynamic
# models of individual change in psychotherapy process research. *Journal of Consulting and
# Clinical Psychology, 85*(6), 537–549. https://doi.org/10.1037/ccp0000203
# Falkenström, F., Granström, F., & Holmqvist, R. (2013). Therapeutic alliance predicts
# symptomatic improvement session by session. *Journal of Counseling Psychology, 60*(3),
# 317–328. https://doi.org/10.1037/a0032258
# Flückiger, C., Del Re, A. C., Wampold, B. E., & Horvath, A. O. (2018). The alliance in
# adult psychotherapy: A meta-analytic synthesis. *Psychotherapy, 55*(4), 316–340.
# https://doi.org/10.1037/pst0000172
# Zilcha-Mano, S. (2017). Is the alliance really therapeutic? Revisiting this question in
# light of recent methodological advances. *American Psychologist, 72*(4), 311–325.
# https://doi.org/10.1037/a0040435
#
# ## Exercise
#
# 1. Split the **outcome** instead: `derive.within_between(scored, "ors_total",
#    prefix="ors")`. Which share of the ORS variation lies between patients? Compare with
#    the alliance.
# 2. Redo the figure with
#    `analysis.assign(alliance_within_lag=analysis["alliance_within_detrended_lag"])`.
#    How does the within-patient OLS slope change, and how close does it come to 0.17?
#    Why does the outcome's own time trend still matter?
