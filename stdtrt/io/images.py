"""Still images in and out, and the one resize rule frames and images share."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from stdtrt.errors import StdtrtError
from stdtrt.io.atomic import atomic_path

log = logging.getLogger(__name__)

# What stdtrt reads and writes as an image (stylize-image, distill data): lower-case suffixes.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def resize(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """RGB uint8 (H, W, 3) to (height, width, 3): area averaging to shrink, bicubic to enlarge."""
    import cv2

    if rgb.shape[1] == width and rgb.shape[0] == height:
        return rgb
    shrink = width * height < rgb.shape[0] * rgb.shape[1]
    return cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)


def open_image(path: Path, what: str = "image"):
    """A still image fully decoded and turned upright (its EXIF orientation applied, as viewers show it),
    as a PIL image; one line for a missing, unreadable, truncated or over-large file."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise StdtrtError(
            f"{what} {path} does not exist" if not path.exists() else f"{what} {path} is not a file"
        )
    try:
        with Image.open(path) as im:
            im.load()  # every byte decoded now: a truncated file fails here, not midway through a run
            return ImageOps.exif_transpose(im)
    except Image.DecompressionBombError:
        raise StdtrtError(
            f"{path} has more pixels than Pillow's decompression-bomb limit ({Image.MAX_IMAGE_PIXELS}); "
            f"downscale it first"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise StdtrtError(f"{path} is not a readable {what} ({exc})") from None


def has_alpha(im) -> bool:
    return im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info)


def read_image(path: Path, what: str = "image", warn_alpha: bool = True) -> np.ndarray:
    """An image file as upright RGB uint8 (H, W, 3): fully decoded, EXIF orientation applied; an alpha
    channel is dropped (said in one line unless `warn_alpha` is off)."""
    im = open_image(path, what)
    if warn_alpha and has_alpha(im):
        log.warning("%s has an alpha channel: dropped (stdtrt stylizes RGB)", path)
    return np.asarray(im.convert("RGB"))


def write_image(path: Path, rgb: np.ndarray) -> None:
    """Write an RGB uint8 image atomically, in the format its suffix names."""
    from PIL import Image

    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(rgb).save(tmp, format=Image.registered_extensions()[path.suffix.lower()])


# -- fitting a picture into a frame of another aspect ----------------------------------------------------------
# A picture goes into a frame of other proportions whole, its aspect kept and centred between black bars
# (letterbox or pillarbox); when the proportions differ by less than ASPECT_TOLERANCE it is stretched to the
# whole frame instead (the rounding of a working size to multiples of 8 changes the aspect a little).
ASPECT_TOLERANCE = 0.02


def fit_box(src: tuple[int, int], dst: tuple[int, int]) -> tuple[int, int, int, int]:
    """Where a picture of size `src` (width, height) goes in a frame of size `dst`: (x, y, width, height)."""
    (sw, sh), (dw, dh) = src, dst
    if abs((sw / sh) / (dw / dh) - 1) <= ASPECT_TOLERANCE:
        return 0, 0, dw, dh
    scale = min(dw / sw, dh / sh)
    w, h = max(1, min(dw, round(sw * scale))), max(1, min(dh, round(sh * scale)))
    return (dw - w) // 2, (dh - h) // 2, w, h


def letterbox(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """A picture in a (height, width) frame by fit_box: resized, centred between black bars if needed."""
    x, y, w, h = fit_box((rgb.shape[1], rgb.shape[0]), (width, height))
    if (w, h) == (width, height):
        return resize(rgb, width, height)
    return place(resize(rgb, w, h), (x, y), width, height)


def place(rgb: np.ndarray, at: tuple[int, int], width: int, height: int) -> np.ndarray:
    """A picture pasted at (x, y) into a black (height, width) frame."""
    canvas = np.zeros((height, width, rgb.shape[2]), np.uint8)
    canvas[at[1] : at[1] + rgb.shape[0], at[0] : at[0] + rgb.shape[1]] = rgb
    return canvas


def unletterbox(rgb: np.ndarray, src: tuple[int, int]) -> np.ndarray:
    """The inverse of letterbox: the part of a frame a picture of size `src` was fitted into (by fit_box),
    at that size."""
    x, y, w, h = fit_box(src, (rgb.shape[1], rgb.shape[0]))
    return resize(np.ascontiguousarray(rgb[y : y + h, x : x + w]), *src)
