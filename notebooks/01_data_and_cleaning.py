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
# # 01 · Data and cleaning
#
# In this notebook you turn a raw routine-outcome-monitoring export into the **canonical
# session table** that every later step uses: one row per patient × session, with
# pseudonymous ids, session numbers, days since the first session and the questionnaire
# items under standard names. You will see how `allianceflow` reads the file, maps the
# clinic's column names, treats missing-value codes, applies explicit cleaning rules, and
# accounts for **every row it reads** (a CONSORT-style flow).
#
# **Why it matters clinically.** Every result about "patients" is a result about the
# patients who are left after cleaning. Silent deletions (a duplicated row, a typo in an
# id, a session with an impossible score) change who the findings describe, and routine
# data are full of them. Reporting guidelines therefore ask for a participant flow that
# accounts for everyone (Schulz, Altman & Moher, 2010, CONSORT 2010), and missing data must
# be described before they can be handled well (Little & Rubin, 2019). Privacy comes
# first: a research pipeline must refuse direct identifiers before anything is written.
#
# The data are the **simulated example study** in `data/raw/example/` (no real patient
# contributed to it). Because it was simulated, we know the truth and can check what the
# cleaning step reports against it.

# %%
import copy
from pathlib import Path

import pandas as pd
from IPython.display import display

import allianceflow
from allianceflow import clean, config, figures, io, privacy

# allianceflow.figures selects matplotlib's file-only "Agg" backend; switch back to inline
# figures so they show in the notebook.
# %matplotlib inline
pd.set_option("display.max_colwidth", 100)
print("allianceflow", allianceflow.__version__)

# %% tags=["parameters"]
# Where the project lives, relative to this notebook (nbmake runs notebooks from their folder).
PROJECT = Path("..")
# Which study of config.yaml to clean.
STUDY = "example"
# How many rows to print in previews.
N_SHOW = 5

# %% [markdown]
# ## 1. The study's description in `config.yaml`
#
# A researcher does not edit code to add a study; they describe it in `config.yaml`, one
# section per stage. The `read` section says where the raw file is, how its columns map
# onto canonical names, which codes mean "missing" and how dates are written; the `clean`
# section gives a **policy** for each cleaning rule. `load_config` reads the file and
# validates it against the project's JSON schema, filling in every default, so a typo such
# as `reml: yes` stops here with a message naming the key.

# %%
cfg = config.load_config(PROJECT / "config.yaml")
study = cfg["studies"][STUDY]
read = study["read"]
print("raw file:     ", read["raw"])
print("date format:  ", read["date_format"])
print("missing codes:", ", ".join(map(str, read["missing_codes"])))
# each cleaning rule and its policy
display(pd.Series(study["clean"]["rules"], name="policy").rename_axis("rule").to_frame())
pd.Series(read["columns"], name="canonical name").rename_axis("raw column").to_frame().head(8)

# %% [markdown]
# ## 2. Reading the raw export
#
# `io.read_raw` reads **every value as text** and adds `_source_row`, the row number a
# spreadsheet would show. Nothing is interpreted yet: deciding that `-9` is missing or
# that `"n/a"` is not a number is the cleaning step's job, so that each such decision is
# explicit and logged.

# %%
raw = io.read_raw(PROJECT / read["raw"], delimiter=read["delimiter"])
print(raw.shape)
raw.head(N_SHOW)

# %% [markdown]
# ## 3. Cleaning
#
# `clean.clean_sessions` runs, in order: the privacy guard, the column mapping, the
# missing codes, the cleaning rules (each with the policy from the config: `error` stops
# with a message, `exclude` drops and logs, `flag` keeps and logs, `merge` fixes id
# variants), turns calendar dates into **days since the patient's first session** (dates
# are never kept), and checks the result against the data contract.
#
# `clean_sessions` reads the study's `read`, `privacy` and `clean` settings side by side
# (`config.flat_study` lays the sections out that way).
#
# It returns three things: the canonical `sessions` table, an `exclusions` table (one row
# per excluded, altered or flagged source row, with the rule and a reason) and `flow`
# (the counts).

# %%
result = clean.clean_sessions(
    raw, config.flat_study(study), source=Path(read["raw"]).name, name=STUDY
)
sessions = result.sessions
sessions.head(N_SHOW)

# %%
flow = result.flow
# rows (sessions) and patients read, kept and excluded
display(
    pd.DataFrame({level: flow[level] for level in ("sessions", "patients")}).loc[
        ["read", "kept", "excluded"]
    ]
)
# rows kept but flagged, per rule, and values missing per column among the rows read and kept
display(
    pd.Series(flow["sessions"]["flagged_by_rule"], name="rows flagged")
    .rename_axis("rule")
    .to_frame()
)
display(pd.DataFrame(flow["values"]["missing_by_column"]).T)

