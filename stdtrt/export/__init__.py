"""`stdtrt export`: fuse the LoRA, trace the fixed-timestep graphs to ONNX, validate them against torch,
build TensorRT engines where possible, and write a self-describing bundle (see bundle.py, manifest.py)."""
