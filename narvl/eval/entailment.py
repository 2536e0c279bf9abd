"""Visual entailment (SNLI-VE) accuracy: the share of hypotheses whose predicted answer is the gold one.

References are the gold answers per pair, OFA's words (entailment -> yes, contradiction -> no, neutral -> maybe):
- `--references snli_ve_<split>.jsonl`: the official file of the split (`pairID`, `gold_label`);
- `--references data/shards/entailment --split S`: the shards' sample JSON (`pair_id`, `target`).
Predictions are `[{"pair_id", "answer"}]`. An answer is compared after stripping and lower-casing; the label words
(`entailment`, ...) count as their answers. Reported in percent: overall and per gold answer (accuracy_yes, ...).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from narvl.errors import NarvlError
from narvl.eval import common

ANSWERS = {"entailment": "yes", "contradiction": "no", "neutral": "maybe"}


def _answer(text: str) -> str:
    text = text.strip().lower()
    return ANSWERS.get(text, text)


def load_jsonl(path: str | Path) -> dict[str, str]:
    """{pairID: gold answer} of an official SNLI-VE jsonl file."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError as e:
        raise NarvlError(f"{path}: no such file") from e
    refs: dict[str, str] = {}
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise NarvlError(f"{path}: line {lineno}: not valid JSON ({e})") from e
        if not isinstance(obj, dict) or not isinstance(obj.get("pairID"), str) or obj.get("gold_label") not in ANSWERS:
            raise NarvlError(f"{path}: line {lineno}: needs a string pairID and a gold_label among "
                             f"{', '.join(ANSWERS)}: {line!r:.120}")
        if obj["pairID"] in refs:
            raise NarvlError(f"{path}: line {lineno}: pairID {obj['pairID']} given twice")
        refs[obj["pairID"]] = ANSWERS[obj["gold_label"]]
    return refs


def load_shards(shard_dir: str | Path, split: str) -> dict[str, str]:
    """{pair_id: gold answer} from the samples of an entailment shard folder's split."""
    from narvl.data.shard_folder import ShardFolder

    refs: dict[str, str] = {}
    for meta in ShardFolder(shard_dir, "entailment").metas(split):
        try:
            pair_id, answer = str(meta["pair_id"]), str(meta["target"])
        except KeyError as e:
            raise NarvlError(f"{shard_dir}: sample {meta.get('id')}: not an entailment sample (missing {e})") from e
        if pair_id in refs:
            raise NarvlError(f"{shard_dir}: split '{split}': pair id {pair_id} is in two samples (sample "
                             f"{meta.get('id')}): ids must name one hypothesis each")
        refs[pair_id] = answer
    return refs


def score(refs: dict[str, str], predictions: str | Path, score_params: Any, refs_name: str) -> dict[str, Any]:
    preds = common.load_predictions(predictions, {"pair_id": common.is_str, "answer": common.is_str}, "entailment")
    by_id = common.index_unique(predictions, preds, lambda r: r["pair_id"], "pair ids")
    common.check_unknown(predictions, by_id, set(refs), "pair ids", refs_name)
    coverage = common.check_missing(predictions, list(refs), set(by_id), score_params.missing_predictions,
                                    "hypotheses")
    correct: dict[str, list[int]] = {a: [0, 0] for a in ANSWERS.values()}
    for pair_id, gold in refs.items():
        rec = by_id.get(pair_id)
        hit = rec is not None and _answer(rec["answer"]) == gold
        entry = correct.setdefault(gold, [0, 0])
        entry[0] += hit
        entry[1] += 1
    hits = sum(c for c, _ in correct.values())
    metrics = {"accuracy": 100.0 * hits / len(refs)}
    metrics.update({f"accuracy_{a}": 100.0 * c / n for a, (c, n) in correct.items() if n})
    return {
        "metrics": metrics,
        "headline": "accuracy",
        "scale": "percent of hypotheses",
        "unavailable": {},
        "details": {"correct": hits, "total": len(refs), "per_answer": {a: {"correct": c, "total": n}
                                                                        for a, (c, n) in correct.items()}},
        "coverage": coverage.to_dict(),
    }
