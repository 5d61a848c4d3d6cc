"""Shared test helpers: small model specs, their true parameters, bounds and starts; tmpfs."""

import errno
import os
import subprocess
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy.optimize import least_squares

from homodyne.jaxconf import jax, jnp
from homodyne.model import ModelSpec, c2_points

REPO = Path(__file__).resolve().parents[1]
REAL_DATA = Path(os.environ.get("HOMODYNE_DATA_MIRROR", REPO.parent / "shared" / "data" / "real"))

STATIC_PHYS = [1.0e4, -0.5, 100.0]
LAMINAR_PHYS = [1.0e4, -0.5, 100.0, 1.0e-5, 0.2, 1.0e-6, 5.0]


def make_spec(mode="static", n_frames=60, n_phi=3, scaling="individual", **kw) -> ModelSpec:
    return ModelSpec(mode=mode, n_frames=n_frames, phi_deg=tuple(np.linspace(-20, 70, n_phi)),
                     scaling=scaling, **kw)


def truth_for(spec: ModelSpec) -> np.ndarray:
    k = spec.n_scaling_sets
    contrast = np.linspace(0.3, 0.2, k)
    offset = np.linspace(1.0, 1.02, k)
    phys = STATIC_PHYS if spec.mode == "static" else LAMINAR_PHYS
    return spec.pack(contrast, offset, phys)


def bounds_for(spec):
    k = spec.n_scaling_sets
    lo = [0.0] * k + [0.5] * k + [1.0, -2.0, -1000.0]
    hi = [1.0] * k + [1.5] * k + [1e5, 0.5, 1000.0]
    if spec.mode == "laminar_flow":
        lo += [1e-6, -2.0, -1e-2, -30.0]
        hi += [1.0, 2.0, 1e-2, 30.0]
    return np.array(lo), np.array(hi)


def start_for(spec, truth):
    """Physical parameters 20-25% off the truth (D_offset and the shear offset shifted)."""
    k = spec.n_scaling_sets
    p0 = truth.copy()
    phys = p0[2 * k :]
    phys *= np.array([1.25, 0.8, 1.2, 1.2, 0.8, 1.2, 1.2][: phys.size])
    p0[:k] *= 0.8
    return p0


def noisy_data(spec, truth, sigma=0.01, seed=0):
    y = np.asarray(c2_points(truth, jnp.arange(spec.n_points), spec))
    return y + np.random.default_rng(seed).normal(0, sigma, y.size)


def plain_start_case(n_frames):
    """A 2-angle static matrix of ``n_frames`` frames whose J(t) = 1e4 t^-0.5 + 300
    decreases (noise 0.02, seed 1), wide bounds and a plain start (J flat) the start
    estimate applies to: (spec, y, plain, lb, ub)."""
    spec = make_spec("static", n_frames=n_frames, n_phi=2)
    truth = spec.pack([0.3, 0.3], [1.0, 1.0], [1e4, -0.5, 300.0])
    lb = spec.pack(0.0, 0.5, [0.0, -2.0, -1e4])
    ub = spec.pack(1.0, 1.5, [1e6, 2.0, 1e4])
    plain = spec.pack([0.2, 0.2], [1.05, 1.05], [1e-3, 0.0, 0.0])
    return spec, noisy_data(spec, truth, 0.02, 1), plain, lb, ub


def scipy_reference(spec, y, p0, lb, ub):
    return trf(spec, y, p0, lb, ub, max_nfev=500).x


