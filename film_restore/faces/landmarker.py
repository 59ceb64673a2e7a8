"""68-point landmarkers (iBUG 300-W order, which DMDNet's component boxes need): PFLD or insightface's 1k3d68."""
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import onnxruntime
from insightface.app.common import Face as InsightfaceFace
from insightface.model_zoo.landmark import Landmark

from film_restore.faces.onnx import CPU_PROVIDERS, bgr, session_options
from film_restore.validation import check_box, check_rgb_image


class Landmarker68(ABC):
    """68 iBUG 300-W points of the face inside a box (the order DMDNet needs).

    Use Landmarker68.load(path) to get the class that fits the model file.
    """

    @staticmethod
    def load(model_path, providers: Sequence[str] = CPU_PROVIDERS) -> "Landmarker68":
        """The landmarker for this ONNX file: insightface's 1k3d68 (192 px input) or PFLD (112 px input)."""
        model_path = Path(model_path)
        session = onnxruntime.InferenceSession(str(model_path), sess_options=session_options(), providers=list(providers))
        input_shape = session.get_inputs()[0].shape
        if input_shape[2:] == [192, 192]:
            return InsightfaceLandmarker68(model_path, session)
        if input_shape[2:] == [112, 112] and session.get_outputs()[0].shape[-1] == 136:
            return PfldLandmarker68(model_path, session)
        raise ValueError(f"{model_path} is not a known 68-point landmark model (input {input_shape}): use 1k3d68.onnx or pfld_68.onnx")

    def landmarks(self, image: np.ndarray, box) -> np.ndarray:
        """68 x 2 float32 (x, y) image pixels of the face in box (x1, y1, x2, y2) of a uint8 RGB image."""
        return self._landmarks(check_rgb_image(image), check_box(box))

    @abstractmethod
    def _landmarks(self, image: np.ndarray, box: np.ndarray) -> np.ndarray: ...


class PfldLandmarker68(Landmarker68):
    """PFLD 68-point model: a square crop of side 1.1 x max(w, h) of the box, RGB in [0, 1] at 112 x 112."""

    INPUT_SIZE = 112
    CROP_SCALE = 1.1

    def __init__(self, model_path: Path, session: onnxruntime.InferenceSession):
        self.model_path = model_path
        self._session = session
        self._input_name = session.get_inputs()[0].name

    def _landmarks(self, image: np.ndarray, box: np.ndarray) -> np.ndarray:
        centre = (box[:2] + box[2:]) / 2
        side = max(int(round(self.CROP_SCALE * (box[2:] - box[:2]).max())), 1)
        left, top = np.round(centre - side / 2).astype(int)
        patch = _crop_with_black_border(image, left, top, side)
        # Area averaging when shrinking: the crop is usually far larger than 112 px.
        interpolation = cv2.INTER_AREA if side > self.INPUT_SIZE else cv2.INTER_LINEAR
        patch = cv2.resize(patch, (self.INPUT_SIZE, self.INPUT_SIZE), interpolation=interpolation)
        blob = (patch.astype(np.float32) / 255.0).transpose(2, 0, 1)[None]
        fractions = self._session.run(None, {self._input_name: blob})[0].reshape(68, 2)
        return (fractions * side + (left, top)).astype(np.float32)


def _crop_with_black_border(image: np.ndarray, left: int, top: int, side: int) -> np.ndarray:
    height, width = image.shape[:2]
    patch = np.zeros((side, side, 3), dtype=np.uint8)
    x1, y1 = max(left, 0), max(top, 0)
    x2, y2 = min(left + side, width), min(top + side, height)
    if x2 > x1 and y2 > y1:
        patch[y1 - top:y2 - top, x1 - left:x2 - left] = image[y1:y2, x1:x2]
    return patch


class InsightfaceLandmarker68(Landmarker68):
    """insightface's 1k3d68 model (buffalo_l) through insightface's Landmark class; x, y of its 3-D points."""

    def __init__(self, model_path: Path, session: onnxruntime.InferenceSession):
        self.model_path = model_path
        self._model = Landmark(model_file=str(model_path), session=session)
        if self._model.lmk_num != 68:
            raise ValueError(f"{model_path} gives {self._model.lmk_num} points, not 68: use 1k3d68.onnx")

    def _landmarks(self, image: np.ndarray, box: np.ndarray) -> np.ndarray:
        points = self._model.get(bgr(image), InsightfaceFace(bbox=box))
        return np.asarray(points[:, :2], dtype=np.float32)
