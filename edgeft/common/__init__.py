"""Pieces both sides use (the exporter and the device runtime): crash-safe writes, ONNX Runtime set-up,
the paired test, the int8 probe, the memory budget. Nothing here imports edgeft.export or edgeft.runtime."""
