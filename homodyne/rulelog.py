"""Snakemake script glue: send a rule script's output and logging to the rule's ``log:``."""

import logging
import sys


def redirect(snakemake) -> None:
    """stdout, stderr and INFO logging of this script go to ``snakemake.log[0]``."""
    if snakemake.log:
        fh = open(snakemake.log[0], "w")  # noqa: SIM115 - lives as long as the script
        sys.stdout = sys.stderr = fh
        logging.basicConfig(stream=fh, level=logging.INFO, force=True,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        logging.getLogger("jax").setLevel(logging.WARNING)  # no backend-probing chatter
