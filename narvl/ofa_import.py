"""Convert an OFA fairseq checkpoint (OFA-Sys/OFA `ofa_*.pt`) into a narvl model file for one task and kind.

    narvl import-ofa --checkpoint ofa_base.pt --kind nar --task caption --params params --out runs/init/caption-nar.pt

The checkpoint is `{"model": state_dict, "args": argparse.Namespace | dict | None, "cfg": {"model": ...} | None}`
with float16 or float32 tensors. It is read with `torch.load(weights_only=True)`; config objects
(argparse.Namespace, OmegaConf containers) are admitted by name and nothing else is unpickled.

The architecture comes from the checkpoint's args/cfg and its tensor shapes, never from the file name. narvl's
modules carry fairseq's names, so every used key maps to the narvl key of the same name; the rest are listed in
IGNORED with the reason. For `nar` the decoder layers come from OFA's decoder, the N query vectors are new, and the
vocabulary gains one row, the CTC blank (for `ar` too, so one tokenizer serves both kinds).

Vocabulary: without --tokenizer the imported model keeps OFA's ids (fairseq's <s>=0 <pad>=1 </s>=2 <unk>=3, then
BPE, <mask>, the image codes and the <bin_k>), blank = the new last row. With --tokenizer (a narvl tokenizer made
by `narvl tokenizer --gpt2 encoder.json vocab.bpe`) and --bpe-dir (OFA's utils/BPE: encoder.json and dict.txt) the
embedding rows are reordered into the tokenizer's ids: narvl's specials take fairseq's rows (the blank a new one),
<bin_k> takes OFA's <bin_k> (the last num_bins rows), and each BPE token takes the row fairseq gives its GPT-2 id
(4 + the id's line in dict.txt); OFA's <mask> and image codes are dropped. The model file then carries that
tokenizer (`Tokenizer.embed`: path, sha256 and its text), as `narvl export` does, so `narvl predict` reads it.
Without --tokenizer no narvl tokenizer can read the model's ids: decode and predict need a model imported with one.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from narvl.errors import NarvlError
from narvl.io import file_sha256

log = logging.getLogger(__name__)

# fairseq Dictionary's fixed special ids (OFA's vocabulary starts with them)
OFA_SPECIAL = {"bos": 0, "pad": 1, "eos": 2, "unk": 3}
RESNET_BLOCKS = {"resnet18": [2, 2, 2], "resnet34": [3, 4, 6], "resnet50": [3, 4, 6], "resnet101": [3, 4, 23],
                 "resnet152": [3, 8, 36]}  # OFA's names: all Bottleneck, cut after stage 3

# checkpoint keys narvl does not load, with the reason (regular expressions over the fairseq key)
IGNORED: dict[str, str] = {
    r"(encoder|decoder)\.version": "fairseq's format version marker, no weights",
    r"(encoder|decoder)\.token_rp_bucket": "derived index buffer (text relative-position buckets): recomputed",
    r"(encoder|decoder)\.image_rp_bucket": "derived index buffer (image relative-position index): recomputed",
    r"decoder\.image_position_idx": "derived index buffer (decoder image-code positions; its length differs "
                                    "between OFA versions): not used",
    r"decoder\.(embed_tokens|output_projection)\.weight": "tied to encoder.embed_tokens.weight (checked equal)",
    r"decoder\.embed_image_positions\.weight": "decoder image-code generation only (not a narvl task)",
    r"decoder\.image_pos_ln\.(weight|bias)": "decoder image-code generation only (not a narvl task)",
    r"decoder\.code_layernorm_embedding\.(weight|bias)": "decoder image-code generation only (not a narvl task)",
    r"decoder\.image_rel_pos_table_list\.\d+\.weight": "decoder image-code generation only (not a narvl task)",
}
TIED = ("decoder.embed_tokens.weight", "decoder.output_projection.weight")
# narvl keys that no OFA key provides
NEW_KEYS = {"queries": "the NAR model's N query vectors (NARVL): new"}

# cfg switches narvl's single architecture has; a checkpoint with another value is refused
REQUIRED: dict[str, Any] = {
    "scale_attn": True, "scale_fc": True, "scale_heads": True, "scale_resids": False,  # NormFormer, no w_resid
    "layernorm_embedding": True, "patch_layernorm_embedding": True, "add_type_embedding": True,
    "share_all_embeddings": True, "encoder_normalize_before": True, "decoder_normalize_before": True,
    "no_scale_embedding": True, "entangle_position_embedding": False, "disable_entangle": True,
    "share_attn_bias": False, "activation_fn": "gelu",
}
DEFAULT_OFF = ("encoder_prompt", "decoder_prompt", "use_ofasys", "interpolate_position")  # must be absent or false


# ------------------------------------------------------------------------------------------------ reading
def _config_classes() -> list[type]:
    allowed: list[type] = [argparse.Namespace]
    try:
        import omegaconf
        from omegaconf import base, dictconfig, listconfig, nodes
    except ImportError:
        return allowed
    allowed += [dictconfig.DictConfig, listconfig.ListConfig, base.ContainerMetadata, base.Metadata,
                nodes.AnyNode, nodes.StringNode, nodes.IntegerNode, nodes.FloatNode, nodes.BooleanNode,
                omegaconf.Node]
    return allowed


def safe_load(path: str | Path) -> Any:
    """torch.load(weights_only=True) admitting only the config classes (argparse.Namespace, OmegaConf's
    containers) besides tensors and plain values; anything else is refused with an error naming the file."""
    import collections
    import typing

    path = Path(path)
    if not path.is_file():
        raise NarvlError(f"{path}: no such file")
    try:
        with torch.serialization.safe_globals([*_config_classes(), collections.defaultdict, dict, list, int,
                                                typing.Any]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise NarvlError(f"{path}: refused: the file holds objects other than tensors and config values "
                         f"(it would need arbitrary unpickling): {str(e).splitlines()[0]}") from e
    except Exception as e:  # noqa: BLE001 - torch raises many types for corrupt files
        raise NarvlError(f"{path}: not a readable checkpoint: {e}") from e


def read_checkpoint(path: str | Path, blob: Any = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """-> (state dict as float32/int64 CPU tensors, model config as a plain dict). `blob`: the file's content when
    already loaded by safe_load."""
    path = Path(path)
    if blob is None:
        if not path.is_file():
            raise NarvlError(f"{path}: no such OFA checkpoint")
        blob = safe_load(path)
    if not isinstance(blob, dict) or not isinstance(blob.get("model"), dict):
        raise NarvlError(f"{path}: not an OFA fairseq checkpoint (expected a dict with a 'model' state dict)")
    cfg = _model_config(blob, path)
    state = {}
    for k, v in blob["model"].items():
        if not isinstance(v, torch.Tensor):
            raise NarvlError(f"{path}: model entry {k!r} is a {type(v).__name__}, not a tensor")
        state[k] = v.float() if v.is_floating_point() else v
    return state, cfg


def _to_plain(obj: Any) -> Any:
    if isinstance(obj, argparse.Namespace):
        return dict(vars(obj))
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(obj):
            return OmegaConf.to_container(obj, resolve=True)
    except ImportError:
        pass
    return obj


def _model_config(blob: dict, path: Path) -> dict[str, Any]:
    cfg = _to_plain(blob.get("cfg"))
    if isinstance(cfg, dict) and isinstance(_to_plain(cfg.get("model")), dict):
        out = dict(_to_plain(cfg["model"]))
        task = _to_plain(cfg.get("task"))
        if isinstance(task, dict):
            out.setdefault("_task", task)
        return out
    args = _to_plain(blob.get("args"))
    if isinstance(args, dict):
        return dict(args)
    raise NarvlError(f"{path}: the checkpoint has neither cfg['model'] nor args: its architecture is unknown")


# ------------------------------------------------------------------------------------------- architecture
def _shape(state: dict, key: str, path: Path) -> tuple[int, ...]:
    if key not in state:
        raise NarvlError(f"{path}: the checkpoint lacks {key}")
    return tuple(state[key].shape)


def arch_from_checkpoint(state: dict[str, torch.Tensor], cfg: dict[str, Any], path: str | Path):
    """ArchParams from the config, checked against the tensors (block counts and widths come from the tensors)."""
    from narvl.params import ArchParams

    path = Path(path)
    for key, want in REQUIRED.items():
        have = cfg.get(key)
        if want is False:  # absent or None is OFA's default, off
            have = bool(have)
        if have != want:
            raise NarvlError(f"{path}: cfg {key} = {cfg.get(key)!r}; narvl implements OFA with {key} = {want!r}")
    for key in DEFAULT_OFF:
        if cfg.get(key):
            raise NarvlError(f"{path}: cfg {key} = {cfg[key]!r} is not supported (OFA's ResNet model without it)")
    for a, b in (("encoder_embed_dim", "decoder_embed_dim"), ("encoder_attention_heads", "decoder_attention_heads"),
                 ("encoder_ffn_embed_dim", "decoder_ffn_embed_dim")):
        if cfg.get(a) != cfg.get(b):
            raise NarvlError(f"{path}: cfg {a} = {cfg.get(a)} differs from {b} = {cfg.get(b)}")
    try:
        d, heads, ffn = int(cfg["encoder_embed_dim"]), int(cfg["encoder_attention_heads"]), \
            int(cfg["encoder_ffn_embed_dim"])
        enc_layers, dec_layers = int(cfg["encoder_layers"]), int(cfg["decoder_layers"])
        image_bucket, token_bucket = int(cfg["image_bucket_size"]), int(cfg["token_bucket_size"])
        factor = float(cfg["attn_scale_factor"])
        resnet_type = cfg["resnet_type"]
    except KeyError as e:
        raise NarvlError(f"{path}: cfg lacks {e.args[0]}") from e
    if resnet_type not in RESNET_BLOCKS:
        raise NarvlError(f"{path}: resnet_type {resnet_type!r} is not one of {', '.join(RESNET_BLOCKS)}")
    blocks = []
    for stage in (1, 2, 3):
        pat = re.compile(rf"encoder\.embed_images\.layer{stage}\.(\d+)\.conv1\.weight")
        idx = [int(m.group(1)) for k in state if (m := pat.fullmatch(k))]
        blocks.append(max(idx) + 1 if idx else 0)
    if blocks != RESNET_BLOCKS[resnet_type]:
        raise NarvlError(f"{path}: resnet_type {resnet_type} means blocks {RESNET_BLOCKS[resnet_type]}, "
                         f"the tensors have {blocks}")
    width = _shape(state, "encoder.embed_images.conv1.weight", path)[0]
    vocab, d_t = _shape(state, "encoder.embed_tokens.weight", path)
    src_rows = _shape(state, "encoder.embed_positions.weight", path)[0]
    tgt_rows = _shape(state, "decoder.embed_positions.weight", path)[0]
    if d_t != d:
        raise NarvlError(f"{path}: encoder_embed_dim {d} but embed_tokens has width {d_t}")
    for key, rows in (("encoder.embed_image_positions.weight", image_bucket ** 2 + 1),
                      ("encoder.token_rel_pos_table_list.0.weight", 2 * token_bucket - 1)):
        if _shape(state, key, path)[0] != rows:
            raise NarvlError(f"{path}: {key} has {_shape(state, key, path)[0]} rows, the cfg buckets imply {rows}")
    arch = ArchParams(d_model=d, heads=heads, encoder_layers=enc_layers, decoder_layers=dec_layers, ffn_dim=ffn,
                      dropout=float(cfg.get("dropout", 0.1)), resnet_layers=blocks, resnet_width=width,
                      image_bucket_size=image_bucket, token_bucket_size=token_bucket, attn_scale_factor=factor,
                      max_source_len=src_rows - 2, max_target_len=tgt_rows - 2)
    return arch, vocab


# ---------------------------------------------------------------------------------------------- mapping
def ignored_reason(key: str) -> str | None:
    for pattern, reason in IGNORED.items():
        if re.fullmatch(pattern, key):
            return reason
    return None


def map_state(state: dict[str, torch.Tensor], target: dict[str, tuple[int, ...]], path: str | Path,
              rows: torch.Tensor | None = None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Map a fairseq state dict onto narvl keys with the shapes in `target` (narvl key -> shape).

    rows: for each narvl token id, the OFA row it takes (-1: a new row, the CTC blank); None keeps OFA's ids and
    appends new rows. Returns (narvl state dict without the NEW_KEYS, {ignored fairseq key: reason}); every key of
    `state` is either used or ignored, any other key is an error.
    """
    path = Path(path)
    out, ignored, unknown = {}, {}, []
    emb = state.get("encoder.embed_tokens.weight")
    for key in TIED:
        if key in state and emb is not None and not (state[key].shape == emb.shape if emb.is_meta
                                                     else torch.equal(state[key], emb)):
            raise NarvlError(f"{path}: {key} differs from encoder.embed_tokens.weight; narvl ties them")
    for key, value in state.items():
        reason = ignored_reason(key)
        if reason is not None:
            ignored[key] = reason
            continue
        if key not in target:
            unknown.append(key)
            continue
        if key == "encoder.embed_tokens.weight":
            value = _embedding_rows(value, target[key][0], rows)
        if tuple(value.shape) != tuple(target[key]):
            raise NarvlError(f"{path}: {key} has shape {tuple(value.shape)}, the architecture needs "
                             f"{tuple(target[key])}")
        out[key] = value
    if unknown:
        raise NarvlError(f"{path}: {len(unknown)} checkpoint keys narvl cannot place: {', '.join(unknown[:8])}")
    missing = [k for k in target if k not in out and k not in NEW_KEYS]
    if missing:
        raise NarvlError(f"{path}: the checkpoint lacks {len(missing)} keys narvl needs: {', '.join(missing[:8])}")
    return out, ignored