def chx_window(real_data, start_frame=1, end_frame=-1, min_contrast=0.0):
    """A window of the measured CHX matrix and its plain start: (spec, y, p0, lb, ub).
    Contrast and offset from estimate_scaling (contrast at least ``min_contrast``), D0
    small, alpha = 0, D_offset = 0; bounds D0 in [0, 1e3], alpha in [-2, 2], D_offset
    in [-1e3, 1e3]."""
    from homodyne.data import open_two_time
    from homodyne.pipeline import estimate_scaling

    src = open_two_time(real_data / "chx_two_time" / "test_g2.npy", q=1.0,
                        start_frame=start_frame, end_frame=end_frame)
    try:
        spec = src.model_spec(mode="static", dt=1.0, scaling="shared")
        y = src.read_packed()
        con, off = estimate_scaling(src, 0)
    finally:
        src.close()
    p0 = spec.pack(max(con, min_contrast), off, [1e-3, 0.0, 0.0])
    lb, ub = spec.pack(0.0, 0.5, [0.0, -2.0, -1e3]), spec.pack(1.0, 1.5, [1e3, 2.0, 1e3])
    return spec, y, p0, lb, ub


def trf(spec, y, p0, lb, ub, max_nfev=1000, free=None):
    """SciPy's TRF on the two-time model at full tolerance: the reference optimiser.
    ``free`` (a mask): only those parameters are fitted, the rest held at p0's values;
    the result's x and jac are then over the free ones."""
    g = jnp.arange(spec.n_points)
    fun = jax.jit(lambda p: c2_points(p, g, spec))
    jac = jax.jit(jax.jacfwd(lambda p: c2_points(p, g, spec)))
    p0 = np.asarray(p0, np.float64)
    free = np.ones(p0.size, bool) if free is None else np.asarray(free, bool)

    def full(z):
        p = p0.copy()
        p[free] = z
        return p

    return least_squares(lambda z: np.asarray(fun(full(z))) - y, p0[free],
                         jac=lambda z: np.asarray(jac(full(z)))[:, free],
                         bounds=(np.asarray(lb)[free], np.asarray(ub)[free]), method="trf",
                         x_scale="jac", ftol=1e-15, xtol=1e-15, gtol=1e-15, max_nfev=max_nfev)


def assert_matches(result, ref, tol_se=1e-3):
    dz = (result.parameters - ref) / result.uncertainties
    assert np.all(np.abs(dz) < tol_se), f"distance from scipy in SE: {dz}"


def engine_case(mode: str, n_frames: int, n_phi: int, seed: int = 0):
    """(spec, truth, noisy y, start 20-25% off, lb, ub, scipy TRF optimum) of one case."""
    spec = make_spec(mode, n_frames=n_frames, n_phi=n_phi)
    truth = truth_for(spec)
    y = noisy_data(spec, truth, seed=seed)
    lb, ub = bounds_for(spec)
    p0 = start_for(spec, truth)
    return spec, truth, y, p0, lb, ub, scipy_reference(spec, y, p0, lb, ub)


def small_two_time_file(path, n_frames: int = 30, n_phi: int = 2, seed: int = 3):
    """A small synthetic static two-time file (APS-U layout) at ``path``, for file tests."""
    from homodyne.data.synthetic import generate_synthetic

    spec = make_spec("static", n_frames=n_frames, n_phi=n_phi)
    generate_synthetic(path, spec, truth_for(spec), noise_sigma=0.01, seed=seed)
    return path


def gather_rule_job(folder: Path, job_dirs, summary: Path):
    """What Snakemake hands the workflow's gather_q_fits script: the bins' job.json,
    the summary path and the run's fit config (a multi-q config over one small file)."""
    import types

    data = small_two_time_file(folder / "gather_data.h5", n_frames=20)
    config = folder / "gather_fit.yaml"
    config.write_text(yaml.safe_dump({
        "analysis_mode": "static", "experimental_data": {"files": [str(data)], "q": "all"},
        "initial_parameters": {"values": [8000.0, -0.4, 80.0]}}))
    return types.SimpleNamespace(
        input=[str(Path(d) / "job.json") for d in job_dirs], log=[],
        output=types.SimpleNamespace(summary=str(summary)),
        params=types.SimpleNamespace(config=str(config), overrides={}))


