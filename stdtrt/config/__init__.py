"""Frozen, validated configurations: the only home of defaults (the CLI makes its options from these
fields, their help and choices). One module per command, and two they share:

    base.py     the device parser, the size and strength rules, `opt`, defaults, to_dict
    parts.py    what a style image, a video student, a cache and a ControlNet add (options and checks)
    stylize.py  StylizeConfig   batch.py  BatchConfig   live.py  LiveConfig
    distill.py  DistillConfig   export.py  ExportConfig   bench.py  BenchConfig

Nothing here imports torch, so `stdtrt --help` stays fast.
"""

from stdtrt.config.base import (
    BACKENDS,
    DEFAULT_BUNDLE,
    DISTILL_MODES,
    PRECISIONS,
    cache_root,
    defaults,
    parse_device,
    round_size,
    to_dict,
)
from stdtrt.config.batch import BatchConfig
from stdtrt.config.bench import BenchConfig
from stdtrt.config.distill import DistillConfig
from stdtrt.config.export import ExportConfig
from stdtrt.config.live import LiveConfig
from stdtrt.config.parts import (
    NOISE_RULES,
    PREPROCESSORS,
    STYLE_BLOCKS,
    check_cache_options,
    check_style_scale,
    check_window,
    resolve_overlap,
    resolve_window,
)
from stdtrt.config.stylize import StylizeConfig

__all__ = [
    "BACKENDS",
    "DEFAULT_BUNDLE",
    "DISTILL_MODES",
    "NOISE_RULES",
    "PRECISIONS",
    "PREPROCESSORS",
    "STYLE_BLOCKS",
    "BatchConfig",
    "BenchConfig",
    "DistillConfig",
    "ExportConfig",
    "LiveConfig",
    "StylizeConfig",
    "cache_root",
    "check_cache_options",
    "check_style_scale",
    "check_window",
    "defaults",
    "parse_device",
    "resolve_overlap",
    "resolve_window",
    "round_size",
    "to_dict",
]
