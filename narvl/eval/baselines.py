r"""Trivial baselines, scored by the same scorers as the models: what a table row needs to beat.

    narvl baselines vqa-majority      --params params --train-annotations A_TRAIN.json \
                                      --questions Q.json --annotations A.json --split val \
                                      --predictions P.json --out M.json
    narvl baselines grounding-random  --params params --refs "refs(unc).p" --instances instances.json \
                                      --split val [--seed 0] --predictions P.json --out M.json
    narvl baselines grounding-largest --params params --refs "refs(unc).p" --instances instances.json \
                                      --split val --predictions P.json --out M.json
    narvl baselines caption-constant  --params params --train-captions dataset_coco.json \
                                      --references captions_karpathy_test.json --split test \
                                      --predictions P.json --out M.json

- vqa-majority: every question gets the most common training `multiple_choice_answer` of its `question_type`
  (the overall most common one for a type never seen in training). Model name `baseline-majority`.
- grounding-random: each sentence gets the box of an object of its image drawn at random (COCO instances of the
  image; stream `narvl-baseline:<seed>:<sent_id>`, so one sentence's draw does not depend on the others).
  Model name `baseline-random-object`.
- grounding-largest: each sentence gets the image's largest object (COCO `area`; ties: the lowest annotation id).
  Model name `baseline-largest-object`.
- caption-constant: every image gets the most frequent training caption (Karpathy train + restval, lower-cased
  tokens joined by spaces; ties: the alphabetically first). Model name `baseline-constant`.

Each reads score.yaml of the parameter folder --params and writes the predictions file (official results format)
and the metrics JSON of `narvl score`, with decoder `none` and, in provenance, `baseline` (name, rule, seed, the
constant answer or caption).
"""

from __future__ import annotations

import argparse
import logging
import random
from collections import Counter
from pathlib import Path
from typing import Any

from narvl import params as params_mod
from narvl.errors import NarvlError
from narvl.eval import common
from narvl.io import read_json, write_json

log = logging.getLogger(__name__)

MODEL_NAMES = {"vqa-majority": "baseline-majority", "grounding-random": "baseline-random-object",
               "grounding-largest": "baseline-largest-object", "caption-constant": "baseline-constant"}
DECODER = "none"


# ------------------------------------------------------------------------------------------------- predictions
def vqa_majority(train_annotations: Path, val_records: list[dict]) -> tuple[list[dict], dict[str, Any]]:
    """Predictions for val_records (VQA annotation records) from the training annotations' majority answers."""
    ann = read_json(train_annotations)
    if not isinstance(ann, dict) or not isinstance(ann.get("annotations"), list) or not ann["annotations"]:
        raise NarvlError(f"{train_annotations}: expected VQA annotations (an object with a non-empty "
                         "'annotations' list)")
    by_type: dict[str, Counter] = {}
    overall: Counter = Counter()
    for i, a in enumerate(ann["annotations"]):
        if not (isinstance(a, dict) and isinstance(a.get("question_type"), str)
                and isinstance(a.get("multiple_choice_answer"), str)):
            raise NarvlError(f"{train_annotations}: annotations[{i}]: needs question_type and "
                             f"multiple_choice_answer (strings): {a!r:.160}")
        by_type.setdefault(a["question_type"], Counter())[a["multiple_choice_answer"]] += 1
        overall[a["multiple_choice_answer"]] += 1

    def top(c: Counter) -> str:  # most common; ties: alphabetically first
        return min(c.items(), key=lambda kv: (-kv[1], kv[0]))[0]

    majority = {t: top(c) for t, c in sorted(by_type.items())}
    fallback = top(overall)
    preds = [{"question_id": r["question_id"], "answer": majority.get(r.get("question_type"), fallback)}
             for r in val_records]
    return preds, {"majority_answer": majority, "fallback_answer": fallback}


def _objects_by_image(instances: Path) -> dict[int, list[dict]]:
    inst = read_json(instances)
    if not isinstance(inst, dict) or not isinstance(inst.get("annotations"), list):
        raise NarvlError(f"{instances}: expected COCO instances (an object with an 'annotations' list)")
    out: dict[int, list[dict]] = {}
    for i, a in enumerate(inst["annotations"]):
        ok = (isinstance(a, dict) and common.is_int(a.get("id")) and common.is_int(a.get("image_id"))
              and isinstance(a.get("bbox"), list) and len(a["bbox"]) == 4
              and all(isinstance(v, (int, float)) for v in a["bbox"]))
        if not ok:
            raise NarvlError(f"{instances}: annotations[{i}]: needs id, image_id and bbox [x, y, w, h]: {a!r:.160}")
        out.setdefault(a["image_id"], []).append(a)
    for objs in out.values():
        objs.sort(key=lambda a: a["id"])
    return out


def _xyxy(a: dict) -> list[float]:
    x, y, w, h = (float(v) for v in a["bbox"])
    return [x, y, x + w, y + h]


def _area(a: dict) -> float:
    if isinstance(a.get("area"), (int, float)):
        return float(a["area"])
    return float(a["bbox"][2]) * float(a["bbox"][3])


