"""The face detector (SCRFD): boxes, scores and 5 keypoints of every face in an RGB image."""
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
from insightface.model_zoo.scrfd import SCRFD

from film_restore.faces.onnx import bgr, load_insightface_model
from film_restore.settings import DETECTOR_SIZE
from film_restore.validation import check_rgb_image


class Detections(NamedTuple):
    """Faces found in one image, best score first: boxes N x 4 (x1, y1, x2, y2), scores N, keypoints N x 5 x 2."""

    boxes: np.ndarray
    scores: np.ndarray
    keypoints: np.ndarray


class Detector:
    """SCRFD face detector (insightface's SCRFD class): boxes, scores and 5 keypoints.

    The image is letterboxed into input_size x input_size, so faces smaller than about
    10 px at that scale are missed. Keypoints are image-left eye, image-right eye, nose
    tip, image-left and image-right mouth corner, in image pixels.
    """

    def __init__(self, model_path, providers: Sequence[str] | None = None, input_size: int = DETECTOR_SIZE,
                 score_threshold: float = 0.5, nms_threshold: float = 0.4):
        self.model_path = Path(model_path)
        self._model: SCRFD = load_insightface_model(self.model_path, SCRFD, "SCRFD detector", providers)
        if not self._model.use_kps:
            raise ValueError(f"{self.model_path} is a detector without keypoints: use an SCRFD model with 5 keypoints (e.g. *_kps, det_10g, scrfd_500m)")
        self._model.nms_thresh = nms_threshold
        self.input_size = (int(input_size), int(input_size))
        self.score_threshold = float(score_threshold)

    def detect(self, image: np.ndarray) -> Detections:
        """Faces in a uint8 RGB image, best score first."""
        check_rgb_image(image)
        found, keypoints = self._model.detect(bgr(image), input_size=self.input_size, det_thresh=self.score_threshold)
        return Detections(
            boxes=found[:, :4].astype(np.float32),
            scores=found[:, 4].astype(np.float32),
            keypoints=keypoints.reshape(-1, 5, 2).astype(np.float32),
        )
