"""Regression tests for probe16's findings (issue 12, a fresh round over the workflow layer
and the command line)."""

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from homodyne.cli import main
from homodyne.production.multiq_data import AgingSeries, write_series_file


def _two_bin_files(tmp_path):
    """Two files of two q bins each, and a config listing them (the workflow's style)."""
    series = AgingSeries(q=(0.004, 0.006), ages_s=(0.0, 600.0), frames=16, angles=(0.0,))
    files = [str(write_series_file(tmp_path, series, k)) for k in range(2)]
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps({
        "experimental_data": {"files": files, "q": "all"},
        "initial_parameters": {"values": [1e4, -0.5, 100.0]},
        "output": {"directory": str(tmp_path / "cfg_out"), "plots": False}}))
    return cfg


def test_one_q_bin_refitted_into_an_output_dir_keeps_every_row_of_its_summary(tmp_path):
    """Was: `--q 0.004 --output-dir D` on a config of several files (a multi-q run already
    in D) refitted the bin in every file and rewrote D/summary.csv with those rows only:
    the q = 0.006 rows were dropped although their folders and results stayed."""
    cfg = _two_bin_files(tmp_path)
    out = str(tmp_path / "out")
    assert main(["--config", str(cfg), "--output-dir", out, "--quiet"]) == 0
    before = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert main(["--config", str(cfg), "--output-dir", out, "--q", "0.004", "--overwrite",
                 "--quiet"]) == 0
    after = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert len(before) == 4
    assert after[["file", "q_index"]].values.tolist() == before[["file", "q_index"]].values.tolist()
    assert after["D0"].tolist() == before["D0"].tolist()  # the same data and settings
    assert after["settings_match"].all()


REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("text", ["- a.h5\n- b.h5\n", "experimental_data: [a.h5]\n",
                                  "experimental_data:\n  files: 5\n",
                                  "experimental_data:\n  files: [[a.h5]]\n",
                                  "experimental_data:\n  files: [a.h5\n"])
def test_a_multi_q_runs_fit_config_of_the_wrong_shape_is_one_clear_error(tmp_path, text):
    """Was an AttributeError/TypeError (or a bare YAML ParserError) from the workflow's DAG
    when a run's fit config is a list, or its experimental_data or files no mapping/text."""
    fit_config = tmp_path / "f.yaml"
    fit_config.write_text(text)
    helpers = {"config": {"multiq": {"runs": {"r": {"config": str(fit_config)}}}}}
    source = (REPO / "workflow/rules/multiq_common.smk").read_text()
    exec(compile(source, "multiq_common.smk", "exec"), helpers)
    with pytest.raises(ValueError, match=rf"^multiq run r: {re.escape(str(fit_config))} "
                                         r"(needs experimental_data.files|is not valid YAML)"):
        helpers["run_files"]("r")


def test_a_synthetic_multi_q_run_without_the_series_section_is_one_clear_error(tmp_path):
    """Was a KeyError 'synthetic' traceback from the DAG: a run with synthetic: true in a
    workflow config that has multiq.runs but no multiq.synthetic."""
    helpers = {"config": {"multiq": {"runs": {"x": {
        "config": str(REPO / "config/fits/synthetic_aging.yaml"), "synthetic": True}}}}}
    source = (REPO / "workflow/rules/multiq_common.smk").read_text()
    with pytest.raises(ValueError, match=r"^multiq.runs.x.synthetic: true fits the synthetic "
                                         r"series, but the config has no multiq.synthetic"):
        exec(compile(source, "multiq_common.smk", "exec"), helpers)
