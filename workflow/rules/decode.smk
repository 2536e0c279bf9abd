# Decoding every evaluation split with every model and decoder, and the decoding-speed benchmark.


rule decode:
    """Predictions of one (task, split, model, decoder) cell, in the official result formats, and their provenance
    sidecar (model, timing; `narvl score` copies it into the metrics file)."""
    input:
        params=ancient_params("decode", "data"),  # decode.yaml; data.yaml: the eval loader's settings
        code=task_sources("narvl.decode.run"),
        model=f"{RUNS}/{{task}}-{{model}}/model.pt",
        shards=f"{SHARDS}/{{task}}",
        tokenizer=TOKENIZER,
    output:
        predictions=f"{RESULTS}/predictions/{{task}}-{{split}}-{{model,(?:ar|nar|nar-kd)(?:-seed[0-9]+)?}}-{{decoder}}.json",
        provenance=f"{RESULTS}/predictions/{{task}}-{{split}}-{{model,(?:ar|nar|nar-kd)(?:-seed[0-9]+)?}}-{{decoder}}.meta.json",
    params:
        folder=folder_of("params"),
        values=lambda w: values("decode", "data.loader", task=w.task, drop=decode_drop(w)),
    log:
        logfile("decode/{task}-{split}-{model}-{decoder}"),
    threads: RES["decode"]["threads"]
    resources:
        mem_mb=RES["decode"]["mem_mb"],
        runtime=RES["decode"]["runtime"],
        gpu=RES["decode"]["gpu"],
    shell:
        "python -m narvl decode --params {params.folder:q} --model {input.model:q} --shards {input.shards:q}"
        " --split {wildcards.split:q} --tokenizer {input.tokenizer:q} --decoder {wildcards.decoder:q}"
        " --out {output.predictions:q} > {log:q} 2>&1"


rule decode_blind:
    """The blind baseline: the AR model fed blank (mean-colour) images, greedy; what it scores is what the
    question alone tells (model name baseline-blind)."""
    input:
        params=ancient_params("decode", "data"),  # decode.yaml; data.yaml: the eval loader's settings
        code=task_sources("narvl.decode.run"),
        model=f"{RUNS}/{{task}}-ar/model.pt",
        shards=f"{SHARDS}/{{task}}",
        tokenizer=TOKENIZER,
    output:
        predictions=f"{RESULTS}/predictions/{{task}}-{{split}}-baseline-blind-greedy.json",
        provenance=f"{RESULTS}/predictions/{{task}}-{{split}}-baseline-blind-greedy.meta.json",
    params:
        folder=folder_of("params"),
        values=lambda w: values("decode", "data.loader", task=w.task,
                                drop=decode_drop(SimpleNamespace(decoder="greedy"))),
    log:
        logfile("decode/{task}-{split}-baseline-blind-greedy"),
    threads: RES["decode"]["threads"]
    resources:
        mem_mb=RES["decode"]["mem_mb"],
        runtime=RES["decode"]["runtime"],
        gpu=RES["decode"]["gpu"],
    shell:
        "python -m narvl decode --params {params.folder:q} --model {input.model:q} --shards {input.shards:q}"
        " --split {wildcards.split:q} --tokenizer {input.tokenizer:q} --decoder greedy --blank-images"
        " --out {output.predictions:q} > {log:q} 2>&1"


rule bench_decode_task:
    """AR vs NAR decoding latency of one task's models (greedy, beam, the AR-only decoders of pipeline.ar_decoders;
    batch sizes of decode.bench_batch_sizes): one job per task, so that each starts as soon as its task's models
    exist instead of every task's at the end of the run."""
    input:
        params=ancient_params("decode", "model", "data", "pipeline"),
        code=task_sources("narvl.decode.bench"),
        models=lambda w: task_model_files(w.task),
        shards=f"{SHARDS}/{{task}}",
        tokenizer=TOKENIZER,
    output:
        bench=f"{RESULTS}/bench/decode-{{task}}.json",
    params:
        folder=folder_of("params"),
        shards=folder_of("tokenizer"),
        values=lambda w: values("decode", "model", "data.shard", "data.loader", "pipeline.eval_splits",
                                "pipeline.ar_decoders", task=w.task),
    log:
        logfile("decode/bench-{task}"),
    priority: PRIORITY["bench"]
    threads: RES["bench"]["threads"]
    resources:
        mem_mb=RES["bench"]["mem_mb"],
        runtime=RES["bench"]["runtime"],
        gpu=RES["bench"]["gpu"],
    shell:
        "python -m narvl bench decode --params {params.folder:q} --models {input.models:q} --shards {params.shards:q}"
        " --tasks {wildcards.task:q} --threads {threads} --out {output.bench:q} > {log:q} 2>&1"


rule bench_decode:
    """The decoding benchmark of every task: the per-task files merged into one (`narvl bench decode --merge`),
    as one run over every task writes it; the report and the reproduction read it."""
    input:
        code=sources("narvl.decode.bench"),
        parts=expand(f"{RESULTS}/bench/decode-{{task}}.json", task=PIPELINE.tasks),
    output:
        bench=BENCH,
    log:
        logfile("decode/bench"),
    priority: PRIORITY["bench"]
    threads: 1
    resources:
        mem_mb=RES["report"]["mem_mb"],
        runtime=RES["report"]["runtime"],
    shell:
        "python -m narvl bench decode --merge {input.parts:q} --out {output.bench:q} > {log:q} 2>&1"
