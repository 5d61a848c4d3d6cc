"""Command line: ``homodyne --config FILE [--data-file F] [--output-dir D]``, ``homodyne
generate ...`` (synthetic datasets), ``homodyne validate --config FILE``.

Errors in the config or the data end the program with one clear message and exit
status 2, never a traceback from deep inside.

Exit status: 0 fit converged; 2 bad input (config, data, output folder); 3 the fit
failed; 4 the fit did NOT converge (results are written, the warning is printed even
with --quiet); 5 with --strict only: the fit "converged" but every physical parameter is
on a bound or undetermined, or there are fewer points than parameters, or (sigma given)
its chi2 is far beyond a correct model's (status poor_fit); 130/143/129
SIGINT/SIGTERM/SIGHUP.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import sys
import threading
from contextlib import contextmanager

EXIT_USAGE = 2
EXIT_FIT_FAILED = 3
EXIT_NOT_CONVERGED = 4
EXIT_UNDETERMINED = 5
EXIT_CODES_HELP = ("exit status: 0 converged, 2 bad input, 3 fit failed, 4 NOT converged, "
                   "5 (--strict) converged but undetermined or a poor fit, 130/143/129 interrupted "
                   "(Ctrl-C/SIGTERM/SIGHUP)")


def _version_flag(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``--version`` on every command (``homodyne generate --version`` too)."""
    from homodyne import __version__

    p.add_argument("--version", action="version", version=f"homodyne {__version__}")
    return p


def _fit_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="homodyne",
        description="Fit two-time XPCS data (static or laminar flow) or one-time g2 "
                    "(analysis_mode: one_time, multi-tau HDF5 or a CSV/NPZ table).",
        epilog="Other commands: 'homodyne generate --help', 'homodyne validate --help'. "
               + EXIT_CODES_HELP + ".")
    _version_flag(p)
    p.add_argument("--config", required=True, help="YAML configuration file")
    p.add_argument("--data-file", type=_path_argument,
                   help="data file (overrides experimental_data.file_path)")
    p.add_argument("--output-dir", type=_path_argument,
                   help="output folder (overrides output.directory)")
    p.add_argument("--q", type=_q_argument, help="q bin(s) to fit: a number, comma-separated "
                   "numbers, or 'all' (overrides experimental_data.q); several bins or files "
                   "give one fit per (file, q) and a summary.csv; one number on a multi-q "
                   "config refits that bin in its folder <file>/q<NN> and refreshes the "
                   "summary.csv")
    from homodyne.optimization.strategy import TIER_NAMES

    p.add_argument("--strategy", choices=TIER_NAMES,
                   help="force a tier (overrides performance.strategy_override)")
    p.add_argument("--restarts", type=int, help="fit from N starts spread over the bounds "
                   "and keep the best (overrides optimization.restarts)")
    p.add_argument("--overwrite", action="store_true", help="replace existing results")
    p.add_argument("--quiet", action="store_true", help="log warnings only")
    p.add_argument("--strict", action="store_true",
                   help="exit 5 when the fit converged but determines no physical parameter "
                        "(all on bounds or undetermined), has fewer points than parameters, "
                        "or (data with sigma) fits poorly: chi2 p-value below 1e-6")
    return p


def _generate_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="homodyne generate",
                                description="Write a synthetic two-time dataset (APS-U layout).")
    _version_flag(p)
    p.add_argument("--output", required=True, help="HDF5 file to write")
    p.add_argument("--mode", choices=["static", "laminar_flow"], default="static")
    p.add_argument("--frames", type=int, default=500, help="frames per angle")
    p.add_argument("--angles", default="0", help="comma-separated angles in degrees")
    p.add_argument("--q", type=float, default=0.0054)
    p.add_argument("--dt", type=float, default=0.1)
    p.add_argument("--gap-h", type=float, default=2.0e6)
    p.add_argument("--scaling", choices=["individual", "shared"], default="individual")
    p.add_argument("--contrast", type=float, default=0.3)
    p.add_argument("--offset", type=float, default=1.0)
    p.add_argument("--physical", help="comma-separated physical parameters "
                   "(default: 1e4,-0.5,100 or 1e4,-0.5,100,1e-5,0.2,1e-6,5)")
    p.add_argument("--noise", type=float, default=0.01, help="Gaussian noise sigma")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--block-rows", type=int, default=256)
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--overwrite", action="store_true")
    return p