def disk_with_room_for(monkeypatch, n_files: int) -> None:
    """Checkpoint writes fail with ENOSPC once the folder holds ``n_files`` checkpoints (a
    full disk, faked: no mount needed)."""
    import errno

    from homodyne.optimization import checkpoint_manager
    real = checkpoint_manager.atomic_path

    @contextmanager
    def atomic_path(path):
        if len(list(path.parent.glob("homodyne_state_batch_*.h5"))) >= n_files:
            raise OSError(errno.ENOSPC, "No space left on device")
        with real(path) as tmp:
            yield tmp

    monkeypatch.setattr(checkpoint_manager, "atomic_path", atomic_path)


@contextmanager
def tiny_tmpfs(tmp_path, size: str):
    """A tmpfs of ``size`` mounted at tmp_path/small for the test (root only: skipped else)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
                      capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


# first lines of a child's ``python -c``: SIGHUP at its default, as under a terminal (a
# test runner started with nohup passes it on ignored; a preexec_fn would fork under JAX)
HANGUP_DEFAULT = "import signal\nsignal.signal(signal.SIGHUP, signal.SIG_DFL)\n"


def streaming_cli_config(folder: Path) -> Path:
    """A 60-frame, 2-angle file and a streaming config for it (batch 500, no plots, no
    progress bar) in ``folder``: the CLI's quickest fit that still runs in batches."""
    from homodyne.cli import main

    assert main(["generate", "--output", str(folder / "data.h5"), "--frames", "60",
                 "--angles", "0,45", "--seed", "3"]) == 0
    raw = yaml.safe_load((REPO / "homodyne" / "examples" / "static.yaml").read_text())
    raw["experimental_data"]["file_path"] = str(folder / "data.h5")
    raw["output"] = {"plots": False}
    raw["performance"] = {"enable_progress": False, "strategy_override": "streaming",
                          "batch_size": 500}
    (folder / "cfg.yaml").write_text(yaml.safe_dump(raw))
    return folder / "cfg.yaml"


def multi_q_cli_config(folder: Path, n_frames: int = 20, more_q=(0.007, 0.009)) -> Path:
    """A static one-angle file with 1 + len(more_q) q bins and a config fitting them all
    (q: all) into ``folder``/out, no plots."""
    from homodyne.data.synthetic import generate_synthetic

    spec = ModelSpec(mode="static", n_frames=n_frames, phi_deg=(0.0,))
    generate_synthetic(folder / "d.h5", spec, spec.pack(0.3, 1.0, STATIC_PHYS), more_q=more_q)
    cfg = folder / "c.yaml"
    cfg.write_text(yaml.safe_dump({
        "analysis_mode": "static",
        "experimental_data": {"file_path": str(folder / "d.h5"), "q": "all"},
        "initial_parameters": {"values": STATIC_PHYS},
        "performance": {"enable_progress": False},
        "output": {"directory": str(folder / "out"), "plots": False}}))
    return cfg


@contextmanager
def stop_signals_at_default():
    """SIGINT, SIGTERM and SIGHUP at Python's defaults for a test that stops main()
    in-process, put back afterwards (after a stop the CLI ignores them for the rest of the
    process, which later tests and their children would inherit)."""
    import signal

    defaults = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL,
                signal.SIGHUP: signal.SIG_DFL}
    before = {s: signal.signal(s, h) for s, h in defaults.items()}
    try:
        yield
    finally:
        for s, h in before.items():
            signal.signal(s, h)


def lower_corner_case():
    """(spec, y, p0, bounds): 2 angles x 40 frames, truth D0 1e4, alpha -0.5, D_offset
    100, started on the physical lower corner (probe21 N2: J < 0 at the start)."""
    spec = make_spec("static", n_frames=40, n_phi=2)
    truth = spec.pack([0.3, 0.3], [1.0, 1.0], [1e4, -0.5, 100.0])
    y = noisy_data(spec, truth, sigma=0.01, seed=0)
    lb, ub = spec.pack(0.0, 0.5, [1.0, -2.0, -1e3]), spec.pack(1.0, 1.5, [1e5, 0.5, 1e3])
    return spec, y, spec.pack([0.3, 0.3], [1.0, 1.0], [1.0, -2.0, -1000.0]), (lb, ub)


