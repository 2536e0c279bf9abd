"""Answer one prompt about one image with a model file, in one pass: the first thing to try after training.

    narvl predict --model runs/caption-nar/model.pt   --image photo.jpg
    narvl predict --model runs/vqa-nar/model.pt       --image photo.jpg --text "what colour is the ball?"
    narvl predict --model runs/grounding-nar/model.pt --image photo.jpg --text "the red ball on the left"

Reads
  --model      a model file of `narvl export` (runs/TASK-KIND/model.pt) or `narvl import-ofa --tokenizer`; its
               task and kind say what to do
  --image      any image PIL reads
  tokenizer    the one the model file carries (export and import-ofa embed it); --tokenizer for a file that carries
               none (exported before narvl embedded tokenizers); it must be the file the model was trained with
               (the sha256 the model records) and match the model's vocabulary and special ids
  --params     the parameter folder the model was trained with (default: the params/ folder of this narvl checkout):
               data.yaml (data.shard.image_size[task], data.shard.jpeg_quality, data.loader.max_source_len) and
               decode.yaml (decode.beam_size, length_penalty, fold_batchnorm, channels_last)

The prompt: --text is the task's free text, and narvl builds the prompt around it as `narvl shard` does
(`narvl.tasks`, `Task.prompt`): VQA the question, stripped; grounding `which region does the text " <expression> "
describe?`; visual entailment `does the image describe " <hypothesis> "?` (expression and hypothesis lower-cased,
punctuation to spaces). --prompt is the encoder's text verbatim. Give one of them, or neither for a caption model
(its fixed prompt, `what does the image describe?`).

The image goes through what training saw: `narvl.data.images.prepare_image` (longest side resized to
data.shard.image_size[task], re-encoded as JPEG at data.shard.jpeg_quality, as in a shard), then the loader's
`Collator` (its image canvas and normalisation, <bos> prompt <eos> cut at data.loader.max_source_len) into a batch
of one. The model gets `narvl.model.inference.prepare` and `narvl.decode.run.predict_batch` as in `narvl decode`,
so a prediction here equals `narvl decode`'s for the same image and prompt (with decode.batch_size 1: padding
in a bigger batch can move the last bits).

Prints the caption or the answer (VQA; entailment: yes, no or maybe); for grounding the box `x0 y0 x1 y1` in the
original image's pixels and the PNG it drew it on. --json prints one JSON object instead: {"task", "kind",
"decoder", "model", "image", "prompt", "prediction" (text, or the box), "box_png" (grounding)}.

Writes (grounding only, atomically) --box-png: the original image with the box as a red rectangle, PNG
(default: <image stem>.box.png in the current folder; never the input image).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from narvl.errors import NarvlError

log = logging.getLogger(__name__)

# The checkout's parameter folder: the repository's defaults, the folder `narvl predict` reads without --params.
DEFAULT_PARAMS = Path(__file__).resolve().parent.parent / "params"
BOX_COLOUR = (255, 0, 0)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, type=Path,
                        help="model file (narvl export: runs/TASK-KIND/model.pt; or narvl import-ofa --tokenizer)")
    parser.add_argument("--image", required=True, type=Path, help="the image (JPEG, PNG, anything PIL reads)")
    text = parser.add_mutually_exclusive_group()
    text.add_argument("--text", help="VQA: the question; grounding: the referring expression; entailment: the "
                                     "hypothesis (the prompt is built around it as in the shards); not for captioning")
    text.add_argument("--prompt", help="the encoder's text prompt, verbatim (default for captioning: its fixed prompt)")
    parser.add_argument("--tokenizer", type=Path,
                        help="tokenizer.json, for a model file that carries none (default: the embedded one)")
    parser.add_argument("--decoder", choices=["greedy", "beam"], default="greedy", help="default: greedy")
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS,
                        help="parameter folder the model was trained with (data.yaml, decode.yaml); "
                             f"default: {DEFAULT_PARAMS}")
    parser.add_argument("--box-png", type=Path,
                        help="grounding: PNG to draw the box on (default: <image stem>.box.png here)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of plain text")


# ------------------------------------------------------------------------------------------------------ pieces
def build_prompt(task: str, text: str | None, prompt: str | None) -> str:
    """The encoder's prompt: --prompt verbatim, or the task's prompt around --text as `narvl shard` builds it
    (`Task.prompt`); a task whose prompt takes no text (captioning) takes no --text."""
    from narvl import tasks

    if prompt is not None:
        if not prompt.strip():
            raise NarvlError("--prompt is empty")
        return prompt
    spec = tasks.get(task)
    if text is None:
        if spec.prompt_text:
            raise NarvlError(f"a {task} model needs --text (its {spec.prompt_text}) or --prompt")
        return spec.prompt()
    if not spec.prompt_text:
        raise NarvlError(f"a {task} model takes no --text (its prompt is fixed: {spec.prompt()!r}); use --prompt "
                         "to change the prompt")
    built = spec.prompt(text)
    if not text.strip() or built == spec.prompt(""):
        raise NarvlError(f"--text {text!r} is empty" + (" after cleaning (lower case, punctuation removed)"
                                                         if text.strip() else ""))
    return built


def model_tokenizer(meta: dict[str, Any], model_path: Path, tokenizer_path: Path | None):
    """The tokenizer of the model: --tokenizer (checked against the recorded sha256) or the embedded one; it must
    have the model's vocabulary size and special ids."""
    from narvl.data.tokenizer import Tokenizer
    from narvl.io import file_sha256

    ref = meta.get("tokenizer") if isinstance(meta.get("tokenizer"), dict) else {}
    special = {"pad": Tokenizer.pad_id, "bos": Tokenizer.bos_id, "eos": Tokenizer.eos_id, "unk": Tokenizer.unk_id,
               "blank": Tokenizer.blank_id}
    if "ofa_checkpoint" in ref and meta.get("special_ids") != special:
        raise NarvlError(f"{model_path}: imported from OFA ({ref['ofa_checkpoint']}) with OFA's own token ids, which "
                         "no narvl tokenizer reads: import it again with `narvl import-ofa ... --tokenizer "
                         "TOKENIZER.json --bpe-dir OFA/utils/BPE` (TOKENIZER.json from `narvl tokenizer --gpt2`)")
    if tokenizer_path is not None:
        tokenizer = Tokenizer.load(tokenizer_path)
        if ref.get("sha256"):
            actual = file_sha256(tokenizer_path)
            if actual != ref["sha256"]:
                raise NarvlError(f"{tokenizer_path}: sha256 {actual[:12]} differs from the tokenizer the model "
                                 f"{model_path} was trained with ({ref.get('path', '?')}, {str(ref['sha256'])[:12]})")
        source = str(tokenizer_path)
    else:
        tokenizer = Tokenizer.embedded(ref, str(model_path))
        if tokenizer is None:
            recorded = f" (it records {ref['path']})" if ref.get("path") else ""
            raise NarvlError(f"{model_path}: the model file carries no tokenizer (exported before narvl embedded "
                             f"them): give --tokenizer, the tokenizer.json it was trained with{recorded}, or export "
                             "it again")
        source = f"{model_path}'s embedded tokenizer"
    if tokenizer.vocab_size != meta.get("vocab_size"):
        raise NarvlError(f"{source}: vocabulary of {tokenizer.vocab_size} tokens, but {model_path} has "
                         f"{meta.get('vocab_size')}")
    if meta.get("special_ids") != special:
        raise NarvlError(f"{model_path}: special ids {meta.get('special_ids')} are not the tokenizer's {special}")
    return tokenizer


