"""Subprocess for the kill-and-resume test: a streaming fit with checkpoints every batch.

usage: python resume_worker.py DATA.h5 CHECKPOINT_DIR OUT.json [slow]
"""

import json
import sys
import time

import numpy as np

from homodyne.data import open_two_time
from homodyne.optimization.engine import EngineOptions
from homodyne.optimization.nlsq_wrapper import NLSQWrapper


def main():
    data, ckpt, out = sys.argv[1:4]
    slow = len(sys.argv) > 4

    def callback(batch_idx, params, loss, success):
        if slow:
            time.sleep(0.03)  # widen the window in which a kill lands mid-pass
        return True

    src = open_two_time(data)
    spec = src.model_spec(mode="static")
    k = spec.n_scaling_sets
    p0 = spec.pack([0.25] * k, [1.0] * k, [8000.0, -0.4, 80.0])
    lb = spec.pack(0.0, 0.5, [1.0, -2.0, -1000.0])
    ub = spec.pack(1.0, 1.5, [1e5, 0.5, 1000.0])
    wrapper = NLSQWrapper(strategy_override="streaming", batch_size=2000,
                          options=EngineOptions(coarse_points=4000),
                          checkpoint_config={"enable_checkpoints": True, "checkpoint_dir": ckpt,
                                             "checkpoint_frequency": 1,
                                             "checkpoint_min_interval_s": 0.0,
                                             "keep_last_checkpoints": 3},
                          callback=callback)
    r = wrapper.fit_two_time(src, spec, p0, (lb, ub))
    with open(out, "w") as fh:
        json.dump({"parameters": [float(v).hex() for v in r.parameters],
                   "passes": r.passes, "resumed_from": r.streaming_diagnostics[
                       "resumed_from_batch"], "cost": float(r.cost).hex(),
                   "batches": r.streaming_diagnostics["total_batches_processed"]}, fh)
    print("done", np.asarray(r.parameters))


if __name__ == "__main__":
    main()
