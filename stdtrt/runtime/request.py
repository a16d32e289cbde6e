"""The request a stylize run makes of a bundle: which bundle (--bundle, the default folder, or none for
--model), and whether the options asked for agree with what it bakes in (an option left unset takes the
bundle's value; one that contradicts it is refused in one line). Loads nothing but the manifest."""

from __future__ import annotations

from pathlib import Path

from stdtrt.bundle.manifest import read_bundle
from stdtrt.bundle.model import source_of
from stdtrt.bundle.variant import variant_of
from stdtrt.config import DEFAULT_BUNDLE, StylizeConfig, defaults
from stdtrt.errors import StdtrtError
from stdtrt.io.hashing import file_hash
from stdtrt.models.control_maps import MapSpec


def resolve_bundle(cfg: StylizeConfig):
    """The bundle to run: --bundle, else none when --model names the torch path, else the default folder;
    one exported with --no-validate only with --trust-unvalidated."""
    bundle = _find_bundle(cfg)
    if bundle is not None and not bundle.validated and not cfg.trust_unvalidated:
        raise StdtrtError(
            f"bundle {bundle.path} was exported with --no-validate: its graphs were never compared with torch. "
            f"Validate it once with `stdtrt validate {bundle.path}` (it keeps the graphs and records the table), "
            f"or pass --trust-unvalidated to run it as it is"
        )
    return bundle


def _find_bundle(cfg: StylizeConfig):
    if cfg.bundle:
        return read_bundle(cfg.bundle, full=cfg.verify)
    if cfg.model:
        if cfg.backend in ("tensorrt", "onnxruntime"):
            raise StdtrtError(
                f"backend {cfg.backend} runs an exported bundle: make one with `stdtrt export --model {cfg.model} "
                f"...` and pass --bundle, or drop --backend to run --model on the torch path"
            )
        return None
    if not (Path(DEFAULT_BUNDLE) / "manifest.json").is_file():
        raise StdtrtError(
            f"no bundle given and no default bundle ./{DEFAULT_BUNDLE}: make one with `stdtrt export --model "
            f"PATH_OR_ID --prompt ... --out {DEFAULT_BUNDLE}`, or pass --model to run the torch path without "
            f"a bundle (--model tiny-sd works offline)"
        )
    return read_bundle(DEFAULT_BUNDLE, full=cfg.verify)


def check_request(cfg: StylizeConfig, bundle) -> None:
    """Refuse options that contradict the bundle: what it bakes in cannot change at run time. An option
    the user did not set (not in cfg.explicit, and at its default) takes the bundle's value."""

    m, d = bundle.manifest, defaults(StylizeConfig)
    if cfg.gamma > 0:
        raise StdtrtError(
            "a bundle runs the deterministic stream form (gamma 0); use --model for --gamma > 0"
        )
    if cfg.model and source_of(cfg.model) != m.model["source"]:
        _refuse(bundle, "model", m.model["name"], cfg.model)
    lora = m.lora
    if cfg.lora and (not lora or file_hash(cfg.lora) != lora["hash"]):
        _refuse(bundle, "LoRA", lora and lora["path"], cfg.lora)
    style = m.style
    if cfg.style_image and not Path(cfg.style_image).is_file():
        raise StdtrtError(f"style image {cfg.style_image} does not exist")
    if cfg.style_image and (not style or file_hash(cfg.style_image) != style["image_sha256"]):
        _refuse(bundle, "style image", style and style["image"], cfg.style_image)
    control = m.control
    if cfg.controlnet and not control:
        _refuse(bundle, "ControlNet", None, cfg.controlnet)
    if control:
        maps = control["maps"]
        baked_controlnet = maps["kind"] if maps["kind"] != "video" else control["controlnet"]
        asked = {"controlnet": baked_controlnet, "control_scale": control["scale"],
                 "controlnet_model": control["controlnet"] if maps["kind"] != "video" else None,
                 "canny_low": maps.get("low", d["canny_low"]), "canny_high": maps.get("high", d["canny_high"]),
                 "depth_model": maps.get("model", d["depth_model"])}  # fmt: skip
        for option, value in asked.items():
            mine = getattr(cfg, option)
            if (option in cfg.explicit or mine != d[option]) and mine is not None and mine != value:
                _refuse(bundle, option.replace("_", " "), value, mine)
    motion = bundle.motion
    if cfg.motion_adapter and (not motion or source_of(cfg.motion_adapter) != motion["source"]):
        _refuse(bundle, "motion adapter", motion and motion["adapter"], cfg.motion_adapter)
    baked = {
        "style_scale": style["scale"] if style else d["style_scale"],
        "style_blocks": style["blocks"] if style else d["style_blocks"],
        "ip_adapter": style["adapter"] if style else d["ip_adapter"],
        "prompt": m.prompt,
        "negative_prompt": m.negative_prompt,
        "strength": m.schedule["eta"],
        "nfe": bundle.nfe,
        "guidance": m.guidance,
        "width": bundle.width,
        "height": bundle.height,
        "precision": m.precision,
        "vae": m.vae["spec"],
        "frames_per_step": d["frames_per_step"],
        "window": d["window"],
        **variant_of(bundle).options(),
        "cache_frames": bundle.cache["frames"] if bundle.cache else 0,
        "cache_interval": bundle.cache["interval"] if bundle.cache else d["cache_interval"],
        "feature_fusion": bundle.cache["fusion"] if bundle.cache else d["feature_fusion"],
    }
    for option, value in baked.items():
        asked = getattr(cfg, option)
        given = option in cfg.explicit or asked != d[option]
        if given and asked != value and not (option == "precision" and asked == "auto"):
            _refuse(bundle, option.replace("_", " "), value, asked)


def _refuse(bundle, option: str, baked, asked) -> None:
    raise StdtrtError(
        f"bundle {bundle.path} was exported for {option} {baked!r}, not {asked!r}: export a bundle for it "
        f"(`stdtrt export`), or leave the option out to use the bundle's"
    )


def bundle_map_spec(bundle, cfg: StylizeConfig):
    """Where a ControlNet bundle's maps come from at run time: its baked preprocessor and settings, or (one
    exported for a ControlNet without a preprocessor) --control-video; None without a ControlNet."""
    control = bundle.manifest.control
    if not control:
        return None
    maps = control["maps"]
    if maps["kind"] == "video":
        if not cfg.control_video:
            raise StdtrtError(
                f"bundle {bundle.path} reads its control maps from a video: pass --control-video"
            )
        return MapSpec("video", video=cfg.control_video)
    return MapSpec(
        maps["kind"], maps.get("low", 100), maps.get("high", 200), maps.get("model", cfg.depth_model)
    )
