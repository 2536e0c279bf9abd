"""Generate the embedded default dataset: rendered scenes of coloured shapes, in the real datasets' file formats.

Reads the `data.synth` section of data.yaml in the parameter folder --params (seed, sizes) and writes the folder
--out (which must not exist or be empty), built under a temporary sibling name and renamed when complete:

  images/train2014/COCO_train2014_%012d.jpg     training images (Karpathy train, VQA train2014, all of RefCOCO)
  images/val2014/COCO_val2014_%012d.jpg         Karpathy restval/val/test images (VQA val2014)
  captions/dataset_coco.json                    Karpathy split with several reference captions per image
  captions/captions_karpathy_{val,test}.json    COCO caption annotations (pycocotools.coco.COCO loads them)
  vqa/v2_OpenEnded_mscoco_{train2014,val2014}_questions.json, vqa/v2_mscoco_{train2014,val2014}_annotations.json
  refcoco/refs(unc).p, refcoco/instances.json   refer-toolkit referring expressions and COCO instances
  images/flickr30k/<id>.jpg, snli_ve/snli_ve_{train,dev,test}.jsonl   SNLI-VE visual entailment

The same parameters give the same bytes in every file (see docs/data-default.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import pickle
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from narvl import params as params_mod
from narvl.errors import NarvlError
from narvl.io import atomic_path
from narvl.params import SynthParams
from narvl.synth import scene as ss

log = logging.getLogger(__name__)

REFS_FILE = "refs(unc).p"
FLICKR_ID_BASE = 1_000_000_000  # SNLI-VE image ids (Flickr30k-like), apart from the COCO-style ids
PICKLE_PROTOCOL = 2
INFO = {
    "description": "narvl embedded default dataset: rendered scenes of coloured shapes",
    "url": "docs/data-default.md",
    "version": "1.0",
    "year": 2024,
    "contributor": "narvl synth",
}
# the project's licence (pyproject.toml): the data is made by its code
LICENSE = {"id": 1, "name": "Apache-2.0", "url": "https://www.apache.org/licenses/LICENSE-2.0"}


@dataclass(frozen=True)
class ImageRecord:
    image_id: int
    folder: str  # train2014 | val2014
    karpathy_split: str  # train | restval | val | test
    refcoco_split: str | None  # train | val | testA | testB, or None (not in RefCOCO)
    scene: ss.Scene

    @property
    def file_name(self) -> str:
        return f"COCO_{self.folder}_{self.image_id:012d}.jpg"


def _rng(p: SynthParams, image_id: int, stream: str) -> random.Random:
    # A string seed is hashed with SHA-512 by `random`: stable across runs and Python builds (no PYTHONHASHSEED).
    return random.Random(f"narvl-synth:{p.seed}:{image_id}:{stream}")


def make_scene(p: SynthParams, image_id: int) -> ss.Scene:
    """The scene of one image, from its own random stream."""
    try:
        return ss.make_scene(_rng(p, image_id, "scene"), p.image_size, p.min_objects, p.max_objects,
                             tuple(p.small_radius), tuple(p.large_radius))
    except ValueError as e:
        raise NarvlError(f"data.synth: image {image_id}: {e}") from e


def check(p: SynthParams) -> None:
    problems = []
    for name, (lo, hi) in (("small_radius", p.small_radius), ("large_radius", p.large_radius)):
        if not 0 < lo <= hi < 0.5:
            problems.append(f"{name} must be [lo, hi] with 0 < lo <= hi < 0.5")
    # a small shape's box (at most 2 radii) must stay below a large one's (at least 1.7 radii: the square)
    if 2 * p.small_radius[1] >= 1.7 * p.large_radius[0]:
        problems.append("small and large shapes overlap in size: need 2 * small_radius[1] < 1.7 * large_radius[0]")
    if not 1 <= p.min_objects <= p.max_objects:
        problems.append("need 1 <= min_objects <= max_objects")
    if p.image_size < 32:
        problems.append("image_size must be at least 32")
    if p.train_images <= p.val_images + p.test_images:
        problems.append("RefCOCO's val/testA/testB images come from the training images: "
                        "need train_images > val_images + test_images")
    if p.test_images < 2:
        problems.append("test_images must be at least 2 (RefCOCO testA and testB)")
    if not 0 <= p.answer_noise <= 1:
        problems.append("answer_noise must be in [0, 1]")
    if p.max_caption_words < 8:
        problems.append("max_caption_words must be at least 8")
    unknown = [k for k in p.question_kinds if k not in ss.QUESTION_KINDS]
    if unknown or not p.question_kinds or len(set(p.question_kinds)) != len(p.question_kinds):
        problems.append(f"question_kinds must be distinct kinds of {', '.join(ss.QUESTION_KINDS)} (got "
                        f"{', '.join(map(str, p.question_kinds)) or 'none'})")
    if p.question_phrases not in ("all", "attributes"):
        problems.append(f"question_phrases must be 'all' or 'attributes' (got {p.question_phrases!r})")
    if not 1 <= p.questions_per_image < 1000:  # VQA question ids are image_id * 1000 + k
        problems.append(f"questions_per_image must be in [1, 999] (got {p.questions_per_image})")
    if not 1 <= p.jpeg_quality <= 95:
        problems.append("jpeg_quality must be in [1, 95]")
    if problems:
        raise NarvlError("data.synth: " + "; ".join(problems))


def plan(p: SynthParams) -> list[ImageRecord]:
    """Every image with its id, folder and splits; scenes sampled from per-image random streams."""
    check(p)
    n_ref_eval = p.val_images + p.test_images
    n_test_a = p.test_images // 2
    records = []
    layout = ([("train2014", "train")] * p.train_images + [("val2014", "restval")] * p.restval_images
              + [("val2014", "val")] * p.val_images + [("val2014", "test")] * p.test_images)
    for index, (folder, split) in enumerate(layout):
        image_id = index + 1
        refcoco = None
        if folder == "train2014":
            k = index - (p.train_images - n_ref_eval)  # the last val+test training images are RefCOCO's eval
            refcoco = ("train" if k < 0 else "val" if k < p.val_images
                       else "testA" if k < p.val_images + n_test_a else "testB")
        scene = make_scene(p, image_id)
        records.append(ImageRecord(image_id, folder, split, refcoco, scene))
    return records


# --------------------------------------------------------------------------------------------------- writers
def _dump_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, sort_keys=True, ensure_ascii=False)
        f.write("\n")


def _dump_pickle(path: Path, obj: Any) -> None:
    """Pickle protocol 2 without the memo (`fast`), so the bytes depend on values only, not on object identity."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickler = pickle.Pickler(f, protocol=PICKLE_PROTOCOL)
        pickler.fast = True
        pickler.dump(obj)


