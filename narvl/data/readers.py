"""Readers of the real datasets' formats, turning each into records of the shard sample format (docs/design.md).

    karpathy  Karpathy's `dataset_coco.json` + COCO image folders        -> caption
    vqav2     VQAv2 questions + annotations JSON (10 answers/question)   -> vqa
    refer     refer toolkit `refs(unc|umd|google).p` + `instances.json`   -> grounding
    ofa-tsv   OFA's TSV files (base64 images), one file per split        -> caption, vqa or grounding

Readers return records in a deterministic order (sorted by ids; TSV rows in file order). They never decode images:
the shard writer does, and a missing or corrupt image skips that sample (counted in sizes.json). A malformed file
or record stops with a NarvlError naming the file, the record and the problem.
"""

from __future__ import annotations

import io
import json
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from narvl.data.vqa import best_answer, soft_scores
from narvl.errors import NarvlError

CAPTION_PROMPT = "what does the image describe?"


def grounding_prompt(expression: str) -> str:
    return f'which region does the text " {expression} " describe?'


@dataclass
class Record:
    """One sample before its image is read: the writer adds id, orig_size, size (and box for grounding)."""

    split: str
    source_id: str  # names the sample in skip reports, e.g. "question_id=458752000"
    image: Path | str  # a file, or base64 text (OFA TSV)
    image_key: str  # identical images share a key, so the writer decodes and resizes each image once
    image_id: int
    fields: dict[str, Any] = field(default_factory=dict)  # prompt, target and the task's fields; grounding: orig_box


def clean_text(text: str) -> str:
    """Lower-case, punctuation to spaces (apostrophes kept), single spaces: the form of the training text."""
    text = re.sub(r"[^\w\s']", " ", text.lower())
    return " ".join(text.split())


# ----------------------------------------------------------------------------------------------------- helpers
def _load_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError as e:
        raise NarvlError(f"{path}: no such file") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise NarvlError(f"{path}: not valid JSON ({e})") from e


def _get(record: Any, key: str, kind: type | tuple[type, ...], path: Path, where: str) -> Any:
    """record[key], checked for presence and type, else a NarvlError naming the file and the record."""
    if not isinstance(record, dict):
        raise NarvlError(f"{path}: {where}: expected an object, got {type(record).__name__}")
    if key not in record:
        raise NarvlError(f"{path}: {where}: missing key '{key}'")
    value = record[key]
    if isinstance(value, bool) and kind is not bool or not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise NarvlError(f"{path}: {where}: '{key}' should be {names}, got {type(value).__name__} {value!r:.80}")
    return value


def _coco_image_path(images: Path, file_name: str) -> Path:
    """COCO images live in <images>/<train2014|val2014>/COCO_<subset>_<id>.jpg; a flat folder works too."""
    m = re.match(r"COCO_([A-Za-z]+\d*)_\d+\.\w+$", file_name)
    if m and not (images / file_name).exists():
        return images / m.group(1) / file_name
    return images / file_name


# ---------------------------------------------------------------------------------------------------- karpathy
KARPATHY_SPLITS = {"train": "train", "restval": "train", "val": "val", "test": "test"}


def read_karpathy(annotations: Path, images: Path) -> list[Record]:
    """Karpathy's dataset_coco.json: train+restval -> train (one sample per caption), val/test one per image."""
    doc = _load_json(annotations)
    entries = _get(doc, "images", list, annotations, "top level")
    records = []
    for i, entry in enumerate(entries):
        where = f"images[{i}]"
        cocoid = _get(entry, "cocoid", int, annotations, where)
        where = f"images[{i}] (cocoid {cocoid})"
        raw_split = _get(entry, "split", str, annotations, where)
        if raw_split not in KARPATHY_SPLITS:
            raise NarvlError(f"{annotations}: {where}: unknown split '{raw_split}' (expected one of "
                             f"{', '.join(KARPATHY_SPLITS)})")
        split = KARPATHY_SPLITS[raw_split]
        folder = _get(entry, "filepath", str, annotations, where)
        path = images / folder / _get(entry, "filename", str, annotations, where)
        sentences = _get(entry, "sentences", list, annotations, where)
        if not sentences:
            raise NarvlError(f"{annotations}: {where}: no sentences")
        texts = []
        for j, sent in enumerate(sentences):
            swhere = f"{where} sentences[{j}]"
            raw = _get(sent, "raw", str, annotations, swhere)
            tokens = sent.get("tokens") if isinstance(sent, dict) else None
            target = " ".join(tokens) if isinstance(tokens, list) and tokens else clean_text(raw)
            sentid = sent.get("sentid", j)
            texts.append((sentid if isinstance(sentid, int) else j, raw.strip(), clean_text(target)))
        texts.sort()
        base = dict(split=split, image=path, image_key=str(path), image_id=cocoid)
        if split == "train":
            for sentid, raw, target in texts:
                records.append(Record(source_id=f"cocoid={cocoid} sentid={sentid}", **base,
                                      fields=dict(prompt=CAPTION_PROMPT, target=target, references=[raw])))
        else:
            records.append(Record(source_id=f"cocoid={cocoid}", **base,
                                  fields=dict(prompt=CAPTION_PROMPT, target=texts[0][2],
                                              references=[raw for _, raw, _ in texts])))
    records.sort(key=lambda r: (r.split, r.image_id))  # stable: captions stay in sentid order
    return records


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