def _q_argument(text: str):
    if text.strip().lower() == "all":
        return "all"
    try:
        values = _floats(text)
        if not values:
            raise ValueError(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number, comma-separated numbers or 'all', got {text!r}") from None
    return values[0] if len(values) == 1 else values


def _path_argument(text: str) -> str:
    """A path option's value: never empty (``--data-file "$DATA"`` with DATA unset must not
    fall back to the config's file, nor ``--output-dir ""`` to the config's folder)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("empty; give a path (is a shell variable unset?)")
    return text


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def _checked_generate_args(p: argparse.ArgumentParser, argv):
    """Parse ``homodyne generate`` arguments; anything unusable is an argparse error
    (usage line, one message naming the option, exit 2) before any work starts."""
    import math
    import os
    import shutil

    from homodyne.data.synthetic import synthetic_file_bytes
    from homodyne.model import (
        LAMINAR_PARAMS,
        STATIC_PARAMS,
        angle_problem,
        frame_time_problem,
        same_angle_pair,
    )

    a = p.parse_args(argv)
    try:
        a.angle_list = _floats(a.angles)
    except ValueError:
        p.error(f"argument --angles: expected comma-separated numbers, got {a.angles!r}")
    if not a.angle_list:
        p.error("argument --angles: give at least one angle")
    if len(set(a.angle_list)) < len(a.angle_list):  # a file the fit refuses (one bin twice)
        p.error(f"argument --angles: an angle is given twice ({a.angles!r}); list each once")
    if angle_problem(a.angle_list):  # (1e300 was "one angle (equal modulo 360)" with 0)
        p.error(f"argument --angles: {angle_problem(a.angle_list)}")
    same = same_angle_pair(a.angle_list)
    if same:  # (0 and 360: one angle for the model, and the fit refuses such a file)
        p.error(f"argument --angles: {a.angle_list[same[0]]:g} and {a.angle_list[same[1]]:g} "
                "are one angle (equal modulo 360 degrees); list each once")
    names = STATIC_PARAMS if a.mode == "static" else LAMINAR_PARAMS
    try:
        a.phys = _floats(a.physical) if a.physical else None
    except ValueError:
        p.error(f"argument --physical: expected comma-separated numbers, got {a.physical!r}")
    for opt, values in (("angles", a.angle_list), ("physical", a.phys or []),
                        ("contrast", [a.contrast]), ("offset", [a.offset])):
        if not all(math.isfinite(v) for v in values):
            p.error(f"argument --{opt}: must be finite numbers, got "
                    f"{getattr(a, opt)!r}")
    if not 0 <= a.seed < 2**63:
        p.error(f"argument --seed: must be >= 0 and < 2**63, got {a.seed}")
    if a.phys is not None and len(a.phys) != len(names):
        p.error(f"argument --physical: {a.mode} mode needs {len(names)} values "
                f"({', '.join(names)}), got {len(a.phys)}")
    if a.frames < 2:
        p.error(f"argument --frames: need at least 2 frames, got {a.frames}")
    for opt in ("q", "dt", "gap_h", "block_rows"):
        v = getattr(a, opt)
        if not (math.isfinite(v) and v > 0):
            p.error(f"argument --{opt.replace('_', '-')}: must be > 0, got {v}")
    if not (math.isfinite(a.noise) and a.noise >= 0):
        p.error(f"argument --noise: must be >= 0, got {a.noise}")
    problem = frame_time_problem("--dt", a.dt)  # the range a fit accepts from the file
    if problem:
        p.error(f"argument --dt: {problem}")
    if a.output.lower().endswith(".npy"):  # the readers take a .npy file for a bare matrix
        p.error(f"argument --output: {a.output} would be an HDF5 file named .npy, which the "
                "fit refuses; name it .h5")
    out = os.path.abspath(a.output)
    folder = os.path.dirname(out)
    if os.path.isdir(out):
        p.error(f"argument --output: {a.output} is a folder; give a file name")
    if os.path.exists(out) and not a.overwrite:
        p.error(f"argument --output: {a.output} exists; pass --overwrite to replace it")
    while not os.path.exists(folder):  # missing folders are created: check the first that is
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK | os.X_OK):
        p.error(f"argument --output: cannot write into {folder} (a file or read-only); "
                "choose another --output")
    need = synthetic_file_bytes(a.frames, len(a.angle_list), block_rows=a.block_rows,
                                dtype=a.dtype)
    free = shutil.disk_usage(folder).free  # the writer reserves the room again, when it starts
    if need > free:
        p.error(f"argument --output: the file needs about {need / 2**20:.1f} MiB, {folder} has "
                f"{free / 2**20:.1f} MiB free; free space or choose another --output")
    return a


def check_jax_backend() -> None:
    """JAX's backend, started now, or one ConfigError naming JAX_PLATFORMS: a platform this
    machine lacks (cuda without a GPU, a typo) failed deep inside JAX at the first array,
    as a traceback (an empty AssertionError for cuda)."""
    from homodyne.config import ConfigError
    from homodyne.jaxconf import jax

    try:
        jax.devices()
    except (RuntimeError, AssertionError) as exc:
        why = str(exc).split(" (set JAX_PLATFORMS")[0] or "no backend could be initialised"
        platforms = os.environ.get("JAX_PLATFORMS", "")
        raise ConfigError("JAX_PLATFORMS", f"{platforms!r}: JAX cannot start it ({why}); "
                          "unset JAX_PLATFORMS or set it to cpu") from None


def generate_main(argv) -> int:
    import errno

    from homodyne.data.synthetic import NonFiniteSynthetic, generate_synthetic
    from homodyne.model import ModelSpec
    from homodyne.output import OutputDirError, file_size_limit_fix

    parser = _generate_parser()
    a = _checked_generate_args(parser, argv)
    check_jax_backend()
    phys = a.phys or (
        [1e4, -0.5, 100.0] if a.mode == "static" else [1e4, -0.5, 100.0, 1e-5, 0.2, 1e-6, 5.0])
    try:  # what the checks above let through and the model still refuses: one line
        spec = ModelSpec(mode=a.mode, q=a.q, dt=a.dt, n_frames=a.frames,
                         phi_deg=tuple(a.angle_list), gap_h=a.gap_h, scaling=a.scaling)
    except ValueError as exc:
        parser.error(f"arguments --q/--dt/--frames/--angles: {exc}")
    from homodyne.pipeline import MIN_POINTS_PER_PARAMETER

    needed = MIN_POINTS_PER_PARAMETER * (spec.n_physical + 2)  # the fewest any fit takes
    if spec.n_points < needed:  # a file every fit would refuse: not written
        parser.error(f"arguments --frames/--angles: {spec.shape_text} make "
                     f"{spec.n_points:,} points; a {spec.mode} fit needs at least "
                     f"{needed:,}: use more frames or angles")
    try:
        info = generate_synthetic(a.output, spec, spec.pack(a.contrast, a.offset, phys),
                                  noise_sigma=a.noise, seed=a.seed, block_rows=a.block_rows,
                                  dtype=a.dtype, overwrite=a.overwrite)
    except NonFiniteSynthetic as exc:  # nothing is written (the temporary file is removed)
        parser.error(f"arguments --physical/--contrast/--offset/--noise/--q/--dt: {exc}")
    except OSError as exc:  # e.g. the disk filled since the check; the file is not kept
        fix = ("free space or " if exc.errno in (errno.ENOSPC, errno.EDQUOT) else
               f"{file_size_limit_fix()} or " if exc.errno == errno.EFBIG else "")
        raise OutputDirError(f"could not write {a.output} ({exc.strerror or exc}); nothing was "
                             f"written: {fix}choose another --output") from None
    print(f"wrote {info.path}: {info.n_points:,} points ({spec.shape_text}), {spec.mode}, "
          f"noise {a.noise}, seed {a.seed}")
    return 0


def validate_main(argv) -> int:
    p = argparse.ArgumentParser(prog="homodyne validate",
                                description="Validate a config and summarise its data.")
    _version_flag(p)
    p.add_argument("--config", required=True)
    p.add_argument("--data-file", type=_path_argument)
    p.add_argument("--q", type=_q_argument, help="q bin(s), as for a fit (overrides "
                   "experimental_data.q)")
    a = p.parse_args(argv)
    with errors_name_options(a):
        return _validate(a)


def _validate(a) -> int:
    from homodyne.pipeline import check_points_kept, model_spec, open_data, start_and_bounds

    cfg = load_options_config(a)
    if cfg.analysis_mode == "one_time":
        return _validate_one_time(cfg)
    if cfg.is_multi:
        from homodyne.config import ConfigError
        from homodyne.data.errors import DataFileError
        from homodyne.production.multiq import check_job, plan_jobs

        jobs = plan_jobs(cfg)
        print(f"{len(jobs)} fits, one per (file, q bin):")
        unusable = 0
        for j in jobs:
            try:  # every job's data is checked, as for a single fit
                what = check_job(cfg, j)
            except (DataFileError, ConfigError) as exc:
                unusable += 1
                what = f"UNUSABLE: {exc}"
            print(f"  {j.file}  q bin {j.q_index} (q = {j.q:.6g}) -> {j.output_dir}: {what}")
        if unusable:
            print(f"homodyne: error: {unusable} of {len(jobs)} fits cannot run (listed above); "
                  "fix or remove those files", file=sys.stderr)
            return EXIT_USAGE
        return 0
    with open_data(cfg) as src:
        spec = model_spec(cfg, src)
        check_points_kept(src, spec, spec.n_points)  # as the run checks before its fit
        p0, lb, ub = start_and_bounds(cfg, spec, src)
        print(f"{src.path}: layout {src.layout}, storage {src.storage}, q = {src.q:.6g}, "
              f"angles {list(spec.phi_deg)}, frames {src.first_frame}..{src.last_frame}, "
              f"{spec.n_points:,} points, {spec.mode} mode, {spec.n_params} parameters")
        for n, v, lo, hi in zip(spec.parameter_names, p0, lb, ub, strict=True):
            print(f"  {n:>20s} start {v: .6g} in [{lo:g}, {hi:g}]")
    return 0


def _validate_one_time(cfg) -> int:
    """The one-time run's own checks (q_range, the delay window, usable bins, the aging
    series' files and ages) without fitting."""
    from homodyne.onetime.data import read_one_time
    from homodyne.onetime.fit import usable_bins
    from homodyne.onetime.run import options_from_config

    d = read_one_time(cfg.experimental_data["file_path"])
    lo, hi, usable = usable_bins(d, options_from_config(cfg))
    series = []
    if cfg.one_time["series"]:
        from homodyne.production.aging import load_series

        paths = [cfg.experimental_data["file_path"], *cfg.one_time["series"]]
        series = zip(*load_series(paths, cfg.one_time["ages_s"]), strict=True)
    print(f"{d.path}: one-time g2, {d.tau.size} delays {d.tau.min():.3g}-"
          f"{d.tau.max():.3g} s, {d.q.size} q bins {d.q.min():.4g}-{d.q.max():.4g} 1/Å, "
          f"{len(usable)} to fit with delays in [{lo:.3g}, {hi:.3g}] s, one_time mode "
          f"({', '.join(f'{k} {v}' for k, v in cfg.one_time.items())})")
    for f, age in series:
        print(f"  aging series: {f.path} at age {age:.6g} s")
    return 0


# command-line options that override a config key: an error in the value names the option
OPTION_KEYS = {"experimental_data.q": "--q", "optimization.restarts": "--restarts",
               "experimental_data.file_path": "--data-file", "output.directory": "--output-dir"}


def load_options_config(a):
    """load_config with the command line's overrides; a ConfigError about a value that
    came from an option names that option (``--q``), not the config file's key."""
    from homodyne.config import load_config

    with errors_name_options(a):
        return load_config(a.config, overrides=_overrides(a))


@contextmanager
def errors_name_options(a):
    """A ConfigError about a value that came from an option (``--q``, ``--restarts``), or
    a q far from every bin of the file when the q came from ``--q``, names that option
    instead of the config key the option overrode."""
    from homodyne.config import ConfigError
    from homodyne.data.errors import QBinError

    overrides = _overrides(a)
    try:
        yield
    except ConfigError as exc:
        for dotted, option in OPTION_KEYS.items():
            if dotted in overrides and (exc.key == dotted or exc.key.startswith(dotted + "[")
                                        or dotted.startswith(exc.key + ".")):
                raise ConfigError(option, exc.problem) from None
        raise
    except QBinError as exc:
        if "experimental_data.q" in overrides:
            raise exc.named(OPTION_KEYS["experimental_data.q"]) from None
        raise


def _overrides(a) -> dict:
    o = {}
    if getattr(a, "data_file", None):
        o["experimental_data.file_path"] = a.data_file
        o["experimental_data.files"] = None
    if getattr(a, "q", None) is not None:
        o["experimental_data.q"] = a.q
    if getattr(a, "output_dir", None):
        o["output.directory"] = a.output_dir
    if getattr(a, "strategy", None):
        o["performance.strategy_override"] = a.strategy
    if getattr(a, "restarts", None) is not None:
        o["optimization.restarts"] = a.restarts
    return o


def fit_main(argv) -> int:
    a = _fit_parser().parse_args(argv)
    configure_console_logging(quiet=a.quiet)
    with errors_name_options(a):
        return _fit(a)


def _fit(a) -> int:
    from homodyne.pipeline import run_from_config

    cfg = load_options_config(a)
    check_jax_backend()
    whole = None
    # one q bin of a multi-q config: its own folder, and the summary refreshed from every
    # bin's folder (also for a config of several files, which is itself multi: its table
    # lost the other bins' rows, with --output-dir too); one file and --output-dir: a
    # plain single fit in that folder
    if isinstance(a.q, float) and (cfg.is_multi or not a.output_dir):
        from homodyne.config import load_config

        overrides = _overrides(a)
        del overrides["experimental_data.q"]
        whole = load_config(a.config, overrides=overrides)
        whole = whole if whole.is_multi else None
    if cfg.is_multi or whole is not None:
        return _fit_many(cfg, a.overwrite or None, strict=a.strict, table_of=whole)
    run = run_from_config(cfg, overwrite=a.overwrite or None)
    try:
        print(run.result.summary())
        print(f"results in {run.output_dir}")
    except KeyboardInterrupt as stop:  # the new set is in place: the stop must not say
        from homodyne.output import StoppedAfterCommit  # the old one is untouched

        raise StoppedAfterCommit(run.output_dir) from stop
    return exit_status(run.result.status, strict=a.strict)


def exit_status(status: str, *, strict: bool) -> int:
    """0, or EXIT_NOT_CONVERGED, or (with --strict) EXIT_UNDETERMINED for a fit that
    determines nothing or fits poorly (poor_fit); the status itself is logged as a warning
    by the run."""
    if status == "not_converged":
        return EXIT_NOT_CONVERGED
    if strict and status in ("undetermined", "too_few_points", "poor_fit"):
        return EXIT_UNDETERMINED
    return 0


class _CurrentStderr(logging.StreamHandler):
    """A console handler that writes to whatever sys.stderr is when a record comes: one
    left from an earlier in-process main() (a notebook, a test's captured stream) must not
    write to a stream closed since ("Logging error: I/O operation on closed file")."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):  # StreamHandler.__init__ sets it: sys.stderr is looked up
        pass


def configure_console_logging(*, quiet: bool) -> None:
    """homodyne's INFO lines on stderr unless quiet (warnings always); other libraries
    (JAX's backend probing: "Unable to initialize backend 'tpu'") only from WARNING up."""
    handler = _CurrentStderr()
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    handler.setLevel(logging.WARNING if quiet else logging.INFO)
    handler.addFilter(lambda r: r.name.split(".")[0] == "homodyne"
                      or r.levelno >= logging.WARNING)
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_homodyne_console", False):
            root.removeHandler(h)
    handler._homodyne_console = True
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.getLogger("jax").setLevel(logging.WARNING)


_IMPORTING = "<frozen importlib._bootstrap"  # also matches _bootstrap_external


class _CtrlC:
    """SIGINT, SIGTERM or SIGHUP outside the fit: a KeyboardInterrupt. Where it would be lost it is
    re-sent every 20 ms until it lands outside: inside a gc callback (JAX has one) or any
    other place Python can only report it as 'Exception ignored' (a weakref callback, a
    __del__: ``unraisable``), and while a module is imported (raised inside a native
    module's initialisation, e.g. jaxlib's, it aborts the interpreter)."""

    def __init__(self, signals=(signal.SIGINT,)):
        self.signals = tuple(signals)
        self.previous = {s: signal.getsignal(s) for s in self.signals}
        self.previous_hook = sys.unraisablehook
        self.received = False
        self.delivered = False  # a KeyboardInterrupt was raised for it
        self.signum = signal.SIGINT
        self.resend: threading.Timer | None = None

    def install(self) -> None:
        for s in self.signals:
            signal.signal(s, self)
        sys.unraisablehook = self.unraisable

    def __call__(self, signum, frame):
        if self.delivered:  # the command is already stopping: a second KeyboardInterrupt
            return  # (a re-send, a second Ctrl-C) escaped its handler as a traceback
        self.received = True
        self.signum = signum
        callbacks = {getattr(cb, "__code__", None) for cb in gc.callbacks}
        while frame is not None:
            if frame.f_code in callbacks or frame.f_code.co_filename.startswith(_IMPORTING):
                self._resend_later()
                return
            frame = frame.f_back
        self.resend = None
        self.delivered = True
        raise KeyboardInterrupt

    def undelivered(self, status: int) -> bool:
        """Whether a stop came but never reached the command: re-sent while modules were
        imported until the command had ended (it then exited 0, the stop lost)."""
        return self.received and not self.delivered and status != 128 + self.signum

    @property
    def name(self) -> str:
        from homodyne.stopsignals import signal_name

        return signal_name(self.signum)

    def unraisable(self, info) -> None:
        """Our KeyboardInterrupt swallowed in a callback: sent again, not printed."""
        if self.received and isinstance(info.exc_value, KeyboardInterrupt):
            self.delivered = False  # swallowed where it was raised (a weakref callback)
            self._resend_later()
        else:
            self.previous_hook(info)

    def _resend_later(self) -> None:
        if self.resend is None:
            self.resend = threading.Timer(0.02, self._again, (self.signum,))
            self.resend.start()

    def _again(self, signum) -> None:
        self.resend = None  # a re-sent signal landing in a callback again re-arms it
        os.kill(os.getpid(), signum)

    def done(self) -> None:
        """After the command: a pending re-send is dropped, and once Ctrl-C was pressed a
        late one is ignored (the command is already ending with its message); otherwise
        the handler from before (Python's, or the console script's) is back. The handlers
        first: a re-send landing while the timer was cancelled raised out of ``finally``."""
        for s in self.signals:
            signal.signal(s, signal.SIG_IGN if self.received else self.previous[s])
        if self.resend is not None:
            self.resend.cancel()
        sys.unraisablehook = self.previous_hook


def _fit_many(cfg, overwrite, *, strict: bool = False, table_of=None) -> int:
    """One fit per (file, q bin) in this process, then summary.csv and its plots; the exit
    status of the worst fit (failed, then not converged, then --strict undetermined).
    ``table_of``: the multi-q config of which ``cfg`` selects one q (``--q``)."""
    from homodyne.production.multiq import OUTCOME, run_all

    rows, summary = run_all(cfg, overwrite=overwrite, table_of=table_of)
    statuses = [r["status"] for r in rows]
    failed = sum(s.startswith("failed") for s in statuses)
    print(f"{len(rows)} fits ({statuses.count('ok')} ok, {failed} failed, "
          f"{len(rows) - failed - statuses.count('ok')} flagged); table in {summary}")
    if failed:
        return EXIT_FIT_FAILED
    if any("not converged" in s for s in statuses):
        return EXIT_NOT_CONVERGED
    # each row's status word as read while the folder was locked (summary_row)
    return max((exit_status(r[OUTCOME], strict=strict) for r in rows), default=0)


def main(argv=None) -> int:
    """Run one command; Ctrl-C at any moment ends it with a message, never a traceback."""
    ctrl_c = None
    if threading.current_thread() is threading.main_thread():
        # SIGTERM (a batch system's stop) and SIGHUP (a closed terminal or ssh link) too:
        # staged files are removed, one message.
        # Python's defaults are replaced, and the console script's stop-at-once handlers
        # (homodyne.entry), which covered the imports; a caller's own handlers are kept
        from homodyne.stopsignals import STOP_SIGNALS

        ours = [s for s, default in STOP_SIGNALS
                if signal.getsignal(s) is default
                or getattr(signal.getsignal(s), "homodyne_replaceable", False)]
        ctrl_c = _CtrlC(ours) if ours else None
    try:
        if ctrl_c is not None:  # inside the try: a stop right after it is caught below
            ctrl_c.install()
        status = _main(argv)
        if ctrl_c is not None and ctrl_c.undelivered(status):
            print(f"homodyne: interrupted ({ctrl_c.name}) as the command ended; it had "
                  "completed (its output stands)", file=sys.stderr)
            return 128 + ctrl_c.signum
        return status
    except KeyboardInterrupt as stop:  # also while the package and JAX are still imported
        from homodyne.stopsignals import signal_name

        signum = ctrl_c.signum if ctrl_c is not None else signal.SIGINT
        kept = getattr(stop, "bins_kept", None)  # a multi-q run: the bins it replaced
        folder = getattr(stop, "folder", None)  # output.StoppedAfterCommit
        done = kept or (f"the results in {folder} were complete and are kept"
                        if folder is not None
                        else "results already in the output folder are untouched")
        print(f"homodyne: interrupted ({signal_name(signum)}); {done}", file=sys.stderr)
        return 128 + signum
    finally:
        if ctrl_c is not None:
            ctrl_c.done()


def _main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"generate": generate_main, "validate": validate_main}
    if argv and argv[0] in commands:
        return run_reporting_errors("homodyne", lambda: commands[argv[0]](argv[1:]))
    return run_reporting_errors("homodyne", lambda: fit_main(argv))


def run_reporting_errors(prog: str, body) -> int:
    """``body()``'s exit status, or the status of the error it raised, said in one line
    on stderr (no traceback): the CLI and the workflow's rule scripts exit alike."""
    from homodyne.config import ConfigError
    from homodyne.data.errors import DataFileError
    from homodyne.optimization.checkpoint_session import RERUN_SAME
    from homodyne.optimization.exceptions import NLSQMemoryError, NLSQOptimizationError
    from homodyne.output import OutputDirError, OutputExistsError
    from homodyne.pipeline import WRITE_FAILURES, FitInterrupted, write_failure

    try:
        return body()
    except (ConfigError, DataFileError, OutputExistsError, OutputDirError,
            FileExistsError, NLSQMemoryError) as exc:
        # (a memory limit below the fit's minimum is a setting to change, like a bad key)
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except NLSQOptimizationError as exc:
        print(f"{prog}: fit failed: {exc}", file=sys.stderr)
        return EXIT_FIT_FAILED
    except OSError as exc:  # a production fit's set (committed_set) out of room or size
        if exc.errno not in WRITE_FAILURES:  # (an OSError traceback in the rule's log)
            raise
        print(f"{prog}: error: {write_failure(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except FitInterrupted as exc:
        kept = getattr(exc, "bins_kept", None)  # a multi-q run: the bins it replaced
        said = str(exc)
        if getattr(exc, "rerun", None):  # ... and the same command is refused now
            said = said.replace(RERUN_SAME, exc.rerun)
        print(f"{prog}: {said}{f'; {kept}' if kept else ''}", file=sys.stderr)
        return 128 + signal.Signals[exc.result.interrupted_by]

if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # Ctrl-C while Python itself was still starting up
        sys.exit(130)
