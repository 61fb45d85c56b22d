"""Export of REMN's per-frame step graphs (`remn export`): ONNX (`remn.export.onnx`)."""
from remn.export.onnx import GRAPHS, MANIFEST, ExportError, check_exportable, export_onnx, load_manifest

__all__ = ["GRAPHS", "MANIFEST", "ExportError", "check_exportable", "export_onnx", "load_manifest"]
