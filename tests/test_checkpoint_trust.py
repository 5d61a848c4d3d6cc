"""Checkpoints under faults (issue 12): bytes verified before HDF5 parses them, bounded and
checked reading, a data fingerprint that sees in-place edits, other fits' files left alone,
and failed saves that only warn."""

import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
from helpers import make_spec, truth_for

from homodyne.data import open_two_time
from homodyne.data.synthetic import generate_synthetic
from homodyne.optimization import checkpoint_manager as cm
from homodyne.optimization.checkpoint_manager import CheckpointManager
from homodyne.optimization.exceptions import NLSQCheckpointError
from homodyne.optimization.nlsq_wrapper import NLSQWrapper, _source_identity


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckdata")
    spec = make_spec("static", n_frames=120, n_phi=2)
    generate_synthetic(d / "a.h5", spec, truth_for(spec), noise_sigma=0.01, seed=3)
    big = make_spec("static", n_frames=200, n_phi=2)
    generate_synthetic(d / "big.h5", big, truth_for(big), noise_sigma=0.01, seed=5)
    return d


def _fit(path, ck, *, resume=True, keep=3, **kw):
    src = open_two_time(path)
    spec = src.model_spec()
    k = spec.n_scaling_sets
    p0 = spec.pack([0.25] * k, [1.0] * k, [8000.0, -0.4, 80.0])
    bounds = (spec.pack(0.0, 0.5, [1, -2, -1000]), spec.pack(1.0, 1.5, [1e5, 0.5, 1000]))
    w = NLSQWrapper(strategy_override="streaming", batch_size=2000, **kw,
                    checkpoint_config={"enable_checkpoints": True, "checkpoint_dir": str(ck),
                                       "checkpoint_frequency": 1,
                                       "checkpoint_min_interval_s": 0.0,
                                       "resume_from_checkpoint": resume,
                                       "keep_last_checkpoints": keep})
    with src:
        return w.fit_two_time(src, spec, p0, bounds)


@pytest.fixture(scope="module")
def real_checkpoints(data, tmp_path_factory):
    ck = tmp_path_factory.mktemp("ck")
    _fit(data / "a.h5", ck)
    return ck


SWEEP = """
import sys, numpy as np
from homodyne.optimization.checkpoint_manager import CheckpointManager
from homodyne.optimization.exceptions import NLSQCheckpointError
src, work, step = sys.argv[1], sys.argv[2], int(sys.argv[3])
m = CheckpointManager(work)
good = m.load_checkpoint(src)
raw = open(src, "rb").read()
offsets = sorted(set(range(0, len(raw), step)) | set(range(len(raw) - 112, len(raw))))
refused = same = 0
for off in offsets:
    b = bytearray(raw)
    b[off] ^= 1 << (off % 8)
    open(work + "/homodyne_state_batch_0001.h5", "wb").write(bytes(b))
    try:
        got = m.load_checkpoint(work + "/homodyne_state_batch_0001.h5")
    except NLSQCheckpointError:
        refused += 1
        continue
    assert got.keys() == good.keys(), off
    for k in good:
        assert np.array_equal(np.asarray(got[k]), np.asarray(good[k])), (off, k)
    same += 1
print("SWEEP", len(offsets), refused, same)
"""


