"""Visual entailment (SNLI-VE): does the image entail, contradict or leave open a hypothesis? The prompt is OFA's
`does the image describe " <hypothesis> "?`, the target OFA's answer word: entailment -> yes, contradiction -> no,
neutral -> maybe. Scored by accuracy (narvl.eval.entailment) against the gold labels of the split.

The prompt leaves out the text premise (SNLI's caption), so the image alone must decide. OFA's SNLI-VE fine-tuning
scripts add it (`can image and text1 " <premise> " imply text2 " <hypothesis> "?`), so OFA's published accuracy is not
this figure; the premise is kept in every sample (`premise`) for that variant.

Readers:
    snli-ve   the official release: `snli_ve_{train,dev,test}.jsonl` (one JSON object per line with `Flikr30kID`, as
              spelt in the release, or `Flickr30K_ID`; `sentence2` the hypothesis, `gold_label`, `pairID`) and the
              Flickr30k images folder (`flickr30k-images/<id>.jpg`); the split is taken from the file name
    ofa-tsv   OFA's visual-entailment TSV: uniq-id, image-id, image base64, hypothesis, caption (the premise), label
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any, Iterator

from narvl.data.readers import Record, clean_text, get_field
from narvl.errors import NarvlError
from narvl.tasks.base import Column, Task, f2

ANSWERS = {"entailment": "yes", "contradiction": "no", "neutral": "maybe"}  # OFA's answer words
SPLIT_FILE = re.compile(r"snli_ve_(?P<split>[A-Za-z0-9]+)\.jsonl$")


def hypothesis_prompt(hypothesis: str) -> str:
    """OFA's visual-entailment prompt (without the premise caption, as NARVL evaluates it)."""
    return f'does the image describe " {hypothesis} "?'


def _image_id(value: str, path: Path, where: str) -> tuple[int, str]:
    """(numeric id, file name) of a Flickr30k image named as '1234.jpg' or '1234'."""
    name = value.strip()
    stem = name[: -len(".jpg")] if name.endswith(".jpg") else name
    if not stem.isdigit():
        raise NarvlError(f"{path}: {where}: Flickr30k image id {value!r:.60} is not '<digits>.jpg'")
    return int(stem), f"{stem}.jpg"


def read_snli_ve(files: list[Path], images: Path) -> list[Record]:
    """The official jsonl files, one per split (`snli_ve_<split>.jsonl`): one sample per hypothesis."""
    records = []
    seen_splits: dict[str, Path] = {}
    for path in files:
        m = SPLIT_FILE.search(path.name)
        if m is None:
            raise NarvlError(f"{path}: an SNLI-VE file is named snli_ve_<split>.jsonl (the split comes from the name)")
        split = m["split"]
        if split in seen_splits:
            raise NarvlError(f"{path}: split '{split}' given twice (also {seen_splits[split]})")
        seen_splits[split] = path
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError as e:
            raise NarvlError(f"{path}: no such file") from e
        except UnicodeDecodeError as e:
            raise NarvlError(f"{path}: not UTF-8 text ({e})") from e
        pairs: set[str] = set()
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            where = f"line {lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise NarvlError(f"{path}: {where}: not valid JSON ({e})") from e
            pair_id = get_field(obj, "pairID", str, path, where)
            where = f"line {lineno} (pairID {pair_id})"
            if pair_id in pairs:
                raise NarvlError(f"{path}: {where}: pairID given twice; each pair is one sample")
            pairs.add(pair_id)
            key = "Flikr30kID" if isinstance(obj, dict) and "Flikr30kID" in obj else "Flickr30K_ID"
            image_id, file_name = _image_id(str(get_field(obj, key, (str, int), path, where)), path, where)
            label = get_field(obj, "gold_label", str, path, where)
            if label not in ANSWERS:
                raise NarvlError(f"{path}: {where}: gold_label {label!r:.40} is not one of {', '.join(ANSWERS)}")
            hypothesis = clean_text(get_field(obj, "sentence2", str, path, where))
            if not hypothesis:
                raise NarvlError(f"{path}: {where}: empty hypothesis (sentence2)")
            premise = obj.get("sentence1", "")
            image = images / file_name
            records.append(Record(
                split=split, source_id=f"pairID={pair_id}", image=image, image_key=str(image), image_id=image_id,
                fields=dict(prompt=hypothesis_prompt(hypothesis), target=ANSWERS[label], pair_id=pair_id,
                            hypothesis=hypothesis, premise=premise if isinstance(premise, str) else "",
                            gold_label=label)))
    records.sort(key=lambda r: (r.split, r.image_id, r.fields["pair_id"]))
    return records


