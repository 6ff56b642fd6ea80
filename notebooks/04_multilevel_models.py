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
# # 04 · Multilevel models
#
# In this notebook you fit the **multilevel (mixed) models** of an alliance–outcome study:
# sessions nested in patients nested in therapists. You will write models in lme4 syntax,
# fit a growth model and the within/between alliance–outcome model, read variance
# components and intraclass correlations, compare models with a likelihood-ratio test,
# separate therapist from patient contributions to the alliance, and check every estimate
# against the simulation's known truth.
#
# **Why it matters clinically.** Sessions of one patient resemble each other, and patients
# of one therapist resemble each other. Analyses that ignore this nesting treat thousands
# of sessions as thousands of independent people and overstate certainty; analyses that
# average it away lose the session-by-session process that clinicians care about. Multilevel models
# keep both (Raudenbush & Bryk, 2002; Snijders & Bosker, 2012), and they let us ask the
# two alliance questions of notebook 03 in one model: does a patient improve more after a
# session with a better-than-usual alliance (within), and do patients with better
# alliances improve more (between)?

# %%
import warnings
from pathlib import Path

import pandas as pd
from IPython.display import Markdown, display

import allianceflow
from allianceflow import config, figures, models, stages, tables

# allianceflow.figures selects matplotlib's file-only "Agg" backend; switch back to inline
# figures so they show in the notebook.
# %matplotlib inline
print("allianceflow", allianceflow.__version__)

# %% tags=["parameters"]
PROJECT = Path("..")
STUDY = "example"
# Patients drawn in the trajectory figure.
MAX_PATIENTS = 40

# %% [markdown]
# ## 1. The analysis table
#
# We clean, score and derive the study in memory with `stages.prepare_study` (notebooks
# 01–03 explain them) and read the analysis table: one row per session with
# `outcome` (ORS total), `alliance_within_lag`, `alliance_between`, `session`, etc.

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
print(analysis.shape)

# %% [markdown]
# ### The truth we hope to recover
#
# From `data/raw/example/README.md` (alliance parameters per WAI-SR *item-mean* point,
# outcome parameters in ORS points; time is `session − 1`). Our models use the WAI-SR
# *total* of 12 items, so an alliance effect per total point is a twelfth of the truth:
#
# | parameter | truth | on our scales |
# | --- | --- | --- |
# | outcome at the first session | 19.0 | intercept at `session = 0`: 19 − 0.58 ≈ 18.4 |
# | outcome change per session | 0.5 (TAU), 0.65 (feedback) | 0.577 averaged over arms¹ |
# | within-patient effect, last alliance | 2.0 per item mean | **2/12 ≈ 0.167** per total |
# | between-patient effect, mean alliance | 4.0 per item mean | **4/12 ≈ 0.333** per total |
# | SD therapist / patient / slope | 1.5 / 4.5 / 0.25 | variances 2.25 / 20.25 / 0.0625 |
# | residual SD | 3.5 (plus ORS item noise) | variance ≈ 12.25 + 2.6 ≈ 14.8 |
#
# ¹ 154 of the 300 patients had feedback. "Per total" is per WAI-SR total point;
# "last alliance" is last session's alliance, "mean alliance" the patient's mean.
#
# The first two rows describe a patient **without a deterioration episode**. The simulator
# gives 15% of the patients, in either arm, an episode that starts at session 2–5: from
# then on the patient stops improving and scores 12 ORS points lower. In the feedback arm
# the therapist repairs a share of the episodes (the course returns two sessions later),
# so lasting episodes affect 15% of TAU and about 5% of feedback patients. Episodes pull
# the average course below the table's first two rows.
#
# Our models use `session` (1, 2, …) as time, so their intercept is the expected outcome
# at a "session 0", half a point below the first session.

# %% [markdown]
# ## 2. A growth model
#
# Before adding predictors, describe change. `models.preset_formula` writes the standard
# models in lme4 syntax; `models.fit_model` fits them (REML by default) and returns a
# `MixedModelResult`: `.fixed` and `.random` are tidy tables, `.summary()` is the text the
# pipeline writes, and `.to_dict()` its JSON.

