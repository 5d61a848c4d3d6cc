"""The benchmark summary scores each run against issue 14's pass budgets."""

import pandas as pd

from homodyne.benchmarks.summary import _pass_count_rows


def _runs(*rows):
    return pd.DataFrame(rows, columns=["dataset", "mode", "tier", "n_points", "passes"])


def test_pass_budgets_score_the_worst_run_in_each_size_range():
    full = _runs(("laminar_1M", "laminar_flow", "STANDARD", 1.0e6, 8),
                 ("laminar_1M", "laminar_flow", "STREAMING", 1.0e6, 7),
                 ("laminar_10M", "laminar_flow", "LARGE", 1.0e7, 5),
                 ("laminar_1B", "laminar_flow", "STREAMING", 1.0e9, 6),
                 ("static_100M", "static", "CHUNKED", 1.0e8, 3))
    lam_small, lam_big, static = _pass_count_rows(full)  # in the order of PASS_BUDGETS
    assert "laminar_flow" in lam_small["target"] and "static" in static["target"]
    assert (lam_small["status"], lam_small["ours"]) == ("PASS", "8 (laminar_1M, STANDARD)")
    assert (lam_big["status"], lam_big["ours"]) == ("FAIL", "6 (laminar_1B, STREAMING)")
    assert (static["status"], static["ours"]) == ("PASS", "3 (static_100M, CHUNKED)")


def test_a_size_range_without_runs_is_reported_not_run():
    rows = _pass_count_rows(_runs(("static_1M", "static", "STANDARD", 1.0e6, 3)))
    assert {r["status"] for r in rows} == {"not run"}
    assert all("no run in this range" in r["note"] for r in rows)
