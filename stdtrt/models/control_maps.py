"""Control maps: what a ControlNet reads of each frame. `canny` (OpenCV's edge detector, its two thresholds
as options), `depth` (a depth model through transformers, Depth Anything by default, from a folder or the
local Hugging Face cache; `tiny-depth` is a built-in random one), or maps the user made (`--control-video`,
read frame by frame beside the input). A map is an RGB uint8 frame at the working size: what every path and
graph takes (the ControlNet's own conditioning embedding reads it as [0, 1])."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from stdtrt.config import cache_root
from stdtrt.errors import StdtrtError
from stdtrt.models.hub import local_folder, quiet_transformers

DEPTH_PRESETS = ("tiny-depth",)
DEFAULT_DEPTH_MODEL = "depth-anything/Depth-Anything-V2-Small-hf"


@dataclass(frozen=True)
class MapSpec:
    """Where a run's control maps come from."""

    kind: str  # "canny", "depth" or "video"
    canny_low: int = 100
    canny_high: int = 200
    depth_model: str = DEFAULT_DEPTH_MODEL
    video: str | None = None  # --control-video

    def record(self) -> dict:
        if self.kind == "canny":
            return {"kind": "canny", "low": self.canny_low, "high": self.canny_high}
        if self.kind == "depth":
            return {"kind": "depth", "model": self.depth_model}
        return {"kind": "video"}  # the maps come with each run: nothing of them is baked in


def canny(rgb: np.ndarray, low: int, high: int) -> np.ndarray:
    """OpenCV's Canny edges of an RGB frame as a 3-channel uint8 map (what diffusers' ControlNet examples
    and lllyasviel's canny models read: white edges on black)."""
    import cv2

    edges = cv2.Canny(cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY), low, high)
    return np.repeat(edges[..., None], 3, axis=2)


class DepthMaps:
    """Depth maps of RGB frames by a transformers depth-estimation model (float32 on the CPU, or the device
    given): the frame at the model's input size and normalisation, the prediction resized back, scaled to
    0..255 per frame (near is bright), 3 channels."""

    def __init__(self, name: str, device="cpu"):
        from transformers import AutoModelForDepthEstimation

        folder = _tiny_depth() if name in DEPTH_PRESETS else local_folder(
            name, "depth model", name, "`--depth-model tiny-depth` works offline")  # fmt: skip
        try:
            with quiet_transformers():
                self.model = AutoModelForDepthEstimation.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise StdtrtError(
                f"{folder} is not a transformers depth model ({str(exc).splitlines()[0][:200]})"
            ) from None
        self.model.eval().to(device)
        self.device = torch.device(device)
        self.side = 56 if name in DEPTH_PRESETS else 518  # Depth Anything's input side (a multiple of 14)

    @torch.no_grad()
    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        import torch.nn.functional as F

        h, w = rgb.shape[:2]
        x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float() / 255
        x = F.interpolate(x, size=(self.side, self.side), mode="bicubic", align_corners=False)
        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        depth = (
            self.model(pixel_values=((x - mean) / std).to(self.device)).predicted_depth[:, None].float().cpu()
        )
        depth = F.interpolate(depth, size=(h, w), mode="bicubic", align_corners=False)[0, 0]
        lo, hi = float(depth.min()), float(depth.max())
        unit = (depth - lo) / (hi - lo) if hi > lo else torch.zeros_like(depth)
        grey = (unit * 255).round().clamp(0, 255).to(torch.uint8).numpy()
        return np.repeat(grey[..., None], 3, axis=2)


def _tiny_depth():
    """`tiny-depth`: a random Depth Anything of a 4-layer, 32-wide DINOv2 backbone (seed 0), written once."""
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

    folder = cache_root() / "tiny-depth"
    if (folder / "config.json").is_file():
        return folder
    backbone = Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                            image_size=56, patch_size=14, out_features=["stage1", "stage2", "stage3", "stage4"],
                            reshape_hidden_states=False)  # fmt: skip
    config = DepthAnythingConfig(backbone_config=backbone, neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16,
                                 head_hidden_size=8, reassemble_hidden_size=32, patch_size=14)  # fmt: skip
    with torch.random.fork_rng(devices=[]), quiet_transformers():
        torch.manual_seed(0)
        DepthAnythingForDepthEstimation(config).save_pretrained(folder)
    return folder


class ControlMaps:
    """The maps of a run's frames, in order: computed from each frame (canny, depth) or read from the
    control video (its frames at the working size, by the input's rule: io/video read_frames)."""

    def __init__(self, spec: MapSpec, width: int, height: int, device="cpu"):
        self.spec, self.size = spec, (width, height)
        self.depth = DepthMaps(spec.depth_model, device) if spec.kind == "depth" else None
        self.video = None
        if spec.kind == "video" and not spec.video:
            raise StdtrtError(
                "a ControlNet without a preprocessor reads its maps from --control-video (for an image, use "
                "--controlnet canny or depth)"
            )
        if spec.kind == "video":
            from stdtrt.io.video import probe, read_frames

            self.video = read_frames(probe(spec.video), width, height)

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """The map of the next frame (RGB uint8 at the working size, as `rgb` is)."""
        if self.spec.kind == "canny":
            return canny(rgb, self.spec.canny_low, self.spec.canny_high)
        if self.depth is not None:
            return self.depth(rgb)
        item = next(self.video, None)
        if item is None:
            raise StdtrtError(f"control video {self.spec.video} has fewer frames than the input")
        return item[0]

    def finish(self) -> None:
        """At the input's end: a control video with frames left is one line (it was made for another input)."""
        if self.video is not None and next(self.video, None) is not None:
            raise StdtrtError(f"control video {self.spec.video} has more frames than the input")


def to_unit(maps: torch.Tensor) -> torch.Tensor:
    """uint8 maps (B, H, W, 3) -> what a ControlNet reads: float (B, 3, H, W) in [0, 1]."""
    return maps.permute(0, 3, 1, 2).float() / 255