# %%
growth_formula = models.preset_formula("growth")
print(growth_formula)
growth = models.fit_model(analysis, growth_formula, name="growth")
print(growth.summary())
growth_fixed = growth.fixed.set_index("term")["estimate"]
print(
    f"Intercept {growth_fixed['Intercept']:.1f} (about 18.4 without episodes); slope "
    f"{growth_fixed['session']:.2f} ORS points per session (about 0.64 without episodes, "
    "alliance rise included)"
)

# %% [markdown]
# * `(1 | therapist)`: each therapist has their own average level;
#   `(1 + session | patient)`: each patient has their own level and their own rate of
#   change, and the two may correlate (the simulation has a correlation of −0.2: patients
#   who start higher improve a little more slowly). Writing `||` instead would fix that
#   correlation at 0, which also makes the model depend on where time starts (session 0
#   or session 1; Biesanz et al., 2004), so the presets estimate it unless you ask for
#   `slopes="uncorrelated"`.
# * The growth model leaves the alliance out, and in the simulation the alliance itself
#   rises by 0.03 item points per session, which adds $2.0 \times 0.03 = 0.06$ ORS points
#   per session through the within-patient effect: a patient without an episode follows a
#   trend of about 0.64 per session, not the table's 0.577. A coefficient is always "given
#   the other terms in the model".
# * The printed intercept and slope describe **all** patients, those with a deterioration
#   episode included, so they lie below these no-episode values: a lasting episode stops
#   the patient's improvement and lowers their scores. The growth model's straight line is
#   an average over two kinds of course, not the course of any one patient.
# * **ICC**: the share of the outcome's variance that lies between therapists and between
#   patients. About half of it is stable patient differences. In the simulation the
#   therapist share is at most about 7% (therapist intercepts with variance 2.25, plus
#   about 0.64 through therapists' alliance levels, out of a total variance above 40),
#   close to what is typical in practice (Baldwin & Imel, 2013); the estimated therapist
#   ICC printed above is about twice that. With only 30 therapists a therapist variance is
#   estimated imprecisely: **ask for many therapists** if therapist effects are the
#   question.

# %%
fig = figures.plot_trajectories(
    analysis, growth.to_dict(), max_patients=MAX_PATIENTS, outcome_label="ORS total"
)

# %% [markdown]
# ## 3. The alliance–outcome model
#
# The study's main model (`alliance_outcome` in `config.yaml`): last session's
# within-patient alliance and the patient's between-patient alliance predicting this
# session's outcome, adjusting for time.

# %%
ao_formula = stages.model_formula(cfg["models"]["alliance_outcome"])
print(ao_formula)
ao = models.fit_model(analysis, ao_formula, name="alliance_outcome")
print(ao.summary())

# %%
truth = {"alliance_within_lag": 2 / 12, "alliance_between": 4 / 12}
fixed = ao.fixed.set_index("term").loc[list(truth)]
fixed["truth"] = pd.Series(truth)
fixed["CI covers truth"] = (fixed["ci_low"] <= fixed["truth"]) & (
    fixed["truth"] <= fixed["ci_high"]
)
fixed[["estimate", "se", "ci_low", "ci_high", "truth", "CI covers truth", "r"]].round(3)

