"""Train the BPE tokenizer on the training prompts and targets of shard folders.

Reads data.yaml (data.tokenizer) from the parameter folder --params and the `train` split of each --shards folder
(its sizes.json and tars), and writes one JSON file (the `tokenizers` library's format): a byte-level BPE of
data.tokenizer.vocab_size tokens on top of the special tokens <pad>=0 <bos>=1 <eos>=2 <unk>=3 <blank>=4 (the CTC
blank) and the location tokens <bin_0>..<bin_{B-1}> (B = data.tokenizer.num_bins). With --gpt2 VOCAB_JSON
MERGES_TXT it converts OFA's GPT-2 BPE instead (`Tokenizer.from_gpt2`): its ids shifted after the special and
location tokens, no training.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from narvl.errors import NarvlError

SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>", "<blank>")
PAD, BOS, EOS, UNK, BLANK = range(len(SPECIALS))


def bin_token(k: int) -> str:
    return f"<bin_{k}>"


def box_to_bins(box: Sequence[float], size: float, num_bins: int) -> list[int]:
    """[x0, y0, x1, y1] in pixels of an image whose longest side is `size` -> 4 bin indices in [0, B-1]."""
    return [min(num_bins - 1, max(0, round(c / size * (num_bins - 1)))) for c in box]


def bins_to_box(bins: Sequence[int], size: float, num_bins: int) -> list[float]:
    return [b / (num_bins - 1) * size for b in bins]


def bins_string(bins: Sequence[int]) -> str:
    return " ".join(bin_token(b) for b in bins)


class Tokenizer:
    """Text <-> ids with the special ids of docs/design.md, plus location tokens for boxes."""

    def __init__(self, tok, source: str = "tokenizer"):
        self._tok = tok
        for i, name in enumerate(SPECIALS):
            if tok.token_to_id(name) != i:
                raise NarvlError(f"{source}: special token {name} should have id {i}, has {tok.token_to_id(name)}")
        num_bins = 0
        while tok.token_to_id(bin_token(num_bins)) is not None:
            if tok.token_to_id(bin_token(num_bins)) != len(SPECIALS) + num_bins:
                raise NarvlError(f"{source}: {bin_token(num_bins)} should have id {len(SPECIALS) + num_bins}")
            num_bins += 1
        if num_bins < 2:
            raise NarvlError(f"{source}: needs at least 2 location tokens <bin_0>, <bin_1>, found {num_bins}")
        self._num_bins = num_bins

    # -------------------------------------------------------------------------------------------- building
    @staticmethod
    def _specials(num_bins: int) -> list[str]:
        return [*SPECIALS, *(bin_token(k) for k in range(num_bins))]

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, num_bins: int, lowercase: bool) -> "Tokenizer":
        """A byte-level BPE with `vocab_size` learnt tokens (specials and bins on top), trained on `texts`."""
        from tokenizers import Tokenizer as HFTokenizer, decoders, models, normalizers, pre_tokenizers, trainers

        specials = cls._specials(num_bins)
        tok = HFTokenizer(models.BPE(unk_token="<unk>"))
        if lowercase:
            tok.normalizer = normalizers.Lowercase()
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size + len(specials), special_tokens=specials,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(tok, "trained tokenizer")

    @classmethod
    def from_gpt2(cls, vocab: str | Path, merges: str | Path, num_bins: int) -> "Tokenizer":
        """OFA's GPT-2 byte-level BPE (vocab.json + merges.txt), its ids shifted after the specials and bins."""
        from tokenizers import Tokenizer as HFTokenizer, decoders, models, pre_tokenizers

        vocab, merges = Path(vocab), Path(merges)
        try:
            table = json.loads(vocab.read_text(encoding="utf-8"))
        except FileNotFoundError as e:
            raise NarvlError(f"{vocab}: no such file") from e
        except json.JSONDecodeError as e:
            raise NarvlError(f"{vocab}: not valid JSON ({e})") from e
        if not isinstance(table, dict) or not all(isinstance(v, int) for v in table.values()):
            raise NarvlError(f"{vocab}: expected a JSON object of token -> integer id")
        try:
            lines = merges.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError as e:
            raise NarvlError(f"{merges}: no such file") from e
        pairs = []
        for n, line in enumerate(lines, start=1):
            if line.startswith("#version") or not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2:
                raise NarvlError(f"{merges}: line {n}: expected two tokens separated by a space, got {line!r:.60}")
            for p in parts:
                if p not in table:
                    raise NarvlError(f"{merges}: line {n}: token {p!r} is not in {vocab}")
            if parts[0] + parts[1] not in table:
                raise NarvlError(f"{merges}: line {n}: merged token {parts[0] + parts[1]!r} is not in {vocab}")
            pairs.append((parts[0], parts[1]))
        specials = cls._specials(num_bins)
        shifted = {name: i for i, name in enumerate(specials)}
        for token, _ in sorted(table.items(), key=lambda kv: kv[1]):
            if token not in shifted:
                shifted[token] = len(shifted)
        tok = HFTokenizer(models.BPE(vocab=shifted, merges=pairs, unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        tok.decoder = decoders.ByteLevel()
        tok.add_special_tokens(specials)
        return cls(tok, f"{vocab} + {merges}")

    @classmethod
    def load(cls, path: str | Path) -> "Tokenizer":
        from tokenizers import Tokenizer as HFTokenizer

        path = Path(path)
        if not path.is_file():
            raise NarvlError(f"{path}: no such tokenizer file (made by `narvl tokenizer`)")
        try:
            tok = HFTokenizer.from_file(str(path))
        except Exception as e:  # noqa: BLE001 - the library raises plain Exceptions for bad files
            raise NarvlError(f"{path}: not a tokenizer file ({e})") from e
        return cls(tok, str(path))

    def save(self, path: str | Path) -> None:
        from narvl.io import atomic_path

        with atomic_path(path) as tmp:
            self._tok.save(str(tmp), pretty=False)

    def to_str(self) -> str:
        """The whole tokenizer as JSON text (exported models embed it)."""
        return self._tok.to_str()

    @classmethod
    def from_str(cls, text: str, source: str = "embedded tokenizer") -> "Tokenizer":
        from tokenizers import Tokenizer as HFTokenizer

        try:
            tok = HFTokenizer.from_str(text)
        except Exception as e:  # noqa: BLE001 - the library raises plain Exceptions for bad text
            raise NarvlError(f"{source}: not a tokenizer ({e})") from e
        return cls(tok, source)

    # ------------------------------------------------------------------------------------- in a model file
    @staticmethod
    def embed(path: str | Path) -> dict[str, str]:
        """A model file's reference to its tokenizer, carrying the tokenizer itself: {"path", "sha256", "json"},
        "json" the file's exact text (so its sha256 is the file's). `narvl export` and `narvl import-ofa` store it
        as the model file's "tokenizer"; `Tokenizer.embedded` reads it back."""
        import hashlib

        path = Path(path)
        try:
            data = path.read_bytes()
        except FileNotFoundError as e:
            raise NarvlError(f"{path}: no such tokenizer file") from e
        except IsADirectoryError as e:
            raise NarvlError(f"{path}: is a folder, expected a tokenizer file") from e
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise NarvlError(f"{path}: not a tokenizer file (not UTF-8 text)") from e
        Tokenizer.from_str(text, str(path))  # refuse to embed something that is not a tokenizer
        return {"path": str(path), "sha256": hashlib.sha256(data).hexdigest(), "json": text}

    @classmethod
    def embedded(cls, ref: object, source: str) -> "Tokenizer | None":
        """The tokenizer a model file carries (its "tokenizer" entry, made by `Tokenizer.embed`), or None when it
        carries none (files exported before tokenizers were embedded). Text that does not hash to the recorded
        sha256 is an error naming `source` (the model file)."""
        import hashlib

        if not isinstance(ref, dict) or not isinstance(ref.get("json"), str):
            return None
        text = ref["json"]
        actual = hashlib.sha256(text.encode("utf-8")).hexdigest()
        if ref.get("sha256") != actual:
            raise NarvlError(f"{source}: the embedded tokenizer's sha256 {actual[:12]} is not the recorded "
                             f"{str(ref.get('sha256'))[:12]}: the model file is damaged")
        return cls.from_str(text, f"{source}: embedded tokenizer")

    # ---------------------------------------------------------------------------------------------- ids
    pad_id, bos_id, eos_id, unk_id, blank_id = PAD, BOS, EOS, UNK, BLANK

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def num_bins(self) -> int:
        return self._num_bins

    @property
    def bin_offset(self) -> int:
        """The id of <bin_0>; <bin_k> is bin_offset + k."""
        return len(SPECIALS)

    def is_bin(self, token_id: int) -> bool:
        return self.bin_offset <= token_id < self.bin_offset + self._num_bins

    # --------------------------------------------------------------------------------------------- text
    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int]) -> str:
        """Text of the ids; special and location tokens are dropped."""
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=True).strip()

    def id_to_token(self, token_id: int) -> str | None:
        return self._tok.id_to_token(int(token_id))

    # ---------------------------------------------------------------------------------------------- boxes
    def box_to_tokens(self, box: Sequence[float], size: float) -> list[int]:
        """[x0, y0, x1, y1] in pixels of an image whose longest side is `size` -> 4 location token ids."""
        return [self.bin_offset + b for b in box_to_bins(box, size, self._num_bins)]

    def tokens_to_box(self, ids: Iterable[int], size: float) -> list[float] | None:
        """The box of the first 4 location tokens among `ids` (other tokens ignored); None with fewer than 4."""
        bins = [int(i) - self.bin_offset for i in ids if self.is_bin(int(i))][:4]
        if len(bins) < 4:
            return None
        return bins_to_box(bins, size, self._num_bins)