def _embedding_rows(weight: torch.Tensor, n: int, rows: torch.Tensor | None) -> torch.Tensor:
    """OFA's (V_ofa, d) embedding -> narvl's (n, d): rows picked by `rows`; new rows (the blank) get the mean row."""
    if rows is None:
        rows = torch.cat([torch.arange(weight.size(0)), torch.full((max(0, n - weight.size(0)),), -1)])[:n]
    new = weight.mean(0, keepdim=True)
    table = torch.cat([weight, new])  # index -1 -> the new row
    return table[rows.where(rows >= 0, torch.tensor(weight.size(0)))]


def vocabulary_rows(tokenizer, bpe_dir: Path, ofa_vocab: int, num_bins: int) -> torch.Tensor:
    """For each narvl token id, the OFA row it takes (-1: the blank, a new row). OFA's order: fairseq's specials,
    dict.txt's GPT-2 ids (row 4 + line), <mask>, the image codes, then the <bin_k> as the last num_bins rows."""
    from narvl.data.tokenizer import SPECIALS
    from narvl.io import read_json

    encoder = read_json(bpe_dir / "encoder.json")  # GPT-2 token string -> GPT-2 id
    dict_txt = bpe_dir / "dict.txt"
    try:
        lines = dict_txt.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError as e:
        raise NarvlError(f"{dict_txt}: no such file (OFA's utils/BPE/dict.txt)") from e
    row_of_gpt2 = {}
    for n, line in enumerate(lines):  # fairseq: every line is one row; GPT-2 ids as decimal strings
        parts = line.split()
        if len(parts) < 2:
            raise NarvlError(f"{dict_txt}: line {n + 1}: expected '<symbol> <count>', got {line!r:.60}")
        if parts[0].isdigit():
            row_of_gpt2[int(parts[0])] = 4 + n  # other symbols (fairseq's madeupword0000 ...) keep their row
    if tokenizer.num_bins != num_bins:
        raise NarvlError(f"the tokenizer has {tokenizer.num_bins} location tokens, the checkpoint {num_bins}")
    special_rows = {"<pad>": OFA_SPECIAL["pad"], "<bos>": OFA_SPECIAL["bos"], "<eos>": OFA_SPECIAL["eos"],
                    "<unk>": OFA_SPECIAL["unk"], "<blank>": -1}
    rows, unknown = [], []
    for i in range(tokenizer.vocab_size):
        if i < len(SPECIALS):
            rows.append(special_rows[SPECIALS[i]])
        elif tokenizer.is_bin(i):
            rows.append(ofa_vocab - num_bins + i - tokenizer.bin_offset)
        else:
            token = tokenizer.id_to_token(i)
            if token not in encoder:
                raise NarvlError(f"{bpe_dir / 'encoder.json'}: token {token!r} (narvl id {i}) is not in it: the "
                                 f"tokenizer was not made from OFA's BPE (set data.tokenizer.gpt2_bpe_dir to OFA's "
                                 f"utils/BPE and rebuild it)")
            row = row_of_gpt2.get(encoder[token])
            if row is None:  # fairseq maps a GPT-2 id missing from dict.txt to <unk>
                unknown.append(token)
                row = OFA_SPECIAL["unk"]
            rows.append(row)
    if unknown:
        log.warning("%d GPT-2 tokens are not in %s and take OFA's <unk> row, e.g. %s", len(unknown), dict_txt,
                    ", ".join(map(repr, unknown[:5])))
    if row_of_gpt2 and max(row_of_gpt2.values()) >= ofa_vocab - num_bins:
        raise NarvlError(f"{dict_txt}: rows reach {max(row_of_gpt2.values())}, into the checkpoint's <bin> rows "
                         f"(from {ofa_vocab - num_bins})")
    return torch.tensor(rows)


