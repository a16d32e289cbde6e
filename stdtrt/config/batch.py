"""BatchConfig: `stdtrt stylize-batch`, many videos (or segments of long ones) over Ray workers."""

from __future__ import annotations

from dataclasses import dataclass, field

from stdtrt.config.base import opt
from stdtrt.config.stylize import StylizeConfig
from stdtrt.errors import StdtrtError


@dataclass(frozen=True)
class BatchConfig:
    """Many videos, or segments of long ones, over Ray workers (the `stylize-batch` command): how the job
    runs. What each video gets is `stylize`, the stylize-video settings, applied to every one of them."""

    stylize: StylizeConfig = field(default_factory=StylizeConfig, metadata={"cli": False})
    output: str | None = opt(
        None, "output folder: one output per input, the input's relative path kept", short="-o"
    )
    workers: int | None = opt(
        None,
        "actors to start: one per GPU (num_gpus=1) by default; on a machine without GPUs N actors sharing its "
        "cores [the GPUs, or 1 without]",
    )
    ray_address: str | None = opt(
        None, "join a running Ray cluster (auto, HOST:PORT, ray://HOST:PORT) [a local Ray for this job]"
    )
    connect_timeout: float = opt(15.0, "seconds a --ray-address may take to answer before the job gives up")
    segment_seconds: float | None = opt(
        None,
        "cut inputs longer than this into segments run on different workers and joined into one output "
        "(frames equal to one run of the whole video) [whole videos]",
    )
    max_retries: int = opt(
        2,
        "times a unit runs again after its worker died (Ray's own retries are off: they are unbounded and "
        "can run a unit twice)",
    )
    resume: bool = opt(
        False, "skip what the job record says is done (same input, same settings, output intact)"
    )

    def __post_init__(self) -> None:
        if not self.output:
            raise StdtrtError("no output folder: pass -o/--output FOLDER")
        if self.workers is not None and self.workers < 1:
            raise StdtrtError(f"--workers must be at least 1, got {self.workers}")
        if self.max_retries < 0:
            raise StdtrtError(f"--max-retries must be 0 or more, got {self.max_retries}")
        if self.segment_seconds is not None and self.segment_seconds <= 0:
            raise StdtrtError(f"--segment-seconds must be positive, got {self.segment_seconds}")
        if self.connect_timeout <= 0:
            raise StdtrtError(f"--connect-timeout must be positive, got {self.connect_timeout}")
