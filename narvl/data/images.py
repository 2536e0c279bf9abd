"""Image decoding, resizing to the task's longest side, and the matching box transform."""

from __future__ import annotations

import base64
import binascii
import io
import warnings
from pathlib import Path

from PIL import Image

# ImageNet statistics (the paper's ResNet stem was pretrained on ImageNet); the loader normalises with them.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class BadImage(Exception):
    """An image that cannot be read: missing, truncated, not an image. The sample is skipped and counted."""


def decode_base64(text: str) -> bytes:
    """OFA's TSV images: base64, standard or URL-safe alphabet."""
    try:
        return base64.b64decode(text.strip().replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError) as e:
        raise BadImage(f"not valid base64 ({e})") from e


def open_image(source: Path | bytes) -> Image.Image:
    """Decode an image file or bytes fully into RGB, turning every failure into BadImage."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if isinstance(source, (bytes, bytearray)):
                image = Image.open(io.BytesIO(source))
            else:
                image = Image.open(source)
            image.load()
            return image.convert("RGB")
    except FileNotFoundError as e:
        raise BadImage(f"{source}: no such image") from e
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        where = "image bytes" if isinstance(source, (bytes, bytearray)) else str(source)
        raise BadImage(f"{where}: cannot decode ({e})") from e


def resized_size(size: tuple[int, int], longest: int) -> tuple[int, int]:
    """(w, h) scaled so that the longer side equals `longest`, keeping the aspect ratio."""
    w, h = size
    scale = longest / max(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale))


def resize_longest(image: Image.Image, longest: int) -> Image.Image:
    new = resized_size(image.size, longest)
    if new == image.size:
        return image
    return image.resize(new, Image.Resampling.BICUBIC)


def encode_jpeg(image: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality, optimize=False, progressive=False)
    return buf.getvalue()


def scale_box(box: list[float], from_size: tuple[int, int], to_size: tuple[int, int]) -> list[float]:
    """[x0, y0, x1, y1] in `from_size` pixels -> the same region in `to_size` pixels."""
    sx = to_size[0] / from_size[0]
    sy = to_size[1] / from_size[1]
    x0, y0, x1, y1 = box
    return [x0 * sx, y0 * sy, x1 * sx, y1 * sy]


def prepare_image(source: Path | str | bytes, longest: int, quality: int) -> tuple[bytes, tuple, tuple] | str:
    """Decode (a file, bytes or base64 text), resize and re-encode one image for a shard: (jpg, orig_size, size),
    or the reason it cannot be read. A light module on purpose: `narvl shard` runs this in worker processes."""
    try:
        data = decode_base64(source) if isinstance(source, str) else source
        image = open_image(data)
        resized = resize_longest(image, longest)
        return encode_jpeg(resized, quality), image.size, resized.size
    except BadImage as e:
        return str(e)
