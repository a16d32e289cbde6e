"""Single Trajectory Distillation: data, trajectory bank, teacher step, losses, training loop."""
