"""Structure: the public API, the import layering (README "How the engine works"), and a
static type check of the engine and the model."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Layer of each module (prefix match, longest wins): a module may import only from its
# own layer or lower ones, and the import graph has no cycle.
LAYERS = {
    "homodyne": 0,  # the package root: __version__ and the lazy public names
    "homodyne.jaxconf": 0,
    "homodyne.jaxcache": 0,  # compilation cache entries checked against key and digest
    "homodyne.memory": 0,
    "homodyne.output": 0,
    "homodyne.plots": 0,
    "homodyne.realdata": 0,
    "homodyne.rulelog": 0,
    "homodyne.stopsignals": 0,  # the signals that stop a run, and their names
    "homodyne.earlystop": 0,  # the command's stop-at-once handlers, set at its first line
    "homodyne.data.errors": 0,
    "homodyne.optimization.exceptions": 0,
    "homodyne.optimization.settings": 0,
    "homodyne.optimization.covariance": 0,
    "homodyne.optimization.progress": 0,
    "homodyne.optimization.recovery_strategies": 0,
    "homodyne.optimization.precision": 0,
    "homodyne.model": 1,
    "homodyne.data": 2,
    "homodyne.data.npyfile": 2,  # .npy/.npz headers checked before any data are read
    "homodyne.data.h5storage": 2,  # HDF5 storage that would read zeros/fill values refused
    "homodyne.data.vlenheap": 2,  # variable-length strings checked in raw bytes (no hang)
    "homodyne.optimization.problems": 2,
    "homodyne.optimization.sources": 2,
    "homodyne.optimization.interfaces": 2,  # the protocols name problems' and sources' types
    "homodyne.optimization.strategy": 2,
    "homodyne.optimization.result": 2,
    "homodyne.optimization.checkpoint_manager": 2,
    "homodyne.optimization.engine": 3,
    "homodyne.optimization.saddle": 3,
    "homodyne.optimization.kink": 3,  # a stalled fit at a minimum on a kink of the cost
    "homodyne.optimization.curvature": 3,  # JᵀJ corrected along the last step (secant)
    "homodyne.optimization.geodesic": 3,  # opt-in geodesic acceleration's directional pass
    "homodyne.optimization.checkpoint_session": 3,
    "homodyne.optimization.fixed": 3,
    "homodyne.optimization.coordinates": 3,
    "homodyne.optimization.start_estimate": 3,  # opt-in data-driven start of J(t)
    "homodyne.optimization.passes": 4,
    "homodyne.optimization.internal_stage": 5,  # the internal-coordinate stage of a fit
    "homodyne.optimization.driver": 5,
    "homodyne.optimization.restarts": 5,
    "homodyne.optimization.nlsq_backend": 6,
    "homodyne.optimization.nlsq_wrapper": 6,
    "homodyne.optimization": 6,
    "homodyne.config": 7,
    "homodyne.fitrun": 7,
    "homodyne.onetime.data": 2,
    "homodyne.onetime.fit": 7,
    "homodyne.production.aging": 7,  # a fitting function over the data and the engine
    "homodyne.onetime": 8,
    "homodyne.pipeline": 8,
    "homodyne.cli": 9,
    "homodyne.production": 9,
    "homodyne.benchmarks": 9,
    "homodyne.benchmarks.seeded": 9,  # the seeded comparison against SciPy's TRF
    "homodyne.entry": 10,  # the console script: signal handlers first, then the CLI
    "homodyne.__main__": 10,  # python -m homodyne: the console script's main
}


def _layer(module: str) -> int:
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return LAYERS[best]


def _import_graph() -> dict[str, set[str]]:
    """Every homodyne import of every module, module-level and inside functions alike."""
    graph = {}
    for path in sorted((REPO / "homodyne").rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("homodyne"):
                deps.add(node.module)
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("homodyne")}
        graph[module] = deps - {module}
    return graph


def test_imports_follow_the_layers_and_have_no_cycle():
    graph = _import_graph()
    upward = [f"{m} (layer {_layer(m)}) imports {d} (layer {_layer(d)})"
              for m, deps in graph.items() for d in deps if _layer(d) > _layer(m)]
    assert not upward, "\n".join(upward)
    state: dict[str, int] = {}

    def visit(m, stack):
        state[m] = 1
        for d in graph.get(m, ()):
            assert state.get(d) != 1, f"import cycle: {' -> '.join([*stack, m, d])}"
            if d not in state:
                visit(d, [*stack, m])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [])


def test_public_api_is_lazy_and_the_guide_paths_still_work():
    code = (
        "import sys, homodyne\n"
        "assert 'jax' not in sys.modules and 'homodyne.optimization' not in sys.modules\n"
        "from homodyne import (NLSQWrapper, FitResult, ModelSpec, open_two_time, load_config,\n"
        "                      run_from_config)\n"
        "from homodyne.optimization.nlsq_wrapper import NLSQWrapper as W\n"
        "from homodyne.optimization.result import FitResult as R\n"
        "from homodyne.optimization.engine import EngineOptions\n"
        "from homodyne.config import load_config as L\n"
        "assert W is NLSQWrapper and R is FitResult and L is load_config\n"
        "print(sorted(homodyne.__all__))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(sorted(
        ["__version__", "NLSQWrapper", "FitResult", "ModelSpec", "open_two_time", "load_config",
         "run_from_config"]))
    import homodyne

    with pytest.raises(AttributeError, match="no attribute 'fit'"):
        homodyne.fit  # noqa: B018


def test_engine_and_model_pass_a_static_type_check():
    """mypy at its basic level (settings in pyproject) over homodyne/optimization and
    homodyne/model.py."""
    api = pytest.importorskip("mypy.api")
    stdout, stderr, status = api.run(["--config-file", str(REPO / "pyproject.toml"),
                                      str(REPO / "homodyne" / "optimization"),
                                      str(REPO / "homodyne" / "model.py")])
    assert status == 0, stdout + stderr