def test_single_byte_flips_are_always_refused_never_a_crash(real_checkpoints, tmp_path):
    newest = CheckpointManager(real_checkpoints).find_latest_valid_checkpoint()
    size = newest.stat().st_size
    proc = subprocess.run([sys.executable, "-c", SWEEP, str(newest), str(tmp_path),
                           str(max(1, size // 400))], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]  # a segfault would be -11
    n, refused, same = map(int, proc.stdout.split("SWEEP")[1].split())
    assert n >= 400 and refused + same == n and refused == n  # every flip hits the digest


def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(real_checkpoints,
                                                                     tmp_path, caplog):
    m = CheckpointManager(tmp_path)
    files = CheckpointManager(real_checkpoints).list_checkpoints()
    for p in files:
        (tmp_path / p.name).write_bytes(p.read_bytes())
    newest = tmp_path / files[-1].name
    raw = bytearray(newest.read_bytes())
    raw[len(raw) // 3] ^= 0x10  # in the HDF5 metadata or data: HDF5 never sees it
    newest.write_bytes(bytes(raw))
    assert m.find_latest_valid_checkpoint().name == files[-2].name
    assert "digest mismatch (the file changed after it was written)" in caplog.text


def _sealed(path, fields: dict, attrs: dict, fingerprint="f" * 64):
    """A file in checkpoint layout with a valid trailer: what a crafted file can look like."""
    with h5py.File(path, "w") as h5:
        for k, v in fields.items():
            if isinstance(v, tuple):  # declared shape only: chunked, compressed fill value
                h5.create_dataset(k, shape=v, dtype="f8", chunks=tuple(min(100, d) for d in v),
                                  compression="gzip")
            else:
                h5[k] = v
        h5.attrs.update({"batch_idx": 3, "fingerprint": fingerprint, "n_passes": 1, **attrs})
    cm._append_trailer(path, fingerprint)
    return path


def test_fields_are_checked_before_they_are_read(tmp_path):
    import resource

    m = CheckpointManager(tmp_path)
    ok = {"current_x": np.ones(3), "pass_x": np.ones((1, 3)), "pass_H": np.ones((1, 3, 3))}
    assert m.validate_checkpoint(_sealed(tmp_path / "homodyne_state_batch_0001.h5", ok, {}))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    huge = _sealed(tmp_path / "huge.h5", {**ok, "junk": (20000, 20000)}, {})
    assert huge.stat().st_size < 200_000
    with pytest.raises(NLSQCheckpointError, match=r"declares more than 268435456 bytes"):
        m.load_checkpoint(huge)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # < 200 MB
    cases = [
        ({**ok, "pass_H": (3, 3)}, {}, r"pass_H has shape \(3, 3\), expected \(1, 3, 3\)"),
        ({**ok, "current_x": np.array([1.0, np.nan, 2.0])}, {}, "current_x is not finite"),
        (ok, {"batch_idx": -4}, r"batch_idx = -4 is not a non-negative integer"),
        (ok, {"n_passes": 2}, r"pass_H has shape \(1, 3, 3\), expected \(2, 3, 3\)"),
        ({"current_x": np.ones((2, 2))}, {}, r"parameter vector of shape \(2, 2\)"),
    ]
    for i, (fields, attrs, message) in enumerate(cases):
        path = _sealed(tmp_path / f"case{i}.h5", fields, attrs)
        with pytest.raises(NLSQCheckpointError, match=message):
            m.load_checkpoint(path)
    with h5py.File(tmp_path / "partial.h5", "w") as h5:
        h5["current_x"] = np.ones(3)
        h5["partial/H"] = np.full((3, 3), np.inf)
        h5.attrs.update({"batch_idx": 1, "n_passes": 0, "fingerprint": "x"})
    cm._append_trailer(tmp_path / "partial.h5", "x")
    with pytest.raises(NLSQCheckpointError, match="partial/H is not finite"):
        m.load_checkpoint(tmp_path / "partial.h5")


def test_data_edited_in_place_changes_the_fingerprint(data, tmp_path):
    path = tmp_path / "d.h5"
    path.write_bytes((data / "a.h5").read_bytes())
    src = open_two_time(path)
    before = _source_identity(src)
    src.close()
    st = os.stat(path)
    with h5py.File(path, "r+") as h5:  # a block in the middle of one angle's matrix
        ds = h5["/xpcs/twotime/correlation_map/c2_00001"]
        ds[50:58, 70:78] = ds[50:58, 70:78] * 1.01
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # even with the old mtime
    assert os.stat(path).st_size == st.st_size
    src = open_two_time(path)
    assert _source_identity(src) != before
    src.close()


def test_in_place_edit_after_a_finished_run_is_not_resumed(data, tmp_path):
    path = tmp_path / "d.h5"
    path.write_bytes((data / "a.h5").read_bytes())
    first = _fit(path, tmp_path / "ck")
    again = _fit(path, tmp_path / "ck")
    assert again.streaming_diagnostics["resumed_from_batch"] is not None  # same data: resumes
    with h5py.File(path, "r+") as h5:
        ds = h5["/xpcs/twotime/correlation_map/c2_00002"]
        ds[40:80, 60:100] = ds[40:80, 60:100] + 0.05
    edited = _fit(path, tmp_path / "ck")
    assert edited.streaming_diagnostics["resumed_from_batch"] is None
    assert not np.array_equal(edited.parameters, first.parameters)


def test_resume_off_in_a_folder_of_another_fit_keeps_progress(data, tmp_path):
    ck = tmp_path / "ck"
    _fit(data / "big.h5", ck)  # another fit: higher batch numbers
    others = {p.name: p.read_bytes() for p in ck.glob("homodyne_state_batch_*.h5")}
    mine = _fit(data / "a.h5", ck, resume=False)
    assert mine.streaming_diagnostics["resumed_from_batch"] is None
    for name, raw in others.items():  # never pruned, never rewritten
        assert (ck / name).read_bytes() == raw
    m = CheckpointManager(ck)
    ours = [p for p in m.list_checkpoints() if p.name not in others]
    assert len(ours) == 3  # keep_last_checkpoints of this fit, the newest among them
    rerun = _fit(data / "a.h5", ck)
    assert rerun.streaming_diagnostics["resumed_from_batch"] == \
        int(ours[-1].name[21:-3])
    np.testing.assert_array_equal(rerun.parameters, mine.parameters)


def test_a_save_failing_with_runtime_error_only_warns(data, tmp_path, monkeypatch):
    real = CheckpointManager.save_checkpoint
    calls = {"n": 0}

    def full_disk(self, batch_idx, state, **kw):
        calls["n"] += 1
        if calls["n"] == 2 or state["current_stage"] == "done":  # also the final save
            raise RuntimeError("Can't decrement id ref count (file write failed: "
                               "errno = 28, error message = 'No space left on device')")
        return real(self, batch_idx, state, **kw)

    monkeypatch.setattr(CheckpointManager, "save_checkpoint", full_disk)
    r = _fit(data / "a.h5", tmp_path / "ck")
    errors = r.streaming_diagnostics["checkpoint_errors"]
    assert r.converged and len(errors) == 2, errors
    assert all("No space left on device" in e for e in errors)
    m = CheckpointManager(tmp_path / "ck")
    assert m.list_checkpoints() and all(m.validate_checkpoint(p) for p in m.list_checkpoints())
