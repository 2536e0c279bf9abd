"""A result cell's identity, (task, split, model, decoder), and its file name `<task>-<split>-<model>-<decoder>.json`
under results/predictions/ and results/metrics/ (docs/design.md): mapped to and from the name here only.

    model    ar | nar | nar-kd, each optionally -seed<N> (further seeds of pipeline.seeds), or a trivial baseline
    decoder  greedy | beam (any model), trie | allcand | bins (AR only, `Task.ar_decoders`), none (a baseline
             computed without a model)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from narvl import tasks

MODELS = ("ar", "nar", "nar-kd")
# the trivial baselines' rows (narvl baselines, and the AR model fed blank images): what the models must beat
BASELINES = ("baseline-constant", "baseline-majority", "baseline-blind", "baseline-random-object",
             "baseline-largest-object")
DECODERS = ("greedy", "beam", "trie", "allcand", "bins")  # the last three: AR only (narvl.decode.constrained)
BASELINE_DECODER = "none"  # the decoder name of a baseline computed without a model

MODEL_PATTERN = (rf"(?:{'|'.join(re.escape(m) for m in MODELS)})(?:-seed[0-9]+)?"
                 rf"|{'|'.join(re.escape(b) for b in BASELINES)}")
NAME_RE = re.compile(rf"^(?P<task>{'|'.join(tasks.NAMES)})-(?P<split>[A-Za-z0-9_]+)-(?P<model>{MODEL_PATTERN})"
                     rf"-(?P<decoder>{'|'.join(DECODERS + (BASELINE_DECODER,))})$")


@dataclass(frozen=True)
class CellName:
    task: str
    split: str
    model: str
    decoder: str

    @property
    def stem(self) -> str:
        return f"{self.task}-{self.split}-{self.model}-{self.decoder}"

    @classmethod
    def parse(cls, stem: str) -> "CellName | None":
        """The cell a file stem names, or None when it names none."""
        m = NAME_RE.match(stem)
        return None if m is None else cls(m["task"], m["split"], m["model"], m["decoder"])
