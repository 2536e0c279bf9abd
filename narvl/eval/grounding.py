"""Referring-expression grounding (RefCOCO/+/g): Acc@0.5, the share of sentences whose predicted box has IoU >= 0.5.

IoU convention (OFA's `_calculate_ap_score`, which NARVL uses): boxes `[x0, y0, x1, y1]` in continuous original-
image pixel coordinates, areas `(x1 - x0) * (y1 - y0)` with NO +1 (the refer toolkit's `computeIoU` adds +1 for
inclusive pixel indices; OFA and narvl do not), and

    iou = inter / (area_pred + area_gt - inter + 1e-6),  hit = iou >= threshold and inter_w > 0 and inter_h > 0

computed in float64. The 1e-6 keeps OFA's behaviour: a box at IoU exactly 0.5 is a miss. A prediction with
x1 < x0 or y1 < y0 can never hit (its intersection width or height is not positive).

References are one item per referring sentence (a ref has several sentences, each predicted and scored on its own):
- `--refs "refs(unc).p" --instances instances.json --split S`: the refer toolkit's files; the ground-truth box is the
  COCO annotation `bbox [x, y, w, h]` of the ref's `ann_id`, as `[x, y, x + w, y + h]`.
- `--references data/shards/grounding --split S`: the shards' sample JSON (`orig_box`, `sample_id` = key).
A prediction names its sentence by `sent_id` (or `sample_id` for shard references, or `ref_id` alone when that
ref has exactly one sentence); when it gives both `ref_id` and `sent_id`, they must agree with the references.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from narvl.tasks.grounding import load_refs
from narvl.errors import NarvlError
from narvl.eval import common
from narvl.io import read_json

OFA_EPS = 1e-6


@dataclass(frozen=True)
class RefItem:
    """One scored sentence."""

    sent_id: int
    ref_id: int
    image_id: int
    box: tuple[float, float, float, float]  # ground truth, original pixels, [x0, y0, x1, y1]
    sample_id: str | None = None


def iou(pred: list[float], gt: list[float]) -> tuple[float, float, float]:
    """(iou, intersection width, intersection height) with OFA's formula (see the module docstring).

    The value alone is meaningless when the boxes do not overlap (two negative sides make a positive product):
    use `is_hit`, which also requires a positive intersection width and height.
    """
    ix0, iy0 = max(pred[0], gt[0]), max(pred[1], gt[1])
    ix1, iy1 = min(pred[2], gt[2]), min(pred[3], gt[3])
    iw, ih = ix1 - ix0, iy1 - iy0
    inter = iw * ih
    area_p = (pred[2] - pred[0]) * (pred[3] - pred[1])
    area_g = (gt[2] - gt[0]) * (gt[3] - gt[1])
    return inter / (area_p + area_g - inter + OFA_EPS), iw, ih


def is_hit(pred: list[float], gt: list[float], threshold: float) -> bool:
    value, iw, ih = iou(pred, gt)
    return value >= threshold and iw > 0 and ih > 0


def load_refer(refs_path: str | Path, instances_path: str | Path, split: str) -> list[RefItem]:
    refs_path, instances_path = Path(refs_path), Path(instances_path)
    refs = load_refs(refs_path)  # the restricted unpickler of `narvl shard`: plain data only, never code
    inst = read_json(instances_path)
    if not isinstance(inst, dict) or not isinstance(inst.get("annotations"), list):
        raise NarvlError(f"{instances_path}: expected COCO instances (an object with an 'annotations' list)")
    boxes = {a["id"]: a["bbox"] for a in inst["annotations"] if isinstance(a, dict) and "id" in a and "bbox" in a}
    items: list[RefItem] = []
    splits = set()
    for i, ref in enumerate(refs):
        try:
            splits.add(ref["split"])
            if ref["split"] != split:
                continue
            ann_id, ref_id, image_id = ref["ann_id"], ref["ref_id"], ref["image_id"]
            sentences = ref["sentences"]
        except (KeyError, TypeError) as e:
            raise NarvlError(f"{refs_path}: ref {i}: missing field {e} (split, ann_id, ref_id, image_id, sentences)")
        if ann_id not in boxes:
            raise NarvlError(f"{refs_path}: ref_id {ref_id}: ann_id {ann_id} not in {instances_path}")
        x, y, w, h = (float(v) for v in boxes[ann_id])
        for s in sentences:
            items.append(RefItem(sent_id=int(s["sent_id"]), ref_id=int(ref_id), image_id=int(image_id),
                                 box=(x, y, x + w, y + h)))
    if not items:
        raise NarvlError(f"{refs_path}: no refs in split '{split}' (splits present: {', '.join(sorted(splits))})")
    return items


def load_shards(shard_dir: str | Path, split: str) -> tuple[list[RefItem], dict]:
    """Ground truth from the shards' sample JSON; returns the items and the split's sizes.json entry."""
    from narvl.data.shard_folder import ShardFolder

    folder = ShardFolder(shard_dir, "grounding")
    entry = folder.entry(split)
    items: list[RefItem] = []
    for rec in folder.metas(split):
        try:
            items.append(RefItem(sent_id=int(rec["sent_id"]), ref_id=int(rec["ref_id"]), image_id=int(rec["image_id"]),
                                 box=tuple(float(v) for v in rec["orig_box"]), sample_id=rec["id"]))
        except (KeyError, TypeError, ValueError) as e:
            raise NarvlError(f"{folder.path}: sample {rec.get('id')}: not a grounding sample ({e})") from e
    if len(items) != entry.get("samples", len(items)):
        raise NarvlError(f"{folder.path}: split '{split}' holds {len(items)} samples, sizes.json says "
                         f"{entry['samples']}")
    return items, entry


def _is_box(v: Any) -> bool:
    return (isinstance(v, list) and len(v) == 4
            and all(isinstance(c, (int, float)) and not isinstance(c, bool) and math.isfinite(c) for c in v))


def score(items: list[RefItem], predictions: str | Path, score_params: Any, refs_name: str,
          shard_entry: dict | None = None) -> dict[str, Any]:
    preds = common.load_predictions(predictions, {"box": _is_box}, "grounding")
    by_sent = {it.sent_id: it for it in items}
    if len(by_sent) != len(items):
        raise NarvlError(f"{refs_name}: a sent_id appears twice in the references")
    by_sample = {it.sample_id: it for it in items if it.sample_id is not None}
    sents_of_ref: dict[int, list[RefItem]] = {}
    for it in items:
        sents_of_ref.setdefault(it.ref_id, []).append(it)

    def target(i: int, rec: dict) -> int:
        if "sent_id" in rec:
            if not common.is_int(rec["sent_id"]):
                raise NarvlError(f"{predictions}: record {i}: sent_id must be an integer: {rec['sent_id']!r}")
            if rec["sent_id"] not in by_sent:
                raise NarvlError(f"{predictions}: record {i}: sent_id {rec['sent_id']} not in the references "
                                 f"{refs_name} (wrong split?)")
            it = by_sent[rec["sent_id"]]
        elif "sample_id" in rec:
            if not by_sample:
                raise NarvlError(f"{predictions}: record {i}: has sample_id but no sent_id; sample ids are shard keys, "
                                 "so score against the shards (--references SHARD_DIR)")
            if rec["sample_id"] not in by_sample:
                raise NarvlError(f"{predictions}: record {i}: sample_id {rec['sample_id']!r} not in {refs_name}")
            it = by_sample[rec["sample_id"]]
        elif "ref_id" in rec:
            sents = sents_of_ref.get(rec["ref_id"])
            if not sents:
                raise NarvlError(f"{predictions}: record {i}: ref_id {rec['ref_id']} not in {refs_name}")
            if len(sents) > 1:
                raise NarvlError(f"{predictions}: record {i}: ref_id {rec['ref_id']} has {len(sents)} sentences "
                                 "and predictions are per sentence: give sent_id (or sample_id)")
            it = sents[0]
        else:
            raise NarvlError(f"{predictions}: record {i}: needs sent_id, sample_id or ref_id: {rec!r:.120}")
        if "ref_id" in rec and rec["ref_id"] != it.ref_id:
            raise NarvlError(f"{predictions}: record {i}: ref_id {rec['ref_id']} but sentence {it.sent_id} belongs "
                             f"to ref {it.ref_id} in {refs_name}")
        if "sample_id" in rec and it.sample_id is not None and rec["sample_id"] != it.sample_id:
            raise NarvlError(f"{predictions}: record {i}: sample_id {rec['sample_id']!r} but sentence {it.sent_id} "
                             f"is sample {it.sample_id!r} in {refs_name}")
        return it.sent_id

    keyed = [(target(i, rec), rec) for i, rec in enumerate(preds)]
    by_id = common.index_unique(predictions, [{"k": k, **r} for k, r in keyed], lambda r: r["k"], "sentences")
    coverage = common.check_missing(predictions, [it.sent_id for it in items], set(by_id),
                                    score_params.missing_predictions, "referring sentences")
    thr = score_params.iou_threshold
    hits, inverted = 0, 0
    for it in items:
        rec = by_id.get(it.sent_id)
        if rec is None:
            continue  # missing: a miss
        box = [float(c) for c in rec["box"]]
        inverted += box[2] < box[0] or box[3] < box[1]
        hits += is_hit(box, list(it.box), thr)
    cov = coverage.to_dict()
    if shard_entry is not None:
        cov["skipped_when_sharding"] = shard_entry.get("skipped", 0)
    name = f"Acc@{thr:g}"
    return {
        "metrics": {name: 100.0 * hits / len(items)},
        "headline": name,
        "scale": "percent of referring sentences",
        "unavailable": {},
        "details": {"correct": hits, "total": len(items), "iou_threshold": thr, "inverted_boxes": inverted,
                    "iou_convention": "OFA: continuous pixels, no +1, iou = inter/(union + 1e-6), hit iff "
                                      "iou >= threshold and the intersection has positive width and height"},
        "coverage": cov,
    }
