"""Visual question answering (VQAv2): the prompt is the question, the target the answer with the highest soft
score, weighted by that score; scored with the official VQA accuracy (narvl.eval.vqa) over the 10 human answers."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Iterator

from narvl.data.readers import Record, get_field as _get, load_json as _load_json, tsv_int
from narvl.data.vqa import best_answer, soft_scores
from narvl.errors import NarvlError
from narvl.tasks.base import Column, Task, f2


# ------------------------------------------------------------------------------------------------------- vqav2
VQA_SUBTYPES = {"train2014": "train", "val2014": "val"}


def read_vqav2(questions: list[Path], annotations: list[Path], images: Path) -> list[Record]:
    """VQAv2: questions and annotation files paired by data_subtype (train2014 -> train, val2014 -> val).

    A question_id given twice (questions or annotations), a question without annotation and an annotation without
    question are errors naming the file and the record: the two files must describe the same questions.
    """
    by_subtype: dict[str, dict[str, Any]] = {}
    for path in annotations:
        doc = _load_json(path)
        subtype = _get(doc, "data_subtype", str, path, "top level")
        anns = {}
        for i, ann in enumerate(_get(doc, "annotations", list, path, "top level")):
            qid = _get(ann, "question_id", int, path, f"annotations[{i}]")
            if qid in anns:
                raise NarvlError(f"{path}: annotations[{i}]: question_id {qid} is annotated twice (also "
                                 f"annotations[{anns[qid][0]}])")
            anns[qid] = (i, ann)
        if subtype in by_subtype:
            raise NarvlError(f"{path}: a second annotation file with data_subtype '{subtype}' (the first: "
                             f"{by_subtype[subtype]['path']})")
        by_subtype[subtype] = {"path": path, "anns": anns, "asked": {}}
    records = []
    for qpath in questions:
        doc = _load_json(qpath)
        subtype = _get(doc, "data_subtype", str, qpath, "top level")
        if subtype not in VQA_SUBTYPES:
            raise NarvlError(f"{qpath}: data_subtype '{subtype}' is not one of {', '.join(VQA_SUBTYPES)} "
                             "(test questions have no answers to train or score on)")
        if subtype not in by_subtype:
            raise NarvlError(f"{qpath}: no annotation file with data_subtype '{subtype}' among "
                             f"{', '.join(map(str, annotations))}")
        apath, anns, asked = (by_subtype[subtype][k] for k in ("path", "anns", "asked"))
        split = VQA_SUBTYPES[subtype]
        for i, q in enumerate(_get(doc, "questions", list, qpath, "top level")):
            where = f"questions[{i}]"
            qid = _get(q, "question_id", int, qpath, where)
            where = f"questions[{i}] (question_id {qid})"
            if qid in asked:
                raise NarvlError(f"{qpath}: {where}: question_id {qid} given twice (also {asked[qid]}); each "
                                 "question is one sample")
            asked[qid] = f"{qpath} questions[{i}]"
            image_id = _get(q, "image_id", int, qpath, where)
            question = _get(q, "question", str, qpath, where).strip()
            if qid not in anns:
                raise NarvlError(f"{qpath}: {where}: no annotation for this question in {apath}")
            j, ann = anns[qid]
            awhere = f"annotations[{j}] (question_id {qid})"
            if _get(ann, "image_id", int, apath, awhere) != image_id:
                raise NarvlError(f"{apath}: {awhere}: image_id {ann['image_id']} differs from the question's "
                                 f"{image_id}")
            answer_type = _get(ann, "answer_type", str, apath, awhere)
            answers = [_get(a, "answer", str, apath, f"{awhere} answers[{k}]").strip()
                       for k, a in enumerate(_get(ann, "answers", list, apath, awhere))]
            if not answers:
                raise NarvlError(f"{apath}: {awhere}: no answers")
            scores = soft_scores(answers)
            path = images / subtype / f"COCO_{subtype}_{image_id:012d}.jpg"
            records.append(Record(
                split=split, source_id=f"question_id={qid}", image=path, image_key=str(path), image_id=image_id,
                fields=dict(prompt=question, target=best_answer(scores, answers), question_id=qid,
                            answers=answers, answer_type=answer_type, scores=scores)))
    for subtype, entry in sorted(by_subtype.items()):
        unasked = [(i, qid) for qid, (i, _) in entry["anns"].items() if qid not in entry["asked"]]
        if unasked:
            shown = ", ".join(f"annotations[{i}] (question_id {qid})" for i, qid in sorted(unasked)[:5])
            raise NarvlError(f"{entry['path']}: {len(unasked)} annotations have no question in the "
                             f"'{subtype}' questions file{'s' if len(questions) > 1 else ''} (mismatched files?): "
                             f"{shown}{' ...' if len(unasked) > 5 else ''}")
    records.sort(key=lambda r: (r.split, r.fields["question_id"]))
    return records




class VQA(Task):
    name = "vqa"
    title = "Visual question answering"
    headline = "accuracy"
    scale = "accuracy in %"
    split_order = ("val", "test-dev", "test")
    formats = {"vqav2": ("questions", "annotations", "images")}
    tsv_columns = ("question-id", "image-id", "question", "answers with confidence", "predicted object labels",
                   "image base64")
    ar_decoders = ("trie", "allcand")
    baselines = (("baseline-majority", "none"), ("baseline-blind", "greedy"))
    prompt_text = "question"
    score_help = "official VQA accuracy"
    prediction_fields = ("question_id", "answer")

    def prompt(self, text: str | None = None) -> str:
        return (text or "").strip()

    def read(self, fmt: str, args: argparse.Namespace) -> list[Record]:
        return read_vqav2(sorted(args.questions), sorted(args.annotations), args.images)

    def tsv_records(self, cols: list[str], base: dict, path: Path, lineno: int, where: str) -> Iterator[Record]:
        qid = tsv_int(cols[0].strip(), path, where, self.tsv_columns[0])
        scores: dict[str, float] = {}
        for item in cols[3].split("&&"):
            conf, sep, answer = item.partition("|!+")
            try:
                value = float(conf)
            except ValueError:
                value = None
            if not sep or value is None or not answer.strip():
                raise NarvlError(f"{path}: {where}: answer {item!r:.60} is not 'confidence|!+answer'")
            scores[answer.strip()] = max(value, scores.get(answer.strip(), 0.0))
        answers = sorted(scores, key=lambda a: (-scores[a], a))
        yield Record(source_id=f"question_id={qid}", **base, fields=dict(
            prompt=cols[2].strip(), target=answers[0], question_id=qid, answers=answers,
            answer_type="unknown", scores=dict(sorted(scores.items()))))

    def target(self, meta: dict[str, Any], tokenizer, max_len: int) -> tuple[list[int], float]:
        return tokenizer.encode(meta["target"])[:max_len], float(meta["scores"].get(meta["target"], 0.0))

    def objective_options(self, kind: str, tokenizer, train) -> dict[str, Any]:
        return {"use_weights": train.vqa_score_weights}

    def distilled_meta(self, meta: dict[str, Any], teacher: str) -> dict[str, Any]:
        return {**super().distilled_meta(meta, teacher), "original_scores": meta["scores"], "scores": {teacher: 1.0}}

    def record(self, meta: dict[str, Any], pred: Any) -> dict[str, Any]:
        return {"question_id": meta["question_id"], "answer": pred}

    def add_score_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--questions", required=True, type=Path, help="VQA questions JSON")
        parser.add_argument("--annotations", required=True, type=Path, help="VQA annotations JSON")
        parser.add_argument("--split", default=None, help="split of the cell (default: from the --out file name)")

    def score(self, args: argparse.Namespace, score_params) -> tuple[dict[str, Any], dict[str, Path]]:
        from narvl.eval import vqa

        result = vqa.score(args.questions, args.annotations, args.predictions, score_params)
        return result, {"questions": args.questions, "annotations": args.annotations, "predictions": args.predictions}

    def columns(self, splits: list[str]) -> list[Column]:
        prefix = len(splits) > 1
        return [Column(split, metric, f"{split} {label}" if prefix else label, f2)
                for split in splits
                for metric, label in (("accuracy", "accuracy"), ("accuracy_yes/no", "yes/no"),
                                      ("accuracy_number", "number"), ("accuracy_other", "other"))]

    def gallery_lines(self, meta: dict[str, Any]) -> list[str]:
        top = sorted(meta.get("scores", {}).items(), key=lambda kv: -kv[1])[:3]
        lines = [f"Q: {meta.get('prompt', '')}", f"ref: {meta.get('target', '')}"]
        if top:
            lines.append("scores: " + ", ".join(f"{a} {s:.2f}" for a, s in top))
        return lines


TASK = VQA()