# ------------------------------------------------------------------------------------------------------- refer
class _PlainUnpickler(pickle.Unpickler):
    """The refs file is plain data (lists, dicts, strings, numbers): refuse anything that would run code."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refuses to load {module}.{name}: the refs file should hold only plain data")


def load_refs(path: Path) -> list:
    """The refer toolkit's refs pickle, read with _PlainUnpickler (`narvl shard` and `narvl score grounding`)."""
    try:
        blob = path.read_bytes()
    except FileNotFoundError as e:
        raise NarvlError(f"{path}: no such file") from e
    last: Exception | None = None
    for encoding in ("ASCII", "latin1"):  # Python 2 pickles of byte strings need a text encoding
        try:
            refs = _PlainUnpickler(io.BytesIO(blob), encoding=encoding).load()
            break
        except UnicodeDecodeError as e:
            last = e
        except Exception as e:  # noqa: BLE001 - every unpickling failure means a malformed file
            raise NarvlError(f"{path}: not a readable refs pickle ({type(e).__name__}: {e})") from e
    else:
        raise NarvlError(f"{path}: not a readable refs pickle ({last})")
    if not isinstance(refs, list):
        raise NarvlError(f"{path}: expected a list of refs, got {type(refs).__name__}")
    return refs


def read_refer(refs_path: Path, instances_path: Path, images: Path) -> list[Record]:
    """RefCOCO/+/g: one sample per sentence; the box is the referred instance's bbox, the image instances' file."""
    refs = load_refs(refs_path)
    inst = _load_json(instances_path)
    image_files: dict[int, tuple[str, int, int]] = {}
    for i, img in enumerate(_get(inst, "images", list, instances_path, "top level")):
        where = f"images[{i}]"
        image_files[_get(img, "id", int, instances_path, where)] = (
            _get(img, "file_name", str, instances_path, where),
            _get(img, "width", int, instances_path, where), _get(img, "height", int, instances_path, where))
    boxes: dict[int, list[float]] = {}
    for i, ann in enumerate(_get(inst, "annotations", list, instances_path, "top level")):
        where = f"annotations[{i}]"
        bbox = _get(ann, "bbox", list, instances_path, where)
        if len(bbox) != 4 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox):
            raise NarvlError(f"{instances_path}: {where}: bbox should be 4 numbers [x, y, w, h], got {bbox!r:.80}")
        boxes[_get(ann, "id", int, instances_path, where)] = [float(v) for v in bbox]
    records = []
    for i, ref in enumerate(refs):
        where = f"refs[{i}]"
        ref_id = _get(ref, "ref_id", int, refs_path, where)
        where = f"refs[{i}] (ref_id {ref_id})"
        ann_id = _get(ref, "ann_id", int, refs_path, where)
        image_id = _get(ref, "image_id", int, refs_path, where)
        split = _get(ref, "split", str, refs_path, where)
        if ann_id not in boxes:
            raise NarvlError(f"{refs_path}: {where}: ann_id {ann_id} is not in {instances_path}")
        if image_id not in image_files:
            raise NarvlError(f"{refs_path}: {where}: image_id {image_id} is not in {instances_path}")
        file_name, width, height = image_files[image_id]
        x, y, w, h = boxes[ann_id]
        orig_box = [max(0.0, x), max(0.0, y), min(float(width), x + w), min(float(height), y + h)]
        path = _coco_image_path(images, file_name)
        for j, sent in enumerate(_get(ref, "sentences", list, refs_path, where)):
            swhere = f"{where} sentences[{j}]"
            sent_id = _get(sent, "sent_id", int, refs_path, swhere)
            text = clean_text(_get(sent, "sent", str, refs_path, swhere))
            records.append(Record(
                split=split, source_id=f"sent_id={sent_id}", image=path, image_key=str(path), image_id=image_id,
                fields=dict(prompt=grounding_prompt(text), target="", expression=text, ref_id=ref_id,
                            sent_id=sent_id, ann_id=ann_id, orig_box=orig_box)))
    records.sort(key=lambda r: (r.split, r.fields["ref_id"], r.fields["sent_id"]))
    return records


