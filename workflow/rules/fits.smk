"""Production fits on measured data (mirror or verified download) and the fits summary."""


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
        params="results/fits/chx/parameters.json",
        comparison=report(
            "results/fits/chx/comparison.csv",
            caption="../report/chx.rst",
            category="Fits",
        ),
        plots=report(
            expand(
                "results/fits/chx/{p}.png", p=["rate_vs_age", "c2_heatmaps", "c2_cuts"]
            ),
            caption="../report/chx.rst",
            category="Fits",
        ),
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
        params="results/fits/aging/parameters.json",
        table=report(
            "results/fits/aging/per_age.csv",
            caption="../report/aging.rst",
            category="Fits",
        ),
        plots=report(
            expand(
                "results/fits/aging/{p}.png",
                p=["q2_scaling", "g2_fits_and_residuals", "aging_law"],
            ),
            caption="../report/aging.rst",
            category="Fits",
        ),
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
        params="results/fits/laminar/parameters.json",
        plots=report(
            expand("results/fits/laminar/fit/{p}.png", p=["c2_heatmaps", "c2_cuts"]),
            caption="../report/laminar.rst",
            category="Fits",
        ),
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
        params="results/fits/one_time/parameters.json",
        table=report(
            "results/fits/one_time/per_q.csv",
            caption="../report/one_time.rst",
            category="Fits",
        ),
        plots=report(
            expand("results/fits/one_time/{p}.png", p=["g2_fits", "rates_vs_q"]),
            caption="../report/one_time.rst",
            category="Fits",
        ),
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


rule fits_summary:
    input:
        "results/fits/chx/parameters.json",
        "results/fits/aging/parameters.json",
        "results/fits/laminar/parameters.json",
        "results/fits/one_time/parameters.json",
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
