"""`narvl synth`: determinism, the real formats field by field, boxes on the drawn objects, unique referring
expressions (checked by an independent reading of the words against the pixels), the text-only baseline, CLI errors."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pickle
import re
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from narvl import params
from narvl.cli import main as cli_main
from narvl.synth import generate as synth, scene as synth_scene
from narvl.errors import NarvlError

FIXTURES = Path(__file__).parent / "fixtures"
REAL_REFS = FIXTURES / "refcoco" / "refcoco_refs_excerpt_tfds.json"
# fields TFDS adds to the refer toolkit's records (not in the real refs(unc).p): the dataset name, the partition
# and the joined COCO annotation
TFDS_EXTRA_FIELDS = {"dataset", "dataset_partition", "ann"}


def default_params() -> params.SynthParams:
    return params.load("params/data.yaml").synth


def small_params(**changes) -> params.SynthParams:
    base = dict(train_images=14, restval_images=2, val_images=3, test_images=4, ve_train_images=24,
                ve_dev_images=8, ve_test_images=8)
    base.update(changes)
    return dataclasses.replace(default_params(), **base)


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "raw"
    synth.generate(small_params(), out)
    return out


def load_json(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


# ------------------------------------------------------------------------------------------------ determinism
def test_same_seed_gives_identical_bytes_and_another_seed_does_not(raw, tmp_path):
    again = tmp_path / "again"
    synth.generate(small_params(), again)
    first, second = tree_digest(raw), tree_digest(again)
    assert first == second
    expected = {"captions/dataset_coco.json", "captions/captions_karpathy_val.json",
                "captions/captions_karpathy_test.json", "vqa/v2_OpenEnded_mscoco_train2014_questions.json",
                "vqa/v2_OpenEnded_mscoco_val2014_questions.json", "vqa/v2_mscoco_train2014_annotations.json",
                "vqa/v2_mscoco_val2014_annotations.json", "refcoco/refs(unc).p", "refcoco/instances.json"}
    assert expected <= set(first)
    assert len([f for f in first if f.startswith(("images/train2014/", "images/val2014/"))]) == 14 + 2 + 3 + 4
    assert len([f for f in first if f.startswith("images/flickr30k/")]) == 24 + 8 + 8
    other = tmp_path / "other"
    synth.generate(small_params(seed=1), other)
    changed = [f for f in first if tree_digest(other).get(f) != first[f]]
    assert "captions/dataset_coco.json" in changed and len(changed) > 20


# ----------------------------------------------------------------------------------------------------- captions
def test_karpathy_file_fields_splits_and_images(raw):
    doc = load_json(raw / "captions" / "dataset_coco.json")
    assert set(doc) == {"images", "dataset"} and doc["dataset"] == "coco"
    images = doc["images"]
    assert Counter(im["split"] for im in images) == {"train": 14, "restval": 2, "val": 3, "test": 4}
    all_sentids = []
    for imgid, im in enumerate(images):
        assert set(im) == {"filepath", "filename", "imgid", "split", "sentids", "cocoid", "sentences"}
        assert im["imgid"] == imgid
        assert im["filepath"] == ("train2014" if im["split"] == "train" else "val2014")
        assert im["filename"] == f"COCO_{im['filepath']}_{im['cocoid']:012d}.jpg"
        with Image.open(raw / "images" / im["filepath"] / im["filename"]) as img:
            assert img.format == "JPEG" and img.size == (96, 96)
        assert len(im["sentences"]) == 5 and len({s["raw"] for s in im["sentences"]}) == 5
        assert im["sentids"] == [s["sentid"] for s in im["sentences"]]
        for s in im["sentences"]:
            assert set(s) == {"tokens", "raw", "imgid", "sentid"} and s["imgid"] == imgid
            assert s["tokens"] == re.sub(r"[^a-z0-9 ]", " ", s["raw"].lower()).split()
            # words and punctuation marks, with a full stop possibly added after the limit was applied
            assert len(s["tokens"]) + len(re.findall(r"[,.:;]", s["raw"])) <= 16 + 1
        all_sentids += im["sentids"]
    assert len(set(all_sentids)) == len(all_sentids)


@pytest.mark.parametrize("split", ["val", "test"])
def test_coco_caption_files_load_with_pycocotools(raw, split):
    from pycocotools.coco import COCO

    karpathy = {im["cocoid"]: im for im in load_json(raw / "captions" / "dataset_coco.json")["images"]
                if im["split"] == split}
    coco = COCO(str(raw / "captions" / f"captions_karpathy_{split}.json"))
    assert coco.dataset["type"] == "captions"
    assert sorted(coco.getImgIds()) == sorted(karpathy)
    for image_id, im in karpathy.items():
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
        assert sorted(a["caption"] for a in anns) == sorted(s["raw"] for s in im["sentences"])
        assert coco.imgs[image_id]["file_name"] == im["filename"]
    # a results file in the official format loads against it (what the caption scorer does)
    results = coco.loadRes([{"image_id": i, "caption": "a red circle"} for i in karpathy])
    assert sorted(results.getImgIds()) == sorted(karpathy)


# ---------------------------------------------------------------------------------------------------------- VQA
@pytest.mark.parametrize("subtype", ["train2014", "val2014"])
def test_vqa_files_are_consistent(raw, subtype):
    qdoc = load_json(raw / "vqa" / f"v2_OpenEnded_mscoco_{subtype}_questions.json")
    adoc = load_json(raw / "vqa" / f"v2_mscoco_{subtype}_annotations.json")
    assert set(qdoc) == {"info", "task_type", "data_type", "license", "data_subtype", "questions"}
    assert set(adoc) == {"info", "license", "data_subtype", "data_type", "annotations"}
    assert (qdoc["task_type"], qdoc["data_type"], qdoc["data_subtype"]) == ("Open-Ended", "mscoco", subtype)
    assert (adoc["data_type"], adoc["data_subtype"]) == ("mscoco", subtype)
    images = {im["cocoid"] for im in load_json(raw / "captions" / "dataset_coco.json")["images"]
              if im["filepath"] == subtype}
    questions = {q["question_id"]: q for q in qdoc["questions"]}
    assert len(questions) == len(qdoc["questions"]) == default_params().questions_per_image * len(images)
    assert {a["question_id"] for a in adoc["annotations"]} == set(questions)
    for a in adoc["annotations"]:
        assert set(a) == {"question_type", "multiple_choice_answer", "answers", "image_id", "answer_type",
                          "question_id"}
        q = questions[a["question_id"]]
        assert set(q) == {"image_id", "question", "question_id"} and q["question"].endswith("?")
        assert q["image_id"] == a["image_id"] and a["image_id"] in images
        assert a["answer_type"] in ("yes/no", "number", "other")
        assert q["question"].lower().startswith(a["question_type"])
        assert [x["answer_id"] for x in a["answers"]] == list(range(1, 11))
        assert all(set(x) == {"answer", "answer_confidence", "answer_id"} for x in a["answers"])
        assert all(x["answer_confidence"] in ("yes", "maybe", "no") for x in a["answers"])
        counts = Counter(x["answer"] for x in a["answers"])
        assert counts[a["multiple_choice_answer"]] == max(counts.values())
        if a["answer_type"] == "yes/no":
            assert a["multiple_choice_answer"] in ("yes", "no")
        if a["answer_type"] == "number":
            assert a["multiple_choice_answer"].isdigit()


def test_question_kinds_and_plain_attribute_phrases(tmp_path):
    """data.synth.question_kinds limits the kinds asked; question_phrases "attributes" names the object of a colour
    or shape question by its attributes only (no leftmost/rightmost, no relation to another object)."""
    out = tmp_path / "raw"
    synth.generate(small_params(question_kinds=["colour", "shape"], question_phrases="attributes"), out)
    qs = load_json(out / "vqa" / "v2_OpenEnded_mscoco_train2014_questions.json")["questions"]
    assert qs and all(re.fullmatch(r"(what color is the|what is the shape of the) [a-z ]+\?", q["question"])
                      for q in qs), [q["question"] for q in qs][:5]
    spatial = re.compile(r"\b(left|right|above|below|top|bottom|leftmost|rightmost|topmost|bottommost|of the \w+ \w+)\b")
    assert not [q["question"] for q in qs if spatial.search(q["question"].replace("shape of the", ""))]
    with pytest.raises(NarvlError, match="question_kinds must be distinct kinds of colour, shape, count"):
        synth.check(small_params(question_kinds=["colour", "size"]))
    with pytest.raises(NarvlError, match="question_phrases must be 'all' or 'attributes'"):
        synth.check(small_params(question_phrases="short"))
    for bad in (0, 1000):  # question ids are image_id * 1000 + k: a thousand per image would collide
        with pytest.raises(NarvlError, match=rf"questions_per_image must be in \[1, 999\] \(got {bad}\)"):
            synth.check(small_params(questions_per_image=bad))


def test_vqa_answers_sometimes_disagree(raw):
    anns = load_json(raw / "vqa" / "v2_mscoco_train2014_annotations.json")["annotations"]
    disagreeing = sum(len({x["answer"] for x in a["answers"]}) > 1 for a in anns)
    assert 0.2 * len(anns) < disagreeing < len(anns)


# ---------------------------------------------------------------------------------------------------- RefCOCO
def real_refs() -> list[dict]:
    return load_json(REAL_REFS)["ref"]


def test_refs_pickle_has_the_real_records_fields(raw):
    blob = (raw / "refcoco" / "refs(unc).p").read_bytes()
    assert blob[:2] == b"\x80\x02"  # pickle protocol 2, as the refer toolkit's files
    refs = pickle.loads(blob)
    instances = load_json(raw / "refcoco" / "instances.json")
    real = real_refs()
    real_ref_fields = {frozenset(set(r) - TFDS_EXTRA_FIELDS) for r in real}
    real_sentence_fields = {frozenset(s) for r in real for s in r["sentences"]}
    real_ann_fields = {frozenset(r["ann"]) for r in real}
    assert len(real_ref_fields) == len(real_sentence_fields) == len(real_ann_fields) == 1
    assert {frozenset(r) for r in refs} == real_ref_fields
    assert {frozenset(s) for r in refs for s in r["sentences"]} == real_sentence_fields
    assert {frozenset(a) for a in instances["annotations"]} == real_ann_fields
    assert {frozenset(im) for im in instances["images"]} == {frozenset({"id", "file_name", "width", "height",
                                                                        "license"})}
    assert Counter(r["split"] for r in refs).keys() == {"train", "val", "testA", "testB"}
    # value types as in the real records
    for mine, theirs in ((refs[0], real[0]), (refs[0]["sentences"][0], real[0]["sentences"][0]),
                         (instances["annotations"][0], real[0]["ann"])):
        for key, value in theirs.items():
            if key not in TFDS_EXTRA_FIELDS:
                assert type(mine[key]) is type(value) or {type(mine[key]), type(value)} <= {int, float}, key


def test_refs_point_at_annotations_inside_their_images(raw):
    refs = pickle.loads((raw / "refcoco" / "refs(unc).p").read_bytes())
    instances = load_json(raw / "refcoco" / "instances.json")
    anns = {a["id"]: a for a in instances["annotations"]}
    images = {im["id"]: im for im in instances["images"]}
    categories = {c["id"] for c in instances["categories"]}
    sent_ids = [s["sent_id"] for r in refs for s in r["sentences"]]
    assert len(set(sent_ids)) == len(sent_ids) and len({r["ref_id"] for r in refs}) == len(refs)
    for r in refs:
        ann = anns[r["ann_id"]]
        assert ann["image_id"] == r["image_id"] and ann["category_id"] == r["category_id"] in categories
        assert r["file_name"] == f"COCO_train2014_{r['image_id']:012d}_{r['ann_id']}.jpg"
        assert r["sent_ids"] == [s["sent_id"] for s in r["sentences"]]
        for s in r["sentences"]:
            assert s["tokens"] == s["sent"].split() and s["sent"] == " ".join(
                re.sub(r"[^a-z0-9 ]", " ", s["raw"].lower()).split())
    for ann in instances["annotations"]:
        im = images[ann["image_id"]]
        assert (raw / "images" / "train2014" / im["file_name"]).is_file()
        x, y, w, h = ann["bbox"]
        assert 0 <= x and 0 <= y and w > 0 and h > 0 and x + w <= im["width"] and y + h <= im["height"]
        poly = ann["segmentation"][0]
        assert len(ann["segmentation"]) == 1 and len(poly) % 2 == 0 and len(poly) >= 6
        assert [min(poly[0::2]), min(poly[1::2])] == pytest.approx([x, y], abs=0.011)
        assert [max(poly[0::2]) - x, max(poly[1::2]) - y] == pytest.approx([w, h], abs=0.011)
        assert 0 < ann["area"] <= w * h + 0.01 and ann["iscrowd"] == 0


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools 2.0.11 + numpy 2
def test_instances_load_with_pycocotools_and_polygons_match_boxes(raw):
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    coco = COCO(str(raw / "refcoco" / "instances.json"))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == [
        "circle", "square", "triangle", "diamond", "star", "cross"]
    for ann in coco.loadAnns(coco.getAnnIds()):
        m = coco.annToMask(ann)  # rasterised polygon, as the refer toolkit's getMask does
        rle = mask_utils.encode(m)
        assert mask_utils.area(rle) == pytest.approx(ann["area"], rel=0.25, abs=6)
        # whole pixels; a star's tips are thinner than a pixel over a length that grows with the star
        tol = 2 + 0.05 * max(ann["bbox"][2:])
        assert list(mask_utils.toBbox(rle)) == pytest.approx(ann["bbox"], abs=tol)


# ------------------------------------------------------------- an independent reading of the pixels and the words
PALETTE = {"red": (215, 35, 35), "orange": (245, 140, 20), "yellow": (240, 220, 40), "green": (40, 170, 60),
           "blue": (40, 80, 225), "purple": (145, 55, 190), "white": (245, 245, 245)}
SHAPES = ("circle", "square", "triangle", "diamond", "star", "cross")
SIZE_WORDS = {"small": "small", "little": "small", "tiny": "small", "big": "large", "large": "large"}


def seen_objects(raw: Path, instances: dict, image_id: int) -> list[dict]:
    """The objects of one image as a reader sees them: shape from the category, colour from the pixel at the box
    centre, size from the box (a small shape's box spans at most 2 small radii, a large one's at least 1.7 large
    radii: the threshold lies between)."""
    p = default_params()
    threshold = (2 * p.small_radius[1] + 1.7 * p.large_radius[0]) / 2
    im = next(i for i in instances["images"] if i["id"] == image_id)
    names = {c["id"]: c["name"] for c in instances["categories"]}
    img = Image.open(raw / "images" / "train2014" / im["file_name"]).convert("RGB")
    out = []
    for a in instances["annotations"]:
        if a["image_id"] != image_id:
            continue
        x, y, w, h = a["bbox"]
        px = img.getpixel((int(x + w / 2), int(y + h / 2)))
        colour = min(PALETTE, key=lambda c: sum((p - q) ** 2 for p, q in zip(px, PALETTE[c])))
        out.append({"id": a["id"], "shape": names[a["category_id"]], "colour": colour,
                    "size": "small" if max(w, h) < threshold * im["width"] else "large",
                    "box": (x, y, x + w, y + h)})
    return out


NP = r"(?:(small|little|tiny|big|large) )?(?:(red|orange|yellow|green|blue|purple|white) )?(\w+)"
ORDINALS = [(rf"(?:left|leftmost) {NP}|{NP} on the left", "left"), (rf"(?:right|rightmost) {NP}|{NP} on the right",
            "right"), (rf"(?:top|upper) {NP}|{NP} at the top", "above"), (rf"(?:bottom|lower) {NP}|{NP} at the bottom",
                                                                         "below")]
RELATIONS = [("(?:to the |on the )?left of", "left"), ("(?:to the |on the )?right of", "right"),
             ("above|over", "above"), ("below|under|beneath", "below")]


def np_matches(groups: tuple, obj: dict) -> bool:
    size, colour, noun = groups
    if noun not in ("object", "shape", "thing") and noun != obj["shape"]:
        return False
    return (size is None or SIZE_WORDS[size] == obj["size"]) and (colour is None or colour == obj["colour"])


def clearly(a: dict, b: dict, d: str) -> bool:
    return {"left": a["box"][2] < b["box"][0], "right": a["box"][0] > b["box"][2],
            "above": a["box"][3] < b["box"][1], "below": a["box"][1] > b["box"][3]}[d]


def by_centre(a: dict, b: dict, d: str) -> bool:
    ax, ay = (a["box"][0] + a["box"][2]) / 2, (a["box"][1] + a["box"][3]) / 2
    bx, by = (b["box"][0] + b["box"][2]) / 2, (b["box"][1] + b["box"][3]) / 2
    return {"left": ax < bx, "right": ax > bx, "above": ay < by, "below": ay > by}[d]


def referents(sent: str, objs: list[dict]) -> tuple[list[dict], list[dict]]:
    """(objects the expression clearly fits, objects it might also be read as) under the documented semantics."""
    sent = sent.removeprefix("the ")
    for pattern, d in ORDINALS:
        m = re.fullmatch(pattern, sent)
        if m:
            groups = m.groups()[:3] if m.group(3) else m.groups()[3:]
            cands = [o for o in objs if np_matches(groups, o)]
            fits = [o for o in cands if len(cands) > 1 and all(clearly(o, c, d) for c in cands if c is not o)]
            return fits, [o for o in cands if o not in fits and all(by_centre(o, c, d) for c in cands if c is not o)]
    for rel, d in RELATIONS:
        m = re.fullmatch(rf"{NP} (?:{rel}) the {NP}", sent)
        if m:
            landmarks = [o for o in objs if np_matches(m.groups()[3:], o)]
            assert len(landmarks) == 1, f"landmark of {sent!r} is not unique"
            lm = landmarks[0]
            cands = [o for o in objs if o is not lm and np_matches(m.groups()[:3], o)]
            return ([o for o in cands if clearly(o, lm, d)],
                    [o for o in cands if not clearly(o, lm, d) and by_centre(o, lm, d)])
    m = re.fullmatch(NP, sent)
    assert m, f"cannot read {sent!r}"
    return [o for o in objs if np_matches(m.groups(), o)], []


def all_seen_objects(raw: Path) -> dict[int, list[dict]]:
    instances = load_json(raw / "refcoco" / "instances.json")
    return {im["id"]: seen_objects(raw, instances, im["id"]) for im in instances["images"]}


def check_referring_expressions(raw: Path) -> Counter:
    refs = pickle.loads((raw / "refcoco" / "refs(unc).p").read_bytes())
    scenes = all_seen_objects(raw)
    forms = Counter()
    for r in refs:
        objs = scenes[r["image_id"]]
        for s in r["sentences"]:
            fits, maybe = referents(s["sent"], objs)
            assert [o["id"] for o in fits] == [r["ann_id"]] and not maybe, (r, s["sent"], objs)
            forms["relation" if " the " in s["sent"].removeprefix("the ") else "other"] += 1
    return forms


def test_every_referring_expression_fits_exactly_its_target(raw):
    forms = check_referring_expressions(raw)
    assert forms["relation"] > 0 and forms["other"] > 0


def check_vqa_answers(raw: Path) -> Counter:
    """Answer every train2014 question independently (the words read against the pixels, as for referring
    expressions; every train2014 image has its objects in refcoco/instances.json) and compare."""
    scenes = all_seen_objects(raw)
    questions = {q["question_id"]: q for q in
                 load_json(raw / "vqa" / "v2_OpenEnded_mscoco_train2014_questions.json")["questions"]}
    plural = {f"{s}es" if s.endswith("ss") else f"{s}s": s for s in SHAPES}
    kinds = Counter()
    for a in load_json(raw / "vqa" / "v2_mscoco_train2014_annotations.json")["annotations"]:
        text = questions[a["question_id"]]["question"].removesuffix("?")
        objs = scenes[a["image_id"]]

        def the_one(desc: str) -> dict:
            fits, maybe = referents(desc, objs)
            assert len(fits) == 1 and not maybe, (text, objs)
            return fits[0]

        if m := re.fullmatch(r"what color is the (.+)", text):
            answer, kind = the_one(m.group(1))["colour"], "colour"
        elif m := re.fullmatch(r"what is the shape of the (.+)", text):
            answer, kind = the_one(m.group(1))["shape"], "shape"
        elif re.fullmatch(r"how many (shapes|objects) are there", text):
            answer, kind = str(len(objs)), "count"
        elif m := re.fullmatch(r"how many (\w+) are there", text):
            answer, kind = str(sum(o["shape"] == plural[m.group(1)] for o in objs)), "count"
        elif m := re.fullmatch(r"how many (\w+) (?:shapes|objects) are in the image", text):
            answer, kind = str(sum(o["colour"] == m.group(1) for o in objs)), "count"
        elif m := re.fullmatch(r"is there an? (\w+) (\w+)", text):
            present = any((o["colour"], o["shape"]) == m.groups() for o in objs)
            answer, kind = ("yes" if present else "no"), "exists"
        elif m := re.fullmatch(rf"is the {NP} (.+) the {NP}", text):
            x, y = the_one(" ".join(w for w in m.groups()[:3] if w)), the_one(" ".join(w for w in m.groups()[4:] if w))
            d = next(d for rel, d in RELATIONS if re.fullmatch(rel, m.group(4)))
            opposite = {"left": "right", "right": "left", "above": "below", "below": "above"}[d]
            assert clearly(x, y, d) or clearly(x, y, opposite), text
            answer, kind = ("yes" if clearly(x, y, d) else "no"), "relation"
        else:
            raise AssertionError(f"cannot read question {text!r}")
        assert a["multiple_choice_answer"] == answer, (text, a, objs)
        kinds[kind] += 1
    return kinds


def test_every_vqa_answer_is_right(raw):
    kinds = check_vqa_answers(raw)
    assert len(kinds) >= 4


def test_boxes_lie_on_the_drawn_objects(raw):
    instances = load_json(raw / "refcoco" / "instances.json")
    for im in instances["images"]:
        img = Image.open(raw / "images" / "train2014" / im["file_name"]).convert("RGB")
        border = [img.getpixel((x, y)) for x in range(im["width"]) for y in (0, im["height"] - 1)]
        bg = Counter(tuple(c // 8 for c in p) for p in border).most_common(1)[0][0]
        bg = tuple(8 * c + 4 for c in bg)
        dist = lambda p, q: max(abs(a - b) for a, b in zip(p, q))  # noqa: E731
        for a in instances["annotations"]:
            if a["image_id"] != im["id"]:
                continue
            x, y, w, h = a["bbox"]
            # the box centre is on the object, well away from the background colour
            assert dist(img.getpixel((int(x + w / 2), int(y + h / 2))), bg) > 30
            # a ring two pixels outside the box is background (objects keep a gap from each other)
            ring = [(int(x - 2), int(y + h / 2)), (int(x + w + 2), int(y + h / 2)), (int(x + w / 2), int(y - 2)),
                    (int(x + w / 2), int(y + h + 2))]
            for px, py in ring:
                if 0 <= px < im["width"] and 0 <= py < im["height"]:
                    assert dist(img.getpixel((px, py)), bg) < 30, (a, (px, py))


# ------------------------------------------------------------------------------------------- text-only baseline
@pytest.fixture(scope="module")
def default_repo(tmp_path_factory) -> Path:
    """A DVC repository holding this checkout's data.dvc and a fresh generation of the default dataset."""
    from dvc.repo import Repo

    root = tmp_path_factory.mktemp("fresh")
    Repo.init(str(root), no_scm=True).close()
    (root / "data.dvc").write_bytes(Path("data.dvc").read_bytes())
    synth.generate(default_params(), root / "data" / "raw")
    return root


