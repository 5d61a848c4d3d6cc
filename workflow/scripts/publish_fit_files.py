"""Rules report_<fit>: the report's copies of a fit's committed files (thin glue)."""

from homodyne.production.report import publish_fit_files
from homodyne.rulelog import redirect

redirect(snakemake)  # noqa: F821
publish_fit_files(snakemake.input.record, snakemake.params.names,  # noqa: F821
                  list(snakemake.output))  # noqa: F821
