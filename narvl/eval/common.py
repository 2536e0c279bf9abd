"""What every scorer shares: reading a predictions file strictly, naming the metrics cell, provenance.

Bad input is never scored silently. A predictions file that is not JSON, not a list of objects, has a record without
its id or value, an id twice, or an id the references do not know stops with a `NarvlError` naming the file and the
record. Ids that the references have and the predictions lack are handled by `score.missing_predictions`: `error`
stops, `wrong` scores them as wrong answers (an empty caption / answer, no box) and lists them in the metrics file.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from narvl import __version__, params as params_mod, tasks
from narvl.cell import CellName
from narvl.errors import NarvlError
from narvl.io import file_sha256, read_json

log = logging.getLogger(__name__)

MAX_LISTED = 1000  # ids listed in a metrics file (missing predictions); the count is always exact


def load_predictions(path: str | Path, fields: dict[str, Callable[[Any], bool]], what: str) -> list[dict]:
    """Read a predictions JSON list and check each record has the typed fields named in `fields`.

    `fields` maps a key to a check that returns True for a valid value (alternative keys are checked by the caller).
    """
    path = Path(path)
    data = read_json(path)
    if not isinstance(data, list):
        raise NarvlError(f"{path}: expected a JSON list of {what} records, got {type(data).__name__}")
    for i, rec in enumerate(data):
        if not isinstance(rec, dict):
            raise NarvlError(f"{path}: record {i}: expected an object, got {type(rec).__name__} {rec!r:.80}")
        for key, ok in fields.items():
            if key not in rec:
                raise NarvlError(f"{path}: record {i}: missing key '{key}' (a {what} record needs "
                                 f"{', '.join(repr(k) for k in fields)}): {rec!r:.120}")
            if not ok(rec[key]):
                raise NarvlError(f"{path}: record {i}: bad value for '{key}': {rec[key]!r:.80}")
    return data


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_str(v: Any) -> bool:
    return isinstance(v, str)


def index_unique(path: str | Path, records: list[dict], key: Callable[[dict], Any], what: str) -> dict[Any, dict]:
    """Index records by id; an id that appears twice is an error listing the first duplicates."""
    out: dict[Any, dict] = {}
    dups: list[Any] = []
    for rec in records:
        k = key(rec)
        if k in out:
            dups.append(k)
        out[k] = rec
    if dups:
        shown = ", ".join(map(str, sorted(set(dups), key=str)[:10]))
        raise NarvlError(f"{path}: {len(dups)} duplicate {what} (one prediction per id expected): {shown}"
                         f"{' ...' if len(set(dups)) > 10 else ''}")
    return out


def check_unknown(path: str | Path, predicted: Iterable[Any], known: set, what: str, refs: str) -> None:
    unknown = sorted({k for k in predicted if k not in known}, key=str)
    if unknown:
        shown = ", ".join(map(str, unknown[:10]))
        raise NarvlError(f"{path}: {len(unknown)} {what} not in the references {refs} (wrong split or wrong "
                         f"references file?): {shown}{' ...' if len(unknown) > 10 else ''}")


@dataclass
class Coverage:
    """How many reference items had a prediction; missing ones were scored as wrong."""

    references: int
    predicted: int
    missing: list

    def to_dict(self) -> dict:
        listed = sorted(self.missing, key=str)[:MAX_LISTED]
        return {"references": self.references, "predicted": self.predicted, "missing": len(self.missing),
                "missing_ids": listed, "missing_ids_truncated": len(self.missing) > len(listed),
                "missing_scored_as": "wrong" if self.missing else None}


def check_missing(path: str | Path, known: list, predicted: set, policy: str, what: str) -> Coverage:
    missing = [k for k in known if k not in predicted]
    if missing and policy == "error":
        shown = ", ".join(map(str, sorted(missing, key=str)[:10]))
        raise NarvlError(f"{path}: no prediction for {len(missing)} of {len(known)} {what} "
                         f"(score.missing_predictions: error): {shown}{' ...' if len(missing) > 10 else ''}")
    if missing:
        log.warning("%s: no prediction for %d of %d %s; they are scored as wrong and listed in the metrics file",
                    path, len(missing), len(known), what)
    if not known:
        raise NarvlError(f"{path}: the references hold no {what} to score")
    return Coverage(references=len(known), predicted=len(known) - len(missing), missing=missing)


def cell_from_args(task: str, args: Any) -> dict[str, str | None]:
    """The (task, split, model, decoder) cell: explicit flags win, else parsed from --out, then --predictions."""
    cell: dict[str, str | None] = {"task": task, "split": None, "model": None, "decoder": None}
    for name in (Path(args.out).stem, Path(args.predictions).stem):
        parsed = CellName.parse(name)
        if parsed and tasks.get(parsed.task) is tasks.get(task):
            cell.update(split=parsed.split, model=parsed.model, decoder=parsed.decoder)
            break
    for key in ("split", "model", "decoder"):
        value = getattr(args, key, None)
        if value is not None:
            cell[key] = value
    if None in cell.values():
        log.warning("metrics cell not fully named (%s): pass --split/--model/--decoder or name --out "
                    "<task>-<split>-<model>-<decoder>.json", cell)
    return cell


def provenance(args: Any, score_params: Any, inputs: dict[str, str | Path]) -> dict[str, Any]:
    """Where the numbers come from: narvl version, score params hash, input file hashes, and the decode sidecar."""
    prov: dict[str, Any] = {
        "narvl_version": __version__,
        "score_params": str(Path(args.params) / "score.yaml"),
        "score_params_hash": params_mod.digest(score_params),
        "inputs": {name: {"path": str(p), "sha256": file_sha256(p)} for name, p in inputs.items()
                   if p is not None and Path(p).is_file()},
    }
    decode_meta = getattr(args, "provenance", None)
    if decode_meta is None:
        sidecar = decode_sidecar_path(args.predictions)
        if sidecar.is_file():
            decode_meta = sidecar
            log.info("provenance: using the decode sidecar %s", sidecar)
    if decode_meta is not None:
        meta = read_json(decode_meta)
        if not isinstance(meta, dict):
            raise NarvlError(f"{decode_meta}: expected a JSON object with the decoding provenance")
        if "predictions_sha256" in meta or getattr(args, "provenance", None) is None:
            check_sidecar(decode_meta, meta, args.predictions)
        prov["decode"] = meta
        prov["decode_file"] = str(decode_meta)
    else:
        prov["decode"] = None
    return prov


def check_sidecar(sidecar: str | Path, meta: dict[str, Any], predictions: str | Path) -> None:
    """The decode sidecar must belong to these predictions: `narvl decode` records their sha256 in it."""
    recorded, actual = meta.get("predictions_sha256"), file_sha256(predictions)
    if recorded is None:
        raise NarvlError(f"{sidecar}: records no predictions_sha256, so it cannot be matched to {predictions} "
                         "(written by an older narvl decode?); decode again, or pass --provenance explicitly")
    if recorded != actual:
        raise NarvlError(f"{sidecar}: belongs to other predictions (sha256 {str(recorded)[:12]}), not to "
                         f"{predictions} (sha256 {actual[:12]}): an interrupted or failed decode? Decode again")


def decode_sidecar_path(predictions: str | Path) -> Path:
    """`narvl decode` writes `X.json` (official results format) and `X.meta.json` (model, step, timing)."""
    p = Path(predictions)
    return p.with_name(p.stem + ".meta.json")
