# AR teacher and NAR student training (DeepSpeed), sequence-level distillation, and export of the model files.
#
# Outputs of a training run are its summary.json (written when training ends); the DeepSpeed checkpoints beside it
# are deliberately not declared, so that Snakemake does not delete them before a rerun: a job stopped by a Slurm
# time limit resumes from its last checkpoint when the workflow runs again (narvl train resumes by itself).
#
# `narvl train` with train.nproc > 1 starts its own torchrun for the processes of one node; threads = train.nproc
# gives it those cores (or GPUs: resources.gpu). For several nodes set pipeline.resources.train.nodes and .mpi to an
# srun prefix (docs/workflow.md, "Slurm"): the command then runs as one rank per srun task.

TRAIN_VALUES_DROP = (  # keys `narvl train` does not read (distill_tasks decides which students exist: the DAG)
    "train.distill_tasks", "train.resnet_pretrain", "train.pretrain", "train.bench_steps", "train.bench_nprocs",
    "data.loader.bench_micro_batch",
    "data.loader.bench_batches")
# The srun prefix as separate, quoted words: a launcher with options works, a `;` in it stays an argument.
LAUNCHER = shlex.split(str(RES["train"]["mpi"]))
DISTILL_VALUES_DROP = ("decode.bench_batch_sizes", "decode.bench_repeats", "decode.bench_samples",
                       "data.loader.bench_micro_batch", "data.loader.bench_batches")


rule pretrain_resnet:
    """ImageNet in miniature (pipeline.pretrain_resnet): the ResNet every training starts from (docs/training.md)."""
    input:
        params=ancient_params("train", "model", "data"),
        code=sources("narvl.train.pretrain_resnet"),
    output:
        resnet=f"{RUNS}/resnet-pretrain/resnet.pt",
    params:
        folder=folder_of("params"),
        values=values("train.resnet_pretrain", "train.seed", "model", "data.synth"),
    log:
        logfile("train/resnet-pretrain"),
    priority: PRIORITY["kd"]
    threads: 1
    resources:
        mem_mb=RES["train"]["mem_mb"],
        runtime=RES["train"]["runtime"],
        gpu=RES["train"]["gpu"],
    shell:
        "python -m narvl pretrain-resnet --params {params.folder:q} --out {output.resnet:q} > {log:q} 2>&1"


rule pretrain:
    """OFA's pretraining in miniature (pipeline.pretrain): one AR model on every task of train.pretrain.weights, per
    seed, trained and exported; every AR and NAR training of that seed starts from it (docs/training.md)."""
    input:
        params=ancient_params("train", "model", "data"),
        code=sources("narvl.train.main", "narvl.train.export", *[f"narvl.tasks.{task}" for task in PRETRAIN_TASKS]),
        shards=[f"{SHARDS}/{task}" for task in PRETRAIN_TASKS],
        tokenizer=TOKENIZER,
        resnet=resnet_input(),
    output:
        summary=f"{RUNS}/pretrain-{{run}}/summary.json",
        model=f"{RUNS}/pretrain-{{run}}/model.pt",
    wildcard_constraints:
        run="ar(?:-seed[0-9]+)?",
    params:
        folder=folder_of("params"),
        shards=lambda w, input: os.path.dirname(input.shards[0]),  # the folder of the tasks' shard folders
        tasks=",".join(PRETRAIN_TASKS),
        run=lambda w, output: os.path.dirname(output.summary),
        seed=lambda w: ["--seed", w.run.split("-seed")[1]] if "-seed" in w.run else [],
        init_resnet=resnet_argument,
        launcher=LAUNCHER,
        values=values("train", "model", "data", drop=[d for d in TRAIN_VALUES_DROP if d != "train.pretrain"]
                      + ["train.steps"]),
    log:
        logfile("train/pretrain-{run}"),
    priority: PRIORITY["kd"]
    threads: lambda w: TRAIN.for_task("pretrain", STAGE_FILES["train"]).nproc
    resources:
        mem_mb=RES["train"]["mem_mb"],
        runtime=RES["train"]["runtime"],
        gpu=RES["train"]["gpu"],
        nodes=RES["train"]["nodes"],
        mpi=RES["train"]["mpi"],
    shell:
        "{params.launcher:q} python -m narvl train --params {params.folder:q} --task pretrain --kind ar"
        " --shards {params.shards:q} --tasks {params.tasks:q} --tokenizer {input.tokenizer:q} --out {params.run:q}"
        " {params.seed:q} {params.init_resnet:q} > {log:q} 2>&1"
        " && python -m narvl export --run {params.run:q} --out {output.model:q} >> {log:q} 2>&1"


