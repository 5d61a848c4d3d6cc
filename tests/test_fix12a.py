"""Findings of the probe rounds that were recorded but left (issue 12): the compilation
cache's entries checked against their key and digest, a multi-start fit's report, and the
multi-q root folder."""

import os
import subprocess
import sys

from homodyne.jaxcache import unpack_entry
from homodyne.jaxconf import jax

# kernels compiled in a fresh process with the cache in ``folder``: their exact values
_KERNELS = """
from homodyne.jaxconf import jax, jnp
f = jax.jit(lambda x: jnp.sum(jnp.sin(x) * jnp.exp(-x / 3.0)) + jnp.linalg.norm(x))
x = jnp.arange(1000.0)
print(float(f(x)).hex(), float(jnp.cumsum(x ** 2)[-1]).hex(),
      jax.config.jax_compilation_cache_dir)
"""


def _compile_with_cache(folder, before="") -> tuple[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env["HOMODYNE_COMPILATION_CACHE"] = str(folder)
    done = subprocess.run([sys.executable, "-c", before + _KERNELS], env=env,
                          capture_output=True, text=True, timeout=300, check=True)
    return done.stdout.strip(), done.stderr


def _entries(folder) -> dict:
    """key -> (bytes, mtime_ns) of every entry."""
    return {p.name[: -len("-cache")]: (p.read_bytes(), p.stat().st_mtime_ns)
            for p in folder.glob("*-cache")}


def test_cache_entries_damaged_foreign_or_without_atime_are_never_run_nor_swept(tmp_path):
    """probe3 L1: an entry damaged in place (that still looked complete) was warned about
    in every run and never replaced; L2: a valid entry of another kernel under the key
    was loaded and crashed inside JAX (a traceback); L8: entries without an -atime file
    were all removed at start-up."""
    folder = tmp_path / "cache"
    values, err = _compile_with_cache(folder)
    assert err == "" and values.endswith(str(folder))
    before = _entries(folder)
    assert len(before) >= 4
    assert all(unpack_entry(k, raw) is not None for k, (raw, _) in before.items())
    lam = next(k for k in before if k.startswith("jit__lambda"))
    cum = next(k for k in before if k.startswith("jit_cumsum"))
    damaged = bytearray(before[lam][0])
    damaged[len(damaged) // 2] ^= 0x01  # one bit, in place, its -atime kept
    (folder / f"{lam}-cache").write_bytes(bytes(damaged))
    foreign = next(k for k in sorted(before) if k not in (lam, cum))
    (folder / f"{cum}-cache").write_bytes(before[foreign][0])  # another kernel's entry
    kept = next(k for k in sorted(before) if k not in (lam, cum, foreign))
    (folder / f"{kept}-atime").unlink()  # as a JAX that writes no -atime leaves it

    again, err = _compile_with_cache(folder)
    assert again == values
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "not used (damaged, cut short, another kernel's" in lines[0]
    after = _entries(folder)
    assert after.keys() == before.keys()
    assert unpack_entry(lam, after[lam][0]) and unpack_entry(cum, after[cum][0])  # anew
    assert after[kept] == before[kept]  # read, not swept
    assert _compile_with_cache(folder) == (values, "")  # silent from now on
    assert _entries(folder) == after


def test_a_jax_without_the_cache_hook_runs_with_the_cache_off_after_one_warning(tmp_path):
    """A JAX upgrade that drops the private hook must not crash nor write unchecked entries."""
    folder = tmp_path / "cache"
    drop = "import jax._src.compilation_cache as cc\ndel cc.get_file_cache\n"
    values, err = _compile_with_cache(folder, before=drop)
    assert values.endswith(" None")
    assert err.strip().splitlines() == [
        f"homodyne: the compilation cache {folder} cannot be used (JAX "
        f"{jax.__version__} has no hook for checked entries); "
        "kernels are compiled in every run: use the JAX version homodyne pins, or set "
        "HOMODYNE_COMPILATION_CACHE to 'off'"]
    assert not list(folder.glob("*-cache"))
