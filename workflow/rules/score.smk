# Scoring every predictions file with the official metrics: one metrics JSON per (task, split, model, decoder).
# The references come from the raw data (the embedded default or pipeline.real), never from the model's side.


rule score_caption:
    """BLEU-4, METEOR, ROUGE-L, CIDEr (SPICE reported unavailable offline) against the COCO caption references."""
    input:
        params=ancient_params("score"),
        code=sources("narvl.eval.score", "narvl.tasks.caption", "narvl.eval.caption"),
        raw=raw_inputs("references.{split}", task="caption"),
        predictions=f"{RESULTS}/predictions/caption-{{split}}-{{model}}-{{decoder}}.json",
        provenance=f"{RESULTS}/predictions/caption-{{split}}-{{model}}-{{decoder}}.meta.json",  # read beside it
    output:
        metrics=f"{RESULTS}/metrics/caption-{{split}}-{{model}}-{{decoder}}.json",
    params:
        folder=folder_of("params"),
        references=raw_path("references.{split}", task="caption"),
        values=values("score.meteor", "score.spice"),
    log:
        logfile("score/caption-{split}-{model}-{decoder}"),
    threads: RES["score"]["threads"]
    resources:
        mem_mb=RES["score"]["mem_mb"],
        runtime=RES["score"]["runtime"],
    shell:
        "python -m narvl score caption --params {params.folder:q} --references {params.references:q}"
        " --predictions {input.predictions:q} --out {output.metrics:q} > {log:q} 2>&1"


rule score_vqa:
    """VQA accuracy (the official soft accuracy over 10 answers) against the VQAv2 annotations."""
    input:
        params=ancient_params("score"),
        code=sources("narvl.eval.score", "narvl.tasks.vqa", "narvl.eval.vqa"),
        raw=raw_inputs("score.{split}.questions", "score.{split}.annotations", task="vqa"),
        predictions=f"{RESULTS}/predictions/vqa-{{split}}-{{model}}-{{decoder}}.json",
        provenance=f"{RESULTS}/predictions/vqa-{{split}}-{{model}}-{{decoder}}.meta.json",  # read beside it
    output:
        metrics=f"{RESULTS}/metrics/vqa-{{split}}-{{model}}-{{decoder}}.json",
    params:
        folder=folder_of("params"),
        questions=raw_path("score.{split}.questions", task="vqa"),
        annotations=raw_path("score.{split}.annotations", task="vqa"),
        values=values("score", drop=("score.meteor", "score.spice", "score.iou_threshold", "score.reproduction")),
    log:
        logfile("score/vqa-{split}-{model}-{decoder}"),
    threads: RES["score"]["threads"]
    resources:
        mem_mb=RES["score"]["mem_mb"],
        runtime=RES["score"]["runtime"],
    shell:
        "python -m narvl score vqa --params {params.folder:q} --questions {params.questions:q}"
        " --annotations {params.annotations:q} --predictions {input.predictions:q} --out {output.metrics:q} > {log:q} 2>&1"


rule score_grounding:
    """Acc@IoU>=score.iou_threshold against the RefCOCO boxes of the split."""
    input:
        params=ancient_params("score"),
        code=sources("narvl.eval.score", "narvl.tasks.grounding", "narvl.eval.grounding"),
        raw=raw_inputs("refs", "instances", task="grounding"),
        predictions=f"{RESULTS}/predictions/grounding-{{split}}-{{model}}-{{decoder}}.json",
        provenance=f"{RESULTS}/predictions/grounding-{{split}}-{{model}}-{{decoder}}.meta.json",  # read beside it
    output:
        metrics=f"{RESULTS}/metrics/grounding-{{split}}-{{model}}-{{decoder}}.json",
    params:
        folder=folder_of("params"),
        refs=raw_path("refs", task="grounding"),
        instances=raw_path("instances", task="grounding"),
        values=values("score.iou_threshold"),
    log:
        logfile("score/grounding-{split}-{model}-{decoder}"),
    threads: RES["score"]["threads"]
    resources:
        mem_mb=RES["score"]["mem_mb"],
        runtime=RES["score"]["runtime"],
    shell:
        "python -m narvl score grounding --params {params.folder:q} --refs {params.refs:q} --instances {params.instances:q}"
        " --split {wildcards.split:q} --predictions {input.predictions:q} --out {output.metrics:q} > {log:q} 2>&1"


rule score_entailment:
    """Accuracy (yes / no / maybe against the gold label) of every hypothesis of the split."""
    input:
        params=ancient_params("score"),
        code=sources("narvl.eval.score", "narvl.tasks.entailment", "narvl.eval.entailment"),
        raw=lambda w: raw_inputs("references.{split}", task="entailment")(w)
        if w.split in INPUTS["entailment"].get("references", {}) else [f"{SHARDS}/entailment"],
        predictions=f"{RESULTS}/predictions/entailment-{{split}}-{{model}}-{{decoder}}.json",
        provenance=f"{RESULTS}/predictions/entailment-{{split}}-{{model}}-{{decoder}}.meta.json",  # read beside it
    output:
        metrics=f"{RESULTS}/metrics/entailment-{{split}}-{{model}}-{{decoder}}.json",
    params:
        folder=folder_of("params"),
        references=entailment_references,
        values=values("score.missing_predictions"),
    log:
        logfile("score/entailment-{split}-{model}-{decoder}"),
    threads: RES["score"]["threads"]
    resources:
        mem_mb=RES["score"]["mem_mb"],
        runtime=RES["score"]["runtime"],
    shell:
        "python -m narvl score entailment --params {params.folder:q} --references {params.references:q}"
        " --split {wildcards.split:q} --predictions {input.predictions:q} --out {output.metrics:q} > {log:q} 2>&1"


rule evaluate_all:
    """Target: every metrics file and the decoding benchmark (the DVC stage `evaluate`)."""
    input:
        metrics=METRICS_FILES,
        bench=BENCH,
