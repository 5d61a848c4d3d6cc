"""Reading both APS two-time layouts, multi-tau, .npy, the generator and the block reader."""

import h5py
import numpy as np
import pytest
from helpers import make_spec, truth_for

from homodyne.data import DataFileError, generate_synthetic, open_two_time
from homodyne.data.multitau import read_multitau
from homodyne.data.twotime import q_bins
from homodyne.jaxconf import jnp
from homodyne.model import c2_matrices, c2_points, pack_upper


@pytest.fixture(scope="module")
def apsu_file(tmp_path_factory):
    spec = make_spec("static", n_frames=90, n_phi=3)
    path = tmp_path_factory.mktemp("d") / "syn.h5"
    info = generate_synthetic(path, spec, truth_for(spec), noise_sigma=0.01, seed=7,
                              block_rows=32, dtype="float64", extra_q=(0.02,))
    return path, info


def test_generator_roundtrip_and_attributes(apsu_file):
    path, info = apsu_file
    src = open_two_time(path, q=0.0054)
    assert src.layout == "aps_u" and src.storage == "upper"
    assert src.n_points == info.spec.n_points and src.frame_time == pytest.approx(0.1)
    y = src.read_packed()
    model = np.asarray(c2_points(info.true_parameters, jnp.arange(src.n_points), info.spec))
    noise = y - model
    assert abs(noise.std() - 0.01) < 0.001 and abs(noise.mean()) < 0.001
    assert src.attrs["seed"] == 7 and src.attrs["noise_sigma"] == 0.01
    np.testing.assert_array_equal(src.attrs["true_parameters"], info.true_parameters)


def test_generator_is_reproducible(tmp_path):
    spec = make_spec("laminar_flow", n_frames=40, n_phi=2)
    a = generate_synthetic(tmp_path / "a.h5", spec, truth_for(spec), seed=3, block_rows=16)
    b = generate_synthetic(tmp_path / "b.h5", spec, truth_for(spec), seed=3, block_rows=16)
    ya = open_two_time(a.path).read_packed()
    yb = open_two_time(b.path).read_packed()
    np.testing.assert_array_equal(ya, yb)
    with pytest.raises(FileExistsError):
        generate_synthetic(tmp_path / "a.h5", spec, truth_for(spec))


def test_q_far_from_every_bin_or_missing_is_refused_listing_the_bins(apsu_file):
    path, _ = apsu_file
    # default tolerance: 10% of the requested q
    with pytest.raises(DataFileError, match=r"no q bin within 0.0008 of q = 0.008 \(nearest "
                       r"0.0054; bins: 0.0054, 0.02\)"):
        open_two_time(path, q=0.008)
    assert open_two_time(path, q=0.0052).q == pytest.approx(0.0054)
    with pytest.raises(DataFileError, match=r"holds 2 q bins \(0.0054, 0.02\); choose one with "
                       r"experimental_data.q \(or q: all"):
        open_two_time(path)
    assert q_bins(path) == pytest.approx([0.0054, 0.02])


def test_q_phi_and_frame_selection(apsu_file):
    path, info = apsu_file
    full = open_two_time(path, q=0.0054).read_packed().reshape(3, -1)
    src = open_two_time(path, q=0.0060, q_tolerance=1e-3, phi_ranges=[(20, 80)])
    assert src.q == pytest.approx(0.0054) and src.q_tolerance == pytest.approx(0.0006)
    assert src.phi_deg == (25.0, 70.0)
    np.testing.assert_array_equal(src.read_packed().reshape(2, -1), full[1:])
    with pytest.raises(DataFileError, match="no q bin within 0.0001 of q = 0.01"):
        open_two_time(path, q=0.0100, q_tolerance=1e-4)
    with pytest.raises(DataFileError, match="no angle in phi ranges"):
        open_two_time(path, q=0.0054, phi_ranges=[(100, 120)])
    # frames 11..50 (1-based, inclusive) = the sub-matrix, fitted with first_frame=11
    sub = open_two_time(path, q=0.0054, start_frame=11, end_frame=50)
    assert sub.n_frames == 40 and sub.first_frame == 11
    with h5py.File(path) as h5:
        m = h5[src.dataset_names[0]][10:50, 10:50]
    np.testing.assert_array_equal(sub.read_packed().reshape(3, -1)[1], pack_upper(m))
    spec = sub.model_spec()
    model = np.asarray(c2_points(truth_for(spec), jnp.arange(spec.n_points), spec))
    assert np.abs(sub.read_packed() - model).std() < 0.012  # same physics on the sub-grid
    with pytest.raises(DataFileError, match="outside the data"):
        open_two_time(path, q=0.0054, start_frame=50, end_frame=200)


