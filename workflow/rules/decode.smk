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


rule bench_decode:
    """AR vs NAR decoding latency (greedy, beam, the AR-only decoders of pipeline.ar_decoders; batch sizes of
    decode.bench_batch_sizes) on every model."""
    input:
        params=ancient_params("decode", "model", "data", "pipeline"),
        code=sources("narvl.decode.bench", *TASK_MODULES),
        models=MODEL_FILES,
        shards=expand(f"{SHARDS}/{{task}}", task=PIPELINE.tasks),
        tokenizer=TOKENIZER,
    output:
        bench=BENCH,
    params:
        folder=folder_of("params"),
        shards=folder_of("tokenizer"),
        values=values("decode", "model", "data.shard", "data.loader", "pipeline.eval_splits", "pipeline.ar_decoders"),
    log:
        logfile("decode/bench"),
    priority: PRIORITY["bench"]
    threads: RES["bench"]["threads"]
    resources:
        mem_mb=RES["bench"]["mem_mb"],
        runtime=RES["bench"]["runtime"],
        gpu=RES["bench"]["gpu"],
    shell:
        "python -m narvl bench decode --params {params.folder:q} --models {input.models:q} --shards {params.shards:q}"
        " --threads {threads} --out {output.bench:q} > {log:q} 2>&1"
