"""The quick tier's configuration is config.yaml made small, and nothing else."""

import importlib.util

import yaml

from allianceflow.config import load_config


def _make_config(root):
    spec = importlib.util.spec_from_file_location("make_config", root / ".test" / "make_config.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_test_config_is_config_yaml_made_small(root):
    make = _make_config(root)
    config = yaml.safe_load((root / "config.yaml").read_text(encoding="utf-8"))
    small = yaml.safe_load((root / ".test" / "config.yaml").read_text(encoding="utf-8"))
    assert small == make.small_config(config), "run `python .test/make_config.py`"
    assert small["studies"]["example"]["models"] == make.SMALL_MODELS
    assert small["studies"]["example"]["measures"]["reliability_bootstrap"] == 50
    assert config["studies"]["example"]["models"] != make.SMALL_MODELS
    # the couples study is built by the full tier only, and its models go with it
    assert "example3" in config["studies"] and "example3" not in small["studies"]
    assert "split_alliance" in config["models"] and "split_alliance" not in small["models"]


def test_test_config_is_valid(root):
    cfg = load_config(root / ".test" / "config.yaml", root / "workflow/schemas/config.schema.yaml")
    assert sorted(cfg["studies"]) == ["example", "example2"]
    assert cfg["comparisons"] == [["alliance_outcome", "alliance_outcome_slopes"]]