# %% [markdown]
# Read the `CI covers truth` column. The between-patient interval covers its truth. The
# within-patient interval does **not**: at this seed the estimate is below the truth 0.167
# per WAI-SR total point (per item-mean point, multiply by 12: about 1.28 [0.77, 1.80]
# against 2.0, as `data/raw/example/README.md` records). Is the method wrong? Over 100
# simulated studies of this design (`benchmarks/example_truths.py`, results in
# `benchmarks/results/example_truths.txt`) the within-patient estimate is unbiased within
# Monte Carlo error and its 95% interval covers the truth in 89% of the studies: slightly
# less than 95%, because this random-intercept model leaves out the patients' own
# outcome slopes, so its standard errors are about 10% too small. A 95% interval misses
# about 1 time in 20, this model's about 1 time in 9, and the example happens to be one
# of those times. A single study is one draw of chance; this is why studies are
# replicated and meta-analysed. Adjusting for `session` did remove the time-trend bias
# that inflated the naive within-patient slope of notebook 03.
#
# Note what is dropped: `n_dropped_missing` rows have no lagged alliance (first sessions,
# and sessions after a gap) or no outcome. The model is fitted on the remaining sessions.
# Blank items and unrecorded sessions are missing completely at random in the simulation,
# but early endings are not: they depend on the patient's early alliance (notebook 01).
# Because that alliance is observed, the later sessions are missing **at random** given
# the data, and the likelihood of a correctly specified mixed model still gives unbiased
# estimates (Little & Rubin, 2019): the 100 replications find no bias beyond Monte Carlo
# error.
#
# The column `r` is an **r-equivalent** ($z/\sqrt{z^2 + df}$; Rosenthal, 1991). The
# meta-analytic alliance–outcome correlation of Flückiger et al. (2018) is
# $r = .28$, but do not compare the numbers directly: most studies in that meta-analysis
# correlate an early alliance with end-of-treatment outcome across patients, a mostly
# between-patient quantity, while our within-patient `r` is a session-level effect
# adjusted for everything stable about the patient.
#
# ### What a single, unsplit alliance coefficient does
#
# Entering last session's alliance without splitting it gives one coefficient that mixes
# both effects. With a dozen sessions per patient the model draws mostly on the
# within-patient information, so here the blend lies nearer the within effect; with few
# sessions per patient it would move towards the between effect. Either way, it is neither
# (Raudenbush & Bryk, 2002, ch. 5; Curran & Bauer, 2011).

# %%
blend = models.fit_model(
    analysis, "outcome ~ alliance_lag + session + (1 | therapist) + (1 | patient)", name="unsplit"
)
blend.fixed.round(3)

# %% [markdown]
# ## 4. Random slopes and the likelihood-ratio test
#
# Patients differ in how fast they improve (true slope SD 0.25). The configured
# comparison asks whether a patient random slope of time improves the model.
# `models.likelihood_ratio_test` fits both models to **the same rows** (and by maximum
# likelihood if their fixed effects differ). The slopes model adds a variance and its
# covariance with the intercepts (df = 2). A variance cannot be negative, so under the null
# the test statistic is a 50:50 mixture of $\chi^2_1$ and $\chi^2_2$, not $\chi^2_2$,
# and the usual p-value is conservative; `p_boundary` corrects it (Self & Liang, 1987;
# Stram & Lee, 1994).

# %%
slopes_formula = stages.model_formula(cfg["models"]["alliance_outcome_slopes"])
lrt = models.likelihood_ratio_test(
    analysis, ao_formula, slopes_formula, names=("alliance_outcome", "alliance_outcome_slopes")
)
print(
    f"chi2({lrt['df']}) = {lrt['statistic']:.2f}, p = {lrt['p']:.2g}, boundary-corrected "
    f"p = {lrt['p_boundary']:.2g} ({lrt['method']} fits on the same {lrt['n_obs']} sessions)"
)
pd.DataFrame(
    {
        "log-likelihood": [lrt["loglik0"], lrt["loglik1"]],
        "AIC": [lrt["aic0"], lrt["aic1"]],
    },
    index=["alliance_outcome", "alliance_outcome_slopes"],
).round(2)

# %% [markdown]
# The random slope is clearly needed (the simulation has one). With it, the within effect
# barely moves (the `slopes` column in the next table).
#
# ## 5. Two sensitivity analyses
#
# * **Detrending** (Falkenström et al., 2017): use each session's deviation from the
#   patient's own linear alliance trend instead of from their mean.
# * **Previous outcome**: adding last session's outcome asks whether the alliance predicts
#   *change*. With patient random intercepts a lagged outcome is biased in short series
#   (Nickell, 1981), so read it as a sensitivity check. The simulation has no
#   autoregression, so its true coefficient is 0.

# %%
sensitivity = {
    "detrended": models.preset_formula("alliance_outcome", detrend="linear"),
    "previous_outcome": models.preset_formula("alliance_outcome", previous_outcome=True),
}
fits = {"slopes": lrt["fit1"]} | {
    name: models.fit_model(analysis, f, name=name) for name, f in sensitivity.items()
}
lagged = fits["previous_outcome"].fixed.set_index("term").loc["outcome_lag"]
print(
    f"previous outcome: {lagged['estimate']:.2f} "
    f"[{lagged['ci_low']:.2f}, {lagged['ci_high']:.2f}] (no autoregression in the simulation)"
)
pd.DataFrame({name: r.fixed.set_index("term")["estimate"] for name, r in fits.items()}).round(3)

