"""Reading an image file (or an in-memory image) as RGB uint8: the one decoder training, stain
normalization, the image cache and prediction share, so every stage sees the same pixels.

Files are decoded by OpenCV from their bytes (PNG, JPEG, TIFF, BMP, ...). 16-bit images become 8-bit
(the high byte), grayscale and palette images RGB, and an alpha channel is dropped. Before decoding,
the header is read to refuse images larger than ``MAX_PIXELS`` (decompression bombs). ``cv2.imdecode``
refuses a truncated file, where ``cv2.imread`` returns a truncated JPEG grey-filled without an error.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from histo.data.breakhis import DataError

cv2.setNumThreads(1)  # one thread per loader worker; more only oversubscribes the cores

EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
MAX_PIXELS = 178_956_970  # Pillow's decompression-bomb limit (2 x its warning threshold), about 13,000 x 13,000;
# a larger ``max_pixels`` does not lift Pillow's own limit


class ImageReadError(DataError):
    """An image that cannot be read; ``reason`` is a short phrase for tables (skipped.csv)."""

    def __init__(self, path, reason: str):
        self.path, self.reason = str(path), reason
        super().__init__(f"Cannot read image {path}: {reason}. Replace or remove it.")


def read_rgb(path: str | Path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode an image file to RGB uint8 (H, W, 3); :class:`ImageReadError` names the file and why not."""
    path = Path(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as error:
        raise ImageReadError(path, f"the file cannot be opened ({error.strerror or error})") from None
    if data.size == 0:
        raise ImageReadError(path, "the file is empty (0 bytes)")
    _check_header(path, max_pixels)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if image is None:
        raise ImageReadError(path, "it is not an image or it is truncated (the decoder failed)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def to_rgb(image, name: str = "image") -> np.ndarray:
    """A PIL image or a numpy array (H, W), (H, W, 1|3|4), uint8 or uint16, to RGB uint8 (H, W, 3), converted
    as :func:`read_rgb` converts files (16-bit to the high byte, gray and palette to RGB, alpha dropped)."""
    if isinstance(image, Image.Image):
        if image.mode in ("I;16", "I;16B", "I;16L", "I"):
            image = np.asarray(image)
        else:
            image = np.asarray(image.convert("RGBA" if "A" in image.getbands() or image.mode == "P" else "RGB"))
    array = np.asarray(image)
    if array.dtype == np.uint16 or (array.dtype.kind in "iu" and array.dtype != np.uint8 and array.max(initial=0) > 255):
        array = (array.astype(np.uint32) >> 8).astype(np.uint8)
    if array.dtype != np.uint8:
        raise ImageReadError(name, f"expected uint8 or uint16 pixels, got {array.dtype}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4) or min(array.shape[:2]) < 1:
        raise ImageReadError(name, f"expected an (H, W), (H, W, 3) or (H, W, 4) image, got shape {array.shape}")
    return np.ascontiguousarray(array[:, :, :3])


def _check_header(path: Path, max_pixels: int) -> None:
    """Refuse an image whose header declares more than ``max_pixels`` pixels, before it is decoded."""
    try:
        with Image.open(path) as header:
            width, height = header.size
    except Image.DecompressionBombError as error:
        raise ImageReadError(path, f"it is too large ({error})") from None
    except (UnidentifiedImageError, OSError, ValueError):
        return  # not for Pillow to judge: OpenCV decides below whether it is an image
    if width * height > max_pixels:
        raise ImageReadError(path, f"it is too large ({width} x {height} pixels; the limit is {max_pixels:,})")
