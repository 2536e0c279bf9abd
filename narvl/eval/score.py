r"""Score a predictions file with the official metrics and write one metrics JSON per (task, split, model, decoder).

    narvl score caption   --params params --references REFS.json --predictions P.json --out M.json
    narvl score vqa       --params params --questions Q.json --annotations A.json \
                          --predictions P.json --out M.json
    narvl score grounding --params params --refs "refs(unc).p" --instances instances.json --split S \
                          --predictions P.json --out M.json
    narvl score grounding --params params --references data/shards/grounding --split S \
                          --predictions P.json --out M.json
    narvl score entailment --params params --references snli_ve_dev.jsonl \
                          --predictions P.json --out M.json

Reads: score.yaml of the parameter folder --params (metric options); COCO caption annotations + results
`[{"image_id", "caption"}]` (pycocoevalcap: BLEU-1..4, METEOR, ROUGE-L, CIDEr, SPICE when Stanford CoreNLP is
installed, else listed as unavailable with the reason); VQA v2 questions + annotations + `[{"question_id",
"answer"}]` (official VQA accuracy, overall and per answer type, in percent);
refer-toolkit refs + COCO instances, or grounding shards, + `[{"sent_id" | "sample_id" | "ref_id", "box"}]` in
original pixels (Acc@0.5, OFA's IoU convention); SNLI-VE jsonl, or entailment shards, + `[{"pair_id", "answer"}]`
(accuracy, overall and per gold answer, in percent). Each task (narvl/tasks/) names its references and calls its
scorer (`Task.add_score_arguments`, `Task.score`).

Writes: `--out` as `{"task", "split", "model", "decoder", "metrics", "headline", "unavailable", "coverage",
"details", "provenance"}`. The cell is parsed from the file name `<task>-<split>-<model>-<decoder>.json` (--out, else
--predictions) unless --split/--model/--decoder are given. Provenance: narvl version, the score params and their
hash, sha256 of every input, and the decoding provenance (model file, step, params hash, timing) from --provenance
or, when present, the decode sidecar `<predictions stem>.meta.json`, which must record the predictions' sha256 (a
sidecar of other predictions, left by a failed decode, is an error; so is an explicit --provenance that records
another hash).

Bad input stops with an error naming the file and record: not JSON, not a list, a record without its id or value,
duplicate ids, ids that the references do not have. References without a prediction follow
`score.missing_predictions` (error, or scored as wrong and listed under "coverage").
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from narvl import params as params_mod
from narvl.eval import common
from narvl.io import check_output, write_json

log = logging.getLogger(__name__)


def _common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", required=True, type=Path, help="parameter folder (score.yaml)")
    p.add_argument("--predictions", required=True, type=Path, help="predictions JSON (official results format)")
    p.add_argument("--out", required=True, type=Path, help="metrics JSON to write")
    p.add_argument("--provenance", type=Path, default=None,
                   help="decoding provenance JSON (default: the predictions' .meta.json sidecar when present)")
    p.add_argument("--model", dest="model_name", default=None, choices=["ar", "nar", "nar-kd", "baseline-blind"],
                   help="model name of the cell (default: from the --out file name)")
    p.add_argument("--decoder", default=None, choices=["greedy", "beam"],
                   help="decoder of the cell (default: from the --out file name)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from narvl import tasks

    sub = parser.add_subparsers(dest="task", metavar="TASK", required=True)
    for task in tasks.all_tasks():
        p = sub.add_parser(task.name, help=task.score_help)
        _common_args(p)
        task.add_score_arguments(p)


def main(args: argparse.Namespace) -> int:
    from narvl import tasks

    score_params = params_mod.load_stage(args.params, "score")
    args.model = args.model_name
    inputs = [getattr(args, name, None) for name in ("params", "predictions", "provenance", "references",
                                                      "questions", "annotations", "refs", "instances")]
    check_output(args.out, is_dir=False, inputs=inputs)  # before scoring: a folder or an input as --out is an error
    result, inputs = tasks.get(args.task).score(args, score_params)
    cell = common.cell_from_args(args.task, args)
    out = {**cell, **result, "provenance": common.provenance(args, score_params, inputs)}
    out["provenance"]["score_params_values"] = params_mod.to_dict(score_params)
    write_json(args.out, out)
    shown = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in result["metrics"].items())
    log.info("%s: %s", args.out, shown)
    cov = result["coverage"]
    if cov["missing"]:
        log.warning("%s: %d of %d items had no prediction and were scored as wrong", args.out, cov["missing"],
                    cov["references"])
    return 0