# %% [markdown]
# The within effect barely changes across the versions (rows `alliance_within_lag` and
# `alliance_within_detrended_lag`): the miss of section 3 is not a matter of specification
# but of this sample. Agreement across sensible specifications is what makes a
# within-patient effect credible.
#
# The previous-outcome coefficient (printed above) is **not** near its true 0, although the
# simulation has no autoregression. This model has random intercepts only, so it leaves
# out the patients' own rates of improvement and the lasting drop of a deterioration
# episode; last session's outcome carries both and absorbs them. A lagged outcome
# measures whatever the random part of the model leaves out, one more reason to read it
# as a sensitivity check only.

# %%
fig = figures.plot_forest(
    [ao.to_dict(), fits["slopes"].to_dict(), fits["detrended"].to_dict()],
    drop=("Intercept", "session"),
    width="two",
    labels={
        "alliance_within_detrended_lag": "Alliance, within patient, detrended (previous session)"
    },
)

# %% [markdown]
# ## 6. Therapists' and patients' contributions to the alliance
#
# Baldwin, Wampold & Imel (2007) split the between-patient alliance into the
# **therapist's mean** alliance across their patients and each **patient's deviation**
# from it, and found that therapists' ability to form alliances, not patients', carried
# the alliance–outcome correlation.

# %%
te = models.fit_model(
    analysis, models.preset_formula("therapist_effects"), name="therapist_effects"
)
for term in ("alliance_therapist_mean", "alliance_patient_deviation"):
    row = te.fixed.set_index("term").loc[term]
    covers = "covers" if row["ci_low"] <= 4 / 12 <= row["ci_high"] else "does not cover"
    print(
        f"{term}: {row['estimate']:.2f} [{row['ci_low']:.2f}, {row['ci_high']:.2f}], "
        f"{covers} the truth 0.333"
    )
te.fixed.round(3)

# %% [markdown]
# **Against the truth.** The simulator applies one between-patient effect (0.333 per WAI-SR
# point) to the patient's mean alliance, whatever its source, so the true therapist-level
# and patient-level coefficients are **both 0.333**. The estimates printed above look like
# Baldwin et al.'s pattern (a larger therapist-level coefficient), but the therapist
# coefficient rests on 30 therapists and its CI is wide. The patient-level interval is
# narrower and, at this seed, ends just below 0.333: the same sample that put the
# within-patient estimate below its truth. A difference between two coefficients must be
# tested, not read off two p-values, and with 30 therapists this design cannot tell them
# apart. (Exercise 2 asks you to check this.)
#
# The caterpillar plot shows each therapist's estimated deviation (conditional mode) with
# a 95% interval: most intervals overlap zero and each other, which is the usual picture
# with about ten patients per therapist.

# %%
fig = figures.plot_caterpillar(ao.to_dict(), group="therapist")

# %% [markdown]
# ## 7. Alliance components: task, bond and goal
#
# The `alliance_components` preset enters the three WAI-SR subscales, each split within and
# between. The simulator has **one** alliance: every item reflects the same latent
# alliance, and the outcome depends on the total only. So each component's true
# coefficient is the same as the total's (0.167 within, 0.333 between, per subscale point).

# %%
comp = models.fit_model(
    analysis, models.preset_formula("alliance_components"), name="alliance_components"
)
comp.fixed.round(3)

# %% [markdown]
# The within coefficients have standard errors three to four times the total's; the
# between coefficients scatter widely, some with the wrong sign, with standard errors more
# than ten times the total's. Subscales that correlate this highly cannot be separated:
# a study that reports "the bond matters and the task does not" from such a model is
# reading noise. Compare models, test the difference, or model the components as one
# factor.

# %% [markdown]
# ## 8. The publication table
#
# `tables.model_table` builds the APA table the pipeline writes to
# `results/<study>/tables/` (here rendered as Markdown).

# %%
display(
    Markdown(
        tables.render_markdown(
            tables.model_table([ao.to_dict(), fits["slopes"].to_dict()], name="alliance_models")
        )
    )
)

