"""Image decoding under a pixel limit, re-encoding and thumbnails (Pillow).

Runs on the attachment worker pool, never on the reactor thread. The header
is read first and the pixel count checked before any pixel is decoded, so
a decompression bomb costs a few bytes of reading. The image is then
decoded whole and written again in its own format from the pixels alone:
EXIF (with GPS), XMP, comments, ICC profiles and anything appended to the
file (a ZIP behind a PNG) are not carried over. JPEG orientation is applied
to the pixels before the EXIF goes.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import IO, Any

from PIL import Image, ImageOps, ImageSequence

from supportchat.attachments.models import AttachmentError

PIL_FORMATS = {"image/jpeg": "JPEG", "image/png": "PNG", "image/gif": "GIF", "image/webp": "WEBP"}
# Dropped from every image before it is written again.
METADATA_KEYS = ("exif", "xmp", "XML:com.adobe.xmp", "comment", "icc_profile", "photoshop", "dpi", "jfif",
                 "jfif_version", "jfif_unit", "jfif_density", "adobe", "adobe_transform", "progressive",
                 "progression", "text", "zTXt", "iTXt", "tEXt")


@dataclass(frozen=True)
class Processed:
    width: int
    height: int
    thumb_type: str


def _corrupt() -> AttachmentError:
    return AttachmentError(422, "corrupt_image", "the image could not be decoded")


def _too_many(width: int, height: int, max_pixels: int) -> AttachmentError:
    return AttachmentError(422, "too_many_pixels",
                           f"the image is {width} x {height}; at most {max_pixels} pixels are accepted")


def _strip(im: Image.Image) -> None:
    for key in METADATA_KEYS:
        im.info.pop(key, None)


def reencode(src: str, content_type: str, out: IO[bytes], thumb: IO[bytes], max_pixels: int, max_frames: int,
             thumbnail_size: int) -> Processed:
    """Decode ``src`` (a file whose bytes sniffed as ``content_type``),
    write it again to ``out`` and a thumbnail (at most ``thumbnail_size``
    pixels a side; PNG when it has transparency, JPEG otherwise) to
    ``thumb``. AttachmentError 422 for a corrupt image or one over
    ``max_pixels`` (or ``max_frames``)."""
    fmt = PIL_FORMATS[content_type]
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im = Image.open(src, formats=[fmt])
        except Image.DecompressionBombError:
            raise AttachmentError(422, "too_many_pixels", f"at most {max_pixels} pixels are accepted") from None
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombWarning):
            raise _corrupt() from None
        with im:
            width, height = im.size
            if width <= 0 or height <= 0:
                raise _corrupt()
            if width * height > max_pixels:
                raise _too_many(width, height, max_pixels)
            frames = int(getattr(im, "n_frames", 1) or 1)
            if frames > max_frames:
                raise AttachmentError(422, "too_many_frames",
                                      f"the image has {frames} frames; at most {max_frames} are accepted")
            try:
                return _write(im, fmt, frames, out, thumb, thumbnail_size)
            except AttachmentError:
                raise
            except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombWarning):
                raise _corrupt() from None


def _write(im: Image.Image, fmt: str, frames: int, out: IO[bytes], thumb: IO[bytes], size: int) -> Processed:
    im.load()
    kwargs: dict[str, Any] = {}
    if frames > 1:
        # Animated GIF or WebP: every frame decoded, written again.
        images = []
        durations = []
        for frame in ImageSequence.Iterator(im):
            frame.load()
            durations.append(int(frame.info.get("duration", 100) or 100))
            images.append(frame.convert("RGBA"))
        first = images[0]
        kwargs.update(save_all=True, append_images=images[1:], duration=durations, loop=int(im.info.get("loop", 0)))
        if fmt == "GIF":
            kwargs["disposal"] = 2
        clean = first
    else:
        clean = ImageOps.exif_transpose(im) if fmt == "JPEG" else im.copy()
        if clean is None:  # pragma: no cover - exif_transpose returns an image unless in_place
            clean = im.copy()
    _strip(clean)
    if fmt == "JPEG":
        if clean.mode not in ("RGB", "L", "CMYK"):
            clean = clean.convert("RGB")
        clean.save(out, "JPEG", quality=90)
    elif fmt == "WEBP":
        clean.save(out, "WEBP", quality=90, **kwargs)
    else:
        clean.save(out, fmt, **kwargs)
    preview = clean.copy()
    has_alpha = preview.mode in ("RGBA", "LA", "PA") or (preview.mode == "P" and "transparency" in preview.info)
    preview = preview.convert("RGBA" if has_alpha else "RGB")
    preview.thumbnail((size, size))
    _strip(preview)
    if has_alpha:
        preview.save(thumb, "PNG")
        thumb_type = "image/png"
    else:
        preview.save(thumb, "JPEG", quality=85)
        thumb_type = "image/jpeg"
    width, height = clean.size
    return Processed(width, height, thumb_type)