def sigterm_at(at: int, fit):
    """``fit(callback)`` whose callback sends this process SIGTERM once, at the first
    batch >= ``at`` (signals at Python's defaults around it)."""
    import signal

    sent: list[int] = []

    def stop(batch, *_):
        if batch >= at and not sent:
            sent.append(batch)
            os.kill(os.getpid(), signal.SIGTERM)

    with stop_signals_at_default():
        return fit(stop)


def a_bin_folder(tmp_path: Path) -> Path:
    """A multi-q bin folder d/q00 holding a job.json and a parameters.json a fit wrote."""
    from homodyne.output import write_json

    folder = tmp_path / "d" / "q00"
    folder.mkdir(parents=True)
    write_json(folder / "job.json", {"file": "d.h5", "file_id": "d", "q_index": 0,
                                     "q": 0.005, "age_s": None, "settings": "x"})
    write_json(folder / "parameters.json", {
        "n_points": 870, "converged": True, "reduced_chi_squared": 1.0, "strategy": "standard",
        "passes": 4, "wall_time_s": 1.5, "data_file": "d.h5", "q": 0.005, "status": "converged",
        "parameters_by_name": {"D0": {"value": 1e4, "uncertainty": 12.0}}})
    return folder


def write_multitau(path, start, g2, err, tau_frames, q, frame_time):
    """A multi-tau (APS layout) one-time file: g2[tau, q] with errors and a start time."""
    import h5py

    with h5py.File(path, "w") as h5:
        h5["/xpcs/multitau/normalized_g2"] = g2
        h5["/xpcs/multitau/normalized_g2_err"] = err
        h5["/xpcs/multitau/delay_list"] = tau_frames
        h5["/entry/instrument/detector_1/frame_time"] = np.array([[frame_time]])
        h5["/entry/start_time"] = start.strftime("%Y-%m-%d %H:%M:%S")
        h5["/xpcs/qmap/dynamic_v_list_dim0"] = q
        h5["/xpcs/qmap/dynamic_v_list_dim1"] = np.zeros(1)


def aging_series(tmp_path, *, D0, alpha, Doff, offset, n=4):
    """n multi-tau files 1000 s apart (ages 500, 1500, ... s) of the aging J-model."""
    from homodyne.production.aging import integral_J

    rng = np.random.default_rng(2)
    tau_frames = np.unique(np.round(np.logspace(0, 5, 40))).astype(np.int64)
    tau = tau_frames * 2e-5
    q = np.array([0.005, 0.008, 0.011])
    t0 = datetime(2022, 3, 6, 21, 0, 0)
    paths = []
    for i in range(n):
        age = 1000.0 * i + 500.0
        I = np.asarray(integral_J(age, tau[:, None], D0, alpha, Doff))
        g2 = offset + 0.2 * np.exp(-q**2 * I)
        p = tmp_path / f"f{i}.hdf"
        write_multitau(p, t0 + timedelta(seconds=1000 * i), g2 + rng.normal(0, 0.003, g2.shape),
                       np.full_like(g2, 0.003), tau_frames, q, 2e-5)
        paths.append(p)
    return paths


def fit_state(x) -> dict:
    """A checkpoint state of a fit at parameters ``x`` (no partial sums, stage full)."""
    from homodyne.optimization.checkpoint_session import checkpoint_state

    return checkpoint_state([], solver=None, n_failed=0, recovery_actions=[],
                            excluded={"coarse": set(), "full": set()}, stage="full",
                            x=np.asarray(x, float), next_batch=0, partial=None)


