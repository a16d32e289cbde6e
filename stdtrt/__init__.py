"""stdtrt: Single Trajectory Distillation for fast diffusion style transfer of images and video."""

__version__ = "0.1.0"
