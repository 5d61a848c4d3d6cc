"""Issue 12, a fresh probing round (probe13) over main a417fd7: each test fails there."""


import pytest


@pytest.mark.parametrize("listed", ['[["fit.h5"]]', '[{"a": 1}]', "[1, 2]",
                                    "[" * 50_000 + "]" * 50_000])
def test_an_edited_result_list_in_the_marker_means_every_result_name(tmp_path, listed):
    """Was: parameters.json whose result_files held lists, objects or numbers (or was nested
    50,000 deep) -> TypeError 'unhashable type' / RecursionError from previous_set_files
    while an --overwrite run committed its results: a traceback, exit 1."""
    from homodyne.output import SET_FILES, previous_set_files

    (tmp_path / "fit.h5").write_bytes(b"x")
    (tmp_path / "parameters.json").write_text('{"result_files": ' + listed + "}")
    assert previous_set_files(tmp_path) == SET_FILES


@pytest.mark.parametrize("text, message", [
    ("x: " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
    ("initial_parameters: {values: [" + "9" * 400 + ", -0.5, 100.0]}\n",
     r"initial_parameters.values\[0\]: must be a finite number, got an integer of 400 digits"),
])
def test_a_config_nested_too_deeply_or_with_a_huge_integer_is_a_config_error(tmp_path, text,
                                                                              message):
    """Was: RecursionError from the YAML composer, OverflowError ('int too large to convert
    to float') from the number check: tracebacks, exit 1."""
    from homodyne.config import ConfigError, load_config

    cfg = tmp_path / "c.yaml"
    cfg.write_text("analysis_mode: static\n" + text)
    with pytest.raises(ConfigError, match=message):
        load_config(cfg, require_data=False)
