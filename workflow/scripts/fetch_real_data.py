"""Rule fetch_real_data: a verified copy of a file from the mirror, or downloaded. A copy,
not a link: a working copy edited in place must not alter the mirror. A file missing or
not matching its checksum is one line in the rule's log, exit 2 (no traceback)."""

import sys

from homodyne.realdata import RealDataError, copy_verified
from homodyne.rulelog import redirect

redirect(snakemake)  # noqa: F821
w = snakemake.wildcards  # noqa: F821
try:
    dst = copy_verified(f"{w.folder}/{w.name}", snakemake.output[0],  # noqa: F821
                        mirror=snakemake.params.mirror or None)  # noqa: F821
except RealDataError as exc:
    print(f"fetch_real_data: error: {exc}", file=sys.stderr)
    sys.exit(2)
print(f"{dst}: copied, SHA-256 verified")
