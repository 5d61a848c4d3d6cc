"""Every q bin of every file: a checkpoint lists the (file, q bin) jobs of each run, one
fit job per pair (its own folder of outputs), and a gather writes summary.csv and plots.
The runs' files are known when the DAG is parsed (from config; a glob is expanded then),
the q bins once the files exist (checkpoint plan_q_fits), without importing homodyne."""


rule generate_aging_series_file:
    output:
        "results/datasets/aging_series/age_{k}.h5",
    log:
        "results/logs/generate/aging_series_{k}.log",
    benchmark:
        "results/logs/generate/aging_series_{k}.benchmark.tsv"
    conda:
        "../envs/homodyne.yaml"
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        series=config.get("multiq", {}).get("synthetic", {}),
    script:
        "../scripts/generate_aging_series_file.py"


checkpoint plan_q_fits:
    input:
        # the fit config too: an edited one (q, bounds, ...) plans and fits the run anew
        data=lambda w: list(run_files(w.run).values()),
        config=lambda w: multiq_runs()[w.run]["config"],
    output:
        "results/fits/{run}/jobs.json",
    log:
        "results/logs/fits/{run}/plan.log",
    benchmark:
        "results/logs/fits/{run}/plan.benchmark.tsv"
    conda:
        "../envs/homodyne.yaml"
    resources:
        mem_mb=500,
        runtime=5,
    params:
        config=lambda w: multiq_runs()[w.run]["config"],
        overrides=run_overrides,
    script:
        "../scripts/plan_q_fits.py"


rule fit_q_bin:
    input:
        data=lambda w: run_files(w.run)[w.file],
        config=lambda w: multiq_runs()[w.run]["config"],
    output:
        # only the job's record, written after the fit's result set is committed: Snakemake
        # deletes a job's declared outputs before it runs and after it fails, which would
        # take the marker (parameters.json) from the bin's previous complete results
        job="results/fits/{run}/{file}/q{qi}/job.json",
    log:
        "results/logs/fits/{run}/{file}/q{qi}.log",
    benchmark:
        "results/logs/fits/{run}/{file}/q{qi}.benchmark.tsv"
    conda:
        "../envs/homodyne.yaml"
    resources:
        mem_mb=2000,
        runtime=20,
    params:
        config=lambda w: multiq_runs()[w.run]["config"],
        overrides=run_overrides,
    script:
        "../scripts/fit_q_bin.py"


rule gather_q_fits:
    input:
        q_fit_jobs,
    output:
        summary=report(
            "results/fits/{run}/summary.csv",
            caption="../report/multiq.rst",
            category="Fits",
        ),
        plots=report(
            expand(
                "results/fits/{{run}}/{p}.png",
                p=["parameters_vs_q", "parameters_vs_file"],
            ),
            caption="../report/multiq.rst",
            category="Fits",
        ),
    log:
        "results/logs/fits/{run}/gather.log",
    benchmark:
        "results/logs/fits/{run}/gather.benchmark.tsv"
    conda:
        "../envs/homodyne.yaml"
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        config=lambda w: multiq_runs()[w.run]["config"],
        overrides=run_overrides,
    script:
        "../scripts/gather_q_fits.py"
