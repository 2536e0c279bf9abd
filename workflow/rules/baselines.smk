# The trivial baselines (`narvl baselines`, narvl/eval/baselines.py) as metrics cells of their own, scored by the
# same scorers as the models: the rows a model must beat (pipeline.baselines). The blind AR baseline is a decode
# (rule decode_blind) scored by the ordinary score rules.


rule baseline_vqa_majority:
    """Every question answered with the most common training answer of its question type."""
    input:
        params=ancient_params("score"),
        code=sources("narvl.eval.baselines"),
        raw=raw_inputs("train_annotations", "score.{split}.questions", "score.{split}.annotations", task="vqa"),
    output:
        metrics=f"{RESULTS}/metrics/vqa-{{split}}-baseline-majority-none.json",
        predictions=f"{RESULTS}/predictions/vqa-{{split}}-baseline-majority-none.json",
    params:
        folder=folder_of("params"),
        train=raw_path("train_annotations", task="vqa"),
        questions=raw_path("score.{split}.questions", task="vqa"),
        annotations=raw_path("score.{split}.annotations", task="vqa"),
        values=values("score", drop=("score.meteor", "score.spice", "score.iou_threshold", "score.reproduction")),
    log:
        logfile("score/vqa-{split}-baseline-majority-none"),
    threads: RES["score"]["threads"]
    resources:
        mem_mb=RES["score"]["mem_mb"],
        runtime=RES["score"]["runtime"],
    shell:
        "python -m narvl baselines vqa-majority --params {params.folder:q} --split {wildcards.split:q}"
        " --train-annotations {params.train:q} --questions {params.questions:q} --annotations {params.annotations:q}"
        " --predictions {output.predictions:q} --out {output.metrics:q} > {log:q} 2>&1"


rule baseline_grounding:
    """Every expression answered with a random object of its image (seed 0), or with its largest object."""
    input:
        params=ancient_params("score"),
        code=sources("narvl.eval.baselines"),
        raw=raw_inputs("refs", "instances", task="grounding"),
    output:
        metrics=f"{RESULTS}/metrics/grounding-{{split}}-baseline-{{pick}}-object-none.json",
        predictions=f"{RESULTS}/predictions/grounding-{{split}}-baseline-{{pick}}-object-none.json",
    wildcard_constraints:
        pick="random|largest",
    params:
        folder=folder_of("params"),
        baseline=lambda w: f"grounding-{w.pick}",
        refs=raw_path("refs", task="grounding"),
        instances=raw_path("instances", task="grounding"),
        values=values("score.iou_threshold"),
    log:
        logfile("score/grounding-{split}-baseline-{pick}-object-none"),
    threads: RES["score"]["threads"]
    resources:
        mem_mb=RES["score"]["mem_mb"],
        runtime=RES["score"]["runtime"],
    shell:
        "python -m narvl baselines {params.baseline:q} --params {params.folder:q} --split {wildcards.split:q}"
        " --refs {params.refs:q} --instances {params.instances:q}"
        " --predictions {output.predictions:q} --out {output.metrics:q} > {log:q} 2>&1"


rule baseline_caption_constant:
    """Every image captioned with the most frequent training caption."""
    input:
        params=ancient_params("score"),
        code=sources("narvl.eval.baselines"),
        raw=raw_inputs("annotations", "references.{split}", task="caption"),
    output:
        metrics=f"{RESULTS}/metrics/caption-{{split}}-baseline-constant-none.json",
        predictions=f"{RESULTS}/predictions/caption-{{split}}-baseline-constant-none.json",
    params:
        folder=folder_of("params"),
        train=raw_path("annotations", task="caption"),
        references=raw_path("references.{split}", task="caption"),
        values=values("score.meteor", "score.spice"),
    log:
        logfile("score/caption-{split}-baseline-constant-none"),
    threads: RES["score"]["threads"]
    resources:
        mem_mb=RES["score"]["mem_mb"],
        runtime=RES["score"]["runtime"],
    shell:
        "python -m narvl baselines caption-constant --params {params.folder:q} --split {wildcards.split:q}"
        " --train-captions {params.train:q} --references {params.references:q}"
        " --predictions {output.predictions:q} --out {output.metrics:q} > {log:q} 2>&1"