class Entailment(Task):
    name = "entailment"
    title = "Visual entailment"
    headline = "accuracy"
    scale = "accuracy in %"
    split_order = ("dev", "test")
    formats = {"snli-ve": ("annotations", "images")}
    tsv_columns = ("uniq-id", "image-id", "image base64", "hypothesis", "caption", "label")
    tsv_image_column = 2
    ar_decoders = ("trie", "allcand")  # OFA decodes VE over its three answers
    baselines = (("baseline-blind", "greedy"),)  # the hypothesis alone (SNLI's known bias)
    prompt_text = "hypothesis"
    score_help = "accuracy over yes / no / maybe"
    prediction_fields = ("pair_id", "answer")

    def prompt(self, text: str | None = None) -> str:
        return hypothesis_prompt(clean_text(text or ""))

    def read(self, fmt: str, args: argparse.Namespace) -> list[Record]:
        return read_snli_ve(sorted(args.annotations), args.images)

    def tsv_records(self, cols: list[str], base: dict, path: Path, lineno: int, where: str) -> Iterator[Record]:
        label = cols[5].strip()
        if label not in ANSWERS:
            raise NarvlError(f"{path}: {where}: label {label!r:.40} is not one of {', '.join(ANSWERS)}")
        hypothesis = clean_text(cols[3])
        if not hypothesis:
            raise NarvlError(f"{path}: {where}: empty hypothesis")
        yield Record(source_id=f"{path.name}:{lineno}", **base, fields=dict(
            prompt=hypothesis_prompt(hypothesis), target=ANSWERS[label], pair_id=cols[0].strip(),
            hypothesis=hypothesis, premise=cols[4].strip(), gold_label=label))

    def record(self, meta: dict[str, Any], pred: Any) -> dict[str, Any]:
        return {"pair_id": meta["pair_id"], "answer": pred}

    def add_score_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--references", required=True, type=Path,
                            help="the split's snli_ve_<split>.jsonl, or the entailment shard folder (with --split)")
        parser.add_argument("--split", default=None, help="split of the cell (default: from the --out file name)")

    def score(self, args: argparse.Namespace, score_params) -> tuple[dict[str, Any], dict[str, Path]]:
        from narvl.eval import entailment

        if args.references.is_dir():
            if args.split is None:
                raise NarvlError("score entailment: --references SHARD_DIR needs --split")
            refs = entailment.load_shards(args.references, args.split)
            inputs = {"references_sizes": args.references / "sizes.json", "predictions": args.predictions}
        else:
            refs = entailment.load_jsonl(args.references)
            inputs = {"references": args.references, "predictions": args.predictions}
        return entailment.score(refs, args.predictions, score_params, str(args.references)), inputs

    def columns(self, splits: list[str]) -> list[Column]:
        prefix = len(splits) > 1
        return [Column(split, metric, f"{split} {label}" if prefix else label, f2)
                for split in splits
                for metric, label in (("accuracy", "accuracy"),) + (() if prefix else (
                    ("accuracy_yes", "yes"), ("accuracy_no", "no"), ("accuracy_maybe", "maybe")))]

    def gallery_lines(self, meta: dict[str, Any]) -> list[str]:
        return [f"H: {meta.get('hypothesis', meta.get('prompt', ''))}", f"ref: {meta.get('target', '')}"]


TASK = Entailment()