rule train:
    """The AR baseline (kind ar) or the NAR model (kind nar) of one task, on the task's shards: runs/<task>-<kind>
    with train.seed, and runs/<task>-<kind>-seed<N> for each further seed of pipeline.seeds (`--seed N`)."""
    input:
        params=ancient_params("train", "model", "data"),
        code=task_sources("narvl.train.main"),
        shards=f"{SHARDS}/{{task}}",
        tokenizer=TOKENIZER,
        init=init_input,  # the starting weights: the multi-task AR model (pipeline.pretrain) or train.init
        resnet=resnet_input(),  # the ResNet's starting weights (pipeline.pretrain_resnet or train.init_resnet)
    output:
        summary=f"{RUNS}/{{task}}-{{run}}/summary.json",
    wildcard_constraints:
        run="(?:ar|nar)(?:-seed[0-9]+)?",
    params:
        folder=folder_of("params"),
        run=lambda w, output: os.path.dirname(output.summary),
        kind=lambda w: w.run.split("-seed")[0],
        seed=lambda w: ["--seed", w.run.split("-seed")[1]] if "-seed" in w.run else [],
        init=init_argument,
        init_resnet=resnet_argument,
        launcher=LAUNCHER,
        values=lambda w: values("train", "model", "data", task=w.task, drop=TRAIN_VALUES_DROP),
    log:
        logfile("train/{task}-{run}"),
    priority: train_priority
    threads: lambda w: TRAIN.for_task(w.task, STAGE_FILES["train"], w.run.split("-seed")[0]).nproc
    resources:
        mem_mb=RES["train"]["mem_mb"],
        runtime=RES["train"]["runtime"],
        gpu=RES["train"]["gpu"],
        nodes=RES["train"]["nodes"],
        mpi=RES["train"]["mpi"],
    shell:
        "{params.launcher:q} python -m narvl train --params {params.folder:q} --task {wildcards.task:q} --kind {params.kind:q}"
        " --shards {input.shards:q} --tokenizer {input.tokenizer:q} --out {params.run:q} {params.seed:q}"
        " {params.init:q} {params.init_resnet:q} > {log:q} 2>&1"


rule distill:
    """Sequence-level KD: the AR teacher decodes the task's training set into KD shards."""
    input:
        params=ancient_params("decode", "data"),  # beam search settings; the loader's (data.yaml)
        code=task_sources("narvl.train.distill"),
        model=f"{RUNS}/{{task}}-ar/model.pt",
        shards=f"{SHARDS}/{{task}}",
        tokenizer=TOKENIZER,
    output:
        shards=directory(f"{KD_SHARDS}/{{task}}"),
    params:
        folder=folder_of("params"),
        values=lambda w: values("decode", "data.loader", task=w.task, drop=DISTILL_VALUES_DROP),
    log:
        logfile("train/distill-{task}"),
    priority: PRIORITY["kd"]
    threads: RES["distill"]["threads"]
    resources:
        mem_mb=RES["distill"]["mem_mb"],
        runtime=RES["distill"]["runtime"],
        gpu=RES["distill"]["gpu"],
    shell:
        "python -m narvl distill --params {params.folder:q} --model {input.model:q} --shards {input.shards:q}"
        " --tokenizer {input.tokenizer:q} --out {output.shards:q} > {log:q} 2>&1"


rule train_kd:
    """The NAR student of one task trained on the AR teacher's outputs (train.distill_tasks)."""
    input:
        params=ancient_params("train", "model", "data"),
        code=task_sources("narvl.train.main"),
        shards=f"{KD_SHARDS}/{{task}}",
        tokenizer=TOKENIZER,
        init=init_input,
        resnet=resnet_input(),
    output:
        summary=f"{RUNS}/{{task}}-nar-kd/summary.json",
    params:
        folder=folder_of("params"),
        run=lambda w, output: os.path.dirname(output.summary),
        init=init_argument,
        init_resnet=resnet_argument,
        launcher=LAUNCHER,
        values=lambda w: values("train", "model", "data", task=w.task, drop=TRAIN_VALUES_DROP),
    log:
        logfile("train/{task}-nar-kd"),
    priority: PRIORITY["kd"]
    threads: lambda w: TRAIN.for_task(w.task, STAGE_FILES["train"], "nar").nproc
    resources:
        mem_mb=RES["train"]["mem_mb"],
        runtime=RES["train"]["runtime"],
        gpu=RES["train"]["gpu"],
        nodes=RES["train"]["nodes"],
        mpi=RES["train"]["mpi"],
    shell:
        "{params.launcher:q} python -m narvl train --params {params.folder:q} --task {wildcards.task:q} --kind nar"
        " --shards {input.shards:q} --tokenizer {input.tokenizer:q} --out {params.run:q} {params.init:q}"
        " {params.init_resnet:q} > {log:q} 2>&1"


rule export:
    """The self-describing fp32 model file of a finished run."""
    input:
        code=sources("narvl.train.export"),
        summary=f"{RUNS}/{{task}}-{{model}}/summary.json",
    output:
        model=f"{RUNS}/{{task}}-{{model}}/model.pt",
    params:
        run=lambda w, input: os.path.dirname(input.summary),
    log:
        logfile("train/export-{task}-{model}"),
    priority: PRIORITY["export"]
    threads: 1
    resources:
        mem_mb=RES["decode"]["mem_mb"],
        runtime=RES["decode"]["runtime"],
    shell:
        "python -m narvl export --run {params.run:q} --out {output.model:q} > {log:q} 2>&1"


rule train_all:
    """Target: every exported model (the DVC stage `train`), those of every seed included."""
    input:
        models=ALL_MODEL_FILES,
