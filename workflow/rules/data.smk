# Raw data -> webdataset shards per task -> the BPE tokenizer.
# source: default makes the raw data with `narvl synth`; source: real reads the paths of pipeline.real. The shard
# rules are the same for both (one rule per raw format; a task's format picks its rule).


rule synth:
    """The embedded default dataset, written in the real datasets' formats (docs/design.md, data/raw/)."""
    input:
        params=ancient_params("data"),
        code=sources("narvl.synth.generate"),
    output:
        raw=directory(RAW),
    params:
        folder=folder_of("params"),
        values=values("data.synth"),
    log:
        logfile("data/synth"),
    threads: RES["data"]["threads"]
    resources:
        mem_mb=RES["data"]["mem_mb"],
        runtime=RES["data"]["runtime"],
    shell:
        "python -m narvl synth --params {params.folder:q} --out {output.raw:q} > {log:q} 2>&1"


rule shard_karpathy:
    """Captions: the Karpathy split file -> data/shards/<task>/ (train and eval splits)."""
    input:
        params=ancient_params("data"),
        code=task_sources("narvl.data.shard", "narvl.data.tokenizer"),
        raw=raw_inputs("annotations", "images"),
    output:
        shards=directory(f"{SHARDS}/{{task}}"),
    wildcard_constraints:
        task=tasks_in_format("karpathy"),
    params:
        folder=folder_of("params"),
        annotations=raw_path("annotations"),
        images=raw_path("images"),
        values=lambda w: values("data.shard", task=w.task, drop=("data.shard.workers",)),
    log:
        logfile("data/shard-{task}"),
    threads: RES["data"]["threads"]
    resources:
        mem_mb=RES["data"]["mem_mb"],
        runtime=RES["data"]["runtime"],
    shell:
        "python -m narvl shard --params {params.folder:q} --task {wildcards.task:q} --format karpathy"
        " --annotations {params.annotations:q} --images {params.images:q} --out {output.shards:q} > {log:q} 2>&1"


rule shard_vqav2:
    """VQA: VQAv2 questions + annotations (every split's files) -> data/shards/<task>/."""
    input:
        params=ancient_params("data"),
        code=task_sources("narvl.data.shard", "narvl.data.tokenizer"),
        raw=raw_inputs("questions", "annotations", "images"),
    output:
        shards=directory(f"{SHARDS}/{{task}}"),
    wildcard_constraints:
        task=tasks_in_format("vqav2"),
    params:
        folder=folder_of("params"),
        questions=raw_path("questions"),
        annotations=raw_path("annotations"),
        images=raw_path("images"),
        values=lambda w: values("data.shard", task=w.task, drop=("data.shard.workers",)),
    log:
        logfile("data/shard-{task}"),
    threads: RES["data"]["threads"]
    resources:
        mem_mb=RES["data"]["mem_mb"],
        runtime=RES["data"]["runtime"],
    shell:
        "python -m narvl shard --params {params.folder:q} --task {wildcards.task:q} --format vqav2"
        " --questions {params.questions:q} --annotations {params.annotations:q} --images {params.images:q}"
        " --out {output.shards:q} > {log:q} 2>&1"


rule shard_refer:
    """Grounding: the refer toolkit's refs(unc).p + COCO instances -> data/shards/<task>/."""
    input:
        params=ancient_params("data"),
        code=task_sources("narvl.data.shard", "narvl.data.tokenizer"),
        raw=raw_inputs("refs", "instances", "images"),
    output:
        shards=directory(f"{SHARDS}/{{task}}"),
    wildcard_constraints:
        task=tasks_in_format("refer"),
    params:
        folder=folder_of("params"),
        refs=raw_path("refs"),
        instances=raw_path("instances"),
        images=raw_path("images"),
        values=lambda w: values("data.shard", task=w.task, drop=("data.shard.workers",)),
    log:
        logfile("data/shard-{task}"),
    threads: RES["data"]["threads"]
    resources:
        mem_mb=RES["data"]["mem_mb"],
        runtime=RES["data"]["runtime"],
    shell:
        "python -m narvl shard --params {params.folder:q} --task {wildcards.task:q} --format refer"
        " --refs {params.refs:q} --instances {params.instances:q} --images {params.images:q}"
        " --out {output.shards:q} > {log:q} 2>&1"


