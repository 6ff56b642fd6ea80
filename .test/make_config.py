"""Write ``.test/config.yaml``: the project's ``config.yaml`` made small for the quick tier.

The quick test tier (``make test``) runs the end-to-end tests on this configuration, the
Snakemake workflow catalogue's ``.test/`` convention; CI (``CI=true``) runs them on
``config.yaml`` itself. The two differ only as :func:`small_config` says, and
``tests/test_quick_tier.py`` checks that they still do. Run ``python .test/make_config.py``
after a change to ``config.yaml``.
"""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent

#: The example study's models in the quick tier: the two of the configured comparison (so the
#: likelihood-ratio rule runs), the therapist-effects model (the caterpillar figure) and the
#: dropout GLMM (a patient-level preset: its OR table and the dropout-curve figure).
SMALL_MODELS = ["alliance_outcome", "alliance_outcome_slopes", "therapist_effects", "dropout"]

#: Bootstrap resamples of the omega interval (config.yaml: 1000).
SMALL_BOOTSTRAP = 50

#: Studies of config.yaml the quick tier leaves out: the couples study (example3) adds about
#: thirty jobs, a quarter of the quick tier's build, for rules that the other studies already
#: run; its own figures, tables and sentences are tested on a small simulated couples study
#: (tests/test_couples_outputs.py, tests/test_no_codes.py), its statistics on its committed
#: export (the recovery test there), and CI builds it with the rest of config.yaml.
FULL_TIER_ONLY = ["example3"]

HEADER = """\
# Written by .test/make_config.py from config.yaml: do not edit by hand.
# The small configuration of the quick test tier (make test): the example study fits four
# of its thirteen models and the omega interval uses 50 bootstrap resamples, so every rule,
# figure and table, the model comparison and the pooling still run on the first two example
# studies; the couples study (example3) is left to the full tier.
# CI (CI=true) runs the same end-to-end tests on config.yaml itself.
"""


def small_config(config: dict) -> dict:
    """The quick tier's configuration: *config* with fewer studies and models, a short bootstrap."""
    small = copy.deepcopy(config)
    for name in FULL_TIER_ONLY:
        small["studies"].pop(name, None)
    for name, study in small["studies"].items():
        study.setdefault("measures", {})["reliability_bootstrap"] = SMALL_BOOTSTRAP
        if name == "example":
            study["models"] = list(SMALL_MODELS)
    used = {m for study in small["studies"].values() for m in study["models"]}
    used.add(small.get("pool", {}).get("model", "alliance_outcome"))
    small["models"] = {k: v for k, v in small["models"].items() if k in used}
    small["comparisons"] = [
        pair for pair in small.get("comparisons", []) if set(pair) <= set(small["models"])
    ]
    return small


def main() -> None:
    """Write the quick tier's configuration next to this script."""
    config = yaml.safe_load((HERE.parent / "config.yaml").read_text(encoding="utf-8"))
    text = yaml.safe_dump(small_config(config), sort_keys=False, allow_unicode=True, width=100)
    (HERE / "config.yaml").write_text(HEADER + text, encoding="utf-8")


if __name__ == "__main__":
    main()
