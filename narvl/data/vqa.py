"""VQA soft scores: the official accuracy of an answer against the 10 human answers.

The official evaluation (GT-Vision-Lab/VQA, vqaEval.py) scores a predicted answer `a` against the 10 human answers
as the mean, over the 10 ways of leaving one human out, of min(1, #(remaining 9 humans who said `a`) / 3).
`soft_scores` gives that score for every distinct human answer; it is the training weight of a VQA target and the
accuracy an oracle would get by predicting that answer. Answers are compared as given (after stripping
whitespace); the official normalisation of punctuation, digits and articles belongs to scoring.
"""

from __future__ import annotations

from collections import Counter


def answer_score(answer: str, answers: list[str]) -> float:
    """The official 10-choose-9 accuracy of `answer` against the human `answers`."""
    answers = [a.strip() for a in answers]
    answer = answer.strip()
    if not answers:
        return 0.0
    matches = sum(1 for a in answers if a == answer)
    total = 0.0
    for held_out in answers:
        others = matches - (1 if held_out == answer else 0)
        total += min(1.0, others / 3.0)
    return total / len(answers)


def soft_scores(answers: list[str]) -> dict[str, float]:
    """{distinct answer: official soft score} for a question's human answers."""
    return {a: answer_score(a, answers) for a in sorted(Counter(a.strip() for a in answers))}


def best_answer(scores: dict[str, float], answers: list[str]) -> str:
    """The training target: the highest soft score, then the most frequent, then the first alphabetically."""
    counts = Counter(a.strip() for a in answers)
    return min(scores, key=lambda a: (-scores[a], -counts.get(a, 0), a))
