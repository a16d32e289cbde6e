"""Video in and out with PyAV: frames are streamed (never the whole video in memory), the frame rate, the
timestamps, the displayed size (the display matrix applied) and every audio and subtitle stream of the
input are kept, and the output is written to a temporary name and renamed only when complete.

    containers.py   the output containers, one row each (muxer, encoders, what each takes as it is)
    probe.py        VideoInfo: what a video is (size as displayed, orientation, rate, duration, colour)
    read.py         read_frames: upright RGB frames at the working size, converted as ffmpeg converts
    tracks.py       the input's audio and subtitle streams, copied or re-encoded beside the video
    write.py        VideoWriter and write_video
"""

from stdtrt.io.video.containers import CONTAINERS, VIDEO_SUFFIXES, container_for, live_container
from stdtrt.io.video.probe import Orientation, VideoInfo, conversion_notes, probe
from stdtrt.io.video.read import FrameSizes, read_frames
from stdtrt.io.video.write import VideoWriter, check_output, output_size, write_video

__all__ = [
    "CONTAINERS",
    "VIDEO_SUFFIXES",
    "FrameSizes",
    "Orientation",
    "VideoInfo",
    "VideoWriter",
    "check_output",
    "container_for",
    "live_container",
    "conversion_notes",
    "output_size",
    "probe",
    "read_frames",
    "write_video",
]
