"""VQA accuracy exactly as the official evaluation (GT-Vision-Lab/VQA `vqaEval.py` at a013f00, VQA v2).

Per question, with the 10 human answers of the annotation file:

1. `\\n` and `\\t` become spaces and both ends are stripped, for the prediction and each human answer.
2. Only when the human answers are not all identical, the prediction and every human answer are normalised:
   `process_punctuation` then `process_digit_article` (below; quirks of the official code kept on purpose).
3. accuracy = mean over the 10 humans h of min(1, #(the other 9 answers equal to the prediction) / 3).
   (The official code leaves out the one answer dict equal to h's; answer ids make those unique, so it is the
   leave-one-out by position used here.)

Reported numbers are percentages: overall = round(100 * sum(acc) / n, 2) and the same per answer type and per
question type. The official script is Python 2, whose `round` takes halves away from zero on the float's exact
value; `official_round` does that (Python 3's `round` would differ on exact ties such as 12.125).
A question without a prediction (allowed by `score.missing_predictions: wrong`) scores 0 and is listed.
"""

from __future__ import annotations

import functools
import logging
import re
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

from narvl.errors import NarvlError
from narvl.eval import common
from narvl.io import read_json

log = logging.getLogger(__name__)

# The official tables. Contractions: "word without apostrophe" -> "word with"; a few entries look odd (the
# "somebody'd" one maps the other way, capitalised keys never match lower-cased text): kept as the official file.
_CONTRACTIONS = """
aint:ain't arent:aren't cant:can't couldve:could've couldnt:couldn't couldn'tve:couldn't've couldnt've:couldn't've
didnt:didn't doesnt:doesn't dont:don't hadnt:hadn't hadnt've:hadn't've hadn'tve:hadn't've hasnt:hasn't
havent:haven't hed:he'd hed've:he'd've he'dve:he'd've hes:he's howd:how'd howll:how'll hows:how's Id've:I'd've
I'dve:I'd've Im:I'm Ive:I've isnt:isn't itd:it'd itd've:it'd've it'dve:it'd've itll:it'll let's:let's maam:ma'am
mightnt:mightn't mightnt've:mightn't've mightn'tve:mightn't've mightve:might've mustnt:mustn't mustve:must've
neednt:needn't notve:not've oclock:o'clock oughtnt:oughtn't ow's'at:'ow's'at 'ows'at:'ow's'at 'ow'sat:'ow's'at
shant:shan't shed've:she'd've she'dve:she'd've she's:she's shouldve:should've shouldnt:shouldn't
shouldnt've:shouldn't've shouldn'tve:shouldn't've somebody'd:somebodyd somebodyd've:somebody'd've
somebody'dve:somebody'd've somebodyll:somebody'll somebodys:somebody's someoned:someone'd someoned've:someone'd've
someone'dve:someone'd've someonell:someone'll someones:someone's somethingd:something'd
somethingd've:something'd've something'dve:something'd've somethingll:something'll thats:that's thered:there'd
thered've:there'd've there'dve:there'd've therere:there're theres:there's theyd:they'd theyd've:they'd've
they'dve:they'd've theyll:they'll theyre:they're theyve:they've twas:'twas wasnt:wasn't wed've:we'd've
we'dve:we'd've weve:we've werent:weren't whatll:what'll whatre:what're whats:what's whatve:what've whens:when's
whered:where'd wheres:where's whereve:where've whod:who'd whod've:who'd've who'dve:who'd've wholl:who'll whos:who's
whove:who've whyll:why'll whyre:why're whys:why's wont:won't wouldve:would've wouldnt:wouldn't
wouldnt've:wouldn't've wouldn'tve:wouldn't've yall:y'all yall'll:y'all'll y'allll:y'all'll yall'd've:y'all'd've
y'alld've:y'all'd've y'all'dve:y'all'd've youd:you'd youd've:you'd've you'dve:you'd've youll:you'll youre:you're
youve:you've
"""
CONTRACTIONS: dict[str, str] = dict(item.split(":") for item in _CONTRACTIONS.split())
NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = ("a", "an", "the")
PUNCT = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
# Meant as "a period not between digits"; the look-behind is written as a look-ahead `(?!<=\d)`, which never
# fires before a '.', so any period not followed by a digit goes. The official call passes re.UNICODE (32) as
# sub's *count*: at most 32 periods are removed.
PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
COMMA_STRIP = re.compile(r"(\d)(,)(\d)")


def process_punctuation(text: str) -> str:
    out = text
    for p in PUNCT:
        # the test looks at the input text, the replacement acts on the running output (as the official code)
        if (p + " " in text or " " + p in text) or COMMA_STRIP.search(text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return PERIOD_STRIP.sub("", out, count=int(re.UNICODE))


def process_digit_article(text: str) -> str:
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in ARTICLES]
    return " ".join(CONTRACTIONS.get(w, w) for w in words)


@functools.lru_cache(maxsize=1 << 20)
def normalize(answer: str) -> str:
    """processPunctuation then processDigitArticle (pure, so cached: human answers repeat a lot)."""
    return process_digit_article(process_punctuation(answer))


def _clean(answer: str) -> str:
    return answer.replace("\n", " ").replace("\t", " ").strip()


