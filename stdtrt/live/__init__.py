"""`stdtrt live`: the stream runner with live ends (docs/live.md).

sources.py   pipe (y4m, raw rgb24), file (--realtime: at its own timestamps), V4L2 camera, URL (PyAV)
sinks.py     pipe, file, URL (MPEG-TS over UDP/SRT, RTSP, RTMP), virtual camera
realtime.py  the newest frame wins (drops counted), capture-to-sink latency measured
page.py      the page and its server: WebRTC (aiortc) in and out, MJPEG fallback, figures, controls
feeds.py     the page's frames: the newest of each stream for its readers, its webcam in, the page out
run.py       run_live: source -> networks -> sink, settings changed between frames
"""
