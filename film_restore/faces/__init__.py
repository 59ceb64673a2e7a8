"""Faces in frames: detection, 68 landmarks, identity embeddings, alignment to the FFHQ template.

    analyzer.py    FaceAnalyzer: every face of a frame with its landmarks and embedding
    detector.py, landmarker.py, recogniser.py: one small class per ONNX model role (onnx.py: shared)
    align.py       the FFHQ template, similarity transforms, warps between frame and aligned crop; align_face
    identity.py    Identifier: which actor a face or track is, by cosine similarity

The face models (insightface) load only when FaceAnalyzer is first asked for, so the alignment
(align.py) serves where no face model is installed (a GPU node's restorer).
"""
from film_restore.faces.align import align_face

__all__ = ["FaceAnalyzer", "align_face"]


def __getattr__(name: str):
    if name == "FaceAnalyzer":
        from film_restore.faces.analyzer import FaceAnalyzer

        return FaceAnalyzer
    raise AttributeError(f"module 'film_restore.faces' has no attribute {name!r}")
