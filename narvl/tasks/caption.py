"""Image captioning (COCO Karpathy): the prompt asks what the image describes, the target is a caption; scored
with pycocoevalcap (narvl.eval.caption) against the COCO caption references of the split."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Iterator

from narvl.data.readers import Record, clean_text, get_field as _get, load_json as _load_json
from narvl.errors import NarvlError
from narvl.tasks.base import Column, Task, x100_1

PROMPT = "what does the image describe?"


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
                                      fields=dict(prompt=PROMPT, target=target, references=[raw])))
        else:
            records.append(Record(source_id=f"cocoid={cocoid}", **base,
                                  fields=dict(prompt=PROMPT, target=texts[0][2],
                                              references=[raw for _, raw, _ in texts])))
    records.sort(key=lambda r: (r.split, r.image_id))  # stable: captions stay in sentid order
    return records




class Caption(Task):
    name = "caption"
    title = "Image captioning"
    headline = "CIDEr"
    headline_x100 = True
    scale = "scores x100"
    split_order = ("test", "val")
    formats = {"karpathy": ("annotations", "images")}
    tsv_columns = ("uniq-id", "image-id", "caption", "predicted object labels", "image base64")
    baselines = (("baseline-constant", "none"),)
    score_help = "BLEU, METEOR, ROUGE-L, CIDEr, SPICE (pycocoevalcap)"
    prediction_fields = ("image_id", "caption")

    def prompt(self, text: str | None = None) -> str:
        return PROMPT

    def read(self, fmt: str, args: argparse.Namespace) -> list[Record]:
        if len(args.annotations) != 1:
            raise NarvlError("--format karpathy takes one --annotations file (dataset_coco.json)")
        return read_karpathy(args.annotations[0], args.images)

    def tsv_records(self, cols: list[str], base: dict, path: Path, lineno: int, where: str) -> Iterator[Record]:
        captions = [c.strip() for c in cols[2].split("&&") if c.strip()]
        if not captions:
            raise NarvlError(f"{path}: {where}: empty caption")
        if base["split"] == "train":
            for k, cap in enumerate(captions):
                yield Record(source_id=f"{path.name}:{lineno}" + (f"#{k}" if len(captions) > 1 else ""),
                             **base, fields=dict(prompt=PROMPT, target=clean_text(cap), references=[cap]))
        else:
            yield Record(source_id=f"{path.name}:{lineno}", **base,
                         fields=dict(prompt=PROMPT, target=clean_text(captions[0]), references=captions))

    def record(self, meta: dict[str, Any], pred: Any) -> dict[str, Any]:
        return {"image_id": meta["image_id"], "caption": pred}

    def add_score_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--references", required=True, type=Path, help="COCO caption annotations JSON")
        parser.add_argument("--split", default=None, help="split of the cell (default: from the --out file name)")

    def score(self, args: argparse.Namespace, score_params) -> tuple[dict[str, Any], dict[str, Path]]:
        from narvl.eval import caption

        result = caption.score(args.references, args.predictions, score_params)
        return result, {"references": args.references, "predictions": args.predictions}

    def columns(self, splits: list[str]) -> list[Column]:
        prefix = len(splits) > 1
        return [Column(split, metric, f"{split} {label}" if prefix else label, x100_1)
                for split in splits
                for metric, label in (("Bleu_4", "BLEU-4"), ("METEOR", "METEOR"), ("CIDEr", "CIDEr"),
                                      ("SPICE", "SPICE"))]

    def gallery_lines(self, meta: dict[str, Any]) -> list[str]:
        refs = meta.get("references") or [meta.get("target", "")]
        more = f" (+{len(refs) - 1} more)" if len(refs) > 1 else ""
        return [f"ref: {refs[0]}{more}"]


TASK = Caption()
