"""68-point landmarkers (iBUG 300-W order, which DMDNet's component boxes need): PFLD or insightface's 1k3d68.

Each model sees a square input warped from the image around the face's box. The warp is
one step from the frame, however the box was found (in the frame, or in an aligned crop of
it): a large face is first shrunk by area averaging (align.warp_to_crop), never resampled
twice.
"""
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import onnxruntime
from insightface.model_zoo.landmark import Landmark

from film_restore.faces.align import AlignmentTransform, warp_to_crop
from film_restore.faces.onnx import session_options, session_providers
from film_restore.validation import check_box, check_rgb_image


class Landmarker68(ABC):
    """68 iBUG 300-W points of the face inside a box (the order DMDNet needs).

    Use Landmarker68.load(path) to get the class that fits the model file. A class says
    where its input comes from (input_matrix) and reads the points off its input (points).
    """

    input_size: int

    @staticmethod
    def load(model_path, providers: Sequence[str] | None = None) -> "Landmarker68":
        """The landmarker for this ONNX file: insightface's 1k3d68 (192 px input) or PFLD (112 px input).

        providers: onnxruntime's, best first (default: onnx.preferred_providers())."""
        model_path = Path(model_path)
        session = onnxruntime.InferenceSession(str(model_path), sess_options=session_options(),
                                               providers=session_providers(providers))
        input_shape = session.get_inputs()[0].shape
        if input_shape[2:] == [192, 192]:
            return InsightfaceLandmarker68(model_path, session)
        if input_shape[2:] == [112, 112] and session.get_outputs()[0].shape[-1] == 136:
            return PfldLandmarker68(model_path, session)
        raise ValueError(f"{model_path} is not a known 68-point landmark model (input {input_shape}): use 1k3d68.onnx or pfld_68.onnx")

    def landmarks(self, image: np.ndarray, box, alignment: AlignmentTransform | None = None) -> np.ndarray:
        """68 x 2 float32 (x, y) image pixels of the face in box (x1, y1, x2, y2) of a uint8 RGB image.

        With alignment (image -> an aligned crop of it), box is in that crop's pixels: the
        model's input is warped from the image through the alignment, without making the crop.
        """
        check_rgb_image(image)
        to_input = self.input_matrix(check_box(box))
        if alignment is not None:
            to_input = to_input @ np.vstack([alignment.matrix, (0, 0, 1)])
        warp = AlignmentTransform(to_input, self.input_size)
        # Linear is enough: the input is small, and warp_to_crop shrinks large faces by area first.
        patch = warp_to_crop(image, warp, cv2.INTER_LINEAR)
        return warp.to_frame(self.points(patch)).astype(np.float32)

    @abstractmethod
    def input_matrix(self, box: np.ndarray) -> np.ndarray:
        """2 x 3 matrix from image pixels to the model's input pixels for the face in box."""

    @abstractmethod
    def points(self, patch: np.ndarray) -> np.ndarray:
        """68 x 2 points, in input pixels, of the face in an input_size x input_size uint8 RGB patch."""


def _centred_scale(box: np.ndarray, scale: float, centre_in_input: float) -> np.ndarray:
    centre = (box[:2] + box[2:]) / 2
    return np.array([[scale, 0, centre_in_input - scale * centre[0]], [0, scale, centre_in_input - scale * centre[1]]])


class PfldLandmarker68(Landmarker68):
    """PFLD 68-point model: the square of side 1.1 x max(w, h) centred on the box, RGB in [0, 1] at 112 x 112."""

    input_size = 112
    CROP_SCALE = 1.1

    def __init__(self, model_path: Path, session: onnxruntime.InferenceSession):
        self.model_path = model_path
        self._session = session
        self._input_name = session.get_inputs()[0].name

    def input_matrix(self, box: np.ndarray) -> np.ndarray:
        side = self.CROP_SCALE * float((box[2:] - box[:2]).max())
        # Pixel centres: the square's edges land on the input's edges (-0.5 and size - 0.5).
        return _centred_scale(box, self.input_size / side, self.input_size / 2 - 0.5)

    def points(self, patch: np.ndarray) -> np.ndarray:
        blob = (patch.astype(np.float32) / 255.0).transpose(2, 0, 1)[None]
        fractions = self._session.run(None, {self._input_name: blob})[0].reshape(68, 2)
        # Fractions of the input's extent, from its left (top) edge.
        return fractions * self.input_size - 0.5


class InsightfaceLandmarker68(Landmarker68):
    """insightface's 1k3d68 model (buffalo_l): x, y of its 3-D points, with insightface's own crop and scaling.

    The crop (side 1.5 x max(w, h), centred on the box) and the input's normalisation are
    insightface's Landmark.get, read off the model by insightface's Landmark class.
    """

    input_size = 192
    CROP_SCALE = 1.5

    def __init__(self, model_path: Path, session: onnxruntime.InferenceSession):
        self.model_path = model_path
        self._model = Landmark(model_file=str(model_path), session=session)
        if self._model.lmk_num != 68:
            raise ValueError(f"{model_path} gives {self._model.lmk_num} points, not 68: use 1k3d68.onnx")

    def input_matrix(self, box: np.ndarray) -> np.ndarray:
        side = self.CROP_SCALE * float((box[2:] - box[:2]).max())
        return _centred_scale(box, self.input_size / side, self.input_size / 2)

    def points(self, patch: np.ndarray) -> np.ndarray:
        model = self._model
        # The patch is RGB already, which is what insightface's swapRB makes of its BGR input.
        blob = cv2.dnn.blobFromImage(patch, 1.0 / model.input_std, (self.input_size, self.input_size),
                                     (model.input_mean,) * 3, swapRB=False)
        prediction = model.session.run(model.output_names, {model.input_name: blob})[0][0]
        prediction = prediction.reshape(-1, 3 if prediction.shape[0] >= 3000 else 2)[-68:, :2]
        return (prediction + 1) * (self.input_size // 2)
