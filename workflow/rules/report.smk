# The results: Markdown + CSV tables, plots and a gallery of predictions, all built from the metrics files by
# `narvl report` (numbers are never typed by hand), then the comparison with the published reference
# (pipeline.published_dir). `snakemake --report` bundles them. The README's results block is rewritten only by
# `narvl report --publish` (docs/workflow.md, "Publishing"), from the published copy.


rule report:
    """Tables (results/tables/main.md, main.csv), plots and gallery from every metrics file, run and benchmark."""
    input:
        code=sources("narvl.report.main", *TASK_MODULES),
        metrics=METRICS_FILES,
        predictions=PREDICTION_FILES,
        bench=BENCH,
        summaries=[f"{RUNS}/{task}-{model}/summary.json" for task in PIPELINE.tasks for model in models(task)],
        shards=expand(f"{SHARDS}/{{task}}", task=PIPELINE.tasks),
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
        " --predictions {params.predictions:q} --shards {params.shards:q} --out {params.out:q} > {log:q} 2>&1"


rule reproduction:
    """The last rule: every metrics value and speed-up of this run against the published reference
    (results/tables/reproduction.md, .csv); prints the one-line verdict. Never fails on a difference: the gate is
    `narvl report --check` (docs/workflow.md)."""
    input:
        params=ancient_params("score"),
        code=sources("narvl.report.main", *TASK_MODULES),
        metrics=METRICS_FILES,
        bench=BENCH,
        published=PUBLISHED_FILES,
    output:
        md=report(f"{RESULTS}/tables/reproduction.md", caption="../report/tables.rst", category="Tables"),
        csv=f"{RESULTS}/tables/reproduction.csv",
    params:
        published=lambda w: PUBLISHED,  # may not exist yet (a new preset): then nothing is compared
        out=lambda w, output: os.path.dirname(os.path.dirname(output.md)),
        values=values("score.reproduction"),
    log:
        logfile("report/reproduction"),
    threads: RES["report"]["threads"]
    resources:
        mem_mb=RES["report"]["mem_mb"],
        runtime=RES["report"]["runtime"],
    shell:
        "python -m narvl report --metrics {input.metrics:q} --bench {input.bench:q} --published {params.published:q}"
        " --score-params {input.params:q} --out {params.out:q} 2> {log:q} | tee -a {log:q}"
