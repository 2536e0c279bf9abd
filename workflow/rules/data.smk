# Raw data -> webdataset shards per task -> the BPE tokenizer.
# source: default makes the raw data with `narvl synth`; source: real reads the paths of pipeline.real. The shard
# rules are the same for both (one rule per raw format; a task's format picks its rule).


rule synth:
    """The embedded default dataset, written in the real datasets' formats (docs/design.md, data/raw/)."""
    input:
        params=ancient_params("data"),
        code=sources("narvl.data.synth"),
    output:
        images=directory(f"{RAW}/images"),
        karpathy=f"{RAW}/captions/dataset_coco.json",
        caption_references=expand(f"{RAW}/captions/captions_karpathy_{{split}}.json", split=["val", "test"]),
        vqa_questions=expand(f"{RAW}/vqa/v2_OpenEnded_mscoco_{{split}}2014_questions.json", split=["train", "val"]),
        vqa_annotations=expand(f"{RAW}/vqa/v2_mscoco_{{split}}2014_annotations.json", split=["train", "val"]),
        refs=f"{RAW}/refcoco/refs(unc).p",
        instances=f"{RAW}/refcoco/instances.json",
    params:
        out=lambda w, output: os.path.dirname(output.images),
        values=values("data.synth"),
    log:
        logfile("data/synth"),
    threads: RES["data"]["threads"]
    resources:
        mem_mb=RES["data"]["mem_mb"],
        runtime=RES["data"]["runtime"],
    shell:
        "python -m narvl synth --params {input.params} --out {params.out} > {log} 2>&1"


rule shard_karpathy:
    """Captions: the Karpathy split file -> data/shards/<task>/ (train and eval splits)."""
    input:
        params=ancient_params("data"),
        code=sources("narvl.data.shard"),
        annotations=raw_of("annotations"),
        images=raw_of("images"),
    output:
        shards=directory(f"{SHARDS}/{{task}}"),
    wildcard_constraints:
        task=tasks_in_format("karpathy"),
    params:
        values=lambda w: values("data.shard", task=w.task),
    log:
        logfile("data/shard-{task}"),
    threads: RES["data"]["threads"]
    resources:
        mem_mb=RES["data"]["mem_mb"],
        runtime=RES["data"]["runtime"],
    shell:
        "python -m narvl shard --params {input.params} --task {wildcards.task} --format karpathy"
        " --annotations {input.annotations:q} --images {input.images:q} --out {output.shards} > {log} 2>&1"


rule shard_vqav2:
    """VQA: VQAv2 questions + annotations (every split's files) -> data/shards/<task>/."""
    input:
        params=ancient_params("data"),
        code=sources("narvl.data.shard"),
        questions=raw_of("questions"),
        annotations=raw_of("annotations"),
        images=raw_of("images"),
    output:
        shards=directory(f"{SHARDS}/{{task}}"),
    wildcard_constraints:
        task=tasks_in_format("vqav2"),
    params:
        values=lambda w: values("data.shard", task=w.task),
    log:
        logfile("data/shard-{task}"),
    threads: RES["data"]["threads"]
    resources:
        mem_mb=RES["data"]["mem_mb"],
        runtime=RES["data"]["runtime"],
    shell:
        "python -m narvl shard --params {input.params} --task {wildcards.task} --format vqav2"
        " --questions {input.questions:q} --annotations {input.annotations:q} --images {input.images:q}"
        " --out {output.shards} > {log} 2>&1"


rule shard_refer:
    """Grounding: the refer toolkit's refs(unc).p + COCO instances -> data/shards/<task>/."""
    input:
        params=ancient_params("data"),
        code=sources("narvl.data.shard"),
        refs=raw_of("refs"),
        instances=raw_of("instances"),
        images=raw_of("images"),
    output:
        shards=directory(f"{SHARDS}/{{task}}"),
    wildcard_constraints:
        task=tasks_in_format("refer"),
    params:
        values=lambda w: values("data.shard", task=w.task),
    log:
        logfile("data/shard-{task}"),
    threads: RES["data"]["threads"]
    resources:
        mem_mb=RES["data"]["mem_mb"],
        runtime=RES["data"]["runtime"],
    shell:
        "python -m narvl shard --params {input.params} --task {wildcards.task} --format refer"
        " --refs {input.refs:q} --instances {input.instances:q} --images {input.images:q}"
        " --out {output.shards} > {log} 2>&1"


rule shard_ofa_tsv:
    """Any task from OFA's TSV files (one per split, images inline as base64) -> data/shards/<task>/."""
    input:
        params=ancient_params("data"),
        code=sources("narvl.data.shard"),
        tsv=lambda w: list(INPUTS[w.task]["tsv"].values()),
    output:
        shards=directory(f"{SHARDS}/{{task}}"),
    wildcard_constraints:
        task=tasks_in_format("ofa-tsv"),
    params:
        split_files=lambda w: " ".join(f"{split}={path}" for split, path in INPUTS[w.task]["tsv"].items()),
        values=lambda w: values("data.shard", task=w.task),
    log:
        logfile("data/shard-{task}"),
    threads: RES["data"]["threads"]
    resources:
        mem_mb=RES["data"]["mem_mb"],
        runtime=RES["data"]["runtime"],
    shell:
        "python -m narvl shard --params {input.params} --task {wildcards.task} --format ofa-tsv"
        " --tsv {params.split_files} --out {output.shards} > {log} 2>&1"


rule tokenizer:
    """The BPE tokenizer (+ CTC blank and location bins), trained on every task's training text."""
    input:
        params=ancient_params("data"),
        code=sources("narvl.data.tokenizer"),
        shards=expand(f"{SHARDS}/{{task}}", task=PIPELINE.tasks),
    output:
        tokenizer=TOKENIZER,
    params:
        values=values("data.tokenizer"),
    log:
        logfile("data/tokenizer"),
    threads: RES["data"]["threads"]
    resources:
        mem_mb=RES["data"]["mem_mb"],
        runtime=RES["data"]["runtime"],
    shell:
        "python -m narvl tokenizer --params {input.params} --shards {input.shards} --out {output.tokenizer} > {log} 2>&1"


rule data_all:
    """Target: shards of every task and the tokenizer (the DVC stage `data`)."""
    input:
        shards=rules.tokenizer.input.shards,
        tokenizer=TOKENIZER,
