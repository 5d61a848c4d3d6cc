"""Rule fetch_real_data: a verified copy of a file from the mirror, or downloaded. A copy,
not a link: a working copy edited in place must not alter the mirror."""

from homodyne.realdata import copy_verified
from homodyne.rulelog import redirect

redirect(snakemake)  # noqa: F821
w = snakemake.wildcards  # noqa: F821
dst = copy_verified(f"{w.folder}/{w.name}", snakemake.output[0],  # noqa: F821
                    mirror=snakemake.params.mirror or None)  # noqa: F821
print(f"{dst}: copied, SHA-256 verified")
