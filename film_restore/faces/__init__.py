"""Faces in frames: detection, 68 landmarks, identity embeddings, alignment to the FFHQ template.

    analyzer.py    FaceAnalyzer: every face of a frame with its landmarks and embedding; align_face
    detector.py, landmarker.py, recogniser.py: one small class per ONNX model role (onnx.py: shared)
    align.py       the FFHQ template, similarity transforms, warps between frame and aligned crop
    identity.py    Identifier: which actor a face or track is, by cosine similarity
"""
from film_restore.faces.analyzer import FaceAnalyzer, align_face

__all__ = ["FaceAnalyzer", "align_face"]
