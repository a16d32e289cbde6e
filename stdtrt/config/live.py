"""LiveConfig: `stdtrt live`, a stream in and a stream out under the real-time rules."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from stdtrt.config.base import opt
from stdtrt.config.stylize import StylizeConfig
from stdtrt.errors import StdtrtError

LIVE_SINK_FORMATS = ("y4m", "rgb24")


@dataclass(frozen=True)
class LiveConfig:
    """`stdtrt live`: where frames come from and go to, and the real-time rules; how they are stylized is
    the StylizeConfig it holds (the same options as stylize-video)."""

    source: str = opt(
        "web",
        "where frames come from: web (the page's webcam, over WebRTC), - (a pipe on stdin: y4m, or raw rgb24 "
        "with --size), /dev/videoN (a V4L2 camera), a URL PyAV opens (rtsp://, rtmp://, srt://, udp://, "
        "http://), or a video file",
    )
    sink: str = opt(
        "web",
        "where stylized frames go: web (the page: WebRTC, MJPEG as the fallback), - (a pipe on stdout), a URL "
        "PyAV muxes (udp:// and srt:// as MPEG-TS, rtsp://, rtmp://), virtualcam (pyvirtualcam), or a file",
    )
    size: str | None = opt(None, "WxH of raw rgb24 frames on a pipe source (a y4m pipe says its own)")
    fps: float = opt(30.0, "frame rate of raw rgb24 frames on a pipe source (y4m and containers say theirs)")
    sink_format: str = opt(
        "y4m", "what a pipe sink writes: y4m, or raw rgb24 frames", choices=LIVE_SINK_FORMATS
    )
    realtime: bool = opt(
        False,
        "play a file or pipe at its own frame rate, the newest frame winning (a camera, a URL and the page's "
        "webcam always are); without it every frame is stylized, as fast as the networks go",
    )
    host: str = opt("127.0.0.1", "the page's address; any other than the loopback needs a token")
    port: int = opt(8188, "the page's port (0: any free one)")
    token: str | None = opt(
        None, "the token the page asks for [generated and printed when --host is not local]"
    )
    timeout: float = opt(10.0, "seconds a camera or URL may take to answer (open, and between frames)")
    reconnects: int = opt(5, "times a dropped URL stream is reopened, waiting 1, 2, 4 ... 8 s between tries")
    batch_latency: bool = opt(
        False, "allow --frames-per-step > 1 live: each frame then waits for B - 1 more before it goes in"
    )
    stylize: StylizeConfig = field(default_factory=StylizeConfig, metadata={"cli": False})

    def __post_init__(self) -> None:
        if self.size is not None:
            self.frame_size()
        if not self.fps > 0:
            raise StdtrtError(f"--fps must be positive, got {self.fps}")
        if not self.timeout > 0:
            raise StdtrtError(f"--timeout must be positive, got {self.timeout}")
        if self.reconnects < 0:
            raise StdtrtError(f"--reconnects must be at least 0, got {self.reconnects}")
        if not 0 <= self.port <= 65535:
            raise StdtrtError(f"--port must be in [0, 65535], got {self.port}")
        if self.token is not None and len(self.token) < 8:
            raise StdtrtError("--token must be at least 8 characters (or leave it out: one is generated)")
        if self.stylize.frames_per_step > 1 and not self.batch_latency:
            raise StdtrtError(
                f"--frames-per-step {self.stylize.frames_per_step} makes each frame wait for "
                f"{self.stylize.frames_per_step - 1} more before the networks take it: refused live; pass "
                f"--batch-latency to accept that"
            )

    def frame_size(self) -> tuple[int, int]:
        """--size as (width, height), or one line saying how to write it."""
        m = re.fullmatch(r"(\d+)x(\d+)", self.size or "")
        if not m or not int(m[1]) or not int(m[2]):
            raise StdtrtError(f"--size must be WIDTHxHEIGHT in pixels (e.g. 640x480), got {self.size!r}")
        return int(m[1]), int(m[2])

    @property
    def local(self) -> bool:
        """Whether the page is bound to the loopback only (no token needed)."""
        return self.host in ("127.0.0.1", "localhost", "::1")
