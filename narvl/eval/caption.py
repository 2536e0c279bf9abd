"""COCO caption metrics with pycocoevalcap 1.2: BLEU-1..4, METEOR, ROUGE-L, CIDEr(-D), SPICE where it can run.

The steps are those of `pycocoevalcap.eval.COCOEvalCap.evaluate()` (the coco-caption demo), with the scorers called
one by one so that SPICE, which needs Stanford CoreNLP 3.6.0 models that pycocoevalcap downloads at first use, can
be reported as unavailable (with the reason) instead of stopping every other metric:

1. references: COCO caption annotations (`annotations[].image_id/caption`); predictions: `[{"image_id", "caption"}]`.
2. Both go through the Stanford PTB tokenizer (the jar inside pycocoevalcap, same command and same punctuation
   removal as `PTBTokenizer.tokenize`; only the temporary file lives in the system temp folder instead of
   site-packages, which may be read-only, and line separators other than "\n" (\r, \u2028, ...) become spaces too,
   so that one caption is always one line: pycocoevalcap would misalign the captions of such input).
3. `Bleu(4)`, `Meteor()`, `Rouge()`, `Cider()`, `Spice()` `.compute_score(gts, res)` on all reference images.

Scores are in [0, 1] as pycocoevalcap returns them (the paper's tables show x100).
"""

from __future__ import annotations

import ast
import contextlib
import io
import logging
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from narvl.errors import NarvlError
from narvl.eval import common
from narvl.io import read_json

log = logging.getLogger(__name__)

# pycocoevalcap.tokenizer.ptbtokenizer.PUNCTUATIONS (removed after tokenization)
PUNCTUATIONS = ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-",
                ".", "?", "!", ",", ":", "-", "--", "...", ";"]
CORENLP_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")


def _package_dir(name: str) -> Path:
    import importlib.util

    spec = importlib.util.find_spec(f"pycocoevalcap.{name}")  # namespace packages: no __file__
    if spec is None or not spec.submodule_search_locations:
        raise NarvlError(f"pycocoevalcap.{name} not found: install pycocoevalcap==1.2 (requirements.txt)")
    return Path(list(spec.submodule_search_locations)[0])


def require_java() -> str:
    java = shutil.which("java")
    if java is None:
        raise NarvlError("java not found on PATH: the PTB tokenizer and METEOR of pycocoevalcap need a Java runtime "
                         "(Debian: apt-get install default-jre-headless)")
    return java


# Python's line boundaries (str.splitlines) other than "\n": Java's tokenizer may break lines at some of them, which
# would shift every following caption onto the wrong image; pycocoevalcap only replaces "\n".
_LINE_BREAKS = {ord(c): " " for c in "\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"}


def one_line(caption: str) -> str:
    """The caption on one line: "\n" becomes a space as in pycocoevalcap, and so do the other line separators."""
    return caption.replace("\n", " ").translate(_LINE_BREAKS)


def ptb_tokenize(captions: dict[Any, list[str]]) -> dict[Any, list[str]]:
    """`PTBTokenizer().tokenize` on `{id: [caption, ...]}` (plain strings instead of {"caption": ...} dicts)."""
    jar = _package_dir("tokenizer") / "stanford-corenlp-3.4.1.jar"
    keys = [k for k, caps in captions.items() for _ in caps]
    sentences = "\n".join(one_line(c) for caps in captions.values() for c in caps)
    with tempfile.TemporaryDirectory(prefix="narvl-ptb-") as tmp:
        text_file = Path(tmp) / "captions.txt"
        text_file.write_bytes(sentences.encode())
        cmd = [require_java(), "-cp", str(jar), "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines",
               "-lowerCase", str(text_file)]
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
    if proc.returncode != 0:
        raise NarvlError(f"PTB tokenizer failed ({' '.join(cmd)}): {proc.stderr.decode(errors='replace')[-500:]}")
    lines = proc.stdout.decode().split("\n")
    if lines and lines[-1] == "" and len(lines) == len(keys) + 1:
        lines.pop()  # the final newline
    if len(lines) != len(keys):  # a misaligned zip would score captions against the wrong images
        raise NarvlError(f"PTB tokenizer returned {len(lines)} lines for {len(keys)} captions")
    out: dict[Any, list[str]] = {}
    for k, line in zip(keys, lines):
        out.setdefault(k, []).append(" ".join(w for w in line.rstrip().split(" ") if w not in PUNCTUATIONS))
    return out


def load_references(path: str | Path) -> dict[int, list[str]]:
    """COCO caption annotations -> {image_id: [caption, ...]} in file order (as pycocotools COCO.imgToAnns)."""
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise NarvlError(f"{path}: expected COCO caption annotations (an object with an 'annotations' list)")
    refs: dict[int, list[str]] = {}
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or not common.is_int(ann.get("image_id")) or not isinstance(
                ann.get("caption"), str):
            raise NarvlError(f"{path}: annotations[{i}]: expected {{'image_id': int, 'caption': str}}, "
                             f"got {ann!r:.120}")
        refs.setdefault(ann["image_id"], []).append(ann["caption"])
    if not refs:
        raise NarvlError(f"{path}: no caption annotations")
    return refs


