"""probe27: an adversarial round on session nine's merged changes (issue 12)."""

import json

import numpy as np
import pytest
from helpers import laminar_corner_case, rows_from_stack, small_two_time_file, truth_for

from homodyne.benchmarks import seeded


def _record(seed):
    return {"seed": seed, "model": "static", "kind": "plain", "base": "plain",
            "scipy": {"converged": True, "status": 2, "cost64": 1.0},
            "ours": {"status": "converged", "passes": 3, "cost64": 1.0},
            "dchi2": 0.0, "chi2_scipy": 100.0, "se_distance": 0.0}


@pytest.mark.parametrize("content, word", [
    (b"\x89\xff\xfe\n", "not a text file"),
    (b"5\n", "line 1: not a seeded comparison record"),
    (b'{"a": 1}\n', "line 1: not a seeded comparison record"),
    (json.dumps(_record(1)).encode() + b"\n[]\n", "line 2: not a seeded comparison record"),
    (b"not json\n" + json.dumps(_record(1)).encode() + b"\n", "line 1: not a seeded"),
    (b"", "no records"),
])
def test_seeded_summary_of_a_file_that_is_not_its_records_is_one_line_exit_2(
        tmp_path, capsys, content, word):
    """--summary of a binary file, a JSON line that is not a record or an empty file: a
    UnicodeDecodeError / TypeError / KeyError traceback (exit 1), or an empty summary."""
    f = tmp_path / "r.jsonl"
    f.write_bytes(content)
    with pytest.raises(SystemExit) as exc:
        seeded.main(["--summary", str(f)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and word in err and "Traceback" not in err


def test_seeded_out_that_is_a_directory_or_not_its_records_is_one_line_exit_2(
        tmp_path, capsys, monkeypatch):
    """--out naming a directory (IsADirectoryError), a folder that cannot be made
    (FileNotFoundError) or a JSONL of other records (KeyError 'seed'): tracebacks, exit 1;
    no case is run for them."""
    monkeypatch.setattr(seeded, "run", lambda s: pytest.fail("a case was run"))
    other = tmp_path / "other.jsonl"
    other.write_text('{"a": 1}\n')
    (tmp_path / "plain").write_text("x")
    for out, word in ((tmp_path, "Is a directory"), (tmp_path / "plain" / "x.jsonl", "plain"),
                      (other, "line 1: not a seeded comparison record")):
        with pytest.raises(SystemExit) as exc:
            seeded.main(["--seeds", "1", "--out", str(out)])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and word in err, err
    assert other.read_text() == '{"a": 1}\n'


def test_seeded_records_still_load_with_a_cut_last_line(tmp_path):
    f = tmp_path / "r.jsonl"
    f.write_text(json.dumps(_record(1)) + "\n" + json.dumps(_record(2))[:-5])
    assert [r["seed"] for r in seeded.load(f)] == [1]


def _cost(spec, y, p):
    from homodyne.jaxconf import jnp
    from homodyne.model import c2_points

    r = np.asarray(c2_points(jnp.asarray(p), jnp.arange(spec.n_points), spec)) - y
    return 0.5 * float(r @ r)


def test_a_laminar_corner_start_with_d0_alpha_d_offset_held_gets_the_laminar_estimate():
    """3 angles x 24 frames, D0/alpha/D_offset held at the truth (min == max), the shear and
    phi0 on their lower bounds: the estimate did not apply (it asked for a free diffusion
    member) and the fit ended 'converged' at cost 0.2917 (SciPy's TRF alike), against
    0.040234 from a start 20% off the truth. Now the shear grid's start: 0.040255."""
    from homodyne.optimization.nlsq_wrapper import NLSQWrapper
    from homodyne.optimization.problems import TwoTimeProblem
    from homodyne.optimization.start_estimate import applies

    spec, y, p0, lb, ub = laminar_corner_case(24)
    k = 2 * spec.n_scaling_sets
    truth = truth_for(spec)
    for m in (0, 1, 2):
        lb[k + m] = ub[k + m] = p0[k + m] = truth[k + m]
    assert applies(TwoTimeProblem(spec), p0, lb, ub)
    r = NLSQWrapper().fit_two_time(None, spec, p0, (lb, ub), y=y)
    inside = truth.copy()
    inside[k + 3:] *= np.array([1.2, 0.8, 1.2, 1.2])
    best = NLSQWrapper().fit_two_time(None, spec, inside, (lb, ub), y=y)
    assert best.converged and r.converged, r.summary()
    assert _cost(spec, y, r.parameters) <= _cost(spec, y, best.parameters) + 0.5 * 0.01**2
    assert any(m.startswith("start estimate (laminar, from a corner") for m in r.messages)


def test_a_matrix_mapped_row_by_row_from_one_file_opens_that_file_once(tmp_path, monkeypatch):
    """The virtual-source check opened the source file once per source: 2 matrices of 30
    rows mapped row by row from stack.h5 opened it 60 times (61 opens in all; 24 angles x
    400 rows: 9,600 opens and closes, 3.9 s of open_two_time's 6.0 s; rows cut in 8: 149 s).
    Now once for the check (3 opens in all with the shared-values check); the values read are
    the same."""
    import shutil

    import h5py

    from homodyne.data.twotime import open_two_time

    path = tmp_path / "v.h5"
    shutil.copy(small_two_time_file(tmp_path / "b.h5"), path)
    values = rows_from_stack(path)
    opens = []
    real_file = h5py.File

    def counting(name, *args, **kw):
        if str(name).endswith("stack.h5"):
            opens.append(name)
        return real_file(name, *args, **kw)

    monkeypatch.setattr(h5py, "File", counting)
    with open_two_time(path) as source:
        np.testing.assert_array_equal(source.read_rows(1, 0, values.shape[1]), values[1])
    assert len(opens) <= 3, len(opens)  # int9: 61


def test_the_shared_values_sweep_of_many_disjoint_slabs_is_fast_and_still_finds_a_shared_box(
        monkeypatch):
    """24 names of 4,000 boxes each, every name in its own slab of the first axis (a stack
    mapped row by row in segments): the sweep kept each slab's boxes open together and
    walked them for every box (int9: about 190 million steps, 19 s of open_two_time's 48 s on
    24 x 400 rows cut in 8). Now names whose bounding boxes do not meet are not swept (counted,
    not timed: the machines are shared). A box of name 5 read also by name 6 is still found."""
    from homodyne.data import h5storage
    from homodyne.data.h5storage import _overlapping_pair

    swept = []
    sweep = h5storage._sweep
    monkeypatch.setattr(h5storage, "_sweep", lambda items: swept.append(len(items)) or sweep(items))
    key = ("stack.h5", 1)
    found = [(f"c2_{a}", ((a, r, s * 50), (a, r, s * 50 + 49)), key)
             for a in range(24) for r in range(500) for s in range(8)]
    assert _overlapping_pair(found) is None
    assert swept == []  # int9: one sweep over all 96,000 boxes
    shared = found + [("c2_6", ((5, 17, 100), (5, 17, 149)), key)]
    pair = _overlapping_pair(shared)
    assert swept == [8001]  # only c2_5 and c2_6, whose bounding boxes meet
    assert pair is not None and {pair[0][0], pair[1][0]} == {"c2_5", "c2_6"}


def test_the_seeded_rule_with_a_descending_seed_range_says_one_line_and_exits_2(tmp_path, capsys):
    """benchmark.seeded.seeds '5-3' passed the schema's pattern and ended the rule in a
    ValueError traceback (probe27); now one line naming the key, exit 2, nothing written."""
    import runpy
    from pathlib import Path
    from types import SimpleNamespace

    from homodyne.cli import EXIT_USAGE

    snakemake = SimpleNamespace(
        params=SimpleNamespace(seeds="5-3", work_dir=str(tmp_path / "work")), threads=1,
        output=SimpleNamespace(jsonl=str(tmp_path / "s.jsonl"), md=str(tmp_path / "s.md")),
        log=[])
    script = Path(__file__).resolve().parents[1] / "workflow" / "scripts" / "bench_seeded.py"
    with pytest.raises(SystemExit) as stop:
        runpy.run_path(str(script), init_globals={"snakemake": snakemake})
    err = capsys.readouterr().err
    assert stop.value.code == EXIT_USAGE
    assert err.startswith("bench_seeded: error: benchmark.seeded.seeds: '5-3' is not a seed")
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not list(tmp_path.iterdir())