# %% [markdown]
# ## Summary
#
# * `models.preset_formula` writes standard models in lme4 syntax; `models.fit_model` fits
#   them and reports estimates, CIs, variance components, ICCs, R², fit and convergence;
#   the result's `.summary()` and `tables.model_table` present them.
# * Once time is in the model, the alliance–outcome model estimates the within- and
#   between-patient effects without the time-trend bias; over 100 simulated studies its
#   estimates are unbiased. On this example the between-patient interval covers its
#   truth and the within-patient interval misses it, a chance miss of the kind 95%
#   intervals make about 1 time in 20.
# * `models.likelihood_ratio_test` compares nested models on the same rows; the
#   boundary-corrected p-value is the right one for an added variance.
# * Therapist-level and component-level coefficients are imprecise with 30 therapists and
#   highly correlated subscales; apparent differences between them are not evidence.
#
# **References**
#
# Baldwin, S. A., & Imel, Z. E. (2013). Therapist effects: Findings and methods. In M. J.
# Lambert (Ed.), *Bergin and Garfield's handbook of psychotherapy and behavior change*
# (6th ed., pp. 258–297). Wiley.
# Baldwin, S. A., Wampold, B. E., & Imel, Z. E. (2007). Untangling the alliance–outcome
# correlation: Exploring the relative importance of therapist and patient variability in
# the alliance. *Journal of Consulting and Clinical Psychology, 75*(6), 842–852.
# https://doi.org/10.1037/0022-006X.75.6.842
# Biesanz, J. C., Deeb-Sossa, N., Papadakis, A. A., Bollen, K. A., & Curran, P. J. (2004).
# The role of coding time in estimating and interpreting growth curve models.
# *Psychological Methods, 9*(1), 30–52. https://doi.org/10.1037/1082-989X.9.1.30
# Curran, P. J., & Bauer, D. J. (2011). The disaggregation of within-person and
# between-person effects in longitudinal models of change. *Annual Review of Psychology,
# 62*, 583–619. https://doi.org/10.1146/annurev.psych.093008.100356
# Falkenström, F., Finkel, S., Sandell, R., Rubel, J. A., & Holmqvist, R. (2017). Dynamic
# models of individual change in psychotherapy process research. *Journal of Consulting and
# Clinical Psychology, 85*(6), 537–549. https://doi.org/10.1037/ccp0000203
# Flückiger, C., Del Re, A. C., Wampold, B. E., & Horvath, A. O. (2018). The alliance in
# adult psychotherapy: A meta-analytic synthesis. *Psychotherapy, 55*(4), 316–340.
# https://doi.org/10.1037/pst0000172
# Little, R. J. A., & Rubin, D. B. (2019). *Statistical analysis with missing data* (3rd ed.).
# Wiley.
# Nickell, S. (1981). Biases in dynamic models with fixed effects. *Econometrica, 49*(6),
# 1417–1426. https://doi.org/10.2307/1911408
# Raudenbush, S. W., & Bryk, A. S. (2002). *Hierarchical linear models: Applications and
# data analysis methods* (2nd ed.). Sage.
# Rosenthal, R. (1991). *Meta-analytic procedures for social research* (rev. ed.). Sage.
# Self, S. G., & Liang, K.-Y. (1987). Asymptotic properties of maximum likelihood estimators
# and likelihood ratio tests under nonstandard conditions. *Journal of the American
# Statistical Association, 82*(398), 605–610. https://doi.org/10.1080/01621459.1987.10478472
# Snijders, T. A. B., & Bosker, R. J. (2012). *Multilevel analysis: An introduction to basic
# and advanced multilevel modeling* (2nd ed.). Sage.
# Stram, D. O., & Lee, J. W. (1994). Variance components testing in the longitudinal mixed
# effects model. *Biometrics, 50*(4), 1171–1177. https://doi.org/10.2307/2533455
#
# ## Exercise
#
# 1. Fit `"outcome ~ alliance_within_lag + alliance_between + session + (1 | patient)"`
#    (no therapist level). What happens to the standard error of `alliance_between`, and
#    why?
# 2. Is the therapist-level coefficient of section 6 really larger than the patient-level
#    one? Refit with `"outcome ~ alliance_between + alliance_patient_deviation + session +
#    (1 | therapist) + (1 + session | patient)"`: the coefficient of
#    `alliance_patient_deviation` is now the *difference* between the patient-level and the
#    therapist-level effects. What is its 95% CI, and what do you conclude?