rule shard_snli_ve:
    """Visual entailment: the SNLI-VE jsonl files (one per split) + the Flickr30k images -> data/shards/<task>/."""
    input:
        params=ancient_params("data"),
        code=task_sources("narvl.data.shard", "narvl.data.tokenizer"),
        raw=raw_inputs("annotations", "images"),
    output:
        shards=directory(f"{SHARDS}/{{task}}"),
    wildcard_constraints:
        task=tasks_in_format("snli-ve"),
    params:
        folder=folder_of("params"),
        annotations=raw_path("annotations"),
        images=raw_path("images"),
        values=lambda w: values("data.shard", task=w.task, drop=("data.shard.workers",)),
    log:
        logfile("data/shard-{task}"),
    threads: RES["data"]["threads"]
    resources:
        mem_mb=RES["data"]["mem_mb"],
        runtime=RES["data"]["runtime"],
    shell:
        "python -m narvl shard --params {params.folder:q} --task {wildcards.task:q} --format snli-ve"
        " --annotations {params.annotations:q} --images {params.images:q} --out {output.shards:q} > {log:q} 2>&1"


rule shard_ofa_tsv:
    """Any task from OFA's TSV files (one per split, images inline as base64) -> data/shards/<task>/."""
    input:
        params=ancient_params("data"),
        code=task_sources("narvl.data.shard", "narvl.data.tokenizer"),
        tsv=lambda w: list(_lookup("tsv", w, None).values()),
    output:
        shards=directory(f"{SHARDS}/{{task}}"),
    wildcard_constraints:
        task=tasks_in_format("ofa-tsv"),
    params:
        folder=folder_of("params"),
        split_files=lambda w: [f"{split}={path}" for split, path in _lookup("tsv", w, None).items()],
        values=lambda w: values("data.shard", task=w.task, drop=("data.shard.workers",)),
    log:
        logfile("data/shard-{task}"),
    threads: RES["data"]["threads"]
    resources:
        mem_mb=RES["data"]["mem_mb"],
        runtime=RES["data"]["runtime"],
    shell:
        "python -m narvl shard --params {params.folder:q} --task {wildcards.task:q} --format ofa-tsv"
        " --tsv {params.split_files:q} --out {output.shards:q} > {log:q} 2>&1"


# data.tokenizer.gpt2_bpe_dir: OFA's GPT-2 BPE files, converted instead of training a BPE (an OFA train.init needs it)
GPT2_BPE = PARAMS["data"].tokenizer.gpt2_bpe_dir
GPT2_FILES = [os.path.join(GPT2_BPE, name) for name in ("encoder.json", "vocab.bpe")] if GPT2_BPE else []


rule tokenizer:
    """The BPE tokenizer (+ CTC blank and location bins): trained on every task's training text, or OFA's GPT-2 BPE
    (data.tokenizer.gpt2_bpe_dir)."""
    input:
        params=ancient_params("data"),
        code=sources("narvl.data.tokenizer", *TASK_MODULES),  # Task.text_targets of every task
        shards=expand(f"{SHARDS}/{{task}}", task=PIPELINE.tasks),
        gpt2=GPT2_FILES,
    output:
        tokenizer=TOKENIZER,
    params:
        folder=folder_of("params"),
        values=values("data.tokenizer"),
        source=lambda wildcards, input: ["--gpt2", *input.gpt2] if GPT2_FILES else ["--shards", *input.shards],
    log:
        logfile("data/tokenizer"),
    threads: RES["data"]["threads"]
    resources:
        mem_mb=RES["data"]["mem_mb"],
        runtime=RES["data"]["runtime"],
    shell:
        "python -m narvl tokenizer --params {params.folder:q} {params.source:q} --out {output.tokenizer:q} > {log:q} 2>&1"


rule data_all:
    """Target: shards of every task and the tokenizer (the DVC stage `data`)."""
    input:
        shards=rules.tokenizer.input.shards,
        tokenizer=TOKENIZER,