def _raw(rng: random.Random, text: str) -> str:
    """A raw sentence as people type them: first letter upper-cased half of the time, sometimes a full stop."""
    if rng.random() < 0.5:
        text = text[0].upper() + text[1:]
    if rng.random() < 0.3:
        text += "."
    return text


def _image_entry(r: ImageRecord, size: int) -> dict:
    return {"id": r.image_id, "file_name": r.file_name, "width": size, "height": size, "license": 1}


def write_images(p: SynthParams, records: list[ImageRecord], out: Path) -> None:
    for folder in ("train2014", "val2014"):
        (out / "images" / folder).mkdir(parents=True, exist_ok=True)
    for r in tqdm(records, desc="synth images", unit="img", mininterval=2.0):
        (out / "images" / r.folder / r.file_name).write_bytes(ss.render(r.scene, p.supersample, p.jpeg_quality))


def write_captions(p: SynthParams, records: list[ImageRecord], out: Path) -> dict[str, int]:
    images = []
    coco = {"val": [], "test": []}
    sentid = 0
    for imgid, r in enumerate(records):
        rng = _rng(p, r.image_id, "captions")
        sentences = []
        for text in ss.captions(rng, r.scene, p.captions_per_image, p.max_caption_words):
            raw = _raw(rng, text)
            sentences.append({"tokens": ss.tokenize(raw), "raw": raw, "imgid": imgid, "sentid": sentid})
            sentid += 1
        images.append({"filepath": r.folder, "filename": r.file_name, "imgid": imgid, "split": r.karpathy_split,
                       "sentids": [s["sentid"] for s in sentences], "cocoid": r.image_id, "sentences": sentences})
        if r.karpathy_split in coco:
            coco[r.karpathy_split].append((r, sentences))
    _dump_json(out / "captions" / "dataset_coco.json", {"images": images, "dataset": "coco"})
    for split, items in coco.items():
        doc = {
            "info": INFO, "licenses": [LICENSE], "type": "captions",
            "images": [_image_entry(r, p.image_size) for r, _ in items],
            "annotations": [{"image_id": r.image_id, "id": s["sentid"], "caption": s["raw"]}
                            for r, sents in items for s in sents],
        }
        _dump_json(out / "captions" / f"captions_karpathy_{split}.json", doc)
    return {"caption_images": len(images), "captions": sentid}