# ------------------------------------------------------------------------------------------------ building
def build_from_checkpoint(path: str | Path, kind: str, num_queries: int, seed: int = 0,
                          rows: torch.Tensor | None = None, special_ids: dict[str, int] | None = None):
    """-> (narvl model in eval mode with OFA's weights, {ignored key: reason}, arch)."""
    from narvl.model import build_model

    state, cfg = read_checkpoint(path)
    arch, ofa_vocab = arch_from_checkpoint(state, cfg, path)
    if rows is None:
        vocab = ofa_vocab + 1  # the CTC blank, a new last row
        special_ids = {**OFA_SPECIAL, "blank": ofa_vocab}
    else:
        vocab = len(rows)
    torch.manual_seed(seed)  # the new parameters (queries, the new row) are drawn reproducibly
    model = build_model(kind, arch, vocab, num_queries, special_ids)
    target = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    mapped, ignored = map_state(state, target, path, rows)
    model.load_state_dict(mapped, strict=False)
    return model.eval(), ignored, arch


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, type=Path, help="OFA fairseq checkpoint (ofa_*.pt)")
    parser.add_argument("--kind", required=True, choices=["ar", "nar"])
    parser.add_argument("--task", required=True, help="the task the model file is for (num_queries from --params)")
    parser.add_argument("--params", type=Path, default=Path("params"), help="parameter folder (model.yaml: num_queries)")
    parser.add_argument("--tokenizer", type=Path, help="narvl tokenizer (from OFA's GPT-2 BPE) to reorder rows into")
    parser.add_argument("--bpe-dir", type=Path, help="OFA's utils/BPE folder: encoder.json, dict.txt (with --tokenizer)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the new query vectors")
    parser.add_argument("--out", required=True, type=Path, help="narvl model file to write")


