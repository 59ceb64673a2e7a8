"""ONNX face models, one small class per role: Detector, Landmarker68, Recogniser.

All take uint8 RGB images (film_restore's convention). insightface's model classes
expect BGR (they swap to RGB inside cv2.dnn.blobFromImage), so images are flipped to
BGR here, at the model boundary, and nowhere else.
"""
from abc import ABC, abstractmethod
from pathlib import Path
from typing import NamedTuple, Sequence

import cv2
import numpy as np
import onnxruntime
from insightface.app.common import Face as InsightfaceFace
from insightface.model_zoo import get_model
from insightface.model_zoo.arcface_onnx import ArcFaceONNX
from insightface.model_zoo.landmark import Landmark
from insightface.model_zoo.scrfd import SCRFD
from insightface.utils import face_align

from film_restore.align import estimate_similarity
from film_restore.validation import check_box, check_points, check_rgb_image

CPU_PROVIDERS = ("CPUExecutionProvider",)


def session_options() -> onnxruntime.SessionOptions:
    """ONNX Runtime options for face models: worker threads sleep between runs.

    Several small models run in turn on each frame; threads spinning after one model's
    run would take the cores from the next (measured: detection 50 -> 90 ms on 2 cores).
    """
    options = onnxruntime.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def _bgr(image: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(image[..., ::-1])


def _load_insightface_model(path: Path, expected_type: type, role: str, providers: Sequence[str]):
    model = get_model(str(path), providers=list(providers), sess_options=session_options())
    if not isinstance(model, expected_type):
        raise ValueError(f"{path} is not a {role} model (insightface reads it as {type(model).__name__}): check the models folder")
    return model


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

    def __init__(self, model_path, providers: Sequence[str] = CPU_PROVIDERS, input_size: int = 640,
                 score_threshold: float = 0.5, nms_threshold: float = 0.4):
        self.model_path = Path(model_path)
        self._model: SCRFD = _load_insightface_model(self.model_path, SCRFD, "SCRFD detector", providers)
        if not self._model.use_kps:
            raise ValueError(f"{self.model_path} is a detector without keypoints: use an SCRFD model with 5 keypoints (e.g. *_kps, det_10g, scrfd_500m)")
        self._model.nms_thresh = nms_threshold
        self.input_size = (int(input_size), int(input_size))
        self.score_threshold = float(score_threshold)

    def detect(self, image: np.ndarray) -> Detections:
        """Faces in a uint8 RGB image, best score first."""
        check_rgb_image(image)
        found, keypoints = self._model.detect(_bgr(image), input_size=self.input_size, det_thresh=self.score_threshold)
        return Detections(
            boxes=found[:, :4].astype(np.float32),
            scores=found[:, 4].astype(np.float32),
            keypoints=keypoints.reshape(-1, 5, 2).astype(np.float32),
        )


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
        points = self._model.get(_bgr(image), InsightfaceFace(bbox=box))
        return np.asarray(points[:, :2], dtype=np.float32)


class Recogniser:
    """ArcFace-type identity embedding (insightface's ArcFaceONNX): w600k_r50 or MobileFaceNet.

    The face is aligned to insightface's 112 x 112 ArcFace 5-point template and fed as
    RGB (x - 127.5) / 127.5 (ArcFaceONNX reads the normalisation off the graph; for
    mobilefacenet_128.onnx it picks exactly the convention its publisher states, which
    the tests check). Embeddings are L2-normalised float32: compare them by dot product.
    """

    def __init__(self, model_path, providers: Sequence[str] = CPU_PROVIDERS):
        self.model_path = Path(model_path)
        self._model: ArcFaceONNX = _load_insightface_model(self.model_path, ArcFaceONNX, "recognition", providers)
        self.crop_size = int(self._model.input_size[0])

    def aligned_crop(self, image: np.ndarray, keypoints) -> np.ndarray:
        """The crop_size x crop_size RGB face the model sees, aligned to the ArcFace template."""
        check_rgb_image(image)
        keypoints = check_points(keypoints, 5, "keypoints")
        # The same least-squares similarity and bilinear warp as insightface's norm_crop.
        template = face_align.arcface_dst.astype(np.float64) * (self.crop_size / 112.0)
        matrix = estimate_similarity(keypoints, template)
        return cv2.warpAffine(image, matrix, (self.crop_size, self.crop_size), borderValue=0.0)

    def embedding(self, image: np.ndarray, keypoints) -> np.ndarray:
        """Unit-length float32 embedding of the face with these 5 keypoints (image pixels)."""
        crop = self.aligned_crop(image, keypoints)
        features = self._model.get_feat(_bgr(crop))[0].astype(np.float32)
        norm = float(np.linalg.norm(features))
        if not norm > 0:
            raise ValueError(f"{self.model_path} gave a zero embedding: the model file is broken, re-download it")
        return features / norm