def test_older_layout_and_storage_detection(tmp_path):
    spec = make_spec("static", n_frames=30, n_phi=2)
    mats = c2_matrices(truth_for(spec), spec)
    path = tmp_path / "old.h5"
    with h5py.File(path, "w") as h5:
        h5["/xpcs/dqlist"] = np.array([[0.0054, 0.0054, 0.008]])
        h5["/xpcs/dphilist"] = np.array([[70.0, -20.0, 0.0]])
        h5["/exchange/C2T_all/c2_00001"] = np.tril(mats[1])  # lower half only
        h5["/exchange/C2T_all/c2_00002"] = mats[0]  # full
        h5["/exchange/C2T_all/c2_00003"] = np.triu(mats[0])
    src = open_two_time(path, q=0.005)
    assert src.layout == "aps_old" and src.phi_deg == (-20.0, 70.0)
    np.testing.assert_allclose(src.read_packed(), pack_upper(mats).ravel(), rtol=1e-15)
    src70 = open_two_time(path, q=0.005, phi_ranges=[(60, 80)])
    assert src70.storage == "lower"
    np.testing.assert_allclose(src70.read_packed(), pack_upper(mats[1]), rtol=1e-15)
    # the streaming reader (fixed buffers, rectangles right of the diagonal) agrees with
    # the row-block reader on every storage and on a frame sub-range
    for sub in (open_two_time(path, q=0.005), src70,
                open_two_time(path, q=0.005, start_frame=4, end_frame=27)):
        y = sub.read_packed()
        got = np.concatenate([buf[:n].copy() for _, buf, n in
                              sub.iter_points_into(7, sub.n_points, 100, ring=2,
                                                   target_points=64)])
        np.testing.assert_array_equal(got, y[7:])


@pytest.mark.parametrize("start,chunk", [(0, 1000), (123, 777), (5000, 64), (0, 10**6)])
def test_iter_points_is_the_packed_data_in_order(apsu_file, start, chunk):
    path, _ = apsu_file
    src = open_two_time(path, q=0.0054)
    y = src.read_packed()
    runs = list(src.iter_points(start, src.n_points - start, chunk, target_points=500))
    assert all(v.size == chunk for _, v in runs[:-1])
    assert [p for p, _ in runs] == list(range(start, src.n_points, chunk))
    np.testing.assert_array_equal(np.concatenate([v for _, v in runs]), y[start:])


def test_row_blocks_are_bounded(apsu_file):
    path, _ = apsu_file
    src = open_two_time(path, q=0.0054)
    sizes = [b.values.size for b in src.iter_row_blocks(target_points=300)]
    assert max(sizes) <= 300 + src.n_frames and sum(sizes) == src.n_points


def test_bad_files_name_the_file_and_problem(tmp_path, apsu_file):
    missing = tmp_path / "nope.h5"
    with pytest.raises(DataFileError, match="nope.h5: file does not exist"):
        open_two_time(missing)
    trunc = tmp_path / "trunc.h5"
    trunc.write_bytes(apsu_file[0].read_bytes()[:4000])
    with pytest.raises(DataFileError, match="trunc.h5"):
        open_two_time(trunc)
    wrong = tmp_path / "wrong.h5"
    with h5py.File(wrong, "w") as h5:
        h5["/xpcs/other"] = 1
    with pytest.raises(DataFileError, match="not an APS two-time result"):
        open_two_time(wrong)
    nan = tmp_path / "nan.npy"
    np.save(nan, np.full((10, 10), np.nan))
    with pytest.raises(DataFileError, match="no finite values"):
        open_two_time(nan)
    zeros = tmp_path / "zeros.h5"
    with h5py.File(zeros, "w") as h5:
        h5["/xpcs/qmap/dynamic_v_list_dim0"] = [0.005]
        h5["/xpcs/qmap/dynamic_v_list_dim1"] = [0.0]
        h5["/xpcs/twotime/processed_bins"] = [1]
        h5["/xpcs/twotime/correlation_map/c2_00001"] = np.zeros((8, 8))
    with pytest.raises(DataFileError, match="all zeros"):
        open_two_time(zeros)
    rect = tmp_path / "rect.npy"
    np.save(rect, np.ones((4, 5)))
    with pytest.raises(DataFileError, match="square"):
        open_two_time(rect)


def test_real_chx_matrix(real_data):
    src = open_two_time(real_data / "chx_two_time" / "test_g2.npy")
    assert src.n_frames == 350 and src.storage == "full" and src.n_points == 350 * 349 // 2
    y = src.read_packed()
    m = np.load(real_data / "chx_two_time" / "test_g2.npy", allow_pickle=False)
    np.testing.assert_array_equal(y, pack_upper(m))


def test_real_multitau_files(real_data):
    files = sorted((real_data / "aps_8idi_llps_aging").glob("*.hdf"))
    assert len(files) == 10
    first = read_multitau(files[0])
    last = read_multitau(files[-1])
    assert first.g2.shape == (61, 27) and first.q.size == 27
    assert first.tau[0] == pytest.approx(2e-5, rel=1e-6)
    age = (last.start_time - first.start_time).total_seconds()
    assert 7000 < age < 9000  # the README: the series spans about 7,900 s


def test_streaming_reader_memory_does_not_grow_with_matrix_width(tmp_path):
    """What the point reader allocates is its ring of buffers plus a read scratch of
    about target_points: the same for a 4x wider matrix (numpy allocations traced)."""
    import tracemalloc

    peaks = {}
    for n in (300, 1200):
        spec = make_spec("static", n_frames=n, n_phi=1)
        generate_synthetic(tmp_path / f"w{n}.h5", spec, truth_for(spec), noise_sigma=0.01,
                           seed=1, block_rows=64)
        src = open_two_time(tmp_path / f"w{n}.h5")
        tracemalloc.start()
        total = 0
        for _, _buf, k in src.iter_points_into(0, src.n_points, 4096, ring=3,
                                              target_points=8192):
            total += k
        peaks[n] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        src.close()
        assert total == src.n_points
    ring = 3 * 4096 * 8
    scratch = (8192 + 2 * 1200) * 4
    assert peaks[1200] <= ring + scratch + 64 * 1024, peaks
    # reading whole rows (the old way) would add ~90 rows x 900 columns x 12 bytes ~ 1 MB
    assert peaks[1200] - peaks[300] <= 64 * 1024, peaks
