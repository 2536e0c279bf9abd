"""Visual grounding (RefCOCO/+/g): the prompt names a referring expression, the target is the referred object's box
as 4 location tokens `<bin>` over the resized image's canvas; scored by Acc@0.5 (narvl.eval.grounding, OFA's IoU).

The box decoding: the first 4 location tokens decoded (`narvl.decode.ctc.box_tokens`), else for NAR the 4 most
confident slots, turned into a box in resized pixels (`Tokenizer.tokens_to_box`), then into original pixels by
orig_size / size per axis (no clipping, as OFA)."""

from __future__ import annotations

import argparse
import io
import pickle
from pathlib import Path
from typing import Any, Iterator

from narvl.data.readers import (Record, clean_text, coco_image_path as _coco_image_path, get_field as _get,
                                load_json as _load_json, tsv_int)
from narvl.errors import NarvlError
from narvl.tasks.base import Column, Task, f2


def expression_prompt(expression: str) -> str:
    """OFA's grounding prompt."""
    return f'which region does the text " {expression} " describe?'


REGION = "region"  # the pretraining stream of grounded captioning (train.pretrain.region), read from grounding shards


def region_sample(meta: dict[str, Any]) -> dict[str, Any]:
    """A grounding sample turned into OFA's grounded captioning, one of its pretraining tasks: the prompt gives the
    object's box as its 4 location tokens, the text target names the object's COCO category (the shard's
    `category`, from the refer instances' categories)."""
    if not isinstance(meta.get("category"), str) or not meta["category"]:
        raise NarvlError(f"grounding sample {meta.get('id')}: no 'category' field: region samples "
                         f"(train.pretrain.region) need grounding shards made from refer files whose instances name "
                         f"categories (OFA's TSV files have none; set train.pretrain.region: 0)")
    bins = "".join(meta["target"].split())  # the 4 location tokens, without the spaces between them
    return {**meta, "prompt": f"what does the region describe? region: {bins}", "target": meta["category"]}


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
    # category id -> name (COCO's "categories"; a file without them gives samples without a category)
    names: dict[int, str] = {}
    cats = _get(inst, "categories", list, instances_path, "top level") if "categories" in inst else []
    for i, cat in enumerate(cats):
        where = f"categories[{i}]"
        names[_get(cat, "id", int, instances_path, where)] = clean_text(_get(cat, "name", str, instances_path, where))
    boxes: dict[int, list[float]] = {}
    categories: dict[int, str] = {}
    for i, ann in enumerate(_get(inst, "annotations", list, instances_path, "top level")):
        where = f"annotations[{i}]"
        bbox = _get(ann, "bbox", list, instances_path, where)
        if len(bbox) != 4 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox):
            raise NarvlError(f"{instances_path}: {where}: bbox should be 4 numbers [x, y, w, h], got {bbox!r:.80}")
        ann_id = _get(ann, "id", int, instances_path, where)
        boxes[ann_id] = [float(v) for v in bbox]
        if names:
            category_id = _get(ann, "category_id", int, instances_path, where)
            if category_id not in names:
                raise NarvlError(f"{instances_path}: {where}: category_id {category_id} is not among its "
                                 f"categories")
            categories[ann_id] = names[category_id]
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
                fields=dict(prompt=expression_prompt(text), target="", expression=text, ref_id=ref_id,
                            sent_id=sent_id, ann_id=ann_id, orig_box=orig_box,
                            **({"category": categories[ann_id]} if ann_id in categories else {}))))
    records.sort(key=lambda r: (r.split, r.fields["ref_id"], r.fields["sent_id"]))
    return records