def write_vqa(p: SynthParams, records: list[ImageRecord], out: Path) -> dict[str, int]:
    counts = {}
    for subtype in ("train2014", "val2014"):
        questions, annotations = [], []
        for r in records:
            if r.folder != subtype:
                continue
            rng = _rng(p, r.image_id, "vqa")
            for k, q in enumerate(ss.questions(rng, r.scene, p.questions_per_image, p.question_kinds,
                                                   p.question_phrases)):
                qid = r.image_id * 1000 + k
                answers = ss.human_answers(rng, q, p.answer_noise)
                mc = Counter(a for a, _ in answers).most_common()
                best = max(c for _, c in mc)
                # the most common answer; ties (never with <= 4 deviations) go to the first given
                multiple_choice = next(a for a, _ in answers if dict(mc)[a] == best)
                questions.append({"image_id": r.image_id, "question": q.question, "question_id": qid})
                annotations.append({
                    "question_type": q.question_type, "multiple_choice_answer": multiple_choice,
                    "answers": [{"answer": a, "answer_confidence": c, "answer_id": i + 1}
                                for i, (a, c) in enumerate(answers)],
                    "image_id": r.image_id, "answer_type": q.answer_type, "question_id": qid,
                })
        common = {"info": {**INFO, "version": "2.0"}, "license": {k: LICENSE[k] for k in ("name", "url")},
                  "data_subtype": subtype, "data_type": "mscoco"}
        _dump_json(out / "vqa" / f"v2_OpenEnded_mscoco_{subtype}_questions.json",
                   {**common, "task_type": "Open-Ended", "questions": questions})
        _dump_json(out / "vqa" / f"v2_mscoco_{subtype}_annotations.json", {**common, "annotations": annotations})
        counts[f"vqa_{subtype}_questions"] = len(questions)
    return counts


def write_refcoco(p: SynthParams, records: list[ImageRecord], out: Path) -> dict[str, int]:
    images, annotations, refs = [], [], []
    ann_id = ref_id = sent_id = 0
    for r in records:
        if r.refcoco_split is None:
            continue
        images.append(_image_entry(r, p.image_size))
        ann_ids = []
        for o in r.scene.objects:
            ann_id += 1
            ann_ids.append(ann_id)
            x0, y0, x1, y1 = o.box
            annotations.append({
                "id": ann_id, "image_id": r.image_id, "category_id": ss.SHAPES.index(o.shape) + 1,
                "segmentation": [list(o.polygon)], "area": round(ss.polygon_area(o.polygon), 4),
                "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)], "iscrowd": 0,
            })
        rng = _rng(p, r.image_id, "refs")
        expressions = {t: ss.referring_expressions(rng, r.scene, t, p.sentences_per_ref)
                       for t in range(len(r.scene.objects))}
        targets = [t for t, e in expressions.items() if e]
        for t in sorted(rng.sample(targets, min(p.refs_per_image, len(targets)))):
            sentences = []
            for text in expressions[t]:
                raw = _raw(rng, text)
                tokens = ss.tokenize(raw)
                sentences.append({"tokens": tokens, "raw": raw, "sent_id": sent_id, "sent": " ".join(tokens)})
                sent_id += 1
            refs.append({
                "sent_ids": [s["sent_id"] for s in sentences],
                "file_name": f"COCO_train2014_{r.image_id:012d}_{ann_ids[t]}.jpg",
                "ann_id": ann_ids[t], "ref_id": ref_id, "image_id": r.image_id, "split": r.refcoco_split,
                "sentences": sentences, "category_id": ss.SHAPES.index(r.scene.objects[t].shape) + 1,
            })
            ref_id += 1
    categories = [{"id": i + 1, "name": s, "supercategory": "shape"} for i, s in enumerate(ss.SHAPES)]
    _dump_json(out / "refcoco" / "instances.json", {"info": INFO, "licenses": [LICENSE], "images": images,
                                                    "annotations": annotations, "categories": categories})
    _dump_pickle(out / "refcoco" / REFS_FILE, refs)
    return {"refcoco_images": len(images), "refs": len(refs), "ref_sentences": sent_id}


