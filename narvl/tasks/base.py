"""The interface every task implements (`narvl.tasks`), with the behaviour of a task whose target is text.

A task object is stateless: one instance per task (`narvl.tasks.get(name)`), asked by every stage:

    stage          asks
    shard          formats, read(), tsv_columns / tsv_records(), shard_fields()
    loader         target()
    train          check_train(), objective_options(); distill: text_targets, distilled_meta()
    decode         ar_decoders, slot_logprobs, prediction(), record()
    score          add_score_arguments(), score()
    report         title, scale, split_order, columns(), baselines, gallery_lines(), index_predictions(),
                   lookup(), reference_box()
    workflow       formats, baselines, ar_decoders (workflow/rules/common.smk)
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from narvl.data.readers import Record
from narvl.errors import NarvlError


def x100_1(v: float) -> str:
    return f"{100 * v:.1f}"


def f2(v: float) -> str:
    return f"{v:.2f}"


@dataclass(frozen=True)
class Column:
    """One column of a task's results table: a metric of one split."""

    split: str
    metric: str
    label: str
    fmt: Callable[[float], str]


class Task:
    name: str = ""
    title: str = ""  # the results table's heading
    headline: str = ""  # the metric the plots and the reproduction check use
    scale: str = ""  # how the table shows the numbers ("accuracy in %")
    headline_x100: bool = False  # the headline metric is a fraction shown x100 (CIDEr)
    split_order: tuple[str, ...] = ()  # evaluation splits in table order (others follow alphabetically)
    # raw formats of `narvl shard --format` (besides ofa-tsv) -> the arguments each needs
    formats: dict[str, tuple[str, ...]] = {}
    tsv_columns: tuple[str, ...] = ()  # OFA's TSV column layout for this task, image last (base64)
    tsv_image_column: int = -1  # the column of the base64 image
    prompt_text: str = ""  # what the prompt is built around (`narvl predict --text`): "" for a fixed prompt
    text_targets: bool = True  # targets are text: AR teachers can rewrite them (sequence-level KD)
    predicts_box: bool = False  # predictions are boxes in original pixels (drawn on the image by predict, report)
    ar_decoders: tuple[str, ...] = ()  # OFA's constrained AR decoders of this task (narvl.decode.constrained)
    baselines: tuple[tuple[str, str], ...] = ()  # (model, decoder) cells of the trivial baselines
    slot_logprobs: bool = False  # NAR decoding needs per-slot log-probabilities even when greedy
    score_help: str = ""  # `narvl score <task> --help`: what it computes
    prediction_fields: tuple[str, ...] = ()  # the keys of a prediction record in the official format

    # ------------------------------------------------------------------------------------------------ data
    def prompt(self, text: str | None = None) -> str:
        """The encoder's text input, built as the readers build it around `text` (ignored by a fixed prompt)."""
        raise NotImplementedError

    def read(self, fmt: str, args: argparse.Namespace) -> list[Record]:
        """Records of the raw files named by `args` (the `narvl shard` arguments of `formats[fmt]`)."""
        raise NotImplementedError

    def tsv_records(self, cols: list[str], base: dict, path: Path, lineno: int, where: str) -> Iterator[Record]:
        """The records of one OFA TSV row (columns already counted; `base`: split, image, image_key, image_id)."""
        raise NotImplementedError

    def shard_fields(self, fields: dict[str, Any], orig_size: tuple[int, int], size: tuple[int, int],
                     num_bins: int) -> dict[str, Any]:
        """The sample json's task fields once the image is resized (grounding: the box in resized pixels)."""
        return fields

    def target(self, meta: dict[str, Any], tokenizer, max_len: int) -> tuple[list[int], float]:
        """(target token ids without bos/eos, loss weight) of a sample."""
        return tokenizer.encode(meta["target"])[:max_len], 1.0

    # ---------------------------------------------------------------------------------------------- training
    def check_train(self, kind: str, num_queries: int, max_target_len: int, train, where: str) -> None:
        """Refuse a training configuration this task cannot learn with (before any work): N query slots can align
        (Q-CTC) at most N target tokens."""
        if kind == "nar" and num_queries < max_target_len:
            raise NarvlError(f"{where}: model.num_queries.{self.name} = {num_queries} < data.loader.max_target_len."
                             f"{self.name} = {max_target_len}: the NAR model's slots cannot hold its longest targets")

    def objective_options(self, kind: str, tokenizer, train) -> dict[str, Any]:
        """Task-specific options of `narvl.train.engine.Objective` (VQA score weights, grounding's box targets)."""
        return {}

    def distilled_meta(self, meta: dict[str, Any], teacher: str) -> dict[str, Any]:
        """A training sample whose target an AR teacher rewrote (sequence-level KD)."""
        return dict(meta, target=teacher, original_target=meta["target"])

    # ------------------------------------------------------------------------------------------------ decode
    def prediction(self, seq: list[int], meta: dict[str, Any], tokenizer, slot_lp=None) -> Any:
        """The prediction of one decoded token sequence (EOS and what follows removed)."""
        return tokenizer.decode(seq)

    def record(self, meta: dict[str, Any], pred: Any) -> dict[str, Any]:
        """One record of the predictions file, in the official results format."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------------------------- score
    def add_score_arguments(self, parser: argparse.ArgumentParser) -> None:
        """The reference arguments of `narvl score <task>` (the common ones are added by narvl.eval.score)."""
        raise NotImplementedError

    def score(self, args: argparse.Namespace, score_params) -> tuple[dict[str, Any], dict[str, Path]]:
        """(the scorer's result: metrics, headline, unavailable, details, coverage; the inputs to hash)."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------------------------ report
    def columns(self, splits: list[str]) -> list[Column]:
        raise NotImplementedError

    def ordered_splits(self, splits: set[str]) -> list[str]:
        return [s for s in self.split_order if s in splits] + sorted(splits - set(self.split_order))

    def index_predictions(self, records: list[dict]) -> dict:
        """A predictions file as {sample id: prediction}, for the gallery."""
        key = self.prediction_fields[0]
        return {r[key]: r[self.prediction_fields[-1]] for r in records}

    def lookup(self, index: dict, sample: dict[str, Any]) -> Any:
        """A sample's prediction in `index_predictions`'s output (None when it has none)."""
        return index.get(sample.get(self.prediction_fields[0]))

    def gallery_lines(self, meta: dict[str, Any]) -> list[str]:
        """What the gallery and the shard preview show of a sample besides the image: its prompt and reference."""
        return [f"Q: {meta.get('prompt', '')}", f"ref: {meta.get('target', '')}"]

    def reference_box(self, meta: dict[str, Any]) -> list[float] | None:
        """The reference box in original pixels, when predictions are boxes to draw on the image (grounding)."""
        return None