def load_image(path: Path, task: str, data_params) -> tuple[bytes, tuple[int, int], tuple[int, int]]:
    """(jpg, orig_size, size): the image as `narvl shard` stores it (`prepare_image`)."""
    from narvl.data.images import prepare_image

    if path.is_dir():
        raise NarvlError(f"{path}: is a folder; --image takes an image file")
    if not path.is_file():
        raise NarvlError(f"{path}: no such image file")
    if task not in data_params.shard.image_size:
        raise NarvlError(f"data params: data.shard.image_size has no entry for task '{task}'")
    prepared = prepare_image(path, data_params.shard.image_size[task], data_params.shard.jpeg_quality)
    if isinstance(prepared, str):
        raise NarvlError(f"{prepared}: --image takes an image file PIL reads (JPEG, PNG, ...)")
    return prepared


def make_batch(image: Path, prompt: str, task: str, tokenizer, data_params) -> dict[str, Any]:
    """A batch of one, as the evaluation loader makes it: images (1, 3, S, S), src_tokens (1, L), src_mask (1, L),
    meta [{"id", "task", "prompt", "orig_size", "size"}]. No target: prediction needs none."""
    import torch

    from narvl.data.loader import Collator

    jpg, orig_size, size = load_image(image, task, data_params)
    lp = data_params.loader
    if task not in lp.max_target_len:
        raise NarvlError(f"data params: data.loader.max_target_len has no entry for task '{task}'")
    collate = Collator(tokenizer, task, data_params.shard.image_size[task], lp.max_source_len,
                       lp.max_target_len[task])
    meta = {"id": image.stem, "task": task, "prompt": prompt, "orig_size": list(orig_size), "size": list(size)}
    source = collate.source(meta)
    length = len(tokenizer.encode(prompt)) + 2
    if length > len(source):
        log.warning("the prompt is %d tokens with <bos> and <eos>; the model reads the first %d "
                    "(data.loader.max_source_len), as in training", length, len(source))
    src = torch.tensor([source], dtype=torch.long)
    return {"images": collate.images([{"key": image.name, "jpg": jpg, "meta": meta}]), "src_tokens": src,
            "src_mask": src.eq(tokenizer.pad_id), "meta": [meta]}


