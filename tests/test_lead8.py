"""The workflow's production rule scripts exit like ``homodyne``: a bad input is one line
in the rule's log and exit 2, not a traceback (lead, eighth session)."""

import runpy
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from homodyne.cli import EXIT_USAGE

SCRIPTS = Path(__file__).resolve().parents[1] / "workflow" / "scripts"


def test_a_production_rule_with_a_bad_data_file_says_one_line_and_exits_2(tmp_path, capsys):
    matrix = tmp_path / "c2.npy"
    np.save(matrix, np.zeros((3, 4)))  # not a square two-time matrix
    snakemake = SimpleNamespace(
        input=SimpleNamespace(matrix=str(matrix), authors=str(tmp_path / "authors.json")),
        output=SimpleNamespace(record=str(tmp_path / "fits" / "chx" / "job.json")),
        params=SimpleNamespace(alpha_window=[0.85, 1.15]), log=[])
    with pytest.raises(SystemExit) as stop:
        runpy.run_path(str(SCRIPTS / "fit_chx.py"), init_globals={"snakemake": snakemake})
    err = capsys.readouterr().err
    assert stop.value.code == EXIT_USAGE
    assert err.startswith(f"fit_chx: error: {matrix}") and err.count("\n") == 1
    assert "Traceback" not in err
    assert not (tmp_path / "fits" / "chx" / "parameters.json").exists()
