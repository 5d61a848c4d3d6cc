"""Rule fetch_real_data: copy (link) a verified file from the mirror, or download it."""

import os
import shutil
from pathlib import Path

from homodyne.realdata import fetch
from homodyne.rulelog import redirect

redirect(snakemake)  # noqa: F821
w = snakemake.wildcards  # noqa: F821
src = fetch(f"{w.folder}/{w.name}", mirror=snakemake.params.mirror or None)  # noqa: F821
dst = Path(snakemake.output[0])  # noqa: F821
dst.parent.mkdir(parents=True, exist_ok=True)
try:
    os.link(src, dst)
except OSError:
    shutil.copyfile(src, dst)
print(f"{dst} <- {src} (SHA-256 verified)")