@pytest.mark.slow
def test_default_generation_matches_data_dvc(default_repo, monkeypatch):
    """What `narvl synth` writes from params/data.yaml is the version data.dvc records (hashed by DVC itself)."""
    from dvc.repo import Repo

    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    with Repo(str(default_repo)) as repo:
        (stage,) = repo.stage.collect(str(default_repo / "data.dvc"))
        (out,) = stage.outs
        assert str(out.def_path) == "data/raw"
        recorded, fresh = out.hash_info, out.get_hash()
        assert recorded.name == "md5" and recorded.value.endswith(".dir")
        assert fresh.value == recorded.value, "params/data.yaml or the generator changed: regenerate and `dvc commit`"
        assert out.meta.nfiles == len([p for p in (default_repo / "data" / "raw").rglob("*") if p.is_file()])


@pytest.mark.slow
def test_default_language_is_right_throughout(default_repo):
    """The referring-expression and VQA checks above, over the whole default dataset."""
    raw = default_repo / "data" / "raw"
    forms = check_referring_expressions(raw)
    assert sum(forms.values()) > 4000
    kinds = check_vqa_answers(raw)
    assert set(kinds) == {"colour", "shape", "count", "exists", "relation"} and sum(kinds.values()) == (
        default_params().questions_per_image * default_params().train_images)


