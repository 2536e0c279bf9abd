# The results: Markdown + CSV tables, plots, a gallery of predictions and the README's results block, all built
# from the metrics files by `narvl report` (numbers are never typed by hand). `snakemake --report` bundles them.


rule report:
    """Tables (results/tables/main.md, main.csv), plots and gallery from every metrics file, run and benchmark;
    refreshes the block between `<!-- narvl:results:start -->` and `<!-- narvl:results:end -->` of pipeline.readme
    in place (an input, not an output: Snakemake deletes outputs before a job runs)."""
    input:
        code=sources("narvl.report.main"),
        metrics=METRICS_FILES,
        predictions=PREDICTION_FILES,
        bench=BENCH,
        summaries=[f"{RUNS}/{task}-{model}/summary.json" for task in PIPELINE.tasks for model in models(task)],
        shards=expand(f"{SHARDS}/{{task}}", task=PIPELINE.tasks),
        readme=ancient(PIPELINE.readme),
    output:
        table=report(f"{RESULTS}/tables/main.md", caption="../report/tables.rst", category="Tables"),
        csv=report(f"{RESULTS}/tables/main.csv", caption="../report/tables.rst", category="Tables"),
        training_curves=report(f"{RESULTS}/plots/training_curves.png", caption="../report/plots.rst", category="Plots"),
        latency=report(f"{RESULTS}/plots/latency_batch.png", caption="../report/plots.rst", category="Plots"),
        quality_speed=report(f"{RESULTS}/plots/quality_speed.png", caption="../report/plots.rst", category="Plots"),
        gallery=report(f"{RESULTS}/plots/gallery.png", caption="../report/gallery.rst", category="Gallery"),
    params:
        runs=folder_of("summaries", levels=2),
        predictions=folder_of("predictions"),
        shards=folder_of("shards"),
        out=lambda w, output: os.path.dirname(os.path.dirname(output.table)),
    log:
        logfile("report/report"),
    threads: RES["report"]["threads"]
    resources:
        mem_mb=RES["report"]["mem_mb"],
        runtime=RES["report"]["runtime"],
    shell:
        "python -m narvl report --metrics {input.metrics:q} --bench {input.bench:q} --runs {params.runs:q}"
        " --predictions {params.predictions:q} --shards {params.shards:q} --out {params.out:q}"
        " --readme {input.readme:q} > {log:q} 2>&1"
