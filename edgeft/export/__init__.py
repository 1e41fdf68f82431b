"""Offline side: turn a pretrained model into a bundle. Needs onnx; never imported by the device runtime."""

from edgeft.export.config import ExportConfig
from edgeft.export.exporter import export_bundle

__all__ = ["ExportConfig", "export_bundle"]
