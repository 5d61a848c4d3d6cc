"""homodyne workflow: production fits on measured XPCS data (`fit`, the default) and the
benchmark grid against the guide's targets and the peers (`benchmark`)."""

from snakemake.utils import min_version, validate

min_version("8.0")


# The full grid by default; `--configfile config/test.yaml` replaces it (not merged).
if not config:

    configfile: "config/config.yaml"


validate(config, "workflow/schemas/config.schema.yaml")


report: "workflow/report/workflow.rst"


include: "workflow/rules/multiq_common.smk"


# One set of wildcard constraints for every rule (tier names as OptimizationStrategy).
wildcard_constraints:
    dataset="[A-Za-z0-9_]+",
    tier="auto|standard|large|chunked|streaming",
    device="cpu|gpu",
    method="scipy-trf|nlsq-curve_fit|nlsq-curve_fit_large|nlsq-hybrid_streaming",
    folder="aps_8idi_llps_aging|chx_two_time",
    run=RUN_NAMES,
    file=r"[^/]+",
    qi=r"\d\d+",
    k=r"\d\d",


include: "workflow/rules/common.smk"
include: "workflow/rules/datasets.smk"
include: "workflow/rules/benchmarks.smk"
include: "workflow/rules/fits.smk"
include: "workflow/rules/multiq.smk"


# Production fits on measured data, with the evidence to trust them (default target).
rule fit:
    default_target: True
    input:
        "results/fits/summary.md",
        FIT_REPORT_FILES,
        expand("results/fits/{run}/summary.csv", run=list(multiq_runs())),


# The whole benchmark grid and its summary table, plots and report.
rule benchmark:
    input:
        "results/benchmark/summary.csv",
        "results/benchmark/summary.md",
        seeded_outputs(),


# All synthetic datasets of the grid.
rule datasets:
    input:
        expand("results/datasets/{dataset}.h5", dataset=list(config["datasets"])),