def not_permitted(monkeypatch, *paths: Path) -> None:
    """Unlinking ``paths`` fails with EPERM, as for another user's file in a folder with
    the sticky bit (/tmp, a shared scratch folder); every other path as usual."""
    doomed = {os.path.abspath(p) for p in paths}
    real_unlink, real_path_unlink = os.unlink, Path.unlink

    def unlink(path, *args, **kw):
        if os.path.abspath(path) in doomed:
            raise PermissionError(errno.EPERM, "Operation not permitted", str(path))
        return real_unlink(path, *args, **kw)

    def path_unlink(self, missing_ok=False):
        if os.path.abspath(self) in doomed:
            raise PermissionError(errno.EPERM, "Operation not permitted", str(self))
        return real_path_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(os, "unlink", unlink)
    monkeypatch.setattr(Path, "unlink", path_unlink)


def multi_q_stop_line(*bins: str) -> str:
    """The CLI's last line for a multi-q run stopped by SIGTERM after ``bins`` (folder
    names under the run) were replaced."""
    import os

    return ("homodyne: interrupted (SIGTERM); bins fitted before the stop are kept: "
            f"{', '.join(os.path.join(*b.split('/')) for b in bins)}; the other bins' results "
            "are untouched")


def soft_link_over(path, name: str, target: str) -> None:
    """Replace the dataset ``name`` of the HDF5 file ``path`` by a soft link to ``target``."""
    import h5py

    with h5py.File(path, "r+") as h5:
        del h5[name]
        h5[name] = h5py.SoftLink(target)


def laminar_corner_case(n_frames=30, diffusion="lower", shear="lower", phi0="lower"):
    """(spec, y, p0, lb, ub): 3 angles x ``n_frames`` laminar data (truth_for, noise 0.01,
    seed 0, bounds_for) and a start on a corner of the box: D0/alpha/D_offset, the shear's
    gamma_dot_t0/beta/gamma_dot_t_offset and phi0 each on their "lower" or "upper" bounds,
    the scaling at the truth's (lam14)."""
    spec = make_spec("laminar_flow", n_frames=n_frames, n_phi=3)
    truth = truth_for(spec)
    lb, ub = bounds_for(spec)
    k = 2 * spec.n_scaling_sets
    p0 = truth.copy()
    for side, members in ((diffusion, (0, 1, 2)), (shear, (3, 4, 5)), (phi0, (6,))):
        for m in members:
            p0[k + m] = (lb if side == "lower" else ub)[k + m]
    return spec, noisy_data(spec, truth), p0, lb, ub


def virtual_over(path, name: str, source_file: str, source_name: str, index=None) -> None:
    """Replace the dataset ``name`` of the HDF5 file ``path`` by a virtual dataset of its
    shape mapping ``source_file``:``source_name`` (``index``: that slice of a larger one)."""
    import h5py

    with h5py.File(path, "r+") as h5:
        shape = h5[name].shape
        del h5[name]
        layout = h5py.VirtualLayout(shape=shape, dtype="f8")
        full = shape if index is None else (index + 1, *shape)
        src = h5py.VirtualSource(source_file, source_name, shape=full)
        layout[:] = src if index is None else src[index]
        h5.create_virtual_dataset(name, layout)


def virtual_chain(path, folder: Path, levels: int = 2) -> list[Path]:
    """The two-time matrices of ``path`` made virtual ``levels`` deep: ``path`` maps
    ``vds1.h5``, which maps ``vds2.h5``, ... whose last file stores the values (same
    dataset names in every file). Returns the source files, outermost first."""
    import h5py

    with h5py.File(path, "r") as h5:
        maps = h5["/xpcs/twotime/correlation_map"]
        values = {f"/xpcs/twotime/correlation_map/{k}": maps[k][()] for k in sorted(maps)}
    files = [Path(folder) / f"vds{k}.h5" for k in range(1, levels + 1)]
    with h5py.File(files[-1], "w") as inner:
        for name, v in values.items():
            inner[name] = v
    for outer, src in zip([Path(path), *files[:-1]], files, strict=True):
        if outer != Path(path):
            with h5py.File(outer, "w") as h5:
                for name, v in values.items():
                    h5[name] = v
        for name in values:
            virtual_over(outer, name, src.name, name)
    return files


