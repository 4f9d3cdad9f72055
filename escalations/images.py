"""An uploaded frame, checked before anything is stored: JPEG or PNG only, bounded in pixels, fully decodable.

Django-free. The size is read from the header (``Image.open`` reads no pixel
data) and checked before ``load()`` decodes anything, so a small file that
claims a huge canvas (a decompression bomb) costs nothing; ``load()`` then
decodes every pixel, so a truncated or corrupt file is refused here rather
than stored and found broken by the cloud worker.
"""

from __future__ import annotations

import hashlib
import io
import logging
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from core.errors import ServiceError

log = logging.getLogger(__name__)

FORMATS = {"JPEG": ("image/jpeg", "jpg"), "PNG": ("image/png", "png")}


@dataclass(frozen=True)
class CheckedImage:
    data: bytes
    content_type: str
    extension: str
    width: int
    height: int
    sha256: str


def check(data: bytes, *, max_side: int) -> CheckedImage:
    """``data`` as a JPEG or PNG of at most ``max_side`` pixels a side, or a ``ServiceError``."""
    if not data:
        raise _bad("The frame is empty.")
    try:
        with warnings.catch_warnings():
            # Pillow warns, then refuses, past its own pixel limit; ours is far lower and checked below.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=list(FORMATS))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _too_large(f"The frame is larger than {max_side}x{max_side} pixels.") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise ServiceError(
            "unsupported_image", "The frame is not a JPEG or PNG image.", 415, fields={"frame": ["Not JPEG or PNG."]}
        ) from None
    with image:
        width, height = image.size
        if width < 1 or height < 1 or width > max_side or height > max_side:
            raise _too_large(f"The frame is {width}x{height} pixels; the limit is {max_side}x{max_side}.")
        fmt = image.format or ""
        try:
            image.load()
        # Pillow's decoders raise many types on a hostile file (OSError for a truncated one, zlib and
        # struct errors, ValueError, ...): each means the same to the device, a frame that cannot be read.
        except Exception as exc:
            log.info("escalated frame refused", extra={"reason": "undecodable", "error": str(exc)[:200]})
            raise _bad(f"The frame cannot be decoded ({type(exc).__name__}): it is truncated or corrupt.") from None
    content_type, extension = FORMATS[fmt]
    return CheckedImage(data, content_type, extension, width, height, hashlib.sha256(data).hexdigest())


def _bad(message: str) -> ServiceError:
    return ServiceError("bad_image", message, 400, fields={"frame": [message]})


def _too_large(message: str) -> ServiceError:
    return ServiceError("image_too_large", message, 413, fields={"frame": [message]})