def write_snli_ve(p: SynthParams, out: Path) -> dict[str, int]:
    """SNLI-VE: Flickr30k-style images, each with a caption as premise and one hypothesis per label."""
    folder = out / "images" / "flickr30k"
    folder.mkdir(parents=True, exist_ok=True)
    counts = {}
    index = 0
    for split, n_images in (("train", p.ve_train_images), ("dev", p.ve_dev_images), ("test", p.ve_test_images)):
        lines = []
        for _ in range(n_images):
            flickr_id = FLICKR_ID_BASE + index
            index += 1
            scene = make_scene(p, flickr_id)
            (folder / f"{flickr_id}.jpg").write_bytes(ss.render(scene, p.supersample, p.jpeg_quality))
            rng = _rng(p, flickr_id, "snli-ve")
            premise = _raw(rng, ss.captions(rng, scene, 1, p.max_caption_words)[0])
            caption_number = rng.randrange(5)  # which of the image's five Flickr30k captions (as in captionID)
            for label in ss.VE_LABELS:
                n_objects = range(p.min_objects, p.max_objects + 1)
                text = next((h for h in (ss.hypothesis(rng, scene, label, n_objects) for _ in range(20)) if h), None)
                if text is None:
                    continue
                hyp = _raw(rng, text)
                if split == "train":  # SNLI's training pairs carry one label, dev/test five (>= 3 agree)
                    annotators = [label]
                else:
                    annotators, deviations = [], 0
                    for _ in range(5):
                        if deviations < 2 and rng.random() < p.answer_noise:
                            deviations += 1
                            annotators.append(rng.choice([x for x in ss.VE_LABELS if x != label]))
                        else:
                            annotators.append(label)
                (p1_binary, p1_parse), (p2_binary, p2_parse) = ss.parses(premise), ss.parses(hyp)
                caption_id = f"{flickr_id}.jpg#{caption_number}"
                lines.append({
                    "Flikr30kID": f"{flickr_id}.jpg", "gold_label": label, "annotator_labels": annotators,
                    "captionID": caption_id, "pairID": f"{caption_id}r1{label[0]}",
                    "sentence1": premise, "sentence1_binary_parse": p1_binary, "sentence1_parse": p1_parse,
                    "sentence2": hyp, "sentence2_binary_parse": p2_binary, "sentence2_parse": p2_parse,
                })
        path = out / "snli_ve" / f"snli_ve_{split}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            for line in lines:
                f.write(json.dumps(line, sort_keys=True, ensure_ascii=False) + "\n")
        counts[f"snli_ve_{split}_pairs"] = len(lines)
    return counts


def generate(p: SynthParams, out: str | Path) -> dict[str, int]:
    """Write the dataset to `out` (which must not exist, or be an empty folder). Returns counts."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NarvlError(f"{out}: already exists and is a file, not a folder; choose another output folder")
    if out.exists() and any(out.iterdir()):
        raise NarvlError(f"{out}: already exists and is not empty; remove it or choose another output folder")
    records = plan(p)
    with atomic_path(out, is_dir=True, marker=False) as tmp:  # no marker: data/raw is byte-exact (data.dvc)
        write_images(p, records, tmp)
        counts = {"images": len(records)}
        counts.update(write_captions(p, records, tmp))
        counts.update(write_vqa(p, records, tmp))
        counts.update(write_refcoco(p, records, tmp))
        counts.update(write_snli_ve(p, tmp))
    return counts


# --------------------------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", required=True, help="parameter folder (data.yaml: data.synth)")
    parser.add_argument("--out", required=True, help="output folder, e.g. data/raw (must not exist or be empty)")


def main(args: argparse.Namespace) -> int:
    p = params_mod.load_stage(args.params, "data").synth
    try:
        check(p)
    except NarvlError as e:  # name the file the values came from
        raise NarvlError(f"{Path(args.params) / 'data.yaml'}: {e}") from e
    counts = generate(p, args.out)
    log.info("wrote %s: %s", args.out, ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0
