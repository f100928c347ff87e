"""Inference: the artifacts a run exports and how they are loaded back without running anything a run
dir holds (`export`, `onnx_export`), `chexui predict` (`predict`), Grad-CAM and map agreement
(`explain`), and the inference benchmark (`bench`).
"""
