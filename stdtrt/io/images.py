"""Still images in and out, and the one resize rule frames and images share."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stdtrt.errors import StdtrtError
from stdtrt.io.atomic import atomic_path

# What stdtrt reads and writes as an image (stylize-image, distill data): lower-case suffixes.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def resize(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """RGB uint8 (H, W, 3) to (height, width, 3): area averaging to shrink, bicubic to enlarge."""
    import cv2

    if rgb.shape[1] == width and rgb.shape[0] == height:
        return rgb
    shrink = width * height < rgb.shape[0] * rgb.shape[1]
    return cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)


def read_image(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.exists():
        raise StdtrtError(f"input image {path} does not exist")
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except Image.DecompressionBombError:
        raise StdtrtError(
            f"{path} has more pixels than Pillow's decompression-bomb limit ({Image.MAX_IMAGE_PIXELS}); "
            f"downscale it first"
        ) from None
    except (UnidentifiedImageError, OSError) as exc:
        raise StdtrtError(f"{path} is not a readable image ({exc})") from None


def write_image(path: Path, rgb: np.ndarray) -> None:
    """Write an RGB uint8 image atomically, in the format its suffix names."""
    from PIL import Image

    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(rgb).save(tmp, format=Image.registered_extensions()[path.suffix.lower()])
