"""Command line: ``homodyne --config FILE [--data-file F] [--output-dir D]``, ``homodyne
generate ...`` (synthetic datasets), ``homodyne validate --config FILE``.

Errors in the config or the data end the program with one clear message and exit
status 2, never a traceback from deep inside.
"""

from __future__ import annotations

import argparse
import logging
import sys

from homodyne import __version__

EXIT_USAGE = 2
EXIT_FIT_FAILED = 3


def _fit_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="homodyne", description="Fit two-time XPCS data (static or laminar flow).",
        epilog="Other commands: 'homodyne generate --help', 'homodyne validate --help'.")
    p.add_argument("--version", action="version", version=f"homodyne {__version__}")
    p.add_argument("--config", required=True, help="YAML configuration file")
    p.add_argument("--data-file", help="data file (overrides experimental_data.file_path)")
    p.add_argument("--output-dir", help="output folder (overrides output.directory)")
    p.add_argument("--q", type=_q_argument, help="q bin(s) to fit: a number, comma-separated "
                   "numbers, or 'all' (overrides experimental_data.q); several bins or files "
                   "give one fit per (file, q) and a summary.csv")
    p.add_argument("--strategy", choices=["standard", "large", "chunked", "streaming"],
                   help="force a tier (overrides performance.strategy_override)")
    p.add_argument("--overwrite", action="store_true", help="replace existing results")
    p.add_argument("--quiet", action="store_true", help="log warnings only")
    return p


def _generate_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="homodyne generate",
                                description="Write a synthetic two-time dataset (APS-U layout).")
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
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number, comma-separated numbers or 'all', got {text!r}") from None
    return values[0] if len(values) == 1 else values


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def generate_main(argv) -> int:
    from homodyne.data.synthetic import generate_synthetic
    from homodyne.model import ModelSpec

    a = _generate_parser().parse_args(argv)
    phys = _floats(a.physical) if a.physical else (
        [1e4, -0.5, 100.0] if a.mode == "static" else [1e4, -0.5, 100.0, 1e-5, 0.2, 1e-6, 5.0])
    spec = ModelSpec(mode=a.mode, q=a.q, dt=a.dt, n_frames=a.frames,
                     phi_deg=tuple(_floats(a.angles)), gap_h=a.gap_h, scaling=a.scaling)
    info = generate_synthetic(a.output, spec, spec.pack(a.contrast, a.offset, phys),
                              noise_sigma=a.noise, seed=a.seed, block_rows=a.block_rows,
                              dtype=a.dtype, overwrite=a.overwrite)
    print(f"wrote {info.path}: {info.n_points:,} points ({spec.n_phi} angles x "
          f"{spec.n_frames} frames), {spec.mode}, noise {a.noise}, seed {a.seed}")
    return 0


def validate_main(argv) -> int:
    from homodyne.config import load_config
    from homodyne.pipeline import model_spec, open_data, start_and_bounds

    p = argparse.ArgumentParser(prog="homodyne validate",
                                description="Validate a config and summarise its data.")
    p.add_argument("--config", required=True)
    p.add_argument("--data-file")
    a = p.parse_args(argv)
    cfg = load_config(a.config, overrides=_overrides(a))
    if cfg.is_multi:
        from homodyne.production.multiq import plan_jobs

        jobs = plan_jobs(cfg)
        print(f"{len(jobs)} fits, one per (file, q bin):")
        for j in jobs:
            print(f"  {j.file}  q bin {j.q_index} (q = {j.q:.6g}) -> {j.output_dir}")
        return 0
    with open_data(cfg) as src:
        spec = model_spec(cfg, src)
        p0, lb, ub = start_and_bounds(cfg, spec, src)
        print(f"{src.path}: layout {src.layout}, storage {src.storage}, q = {src.q:.6g}, "
              f"angles {list(spec.phi_deg)}, frames {src.first_frame}..{src.last_frame}, "
              f"{spec.n_points:,} points, {spec.mode} mode, {spec.n_params} parameters")
        for n, v, lo, hi in zip(spec.parameter_names, p0, lb, ub, strict=True):
            print(f"  {n:>20s} start {v: .6g} in [{lo:g}, {hi:g}]")
    return 0


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
    return o


def fit_main(argv) -> int:
    from homodyne.config import load_config
    from homodyne.pipeline import run_from_config

    a = _fit_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if a.quiet else logging.INFO,
                        format="%(levelname)s %(message)s", stream=sys.stderr)
    cfg = load_config(a.config, overrides=_overrides(a))
    if cfg.is_multi:
        return _fit_many(cfg, a.overwrite or None)
    run = run_from_config(cfg, overwrite=a.overwrite or None)
    print(run.result.summary())
    print(f"results in {run.output_dir}")
    return 0


def _fit_many(cfg, overwrite) -> int:
    """One fit per (file, q bin) in this process, then summary.csv and its plots."""
    from homodyne.production.multiq import run_all

    rows, summary = run_all(cfg, overwrite=overwrite)
    statuses = [r["status"] for r in rows]
    failed = sum(s.startswith("failed") for s in statuses)
    print(f"{len(rows)} fits ({statuses.count('ok')} ok, {failed} failed, "
          f"{len(rows) - failed - statuses.count('ok')} flagged); table in {summary}")
    return EXIT_FIT_FAILED if failed else 0


def main(argv=None) -> int:
    from homodyne.config import ConfigError
    from homodyne.data.errors import DataFileError
    from homodyne.optimization.exceptions import NLSQOptimizationError
    from homodyne.output import OutputExistsError
    from homodyne.pipeline import FitInterrupted

    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"generate": generate_main, "validate": validate_main}
    try:
        if argv and argv[0] in commands:
            return commands[argv[0]](argv[1:])
        return fit_main(argv)
    except (ConfigError, DataFileError, OutputExistsError, FileExistsError) as exc:
        print(f"homodyne: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except NLSQOptimizationError as exc:
        print(f"homodyne: fit failed: {exc}", file=sys.stderr)
        return EXIT_FIT_FAILED
    except FitInterrupted as exc:
        print(f"homodyne: {exc}", file=sys.stderr)
        return 128 + (2 if exc.result.interrupted_by == "SIGINT" else 15)


if __name__ == "__main__":
    sys.exit(main())