# seed 2017 of the seeded comparison (homodyne.benchmarks.seeded on branch seed14): a
# laminar 1 angle x 74 frames case, float32 data, start 10x off the truth (lam14b)
SEED2017 = dict(
    phi_deg=(-28.230328401665602,), n_frames=74, sigma=0.010527195011722681,
    truth=[0.37697843785276014, 0.9962559390849565, 5326.067418533359, -1.0715516598744466,
           365.7969549660441, 0.0005009109580857284, 0.4203224907932539,
           2.0940365316098484e-05, 26.02094762755857],
    p0=[0.30158275028220816, 0.9962559390849565, 53260.67418533359, -1.5715516598744466,
        36.57969549660441, 5.0091095808572846e-05, -0.0796775092067461,
        2.0940365316098483e-06, 2.6020947627558573],
)


def seeded_laminar_case(c=SEED2017, dtype="float32"):
    """(spec, y, p0, lb, ub) of a seeded comparison case: its truth plus the noise of
    ``default_rng([2017, 1])`` (as the comparison draws it), shared scaling, bounds_for."""
    spec = ModelSpec(mode="laminar_flow", n_frames=c["n_frames"], phi_deg=c["phi_deg"],
                     scaling="shared", dtype=dtype)
    y = np.asarray(c2_points(np.asarray(c["truth"]), jnp.arange(spec.n_points),
                             ModelSpec(mode="laminar_flow", n_frames=c["n_frames"],
                                       phi_deg=c["phi_deg"], scaling="shared")))
    y = y + np.random.default_rng([2017, 1]).normal(0.0, c["sigma"], y.size)
    lb, ub = bounds_for(spec)
    return spec, y.astype(dtype), np.asarray(c["p0"]), lb, ub


def with_variable_length_labels(path):
    """Rewrite the text labels of a synthetic file's /homodyne/synthetic (mode, scaling,
    parameter_names) as variable-length strings, as homodyne generate wrote them before
    heap26: such files exist, and their strings live in a global heap."""
    import h5py

    with h5py.File(path, "r+") as h5:
        attrs = h5["/homodyne/synthetic"].attrs
        for name in ("mode", "scaling", "parameter_names"):
            value = attrs[name]
            text = [v.decode() if isinstance(v, bytes) else str(v) for v in np.atleast_1d(value)]
            del attrs[name]
            data = text[0] if np.ndim(value) == 0 else np.array(text, dtype=object)
            attrs.create(name, data, dtype=h5py.string_dtype())
    return path


def rows_from_stack(path, shared_row=None) -> np.ndarray:
    """The two matrices of a ``small_two_time_file`` copy made virtual row by row from
    ``stack.h5:all`` beside it (their values stacked; the stack written on the first call);
    with ``shared_row``, that row of angle 1 maps angle 0's row. Returns the stacked values."""
    import h5py

    c2 = "/xpcs/twotime/correlation_map"
    stack = Path(path).parent / "stack.h5"
    if not stack.exists():
        with h5py.File(path, "r") as h5:
            values = np.stack([h5[f"{c2}/{k}"][()] for k in ("c2_00001", "c2_00002")])
        with h5py.File(stack, "w") as st:
            st["all"] = values
    with h5py.File(stack, "r") as st:
        values = st["all"][()]
    with h5py.File(path, "r+") as h5:
        for a, k in enumerate(("c2_00001", "c2_00002")):
            del h5[f"{c2}/{k}"]
            layout = h5py.VirtualLayout(shape=values.shape[1:], dtype="f8")
            src = h5py.VirtualSource("stack.h5", "all", shape=values.shape)
            for r in range(values.shape[1]):
                layout[r, :] = src[0 if (a, r) == (1, shared_row) else a, r, :]
            h5[c2].create_virtual_dataset(k, layout)
    return values
