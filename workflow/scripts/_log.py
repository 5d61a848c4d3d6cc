"""Send a script's output to the rule's log file (Snakemake's `log:`)."""

import logging
import sys


def redirect(snakemake):
    if snakemake.log:
        fh = open(snakemake.log[0], "w")  # noqa: SIM115 - lives as long as the script
        sys.stdout = sys.stderr = fh
        logging.basicConfig(stream=fh, level=logging.INFO, force=True,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        logging.getLogger("jax").setLevel(logging.WARNING)  # no backend-probing chatter