def text_only_baseline(raw_dir: Path) -> dict:
    """VQA accuracy (in [0, 1]) on val2014 of answering every question with the most common training answer of
    its question type (`narvl baselines vqa-majority`'s rule), scored per question with the official accuracy."""
    from narvl.eval.baselines import vqa_majority
    from narvl.eval.vqa import question_accuracy

    vqa = Path(raw_dir) / "vqa"
    val = json.loads((vqa / "v2_mscoco_val2014_annotations.json").read_text())["annotations"]
    preds, _ = vqa_majority(vqa / "v2_mscoco_train2014_annotations.json", val)
    per_type: dict[str, list[float]] = {}
    for a, pred in zip(val, preds):
        per_type.setdefault(a["answer_type"], []).append(question_accuracy(pred["answer"],
                                                                           [x["answer"] for x in a["answers"]]))
    scores = [s for v in per_type.values() for s in v]
    return {"accuracy": sum(scores) / len(scores), "questions": len(scores),
            "per_answer_type": {t: sum(v) / len(v) for t, v in sorted(per_type.items())}}


@pytest.mark.slow
def test_text_only_baseline_is_low_on_the_default(default_repo):
    result = text_only_baseline(default_repo / "data" / "raw")
    assert result["questions"] == default_params().questions_per_image * (40 + 100 + 100)  # val2014: restval, val, test
    # per-question-type majority answers: far below what a model that looks at the scene can reach
    assert 0.25 < result["accuracy"] < 0.45
    assert result["per_answer_type"]["other"] < 0.3 and result["per_answer_type"]["number"] < 0.4