def grounding_boxes(items: list, instances: Path, rule: str, seed: int) -> list[dict]:
    """One box per RefItem: a random object of its image (rule 'random') or its largest object ('largest')."""
    objects = _objects_by_image(instances)
    preds = []
    for it in items:
        objs = objects.get(it.image_id)
        if not objs:
            raise NarvlError(f"{instances}: image {it.image_id} (sentence {it.sent_id}) has no annotated object")
        if rule == "random":
            pick = random.Random(f"narvl-baseline:{seed}:{it.sent_id}").choice(objs)
        else:
            pick = min(objs, key=lambda a: (-_area(a), a["id"]))
        preds.append({"ref_id": it.ref_id, "sent_id": it.sent_id, "box": _xyxy(pick)})
    return preds


def constant_caption(train_captions: Path) -> str:
    """The most frequent training caption of a Karpathy dataset_coco.json (train + restval), lower-cased tokens."""
    data = read_json(train_captions)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise NarvlError(f"{train_captions}: expected Karpathy's dataset_coco.json (an object with 'images')")
    counts: Counter = Counter()
    for i, im in enumerate(data["images"]):
        if not isinstance(im, dict) or not isinstance(im.get("sentences"), list):
            raise NarvlError(f"{train_captions}: images[{i}]: needs split and sentences: {im!r:.120}")
        if im.get("split") not in ("train", "restval"):
            continue
        for s in im["sentences"]:
            if not isinstance(s, dict) or not isinstance(s.get("tokens"), list):
                raise NarvlError(f"{train_captions}: images[{i}]: a sentence without tokens: {s!r:.120}")
            counts[" ".join(t.lower() for t in s["tokens"])] += 1
    if not counts:
        raise NarvlError(f"{train_captions}: no train or restval captions")
    return min(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0]


# --------------------------------------------------------------------------------------------------------- CLI
def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", required=True, type=Path, help="parameter folder (score.yaml)")
    p.add_argument("--split", required=True, help="evaluation split of the cell (val, test, testA, ...)")
    p.add_argument("--predictions", required=True, type=Path, help="predictions JSON to write")
    p.add_argument("--out", required=True, type=Path, help="metrics JSON to write")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="baseline", metavar="BASELINE", required=True)
    p = sub.add_parser("vqa-majority", help="the most common training answer of each question type")
    _common(p)
    p.add_argument("--train-annotations", required=True, type=Path, help="VQA training annotations JSON")
    p.add_argument("--questions", required=True, type=Path, help="VQA questions JSON of the evaluated split")
    p.add_argument("--annotations", required=True, type=Path, help="VQA annotations JSON of the evaluated split")
    for name, text in (("grounding-random", "a random object of the image (seeded)"),
                       ("grounding-largest", "the largest object of the image")):
        p = sub.add_parser(name, help=text)
        _common(p)
        p.add_argument("--refs", required=True, type=Path, help='refer toolkit "refs(unc).p"')
        p.add_argument("--instances", required=True, type=Path, help="COCO instances.json (every object's box)")
        if name == "grounding-random":
            p.add_argument("--seed", type=int, default=0, help="seed of the draws (default 0)")
    p = sub.add_parser("caption-constant", help="the most frequent training caption for every image")
    _common(p)
    p.add_argument("--train-captions", required=True, type=Path, help="Karpathy dataset_coco.json")
    p.add_argument("--references", required=True, type=Path, help="COCO caption annotations of the split")


def main(args: argparse.Namespace) -> int:
    score_params = params_mod.load_stage(args.params, "score")
    args.provenance = None
    info: dict[str, Any] = {"name": MODEL_NAMES[args.baseline], "rule": args.baseline}
    if args.baseline == "vqa-majority":
        from narvl.eval import vqa

        records = vqa.load_annotations(args.questions, args.annotations)
        preds, extra = vqa_majority(args.train_annotations, records)
        info.update(extra)
        write_json(args.predictions, preds, indent=None)
        result = vqa.score(args.questions, args.annotations, args.predictions, score_params)
        inputs = {"train_annotations": args.train_annotations, "questions": args.questions,
                  "annotations": args.annotations, "predictions": args.predictions}
    elif args.baseline.startswith("grounding-"):
        from narvl.eval import grounding

        items = grounding.load_refer(args.refs, args.instances, args.split)
        rule = args.baseline.removeprefix("grounding-")
        seed = getattr(args, "seed", 0)
        if rule == "random":
            info["seed"] = seed
        write_json(args.predictions, grounding_boxes(items, args.instances, rule, seed), indent=None)
        result = grounding.score(items, args.predictions, score_params, str(args.refs))
        inputs = {"refs": args.refs, "instances": args.instances, "predictions": args.predictions}
    else:
        from narvl.eval import caption

        text = constant_caption(args.train_captions)
        info["caption"] = text
        refs = read_json(args.references)
        if not isinstance(refs, dict) or not isinstance(refs.get("images"), list):
            raise NarvlError(f"{args.references}: expected COCO caption annotations (an object with 'images')")
        image_ids = sorted({int(im["id"]) for im in refs["images"]})
        write_json(args.predictions, [{"image_id": i, "caption": text} for i in image_ids], indent=None)
        result = caption.score(args.references, args.predictions, score_params)
        inputs = {"train_captions": args.train_captions, "references": args.references,
                  "predictions": args.predictions}
    cell = {"task": args.baseline.split("-")[0], "split": args.split, "model": info["name"], "decoder": DECODER}
    prov = common.provenance(args, score_params, inputs)
    prov["score_params_values"] = params_mod.to_dict(score_params)
    prov["baseline"] = info
    write_json(args.out, {**cell, **result, "provenance": prov})
    shown = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in result["metrics"].items())
    log.info("%s (%s): %s", args.out, info["name"], shown)
    return 0
