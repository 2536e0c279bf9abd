# Scoring every predictions file with the official metrics: one metrics JSON per (task, split, model, decoder).
# The references come from the raw data (the embedded default or pipeline.real), never from the model's side.


rule score_caption:
    """BLEU-4, METEOR, ROUGE-L, CIDEr (SPICE reported unavailable offline) against the COCO caption references."""
    input:
        params=ancient_params("score"),
        code=sources("narvl.eval.score"),
        references=lambda w: INPUTS["caption"]["references"][w.split],
        predictions=f"{RESULTS}/predictions/caption-{{split}}-{{model}}-{{decoder}}.json",
    output:
        metrics=f"{RESULTS}/metrics/caption-{{split}}-{{model}}-{{decoder}}.json",
    params:
        values=values("score.meteor", "score.spice"),
    log:
        logfile("score/caption-{split}-{model}-{decoder}"),
    threads: RES["score"]["threads"]
    resources:
        mem_mb=RES["score"]["mem_mb"],
        runtime=RES["score"]["runtime"],
    shell:
        "python -m narvl score caption --params {input.params} --references {input.references:q}"
        " --predictions {input.predictions} --out {output.metrics} > {log} 2>&1"


rule score_vqa:
    """VQA accuracy (the official soft accuracy over 10 answers) against the VQAv2 annotations."""
    input:
        params=ancient_params("score"),
        code=sources("narvl.eval.score"),
        questions=lambda w: INPUTS["vqa"]["score"][w.split]["questions"],
        annotations=lambda w: INPUTS["vqa"]["score"][w.split]["annotations"],
        predictions=f"{RESULTS}/predictions/vqa-{{split}}-{{model}}-{{decoder}}.json",
    output:
        metrics=f"{RESULTS}/metrics/vqa-{{split}}-{{model}}-{{decoder}}.json",
    params:
        values=values("score", drop=("score.meteor", "score.spice", "score.iou_threshold")),
    log:
        logfile("score/vqa-{split}-{model}-{decoder}"),
    threads: RES["score"]["threads"]
    resources:
        mem_mb=RES["score"]["mem_mb"],
        runtime=RES["score"]["runtime"],
    shell:
        "python -m narvl score vqa --params {input.params} --questions {input.questions:q}"
        " --annotations {input.annotations:q} --predictions {input.predictions} --out {output.metrics} > {log} 2>&1"


rule score_grounding:
    """Acc@IoU>=score.iou_threshold against the RefCOCO boxes of the split."""
    input:
        params=ancient_params("score"),
        code=sources("narvl.eval.score"),
        refs=INPUTS["grounding"]["refs"] if "grounding" in PIPELINE.tasks else [],
        instances=INPUTS["grounding"]["instances"] if "grounding" in PIPELINE.tasks else [],
        predictions=f"{RESULTS}/predictions/grounding-{{split}}-{{model}}-{{decoder}}.json",
    output:
        metrics=f"{RESULTS}/metrics/grounding-{{split}}-{{model}}-{{decoder}}.json",
    params:
        values=values("score.iou_threshold"),
    log:
        logfile("score/grounding-{split}-{model}-{decoder}"),
    threads: RES["score"]["threads"]
    resources:
        mem_mb=RES["score"]["mem_mb"],
        runtime=RES["score"]["runtime"],
    shell:
        "python -m narvl score grounding --params {input.params} --refs {input.refs:q} --instances {input.instances:q}"
        " --split {wildcards.split} --predictions {input.predictions} --out {output.metrics} > {log} 2>&1"


rule evaluate_all:
    """Target: every metrics file and the decoding benchmark (the DVC stage `evaluate`)."""
    input:
        metrics=METRICS_FILES,
        bench=BENCH,
