"""Read a dataset in its real format into webdataset shards.

Reads (by --format; the readers live with their tasks, narvl/tasks/):
  karpathy  --annotations dataset_coco.json --images IMAGES         (caption; train+restval -> train)
  vqav2     --questions Q.json... --annotations A.json... --images IMAGES   (vqa; train2014 -> train, val2014 -> val)
  refer     --refs "refs(unc).p" --instances instances.json --images IMAGES  (grounding; the refs' splits)
  snli-ve   --annotations snli_ve_{train,dev,test}.jsonl --images flickr30k-images   (entailment; split from name)
  ofa-tsv   --tsv SPLIT=FILE.tsv ...                                 (any task; OFA's column layouts, base64 images)
Reads data.yaml (data.shard, data.tokenizer.num_bins) from the parameter folder --params.
Writes OUT/<task>-<split>-%06d.tar (webdataset: <key>.jpg resized so the longest side is
data.shard.image_size[task], <key>.json the sample fields of docs/design.md) and OUT/sizes.json. The folder appears
only when complete; identical inputs give identical bytes. A missing or corrupt image skips its sample (counted,
listed in sizes.json and printed); a malformed file or record stops with an error naming it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import multiprocessing
from collections import OrderedDict, deque
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Iterable, Iterator

from tqdm import tqdm
from webdataset.writer import TarWriter

from narvl import params as params_mod, tasks
from narvl.data import images as imglib
from narvl.data.readers import Record, read_ofa_tsv
from narvl.data.sample import Sample
from narvl.data.shard_folder import check_key_part
from narvl.errors import NarvlError
from narvl.io import atomic_path, check_output, write_json

log = logging.getLogger(__name__)

FORMATS = {**{fmt: task.name for task in tasks.all_tasks() for fmt in task.formats}, "ofa-tsv": None}
MTIME = 0  # fixed tar member times, owner and mode: identical inputs give identical shard bytes
SKIPPED_SHOWN = 20


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", required=True, type=Path, help="parameter folder (data.yaml)")
    parser.add_argument("--task", required=True, choices=params_mod.TASKS)
    parser.add_argument("--format", required=True, choices=list(FORMATS))
    parser.add_argument("--annotations", nargs="+", type=Path,
                        help="karpathy: dataset_coco.json; vqav2: the annotation files; snli-ve: the jsonl files")
    parser.add_argument("--questions", nargs="+", type=Path, help="vqav2: the question files")
    parser.add_argument("--refs", type=Path, help="refer: refs(unc).p (or umd/google)")
    parser.add_argument("--instances", type=Path, help="refer: COCO instances.json")
    parser.add_argument("--images", type=Path, help="folder of the images (COCO: train2014/, val2014/; Flickr30k)")
    parser.add_argument("--tsv", nargs="+", metavar="SPLIT=FILE", help="ofa-tsv: one file per split")
    parser.add_argument("--out", required=True, type=Path, help="output folder, e.g. data/shards/caption")


class _SplitWriter:
    """The shards of one split: `<task>-<split>-%06d.tar`, a new file every `per_shard` samples."""

    def __init__(self, folder: Path, task: str, split: str, per_shard: int):
        self.folder, self.task, self.split, self.per_shard = folder, task, split, per_shard
        self.shards: list[str] = []
        self.count = 0
        self.skipped: list[str] = []
        self._file = None
        self._tar: TarWriter | None = None

    def write(self, jpg: bytes, sample: Sample) -> None:
        if self.count % self.per_shard == 0:
            self.close()
            name = f"{self.task}-{self.split}-{len(self.shards):06d}.tar"
            self.shards.append(name)
            self._file = open(self.folder / name, "wb")
            self._tar = TarWriter(self._file, user="narvl", group="narvl", mode=0o444, mtime=MTIME,
                                  encoder=False, format="USTAR_FORMAT")
        key = f"{self.split}_{self.count:08d}"
        meta = dataclasses.replace(sample, id=key).to_json()
        self._tar.write({"__key__": key, "jpg": jpg,
                         "json": json.dumps(meta, sort_keys=True, ensure_ascii=False).encode("utf-8")})
        self.count += 1

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self._file.close()
            self._tar = self._file = None

    def sizes(self) -> dict:
        return {"shards": self.shards, "samples": self.count, "skipped": len(self.skipped),
                "skipped_ids": self.skipped}


def _image_groups(records: Iterable[Record]) -> Iterator[list[Record]]:
    """Runs of consecutive records that share an image (readers sort so that they mostly do)."""
    group: list[Record] = []
    for rec in records:
        if group and rec.image_key != group[0].image_key:
            yield group
            group = []
        group.append(rec)
    if group:
        yield group


def _prepared(records: Iterable[Record], longest: int, quality: int, workers: int) -> Iterator[tuple]:
    """(record, prepared image) in input order; images prepared by `workers` processes (0: in this one)."""
    if workers == 0:
        cache: OrderedDict[str, tuple | str] = OrderedDict()  # also catches repeats that are not consecutive
        for rec in records:
            if rec.image_key not in cache:
                cache[rec.image_key] = imglib.prepare_image(rec.image, longest, quality)
                if len(cache) > 64:
                    cache.popitem(last=False)
            yield rec, cache[rec.image_key]
        return
    window = 16 * workers  # images in flight: bounded memory even for TSV files of base64 images
    pending: deque = deque()
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        for group in _image_groups(records):
            pending.append((group, pool.submit(imglib.prepare_image, group[0].image, longest, quality)))
            if len(pending) >= window:
                group, future = pending.popleft()
                image = future.result()
                yield from ((rec, image) for rec in group)
        while pending:
            group, future = pending.popleft()
            image = future.result()
            yield from ((rec, image) for rec in group)


def write_shards(records: Iterable[Record], task: str, data_params, out: Path, total: int | None = None,
                 inputs: Iterable[Path] = ()) -> dict:
    """Write records into OUT (atomically, the whole folder) and return the sizes.json content.

    OUT may be new, empty, or an earlier output of narvl (narvl.io.atomic_path); it must not hold any of `inputs`.
    """
    shard_params = data_params.shard
    spec = tasks.get(task)
    if task not in shard_params.image_size:
        raise NarvlError(f"data.shard.image_size has no entry for task '{task}'")
    longest = shard_params.image_size[task]
    num_bins = data_params.tokenizer.num_bins
    with atomic_path(out, is_dir=True, inputs=inputs) as tmp:
        writers: dict[str, _SplitWriter] = {}
        try:
            prepared = _prepared(records, longest, shard_params.jpeg_quality, shard_params.workers)
            for rec, image in tqdm(prepared, total=total, desc=f"shard {task}", unit="sample", mininterval=1.0):
                writer = writers.get(rec.split)
                if writer is None:
                    writer = writers[rec.split] = _SplitWriter(tmp, task, check_key_part(rec.split),
                                                               shard_params.samples_per_shard)
                if isinstance(image, str):
                    log.warning("%s %s: skipped: %s", rec.split, rec.source_id, image)
                    writer.skipped.append(rec.source_id)
                    continue
                jpg, orig_size, size = image
                fields = dict(spec.shard_fields(rec.fields, orig_size, size, num_bins))
                writer.write(jpg, Sample(id="", task=task, split=rec.split, image_id=rec.image_id,
                                         orig_size=tuple(orig_size), size=tuple(size), prompt=fields.pop("prompt"),
                                         target=fields.pop("target"), fields=fields))
        finally:
            for writer in writers.values():
                writer.close()
        if not writers:
            raise NarvlError(f"{out}: the input has no samples")
        sizes = {split: w.sizes() for split, w in sorted(writers.items())}
        write_json(tmp / "sizes.json", sizes)
    for split, s in sizes.items():
        print(f"{out}: {split}: {s['samples']} samples in {len(s['shards'])} shards, {s['skipped']} skipped")
        if s["skipped"]:
            shown = ", ".join(s["skipped_ids"][:SKIPPED_SHOWN])
            more = f" and {s['skipped'] - SKIPPED_SHOWN} more" if s["skipped"] > SKIPPED_SHOWN else ""
            print(f"  skipped ({split}): {shown}{more}")
    return sizes


def _need(args: argparse.Namespace, *names: str) -> None:
    missing = [f"--{n}" for n in names if getattr(args, n) is None]
    if missing:
        raise NarvlError(f"--format {args.format} needs {' '.join(missing)}")


def main(args: argparse.Namespace) -> int:
    data_params = params_mod.load_stage(args.params, "data")
    inputs = [args.params / "data.yaml", *(args.annotations or ()), *(args.questions or ()), args.refs, args.instances,
              args.images, *(Path(spec.partition("=")[2]) for spec in args.tsv or ())]
    check_output(args.out, is_dir=True, inputs=inputs)  # before reading anything: a refused --out costs nothing
    expected = FORMATS[args.format]
    if expected is not None and expected != args.task:
        raise NarvlError(f"--format {args.format} holds {expected} data, not --task {args.task}")
    total = None
    if args.format != "ofa-tsv":
        spec = tasks.get(expected)
        _need(args, *spec.formats[args.format])
        records = spec.read(args.format, args)
        total = len(records)
    else:
        _need(args, "tsv")
        files = []
        for spec in args.tsv:
            split, sep, file = spec.partition("=")
            if not sep or not split or not file:
                raise NarvlError(f"--tsv {spec}: expected SPLIT=FILE.tsv")
            files.append((split, Path(file)))
        if len({s for s, _ in files}) != len(files):
            raise NarvlError("--tsv: a split is given twice")
        for _, file in files:
            if not file.is_file():
                raise NarvlError(f"{file}: no such file")

        def chained():
            for split, file in sorted(files):
                yield from read_ofa_tsv(args.task, split, file)

        records = chained()
    write_shards(records, args.task, data_params, args.out, total=total, inputs=inputs)
    return 0