# ----------------------------------------------------------------------------------------------------- OFA TSV
# Column layouts of OFA's fine-tuning TSV files (OFA README / datasets.md), image last, base64.
TSV_COLUMNS = {
    "caption": ("uniq-id", "image-id", "caption", "predicted object labels", "image base64"),
    "vqa": ("question-id", "image-id", "question", "answers with confidence", "predicted object labels",
            "image base64"),
    "grounding": ("uniq-id", "image-id", "text", "region-coord x0,y0,x1,y1", "image base64"),
}


def _tsv_int(value: str, path: Path, where: str, column: str) -> int:
    try:
        return int(value)
    except ValueError as e:
        raise NarvlError(f"{path}: {where}: column '{column}' should be an integer, got {value!r:.40}") from e


def read_ofa_tsv(task: str, split: str, path: Path) -> Iterator[Record]:
    """Stream the rows of one OFA TSV file (one split) as records, in file order. A file without rows is an error
    (it would give its split no samples without a word)."""
    columns = TSV_COLUMNS[task]
    try:
        f = open(path, encoding="utf-8", newline="\n")
    except FileNotFoundError as e:
        raise NarvlError(f"{path}: no such file") from e
    rows = 0
    with f:
        for lineno, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            rows += 1
            cols = line.split("\t")
            where = f"line {lineno}"
            if len(cols) != len(columns):
                raise NarvlError(f"{path}: {where}: expected {len(columns)} tab-separated columns "
                                 f"({', '.join(columns)}) for {task}, found {len(cols)}")
            uid = cols[0].strip()
            where = f"line {lineno} ({columns[0]} {uid})"
            image_id = _tsv_int(cols[1], path, where, columns[1])
            base = dict(split=split, image=cols[-1], image_key=f"{path}:{lineno}", image_id=image_id)
            if task == "caption":
                captions = [c.strip() for c in cols[2].split("&&") if c.strip()]
                if not captions:
                    raise NarvlError(f"{path}: {where}: empty caption")
                if split == "train":
                    for k, cap in enumerate(captions):
                        yield Record(source_id=f"{path.name}:{lineno}" + (f"#{k}" if len(captions) > 1 else ""),
                                     **base, fields=dict(prompt=CAPTION_PROMPT, target=clean_text(cap),
                                                         references=[cap]))
                else:
                    yield Record(source_id=f"{path.name}:{lineno}", **base,
                                 fields=dict(prompt=CAPTION_PROMPT, target=clean_text(captions[0]),
                                             references=captions))
            elif task == "vqa":
                qid = _tsv_int(uid, path, where, columns[0])
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
            else:  # grounding
                try:
                    box = [float(v) for v in cols[3].split(",")]
                except ValueError:
                    box = []
                if len(box) != 4 or box[2] <= box[0] or box[3] <= box[1]:
                    raise NarvlError(f"{path}: {where}: region-coord {cols[3]!r:.60} is not 'x0,y0,x1,y1' "
                                     "with x1 > x0 and y1 > y0")
                sid = _tsv_int(uid, path, where, columns[0]) if uid.isdigit() else lineno
                text = clean_text(cols[2])
                yield Record(source_id=f"{path.name}:{lineno}", **base, fields=dict(
                    prompt=grounding_prompt(text), target="", expression=text, ref_id=sid, sent_id=sid,
                    ann_id=-1, orig_box=box))
    if rows == 0:
        raise NarvlError(f"{path}: no rows: the {task} TSV file for split '{split}' is empty")
