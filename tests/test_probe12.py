"""Issue 12, a fresh probing round (probe12) over the session's merged changes: each test
fails on main ec16ff5."""

import pytest


def test_an_override_into_a_section_whose_keys_are_all_commented_out_is_applied(tmp_path):
    """Was (fix12d's override check): `performance:` with every key commented out reads as
    null; `--strategy standard` (performance.strategy_override) or `--output-dir` (under an
    empty `output:`) was refused with 'performance is a value (None), not a section' though
    the config itself validates (before that check, the override was dropped silently)."""
    from homodyne.config import ConfigError, load_config

    cfg = tmp_path / "c.yaml"
    cfg.write_text("analysis_mode: static\nperformance:\n  # strategy_override: null\n"
                   "output:\n  # directory: x\n"
                   "initial_parameters: {values: [1.0e4, -0.5, 100.0]}\n")
    ok = load_config(cfg, require_data=False,
                     overrides={"performance.strategy_override": "standard",
                                "output.directory": str(tmp_path / "o")})
    assert ok.performance["strategy_override"] == "standard"
    assert ok.output["directory"] == str(tmp_path / "o")
    with pytest.raises(ConfigError, match=r"analysis_mode is a value \('static'\)"):
        load_config(cfg, require_data=False, overrides={"analysis_mode.x": 1})
