"""The measured datasets: taken from a local mirror when one is configured, else
downloaded from their public source, and SHA-256-verified either way (pooch).

Mirror: the ``HOMODYNE_DATA_MIRROR`` environment variable, or the workflow's
``data_mirror`` key (``../shared/data/real`` in this project). Files are never
committed to the repository.
"""

from __future__ import annotations

import os
import shutil
from importlib import resources
from pathlib import Path

import pooch

SOURCES = {
    "aps_8idi_llps_aging": "https://raw.githubusercontent.com/AZjk/llps-saxpcs/"
                           "2e3b0574a4649f107258b227a85ec65b3342bd44/XPCS/data/",
    "chx_two_time": "https://raw.githubusercontent.com/bnl/automating_XPCS_analysis_pub/"
                    "b23cfad2a16b90cee9047e6343840b0e32a4117b/example_notebook/",
}
MIRROR_ENV = "HOMODYNE_DATA_MIRROR"


class RealDataError(RuntimeError):
    """A measured data file is missing or does not match its checksum."""


def registry() -> dict[str, str]:
    """relative path -> expected SHA-256, from the bundled checksum list."""
    text = resources.files("homodyne").joinpath("realdata_sha256.txt").read_text()
    out = {}
    for line in text.splitlines():
        if line.strip():
            digest, rel = line.split(maxsplit=1)
            out[rel.strip()] = digest
    return out


def url_for(rel: str) -> str:
    folder, name = rel.split("/", 1)
    return SOURCES[folder] + name


def fetch(rel: str, mirror: str | os.PathLike | None = None, cache_dir=None) -> Path:
    """Local path of a verified copy of ``rel`` (e.g. 'chx_two_time/test_g2.npy')."""
    reg = registry()
    if rel not in reg:
        raise RealDataError(f"unknown data file {rel!r}; known: {', '.join(sorted(reg))}")
    expected = reg[rel]
    mirror = mirror if mirror not in (None, "") else os.environ.get(MIRROR_ENV)
    how = (f"Provide it either by setting {MIRROR_ENV} (or the workflow's data_mirror key) to "
           f"a folder holding {rel}, or by allowing the download from {url_for(rel)}.")
    if mirror:
        local = Path(mirror) / rel
        if local.is_file():
            got = pooch.file_hash(str(local), alg="sha256")
            if got != expected:
                raise RealDataError(f"{local}: SHA-256 {got} does not match the expected "
                                    f"{expected}; the copy is corrupt or altered. {how}")
            return local
    cache = Path(cache_dir or pooch.os_cache("homodyne")) / rel.split("/")[0]
    try:
        path = pooch.retrieve(url_for(rel), known_hash=f"sha256:{expected}",
                              fname=rel.split("/", 1)[1], path=cache, progressbar=False)
    except Exception as exc:  # noqa: BLE001 - network, HTTP or checksum: one clear message
        where = f"not in the mirror {mirror}, and " if mirror else ""
        raise RealDataError(f"{rel} (SHA-256 {expected}): {where}the download failed "
                            f"({type(exc).__name__}: {exc}). {how}") from exc
    return Path(path)


def copy_verified(rel: str, dst, mirror: str | os.PathLike | None = None) -> Path:
    """``dst`` as an independent, verified copy of ``rel`` (``fetch``'s file): never a
    link, so nothing written to the working copy can alter the mirror; the copy itself
    is hashed before it replaces ``dst`` (a mirror rewritten meanwhile is refused)."""
    src, dst = fetch(rel, mirror=mirror), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    try:
        shutil.copyfile(src, tmp)
        got = pooch.file_hash(str(tmp), alg="sha256")
        if got != registry()[rel]:
            raise RealDataError(f"{src} changed while it was copied (SHA-256 {got}); "
                                "run again")
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return dst