# %% [markdown]
# The flow must **reconcile**: rows read = rows kept + rows excluded, and the per-rule
# counts add up to the excluded total, at session and at patient level.
# `clean.reconcile` lists the ways it fails to; an empty list means it reconciles.

# %%
print("problems:", clean.reconcile(result.flow))
result.exclusions["rule"].value_counts()

# %%
result.exclusions.head(N_SHOW)

# %% [markdown]
# ### Checking against the truth
#
# The example's README (`data/raw/example/README.md`) gives the generating parameters:
# 300 patients of 30 therapists, up to 16 sessions, early endings that depend on the
# patient's early alliance (section "How treatment ended" below), a 3% chance that an
# attended session has no questionnaire record (`p_unrecorded`), and a 1% chance that any
# single item is left blank (`p_item_missing`, written as `-9`).
#
# * Nothing was excluded, as expected: the simulator writes no duplicates, bad ids or
#   impossible values.
# * The `session_gap` **flags** counted above are the unrecorded sessions: the patient
#   attended, but no questionnaire was stored, so session numbers jump (e.g. 11 → 13). They
#   are kept and flagged, not excluded; later notebooks show why gaps matter for lagged
#   variables.
# * `missing_code` counts the `-9` cells turned into missing values. With a 1% blank rate
#   we expect about 1% of the rows × 16 items; the cell below prints the expectation next
#   to the reported count.
#
# In real data, compare such counts with what the data manager expects: a surprising
# number is often the first sign of an export problem.

# %%
n_rows, n_items = len(raw), 16
print(
    "expected blanks ≈",
    round(n_rows * n_items * 0.01),
    "; reported:",
    result.flow["values"]["missing_code"],
)
print("patients:", sessions["patient"].nunique(), " therapists:", sessions["therapist"].nunique())
print(sessions.groupby("patient").size().describe()[["min", "50%", "max"]])

# %% [markdown]
# ### How treatment ended
#
# Whether a patient finished as planned, decided to stop (a *unilateral* ending) or simply
# stopped coming (*dropout*) is patient-level information, and the dropout rate one reports
# depends heavily on how it is defined (Swift & Greenberg, 2012). This export has a
# `Discharge` column that the discharge form fills **on the patient's last row only**; the
# config maps it to the canonical `ending` column and its labels ("Completed", "Client
# ended", "No further contact") to the types planned, unilateral and dropout. The clean
# step applies a value recorded on any of a patient's rows to all of them, and stops with a
# message if one patient has two different endings (rule `ending_conflict`).
#
# Exports without such a column can still give endings: set the study's
# `read.extraction_date`
# (the day the export was made) and `derive: {endings: {gap_days: 56, planned_sessions: 12}}`.
# A patient with no session in the 8 weeks before the export has ended, one seen more
# recently is still in treatment (`ongoing`). A gap says *that* treatment ended, not *how*:
# `planned_sessions` adds a dose rule (at least 12 sessions = planned, fewer = dropout);
# without it the ending is just `ended`, because calling everyone who stopped coming a
# dropout would count the completers too. The second example study (`example2`) does this.

# %%
ending = sessions.groupby("patient")["ending"].first()
display(
    pd.Series(read["labels"]["ending"], name="canonical ending").rename_axis("raw label").to_frame()
)
ending.value_counts()

# %% [markdown]
# The simulator ends every patient who attends all 16 planned sessions as "planned"; of
# those who stop early a share of 0.4 is recorded as unilateral and the rest as dropouts.
# Whether a patient stops early depends on their alliance in the first three sessions
# (`data/raw/example/README.md`): the log-odds of an early ending fall by 1 per WAI-SR
# item-mean point, so patients with a weak early alliance leave more often, as in real
# services (Sharf, Primavera & Diener, 2010). At the average early alliance the chance of
# completing is 0.94¹³ ≈ 0.45 (the README's intercept), so with 300 patients we expect
# about 300 × 0.94¹³ ≈ 134 planned endings, give or take a binomial SD of about 8.6
# (√(300 × 0.447 × 0.553)); the cell below prints the count in the export. Because these
# endings depend on the alliance, the missing later sessions are **not** missing
# completely at random: notebook 04 comes back to this.

# %%
print("expected planned ≈", round(300 * 0.94**13), "; recorded:", int((ending == "planned").sum()))

# %% [markdown]
# ## 4. The flow diagram
#
# `figures.plot_flow` draws the counts as a CONSORT-style diagram (the pipeline writes the
# same figure to `results/<study>/figures/flow.png`).

# %%
fig = figures.plot_flow(result.flow)

# %% [markdown]
# ## 5. What the rules do with messy data
#
# The example is clean, so let us damage a copy of the first three patients' rows the way
# real exports are damaged:
#
# * an id typed with a different case and a trailing space (`"p001 "` for `"P001"`),
# * a row exported twice,
# * an impossible WAI-SR answer (7 on a 1–5 scale),
# * text in a numeric column (`"n/a"`).

