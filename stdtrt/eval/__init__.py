"""Measurements: `stdtrt bench` (speed against diffusers) and the warp error (`stdtrt report`)."""