def main(args: argparse.Namespace) -> int:
    from narvl import params as P
    from narvl.model import save

    model_params = P.load_stage(args.params, "model")
    if args.task not in model_params.num_queries:
        raise NarvlError(f"{args.params / 'model.yaml'}: model.num_queries has no task {args.task!r}")
    rows, special, tok_ref = None, None, None
    if (args.tokenizer is None) != (args.bpe_dir is None):
        raise NarvlError("--tokenizer and --bpe-dir go together")
    if args.tokenizer is not None:
        from narvl.data.tokenizer import Tokenizer

        tok = Tokenizer.load(args.tokenizer)
        state, cfg = read_checkpoint(args.checkpoint)
        _, ofa_vocab = arch_from_checkpoint(state, cfg, args.checkpoint)
        num_bins = int(cfg.get("_task", {}).get("num_bins", 1000))
        rows = vocabulary_rows(tok, args.bpe_dir, ofa_vocab, num_bins)
        special = {"pad": tok.pad_id, "bos": tok.bos_id, "eos": tok.eos_id, "unk": tok.unk_id, "blank": tok.blank_id}
        tok_ref = Tokenizer.embed(args.tokenizer)  # {"path", "sha256", "json"}: the model file carries it
    model, ignored, arch = build_from_checkpoint(args.checkpoint, args.kind, model_params.num_queries[args.task],
                                                 args.seed, rows, special)
    for key, reason in sorted(ignored.items()):
        log.debug("ignored %s: %s", key, reason)
    ref = {"ofa_checkpoint": str(args.checkpoint), "sha256": file_sha256(args.checkpoint), "tokenizer": tok_ref}
    save(args.out, model, {"task": args.task, "tokenizer": tok_ref or ref, "step": 0})
    print(f"{args.out}: {args.kind} model for {args.task} from {args.checkpoint} "
          f"({sum(p.numel() for p in model.parameters()):,} parameters, {len(ignored)} checkpoint keys ignored; "
          f"architecture {dataclasses.asdict(arch)})")
    return 0