# %%
messy = raw[raw["ClientCode"].isin(["P001", "P002", "P003"])].copy()
messy.loc[messy.index[1], "ClientCode"] = "p001 "
messy = pd.concat([messy, messy.iloc[[4]]])  # an identical copy of one row
messy.loc[messy.index[6], "WAI_SR_03"] = "7"
messy.loc[messy.index[8], "ORS_Social"] = "n/a"
messy = messy.reset_index(drop=True)
messy[["_source_row", "ClientCode", "SessionNo", "WAI_SR_03", "ORS_Social"]].head(10)

# %% [markdown]
# With the study's policies (`out_of_range: error`, `not_a_number: error`) cleaning
# **stops** at the first problem, with a message that names the file, the row, the column
# and the fix. Stopping is the safe default: an impossible value usually means the export
# is misaligned, and only a person can decide what it should have been.

# %%
try:
    clean.clean_sessions(messy, config.flat_study(study), source="messy.csv", name=STUDY)
except clean.DataError as error:
    print(error)

# %% [markdown]
# If the researcher decides that such values should simply be treated as missing, they
# change the **policy** in `config.yaml` (here, in a copy of the study's block). Every
# decision still leaves a trace in the exclusions table.

# %%
lenient = copy.deepcopy(study)
lenient["clean"]["rules"].update({"out_of_range": "missing", "not_a_number": "missing"})
fixed = clean.clean_sessions(messy, config.flat_study(lenient), source="messy.csv", name=STUDY)
fixed.exclusions[["source_row", "patient", "session", "rule", "action", "column", "reason"]]

# %%
print("problems:", clean.reconcile(fixed.flow))
print(
    "sessions read / kept / excluded:",
    fixed.flow["sessions"]["read"],
    fixed.flow["sessions"]["kept"],
    fixed.flow["sessions"]["excluded"],
)

# %% [markdown]
# ## 6. The privacy guard
#
# A column that looks like a direct identifier (names, e-mail addresses, phone numbers,
# exact dates of birth, addresses, free text) is refused **before anything is written**,
# whether or not it is mapped. The researcher must drop it (`privacy.drop_columns`) or replace it
# with a pseudonymous code. `privacy.find_identifiers` lists what it finds; cleaning
# raises a `DataError`. (The address below is made up.)

# %%
leaky = messy.copy()
leaky["Email"] = "someone@example.org"
print(privacy.find_identifiers(leaky))
try:
    clean.clean_sessions(leaky, config.flat_study(lenient), source="leaky.csv", name=STUDY)
except clean.DataError as error:
    print(error)

# %% [markdown]
# ## Summary
#
# * `io.read_raw` reads the export as text and remembers each row's spreadsheet number;
#   `clean.clean_sessions` maps, cleans and checks it, and returns the canonical table,
#   an exclusions log and flow counts that reconcile (`clean.reconcile`).
# * Every rule has an explicit, configurable policy; the default for impossible values is
#   to **stop**, because silently dropping or fixing them changes the sample.
# * On the simulated example nothing is excluded; the flagged gaps are the sessions the
#   simulator left unrecorded, and the count of blanks matches the 1% item-missing rate.
# * Identifiers are refused before anything is written.
# * Endings are read from a patient-level column (recorded on any of the patient's rows)
#   or, with an `extraction_date`, inferred later from the time since the last session.
#
# **References**
#
# Little, R. J. A., & Rubin, D. B. (2019). *Statistical analysis with missing data* (3rd ed.).
# Wiley.
# Schulz, K. F., Altman, D. G., & Moher, D. (2010). CONSORT 2010 statement: Updated
# guidelines for reporting parallel group randomised trials. *BMJ, 340*, c332.
# https://doi.org/10.1136/bmj.c332
# Sharf, J., Primavera, L. H., & Diener, M. J. (2010). Dropout and therapeutic alliance: A
# meta-analysis of adult individual psychotherapy. *Psychotherapy: Theory, Research,
# Practice, Training, 47*(4), 637–645. https://doi.org/10.1037/a0021175
# Swift, J. K., & Greenberg, R. P. (2012). Premature discontinuation in adult
# psychotherapy: A meta-analysis. *Journal of Consulting and Clinical Psychology, 80*(4),
# 547–559. https://doi.org/10.1037/a0028226
#
# ## Exercise
#
# 1. In the `lenient` copy of the study, set `clean.min_sessions` to 3 and clean the full raw
#    export again. How many patients and sessions are excluded, under which rule? Does the
#    flow still reconcile? Why might a "completers only" rule bias an alliance–outcome
#    study, here where a weak early alliance makes an early ending likelier, and even
#    where dropout is completely at random?
# 2. Set the `session_gap` rule (under `clean.rules`) to `"error"`. Read the message:
#    which row and which patient does it name?
