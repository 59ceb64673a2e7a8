"""The identity recogniser (ArcFace-type): a unit-length embedding per face, compared by dot product."""
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
from insightface.model_zoo.arcface_onnx import ArcFaceONNX
from insightface.utils import face_align

from film_restore.faces.align import estimate_similarity
from film_restore.faces.onnx import bgr, load_insightface_model
from film_restore.validation import check_points, check_rgb_image


class Recogniser:
    """ArcFace-type identity embedding (insightface's ArcFaceONNX): w600k_r50 or MobileFaceNet.

    The face is aligned to insightface's 112 x 112 ArcFace 5-point template and fed as
    RGB (x - 127.5) / 127.5 (ArcFaceONNX reads the normalisation off the graph; for
    mobilefacenet_128.onnx it picks exactly the convention its publisher states, which
    the tests check). Embeddings are L2-normalised float32: compare them by dot product.
    """

    def __init__(self, model_path, providers: Sequence[str] | None = None):
        self.model_path = Path(model_path)
        self._model: ArcFaceONNX = load_insightface_model(self.model_path, ArcFaceONNX, "recognition", providers)
        self.crop_size = int(self._model.input_size[0])

    def alignment(self, keypoints) -> np.ndarray:
        """The 2 x 3 matrix that aligns a face with these 5 keypoints to the ArcFace template (the same
        least-squares similarity as insightface's norm_crop)."""
        keypoints = check_points(keypoints, 5, "keypoints")
        template = face_align.arcface_dst.astype(np.float64) * (self.crop_size / 112.0)
        return estimate_similarity(keypoints, template)

    def aligned_crop(self, image: np.ndarray, keypoints) -> np.ndarray:
        """The crop_size x crop_size RGB face the model sees, aligned to the ArcFace template (bilinear, as norm_crop)."""
        check_rgb_image(image)
        return cv2.warpAffine(image, self.alignment(keypoints), (self.crop_size, self.crop_size), borderValue=0.0)

    def embedding(self, image: np.ndarray, keypoints) -> np.ndarray:
        """Unit-length float32 embedding of the face with these 5 keypoints (image pixels)."""
        return self.aligned_embedding(self.aligned_crop(image, keypoints))

    def aligned_embedding(self, crop: np.ndarray) -> np.ndarray:
        """Unit-length float32 embedding of a face already aligned to the template (uint8 RGB, crop_size square)."""
        features = self._model.get_feat(bgr(crop))[0].astype(np.float32)
        norm = float(np.linalg.norm(features))
        if not norm > 0:
            raise ValueError(f"{self.model_path} gave a zero embedding: the model file is broken, re-download it")
        return features / norm
