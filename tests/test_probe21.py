"""probe21: a fresh probing round (issue 12) over the final merged code; each test
fails on main 035b4f1."""

import os
import signal

import numpy as np
from helpers import make_spec, noisy_data, stop_signals_at_default


def test_a_stop_during_the_refit_from_inside_a_start_bound_says_it_was_interrupted():
    """SIGTERM while a fit that ended on the bound its start lay on is refitted from a
    quarter of the range inside: the stop was taken for the refit's end, the first end
    kept (converged first) with its reason, and the CLI's line said 'homodyne:
    Gauss-Newton step 1.87e-12 standard errors <= 0.0001, ...' with exit 143. The stop
    is the result's reason now, as for a stop in any other stage."""
    from homodyne.optimization.nlsq_wrapper import NLSQWrapper

    spec = make_spec("static", n_frames=40, n_phi=2)  # test_f8's case: refit after 2 passes
    truth = spec.pack([0.14, 0.44], [0.98, 0.96], [731.4, -1.0919, -86.78])
    y = noisy_data(spec, truth, sigma=6.78e-3, seed=0)
    lb, ub = spec.pack(0.0, 0.5, [1.0, -2.0, -1e3]), spec.pack(1.0, 1.5, [1e5, 0.5, 1e3])
    p0 = truth * np.random.default_rng(0).uniform(0.8, 1.2, truth.size)
    p0[-3:] = [722.76, -1.0281, -1000.0]
    sent = []

    def stop_in_the_refit(batch, *_):
        if batch >= 4 and not sent:  # the first end took 2 passes of one batch each
            sent.append(batch)
            os.kill(os.getpid(), signal.SIGTERM)

    with stop_signals_at_default():
        result = NLSQWrapper(callback=stop_in_the_refit).fit_two_time(
            None, spec, p0, (lb, ub), y=y, fixed=["D0", "alpha"])
    assert sent
    assert result.interrupted_by == "SIGTERM", result.summary()
    assert result.stop_reason.startswith("interrupted by SIGTERM"), result.stop_reason
    assert not result.converged


def test_a_multi_q_table_reads_back_the_result_of_a_360_angle_fit(tmp_path):
    """A multi-q fit of a file with 360 angles (723 parameters) wrote its parameters.json
    (21.9 MB: the covariance and normal matrix as text) and then refused it: 'unreadable
    (larger than the 16,777,216 bytes such a file has); it is not a result of this run
    (edited or copied in?)', exit 2 after the fit. A result of that size is read back."""
    import json

    from helpers import a_bin_folder

    from homodyne.output import write_json
    from homodyne.production.multiq import summary_row

    folder = a_bin_folder(tmp_path)
    result = json.loads((folder / "parameters.json").read_text())
    n = 723  # 360 angles x (contrast, offset) + D0, alpha, D_offset
    rows = np.random.default_rng(0).normal(size=(n, n)).tolist()
    write_json(folder / "parameters.json", {**result, "covariance": rows, "normal_matrix": rows})
    assert (folder / "parameters.json").stat().st_size > 16 << 20
    row = summary_row(folder)
    assert row["D0"] == 1e4 and row["n_points"] == 870
