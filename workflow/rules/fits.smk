"""Production fits on measured data (mirror or verified download) and the fits summary.

Each fit commits its whole result set into results/fits/<fit>/ (all or nothing) and then
writes its record job.json, the rule's only declared output: Snakemake deletes a job's
declared outputs before it runs and after it fails, which would take the previous
complete set. The report shows copies of the committed files (rule fits_report)."""


rule fetch_real_data:
    output:
        "results/data/real/{folder}/{name}",
    log:
        "results/logs/fetch/{folder}/{name}.log",
    benchmark:
        "results/logs/fetch/{folder}/{name}.benchmark.tsv"
    conda:
        "../envs/homodyne.yaml"
    resources:
        mem_mb=500,
        runtime=10,
    params:
        mirror=data_mirror(),
    script:
        "../scripts/fetch_real_data.py"


rule fit_chx:
    input:
        matrix=f"results/data/real/{config['fits']['chx']['file']}",
        authors=f"results/data/real/{config['fits']['chx']['results']}",
    output:
        record="results/fits/chx/job.json",
    log:
        "results/logs/fits/chx.log",
    benchmark:
        "results/logs/fits/chx.benchmark.tsv"
    conda:
        "../envs/homodyne.yaml"
    resources:
        mem_mb=2000,
        runtime=20,
    params:
        alpha_window=chx_alpha_window(),
    script:
        "../scripts/fit_chx.py"


rule fit_aps_aging:
    input:
        [
            f"results/data/real/{f}"
            for f in real_data_files(config["fits"]["aps_aging"]["folder"])
        ],
    output:
        record="results/fits/aging/job.json",
    log:
        "results/logs/fits/aging.log",
    benchmark:
        "results/logs/fits/aging.benchmark.tsv"
    conda:
        "../envs/homodyne.yaml"
    resources:
        mem_mb=2000,
        runtime=20,
    params:
        max_tau_s=config["fits"]["aps_aging"].get("max_tau_s", 2.0),
    script:
        "../scripts/fit_aging.py"


rule fit_laminar_synthetic:
    output:
        record="results/fits/laminar/job.json",
    log:
        "results/logs/fits/laminar.log",
    benchmark:
        "results/logs/fits/laminar.benchmark.tsv"
    conda:
        "../envs/homodyne.yaml"
    resources:
        mem_mb=2000,
        runtime=20,
    params:
        spec=config["fits"]["laminar_synthetic"],
    script:
        "../scripts/fit_laminar.py"


ONE_TIME = config["fits"].get(
    "one_time",
    {
        "file": "aps_8idi_llps_aging/Average_B0147_S3_7_300C10p_att00_Rq0_01251_01313_results.hdf",
        "beta": "fixed",
        "errors": "scatter",
        "min_tau_s": 1.0e-3,
    },
)


rule fit_one_time:
    input:
        f"results/data/real/{ONE_TIME['file']}",
    output:
        record="results/fits/one_time/job.json",
    log:
        "results/logs/fits/one_time.log",
    benchmark:
        "results/logs/fits/one_time.benchmark.tsv"
    conda:
        "../envs/homodyne.yaml"
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        settings={k: v for k, v in ONE_TIME.items() if k != "file"},
    script:
        "../scripts/fit_one_time.py"


# The report's copies of the fits' committed figures and tables (the sets themselves stay):
# one job, one output group per fit with that fit's caption.
rule fits_report:
    input:
        **{fit: f"results/fits/{fit}/job.json" for fit in FIT_REPORTS},
    output:
        chx=report(report_copies("chx"), caption="../report/chx.rst", category="Fits"),
        aging=report(
            report_copies("aging"), caption="../report/aging.rst", category="Fits"
        ),
        laminar=report(
            report_copies("laminar"), caption="../report/laminar.rst", category="Fits"
        ),
        one_time=report(
            report_copies("one_time"),
            caption="../report/one_time.rst",
            category="Fits",
        ),
    log:
        "results/logs/fits/report.log",
    benchmark:
        "results/logs/fits/report.benchmark.tsv"
    conda:
        "../envs/homodyne.yaml"
    resources:
        mem_mb=500,
        runtime=5,
    params:
        reports=FIT_REPORTS,
    script:
        "../scripts/publish_fit_files.py"


rule fits_summary:
    input:
        # the records: rewritten by every committed refit, so the summary follows
        [f"results/fits/{fit}/job.json" for fit in FIT_REPORTS],
    output:
        report("results/fits/summary.md", caption="../report/fits.rst", category="Fits"),
    log:
        "results/logs/fits/summary.log",
    benchmark:
        "results/logs/fits/summary.benchmark.tsv"
    conda:
        "../envs/homodyne.yaml"
    resources:
        mem_mb=500,
        runtime=5,
    script:
        "../scripts/fits_summary.py"