class Grounding(Task):
    name = "grounding"
    title = "Visual grounding"
    headline = "Acc@0.5"
    scale = "Acc@0.5 in %"
    split_order = ("val", "testA", "testB", "test")
    formats = {"refer": ("refs", "instances", "images")}
    tsv_columns = ("uniq-id", "image-id", "text", "region-coord x0,y0,x1,y1", "image base64")
    text_targets = False  # a box is not text: no sequence-level KD
    predicts_box = True
    ar_decoders = ("bins",)
    baselines = (("baseline-random-object", "none"), ("baseline-largest-object", "none"))
    slot_logprobs = True  # the box fallback takes the most confident slots
    prompt_text = "referring expression"
    score_help = "Acc@0.5 (IoU as OFA)"
    prediction_fields = ("ref_id", "sent_id", "sample_id", "box")

    def prompt(self, text: str | None = None) -> str:
        return expression_prompt(clean_text(text or ""))

    def read(self, fmt: str, args: argparse.Namespace) -> list[Record]:
        return read_refer(args.refs, args.instances, args.images)

    def tsv_records(self, cols: list[str], base: dict, path: Path, lineno: int, where: str) -> Iterator[Record]:
        try:
            box = [float(v) for v in cols[3].split(",")]
        except ValueError:
            box = []
        if len(box) != 4 or box[2] <= box[0] or box[3] <= box[1]:
            raise NarvlError(f"{path}: {where}: region-coord {cols[3]!r:.60} is not 'x0,y0,x1,y1' "
                             "with x1 > x0 and y1 > y0")
        uid = cols[0].strip()
        sid = tsv_int(uid, path, where, self.tsv_columns[0]) if uid.isdigit() else lineno
        text = clean_text(cols[2])
        yield Record(source_id=f"{path.name}:{lineno}", **base, fields=dict(
            prompt=expression_prompt(text), target="", expression=text, ref_id=sid, sent_id=sid, ann_id=-1,
            orig_box=box))

    def shard_fields(self, fields: dict[str, Any], orig_size: tuple[int, int], size: tuple[int, int],
                     num_bins: int) -> dict[str, Any]:
        from narvl.data import images as imglib
        from narvl.data.tokenizer import bins_string, box_to_bins

        box = [round(c, 3) for c in imglib.scale_box(fields["orig_box"], orig_size, size)]
        return {**fields, "box": box, "target": bins_string(box_to_bins(box, max(size), num_bins))}

    def target(self, meta: dict[str, Any], tokenizer, max_len: int) -> tuple[list[int], float]:
        return tokenizer.box_to_tokens(meta["box"], max(meta["size"])), 1.0

    def check_train(self, kind: str, num_queries: int, max_target_len: int, train, where: str) -> None:
        super().check_train(kind, num_queries, max_target_len, train, where)
        if kind == "nar" and train.grounding_slot_targets and max_target_len + 1 > num_queries:
            raise NarvlError(f"{where}: train.grounding_slot_targets needs a slot per box token and one for EOS: "
                             f"model.num_queries.grounding = {num_queries} < data.loader.max_target_len.grounding + 1 "
                             f"= {max_target_len + 1}")

    def objective_options(self, kind: str, tokenizer, train) -> dict[str, Any]:
        from narvl.loss.location import LocationTargets

        loc = None
        if train.loc_sigma > 0 or train.loc_l1_weight > 0:
            loc = LocationTargets(tokenizer.bin_offset, tokenizer.num_bins, train.loc_sigma, train.loc_l1_weight)
        return {"loc": loc, "slot_targets": kind == "nar" and train.grounding_slot_targets}

    def prediction(self, seq: list[int], meta: dict[str, Any], tokenizer, slot_lp=None) -> Any:
        from narvl.decode.ctc import box_tokens

        ids = box_tokens(seq, tokenizer.bin_offset, tokenizer.num_bins, slot_lp)
        box = tokenizer.tokens_to_box(ids, max(meta["size"]))  # resized pixels on the canvas
        sx = meta["orig_size"][0] / meta["size"][0]
        sy = meta["orig_size"][1] / meta["size"][1]
        return [box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy]

    def record(self, meta: dict[str, Any], pred: Any) -> dict[str, Any]:
        return {"ref_id": meta["ref_id"], "sent_id": meta["sent_id"], "sample_id": meta["id"], "box": pred}

    def add_score_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--split", required=True, help="refer split: val, testA, testB, test")
        src = parser.add_mutually_exclusive_group(required=True)
        src.add_argument("--refs", type=Path, help='refer toolkit "refs(unc).p" (with --instances)')
        src.add_argument("--references", type=Path, help="grounding shard folder (sizes.json + tars)")
        parser.add_argument("--instances", type=Path, help="COCO instances.json (with --refs)")

    def score(self, args: argparse.Namespace, score_params) -> tuple[dict[str, Any], dict[str, Path]]:
        from narvl.eval import grounding

        if args.refs is not None:
            if args.instances is None:
                raise NarvlError("score grounding: --refs needs --instances (the COCO instances.json with the boxes)")
            items = grounding.load_refer(args.refs, args.instances, args.split)
            result = grounding.score(items, args.predictions, score_params, str(args.refs))
            return result, {"refs": args.refs, "instances": args.instances, "predictions": args.predictions}
        items, entry = grounding.load_shards(args.references, args.split)
        result = grounding.score(items, args.predictions, score_params, str(args.references), entry)
        return result, {"references_sizes": args.references / "sizes.json", "predictions": args.predictions}

    def columns(self, splits: list[str]) -> list[Column]:
        return [Column(split, "Acc@0.5", f"{split} Acc@0.5", f2) for split in splits]

    def index_predictions(self, records: list[dict]) -> dict:
        out = {}
        for r in records:
            for key in ("sample_id", "sent_id"):
                if key in r:
                    out[(key, r[key])] = r["box"]
        return out

    def lookup(self, index: dict, sample: dict[str, Any]) -> Any:
        return index.get(("sample_id", sample["id"]), index.get(("sent_id", sample.get("sent_id"))))

    def gallery_lines(self, meta: dict[str, Any]) -> list[str]:
        return [f"expr: {meta.get('prompt', '')}"]

    def reference_box(self, meta: dict[str, Any]) -> list[float] | None:
        return meta["orig_box"]


TASK = Grounding()
REGION_SOURCE = TASK.name  # the task whose shards the region samples are made from