def _bleu(gts: dict, res: dict) -> tuple[list[float], dict]:
    from pycocoevalcap.bleu.bleu import Bleu

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        score, _ = Bleu(4).compute_score(gts, res, verbose=1)
    printed = buf.getvalue().splitlines()
    stats = ast.literal_eval(printed[0])  # the totals dict pycocoevalcap prints
    stats["ratio"] = float(printed[1].split(":", 1)[1])
    return [float(s) for s in score], stats


def _spice(gts: dict, res: dict) -> tuple[float | None, str | None]:
    lib = _package_dir("spice") / "lib"
    absent = [j for j in CORENLP_JARS if not (lib / j).is_file()]
    if absent:
        return None, (f"Stanford CoreNLP 3.6.0 is not installed ({', '.join(absent)} missing in {lib}); "
                      "pycocoevalcap downloads it from nlp.stanford.edu at first use and narvl never downloads at "
                      "run time. Fetch it once with `python -m pycocoevalcap.spice.get_stanford_models` (network) "
                      "to enable SPICE")
    if not os.access(lib.parent, os.W_OK):
        return None, f"SPICE writes its cache and temporary files into {lib.parent}, which is not writable"
    try:
        from pycocoevalcap.spice.spice import Spice

        score, _ = Spice().compute_score(gts, res)
        return float(score), None
    except Exception as e:  # Java errors, out of memory: every other metric stands, SPICE says why it is missing
        return None, f"SPICE failed: {type(e).__name__}: {e}"


def score(references: str | Path, predictions: str | Path, score_params: Any) -> dict[str, Any]:
    refs = load_references(references)
    preds = common.load_predictions(predictions, {"image_id": common.is_int, "caption": common.is_str},
                                    "caption")
    by_id = common.index_unique(predictions, preds, lambda r: r["image_id"], "image_id values")
    common.check_unknown(predictions, by_id, set(refs), "image_id values", str(references))
    coverage = common.check_missing(predictions, list(refs), set(by_id), score_params.missing_predictions,
                                    "reference images")
    empty = sorted(k for k, r in by_id.items() if not r["caption"].strip())
    if empty:
        log.warning("%s: %d empty captions (scored as they are: zero on every metric)", predictions, len(empty))

    # The evaluated images are the reference images; a missing prediction is the empty caption (scores 0).
    image_ids = list(refs)
    gts = ptb_tokenize({i: refs[i] for i in image_ids})
    hyp = ptb_tokenize({i: [by_id[i]["caption"]] for i in image_ids if i in by_id})
    res = {i: hyp.get(i, [""]) for i in image_ids}

    metrics: dict[str, float | None] = {}
    unavailable: dict[str, str] = {}
    timings: dict[str, float] = {}

    t = time.perf_counter()
    bleu, bleu_stats = _bleu(gts, res)
    timings["Bleu"] = time.perf_counter() - t
    for n, value in enumerate(bleu, 1):
        metrics[f"Bleu_{n}"] = value

    if score_params.meteor:
        from pycocoevalcap.meteor.meteor import Meteor

        t = time.perf_counter()
        require_java()
        meteor = Meteor()
        try:
            metrics["METEOR"] = float(meteor.compute_score(gts, res)[0])
        except Exception as e:
            meteor.meteor_p.kill()  # Meteor.__del__ waits for a lock that a failed compute_score still holds
            if meteor.lock.locked():
                meteor.lock.release()
            raise NarvlError(f"METEOR failed: {type(e).__name__}: {e}") from e
        finally:
            del meteor  # Meteor.__del__ closes the Java process
        timings["METEOR"] = time.perf_counter() - t
    else:
        metrics["METEOR"] = None
        unavailable["METEOR"] = "disabled by score.meteor: false"

    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    t = time.perf_counter()
    metrics["ROUGE_L"] = float(Rouge().compute_score(gts, res)[0])
    timings["ROUGE_L"] = time.perf_counter() - t
    t = time.perf_counter()
    metrics["CIDEr"] = float(Cider().compute_score(gts, res)[0])
    timings["CIDEr"] = time.perf_counter() - t

    if score_params.spice:
        t = time.perf_counter()
        metrics["SPICE"], reason = _spice(gts, res)
        timings["SPICE"] = time.perf_counter() - t
        if reason:
            unavailable["SPICE"] = reason
            log.warning("SPICE unavailable: %s", reason)
    else:
        metrics["SPICE"] = None
        unavailable["SPICE"] = "disabled by score.spice: false"

    return {
        "metrics": metrics,
        "headline": "CIDEr",
        "scale": "fraction in [0, 1] as pycocoevalcap returns it",
        "unavailable": unavailable,
        "details": {"bleu_stats": bleu_stats, "empty_captions": len(empty), "seconds": timings,
                    "tokenizer": "Stanford PTBTokenizer 3.4.1 (pycocoevalcap), lower-cased, punctuation removed"},
        "coverage": coverage.to_dict(),
    }