# ------------------------------------------------------------------------------------------------------ command
def training_texts(shard_dirs: Iterable[Path], split: str = "train") -> Iterator[str]:
    """The prompts and the text targets of the split's samples (location-token targets, `Task.text_targets`
    false, are left out). Only the json members are read."""
    from tqdm import tqdm

    from narvl import tasks
    from narvl.data.shard_folder import ShardFolder

    for shard_dir in shard_dirs:
        folder = ShardFolder(shard_dir)
        metas = folder.metas(split)  # a missing split is an error naming sizes.json
        for meta in tqdm(metas, total=folder.samples_count(split), desc=f"text of {shard_dir}", unit="sample",
                         mininterval=1.0):
            yield meta["prompt"]
            if tasks.get(meta["task"]).text_targets:
                yield meta["target"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", required=True, type=Path, help="parameter folder (data.yaml)")
    parser.add_argument("--shards", nargs="+", type=Path, help="shard folders (their train split) to train on")
    parser.add_argument("--gpt2", nargs=2, type=Path, metavar=("VOCAB_JSON", "MERGES_TXT"),
                        help="instead of training: OFA's GPT-2 BPE files (data.tokenizer.num_bins still applies)")
    parser.add_argument("--out", required=True, type=Path, help="tokenizer JSON, e.g. data/shards/tokenizer.json")


def main(args: argparse.Namespace) -> int:
    from narvl import params as params_mod

    p = params_mod.load_stage(args.params, "data").tokenizer
    if (args.shards is None) == (args.gpt2 is None):
        raise NarvlError("give either --shards (train a BPE) or --gpt2 VOCAB_JSON MERGES_TXT (use OFA's), not both")
    if args.gpt2 is not None:
        tok = Tokenizer.from_gpt2(args.gpt2[0], args.gpt2[1], p.num_bins)
    else:
        tok = Tokenizer.train(training_texts(args.shards), p.vocab_size, p.num_bins, p.lowercase)
    tok.save(args.out)
    print(f"{args.out}: vocabulary of {tok.vocab_size} ids ({len(SPECIALS)} special, {tok.num_bins} location)")
    return 0
