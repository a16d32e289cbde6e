"""Teachers and students: loading and placement, the presets, text conditioning, LoRA."""