# ---------------------------------------------------------------------------------------------------------- CLI
def write_params(tmp_path: Path, p: params.SynthParams) -> Path:
    """A parameter folder (what --params takes) whose data.yaml has the synth section `p`."""
    import yaml

    doc = yaml.safe_load(Path("params/data.yaml").read_text())
    doc["data"]["synth"] = dataclasses.asdict(p)
    folder = tmp_path / "params"
    folder.mkdir()
    (folder / "data.yaml").write_text(yaml.safe_dump(doc))
    return folder


def test_cli_writes_the_dataset(tmp_path):
    out = tmp_path / "raw"
    assert cli_main(["synth", "--params", str(write_params(tmp_path, small_params())), "--out", str(out)]) == 0
    assert (out / "refcoco" / "refs(unc).p").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params", "raw"]  # no temporary left behind


def test_cli_refuses_a_non_empty_output_and_leaves_it_alone(tmp_path, capsys):
    out = tmp_path / "raw"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert cli_main(["synth", "--params", str(write_params(tmp_path, small_params())), "--out", str(out)]) == 2
    assert "already exists and is not empty" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_cli_reports_an_output_that_cannot_be_created(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code = cli_main(["synth", "--params", str(write_params(tmp_path, small_params())),
                     "--out", str(blocker / "raw")])
    assert code == 2 and "cannot create the folder" in capsys.readouterr().err


def test_cli_rejects_a_mistyped_key(tmp_path, capsys):
    folder = write_params(tmp_path, small_params())
    path = folder / "data.yaml"
    path.write_text(path.read_text().replace("train_images:", "train_imgs:"))
    assert cli_main(["synth", "--params", str(folder), "--out", str(tmp_path / "raw")]) == 2
    assert "data.synth.train_imgs: unknown key (did you mean 'train_images'?)" in capsys.readouterr().err
    assert not (tmp_path / "raw").exists()


def test_cli_names_the_file_of_a_bad_value(tmp_path, capsys):
    folder = write_params(tmp_path, small_params(questions_per_image=1000))
    assert cli_main(["synth", "--params", str(folder), "--out", str(tmp_path / "raw")]) == 2
    err = capsys.readouterr().err
    assert f"{folder / 'data.yaml'}: data.synth: questions_per_image must be in [1, 999] (got 1000)" in err
    assert not (tmp_path / "raw").exists()


def test_a_failure_midway_leaves_nothing(tmp_path, monkeypatch):
    def boom(*_args):
        raise RuntimeError("disk full")

    monkeypatch.setattr(synth, "write_refcoco", boom)
    with pytest.raises(RuntimeError):
        synth.generate(small_params(), tmp_path / "raw")
    assert list(tmp_path.iterdir()) == []


def test_inconsistent_sizes_are_rejected():
    with pytest.raises(NarvlError, match="train_images > val_images"):
        synth.plan(small_params(train_images=5))


# ---------------------------------------------------------------------------------------------------------- DVC
def test_dvc_is_set_up_offline_and_data_raw_stays_out_of_git():
    import configparser
    import subprocess

    import yaml

    config = configparser.ConfigParser()
    config.read(".dvc/config")
    assert config["core"]["analytics"] == "false"
    assert not [s for s in config.sections() if s.startswith("'remote")]
    (out,) = yaml.safe_load(Path("data.dvc").read_text())["outs"]
    assert out["path"] == "data/raw" and out["hash"] == "md5" and out["md5"].endswith(".dir")
    if Path(".git").exists():  # a source tree without git (an sdist) has nothing to check
        ignored = subprocess.run(["git", "check-ignore", "-q", "data/raw/captions/dataset_coco.json"])
        assert ignored.returncode == 0, "data/raw must stay git-ignored (DVC tracks it)"


# ------------------------------------------------------------------------------------------------------ SNLI-VE
# the fields of the SNLI-VE jsonl files (those of SNLI 1.0 with the Flickr30k image id, spelt as in the release)
SNLI_VE_FIELDS = {"Flikr30kID", "gold_label", "annotator_labels", "captionID", "pairID", "sentence1",
                  "sentence1_binary_parse", "sentence1_parse", "sentence2", "sentence2_binary_parse",
                  "sentence2_parse"}


def scene_of(flickr_name: str):
    """The generator's scene for an SNLI-VE image, re-drawn from its random stream (objects with boxes)."""
    p = small_params()
    image_id = int(flickr_name.removesuffix(".jpg"))
    return synth.make_scene(p, image_id)


def truth(hyp: str, objs) -> bool | None:
    """Read a hypothesis independently: True/False when the scene decides it, None when it cannot."""
    words = " ".join(re.sub(r"[^a-z ]", " ", hyp.lower()).split())
    numbers = {w: i for i, w in enumerate(("zero", "one", "two", "three", "four", "five", "six"))}
    m = re.fullmatch(r"there is an? (\w+) (\w+)", words)
    if m:
        return any((o.colour, o.shape) == m.groups() for o in objs)
    m = re.fullmatch(r"there (?:is|are) (\w+) (?:shapes?|objects?)", words)
    if m:
        return numbers[m.group(1)] == len(objs)
    rels = {"left of": "left", "to the left of": "left", "on the left of": "left", "right of": "right",
            "to the right of": "right", "on the right of": "right", "above": "above", "over": "above",
            "below": "below", "under": "below", "beneath": "below"}
    m = re.fullmatch(r"(an?|the) (\w+) (\w+) is (.+) (?:an?|the) (\w+) (\w+)", words)
    if m:
        det, c1, s1, rel, c2, s2 = m.groups()
        d = rels[rel]

        def clear(a, b):
            (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = a.box, b.box
            return {"left": ax1 < bx0, "right": ax0 > bx1, "above": ay1 < by0, "below": ay0 > by1}[d]

        As = [o for o in objs if (o.colour, o.shape) == (c1, s1)]
        Bs = [o for o in objs if (o.colour, o.shape) == (c2, s2)]
        if det == "the":
            assert len(As) == len(Bs) == 1, words
        if any(clear(a, b) for a in As for b in Bs):
            return True
        d = {"left": "right", "right": "left", "above": "below", "below": "above"}[d]
        return False if all(clear(a, b) for a in As for b in Bs) else None  # clearly the other way round
    if any(words.endswith(pred) for pred in synth_scene.NEUTRAL_PREDICATES):
        return None
    raise AssertionError(f"cannot read hypothesis {hyp!r}")


def test_snli_ve_files_and_labels(raw):
    expected = {"entailment": True, "contradiction": False, "neutral": None}
    seen = Counter()
    for split, n_images in (("train", 24), ("dev", 8), ("test", 8)):
        lines = [json.loads(x) for x in (raw / "snli_ve" / f"snli_ve_{split}.jsonl").read_text().splitlines()]
        assert len({x["Flikr30kID"] for x in lines}) == n_images
        assert len({x["pairID"] for x in lines}) == len(lines) == 3 * n_images
        for x in lines:
            assert set(x) == SNLI_VE_FIELDS
            assert (raw / "images" / "flickr30k" / x["Flikr30kID"]).is_file()
            assert re.fullmatch(r"\d+\.jpg#[0-4]", x["captionID"]) and x["captionID"].startswith(x["Flikr30kID"])
            assert x["pairID"] == f"{x['captionID']}r1{x['gold_label'][0]}"
            labels = x["annotator_labels"]
            assert len(labels) == (1 if split == "train" else 5)
            assert labels.count(x["gold_label"]) >= (1 if split == "train" else 3)
            assert x["sentence2_binary_parse"].replace("(", " ").replace(")", " ").split() == \
                re.sub(r"[^a-z0-9 ]", " ", x["sentence2"].lower()).split()
            assert x["sentence1_parse"].startswith("(ROOT (S ")
            assert truth(x["sentence2"], scene_of(x["Flikr30kID"]).objects) is expected[x["gold_label"]], x
            seen[x["gold_label"]] += 1
    assert seen["entailment"] == seen["contradiction"] == seen["neutral"] == 24 + 8 + 8


def test_snli_ve_words_alone_cannot_tell_entailment_from_contradiction(raw):
    """Entailed and contradicted hypotheses share their forms and their words' ranges (counts within the scenes'
    object counts): only the image tells them apart. Replacing colours, shapes and numbers by placeholders leaves
    no form that only one of the two labels uses. (The first default's contradictions alone said "the", counted
    five or six, or never said "objects": the hypothesis alone scored as well as the models.)"""
    p = default_params()
    numbers = {w: i for i, w in enumerate(synth_scene.NUMBER_WORDS)}
    forms: dict[str, Counter] = {}
    for split in ("train", "dev", "test"):
        for line in (raw / "snli_ve" / f"snli_ve_{split}.jsonl").read_text().splitlines():
            x = json.loads(line)
            if x["gold_label"] == "neutral":
                continue
            words = re.sub(r"[^a-z ]", " ", x["sentence2"].lower()).split()
            for w in words:
                if w in numbers:
                    assert p.min_objects <= numbers[w] <= p.max_objects, x["sentence2"]
            form = " ".join("C" if w in synth_scene.COLOURS else "S" if w in synth_scene.SHAPES
                            else "N" if w in numbers else "a" if w == "an" else w for w in words)
            forms.setdefault(form, Counter())[x["gold_label"]] += 1
    assert sum(sum(c.values()) for c in forms.values()) == 2 * (24 + 8 + 8)
    big = {f: c for f, c in forms.items() if sum(c.values()) >= 6}
    assert big and all(c["entailment"] and c["contradiction"] for c in big.values()), forms




# ------------------------------------------------------------------------------------ the readers take it as is
def test_the_shard_readers_take_every_file_without_skipping(raw, tmp_path):
    """The contract with `narvl shard` (docs/design.md): every caption, question and sentence becomes a sample."""
    images = str(raw / "images")
    vqa = raw / "vqa"
    runs = {
        "caption": ["--format", "karpathy", "--annotations", str(raw / "captions" / "dataset_coco.json")],
        "vqa": ["--format", "vqav2",
                "--questions", *(str(vqa / f"v2_OpenEnded_mscoco_{s}_questions.json") for s in ("train2014", "val2014")),
                "--annotations", *(str(vqa / f"v2_mscoco_{s}_annotations.json") for s in ("train2014", "val2014"))],
        "grounding": ["--format", "refer", "--refs", str(raw / "refcoco" / "refs(unc).p"),
                      "--instances", str(raw / "refcoco" / "instances.json")],
    }
    refs = pickle.loads((raw / "refcoco" / "refs(unc).p").read_bytes())
    sentences = Counter()
    for r in refs:
        sentences[r["split"]] += len(r["sentences"])
    per_image = default_params().questions_per_image
    expected = {
        "caption": {"train": (14 + 2) * 5, "val": 3, "test": 4},  # evaluation: one sample per image
        "vqa": {"train": 14 * per_image, "val": (2 + 3 + 4) * per_image},
        "grounding": dict(sentences),
    }
    for task, args in runs.items():
        out = tmp_path / task
        assert cli_main(["shard", "--params", "params", "--task", task, *args, "--images", images,
                         "--out", str(out)]) == 0
        sizes = load_json(out / "sizes.json")
        assert {split: v["samples"] for split, v in sizes.items()} == expected[task]
        assert all(v["skipped"] == 0 for v in sizes.values())
