"""allianceflow: a reproducible pipeline for alliance-outcome studies.

The package holds all logic; the Snakemake workflow, the notebooks and the tests call it.
"""

__version__ = "0.1.0"