def question_accuracy(prediction: str, human_answers: list[str]) -> float:
    """Official per-question accuracy in [0, 1]."""
    gts = [_clean(a) for a in human_answers]
    pred = _clean(prediction)
    if len(set(gts)) > 1:
        gts = [normalize(a) for a in gts]
        pred = normalize(pred)
    total = sum(1 for a in gts if a == pred)
    accs = []
    for a in gts:  # leave human i out: the matches among the other answers
        matches = total - (a == pred)
        accs.append(min(1, float(matches) / 3))
    return float(sum(accs)) / len(accs)


def official_round(x: float, n: int) -> float:
    """Python 2 `round(x, n)`: the float's exact value, halves away from zero."""
    return float(Decimal(x).quantize(Decimal(1).scaleb(-n), rounding=ROUND_HALF_UP))


def _percent(accs: list[float], n: int) -> float:
    return official_round(100 * float(sum(accs)) / len(accs), n)


def load_annotations(questions: str | Path, annotations: str | Path) -> list[dict]:
    """VQA v2 annotation records (in file order), checked against the questions file."""
    ann = read_json(annotations)
    if not isinstance(ann, dict) or not isinstance(ann.get("annotations"), list):
        raise NarvlError(f"{annotations}: expected VQA annotations (an object with an 'annotations' list)")
    records = ann["annotations"]
    for i, r in enumerate(records):
        ok = (isinstance(r, dict) and common.is_int(r.get("question_id")) and isinstance(r.get("answers"), list)
              and r["answers"] and all(isinstance(a, dict) and isinstance(a.get("answer"), str) for a in r["answers"])
              and isinstance(r.get("answer_type"), str))
        if not ok:
            raise NarvlError(f"{annotations}: annotations[{i}]: expected question_id (int), answer_type (str) and "
                             f"answers [{{'answer': str}}, ...], got {r!r:.160}")
    qs = read_json(questions)
    if not isinstance(qs, dict) or not isinstance(qs.get("questions"), list):
        raise NarvlError(f"{questions}: expected VQA questions (an object with a 'questions' list)")
    q_ids = set()
    for i, q in enumerate(qs["questions"]):
        if not isinstance(q, dict) or not common.is_int(q.get("question_id")):
            raise NarvlError(f"{questions}: questions[{i}]: expected an object with an int question_id: {q!r:.120}")
        q_ids.add(q["question_id"])
    a_ids = [r["question_id"] for r in records]
    if len(set(a_ids)) != len(a_ids):
        raise NarvlError(f"{annotations}: a question_id appears in more than one annotation")
    if set(a_ids) != q_ids:
        only_a = sorted(set(a_ids) - q_ids)[:5]
        only_q = sorted(q_ids - set(a_ids))[:5]
        raise NarvlError(f"{questions} and {annotations} do not hold the same questions (only in annotations: "
                         f"{only_a}, only in questions: {only_q})")
    return records


def score(questions: str | Path, annotations: str | Path, predictions: str | Path, score_params: Any
          ) -> dict[str, Any]:
    records = load_annotations(questions, annotations)
    preds = common.load_predictions(predictions, {"question_id": common.is_int, "answer": common.is_str}, "VQA")
    by_id = common.index_unique(predictions, preds, lambda r: r["question_id"], "question_id values")
    q_ids = [r["question_id"] for r in records]
    common.check_unknown(predictions, by_id, set(q_ids), "question_id values", str(annotations))
    coverage = common.check_missing(predictions, q_ids, set(by_id), score_params.missing_predictions, "questions")
    empty = sorted(k for k, r in by_id.items() if not r["answer"].strip())
    if empty:
        log.warning("%s: %d empty answers (scored as they are, by the official rules)", predictions, len(empty))

    n = score_params.vqa_decimals
    acc_all: list[float] = []
    by_answer_type: dict[str, list[float]] = {}
    by_question_type: dict[str, list[float]] = {}
    for r in records:
        qid = r["question_id"]
        acc = question_accuracy(by_id[qid]["answer"], [a["answer"] for a in r["answers"]]) if qid in by_id else 0.0
        acc_all.append(acc)
        by_answer_type.setdefault(r["answer_type"], []).append(acc)
        if "question_type" in r:
            by_question_type.setdefault(str(r["question_type"]), []).append(acc)
    metrics: dict[str, float] = {"accuracy": _percent(acc_all, n)}
    for at, accs in sorted(by_answer_type.items()):
        metrics[f"accuracy_{at}"] = _percent(accs, n)
    return {
        "metrics": metrics,
        "headline": "accuracy",
        "scale": f"percent, rounded to {n} decimals as the official vqaEval.py (Python 2 round)",
        "unavailable": {},
        "details": {
            "accuracy_unrounded": 100 * float(sum(acc_all)) / len(acc_all),
            "per_answer_type": {k: _percent(v, n) for k, v in sorted(by_answer_type.items())},
            "per_question_type": {k: _percent(v, n) for k, v in sorted(by_question_type.items())},
            "questions_per_answer_type": {k: len(v) for k, v in sorted(by_answer_type.items())},
            "empty_answers": len(empty),
        },
        "coverage": coverage.to_dict(),
    }