def draw_box(image: Path, box: list[float], out: Path) -> None:
    """The original image with `box` (original pixels) as a red rectangle, written atomically as PNG. The box is
    drawn as far as it lies inside the image (a prediction is not clipped, its drawing is)."""
    from PIL import ImageDraw

    from narvl.data.images import BadImage, open_image
    from narvl.io import atomic_path

    try:
        picture = open_image(image)
    except BadImage as e:
        raise NarvlError(str(e)) from e
    w, h = picture.size
    x0, x1 = sorted(min(max(round(box[i]), 0), w - 1) for i in (0, 2))  # whole pixels inside the image
    y0, y1 = sorted(min(max(round(box[i]), 0), h - 1) for i in (1, 3))
    ImageDraw.Draw(picture).rectangle([x0, y0, x1, y1], outline=BOX_COLOUR, width=2 if max(w, h) < 400 else 3)
    with atomic_path(out, inputs=[image]) as tmp:
        picture.save(tmp, format="PNG")


# --------------------------------------------------------------------------------------------------- command
def main(args: argparse.Namespace) -> int:
    import torch

    from narvl import model as narvl_model
    from narvl import params as params_mod
    from narvl import tasks
    from narvl.decode.run import predict_batch
    from narvl.io import check_output
    from narvl.model.inference import prepare

    try:
        model, meta = narvl_model.load(args.model)
    except NarvlError as e:
        raise NarvlError(f"{e} (--model takes a model file of `narvl export` or `narvl import-ofa`)") from e
    task = meta["task"]
    prompt = build_prompt(task, args.text, args.prompt)
    box_png = None
    if tasks.get(task).predicts_box:  # grounding
        box_png = args.box_png or Path(f"{args.image.stem}.box.png")
        check_output(box_png, is_dir=False, inputs=[args.image, args.model])  # before the work, not after
    elif args.box_png is not None:
        raise NarvlError(f"--box-png is for grounding models; {args.model} is a {task} model")
    tokenizer = model_tokenizer(meta, args.model, args.tokenizer)
    decode_params = params_mod.load_stage(args.params, "decode")
    data_params = params_mod.load_stage(args.params, "data")
    max_len = params_mod.ar_max_len(data_params, task, model.arch.max_target_len)
    batch = make_batch(args.image, prompt, task, tokenizer, data_params)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    prepare(model, decode_params.fold_batchnorm, decode_params.channels_last).to(device)
    for key in ("images", "src_tokens", "src_mask"):
        batch[key] = batch[key].to(device)
    with torch.inference_mode():
        (prediction,) = predict_batch(model, batch, task, tokenizer, args.decoder, decode_params, max_len=max_len)
    if box_png is not None:
        prediction = [float(c) for c in prediction]
        draw_box(args.image, prediction, box_png)

    if args.json:
        out = {"task": task, "kind": meta["kind"], "decoder": args.decoder, "model": str(args.model),
               "image": str(args.image), "prompt": prompt, "prediction": prediction}
        if box_png is not None:
            out["box_png"] = str(box_png)
        print(json.dumps(out, ensure_ascii=False))
    elif box_png is not None:
        print(" ".join(f"{c:.1f}" for c in prediction))
        print(f"box drawn on {box_png}")
    else:
        print(prediction)
    return 0
