"""FaceAnalyzer: detection, 68 landmarks and identity of every face in a frame (align_face, from align.py, for DMDNet)."""
import os
from typing import Sequence

import numpy as np

from film_restore.faces.align import TEMPLATE_SIZE, AlignmentTransform, alignment_transform
from film_restore.faces.detector import Detector
from film_restore.faces.landmarker import Landmarker68
from film_restore.faces.recogniser import Recogniser
from film_restore.models import find_pack
from film_restore.records import Face
from film_restore.settings import DETECTOR_SIZE
from film_restore.validation import check_box, check_rgb_image


class FaceAnalyzer:
    """Finds faces in uint8 RGB frames: box, 5 keypoints, 68 landmarks and identity embedding of each.

    Landmarks are found in the aligned template's frame, where every face is upright and of
    the same size, with the detector box mapped into it as the landmarker's box: as accurate
    as a second detection on the aligned crop (tests/film_restore/faces check it on the
    labelled DMDNet test set), without its cost; the landmarker's input is warped from the
    frame in one step, the aligned crop itself is never made.
    """

    def __init__(self, detector: Detector, landmarker: Landmarker68, recogniser: Recogniser):
        self.detector = detector
        self.landmarker = landmarker
        self.recogniser = recogniser

    @classmethod
    def from_models_dir(cls, models_dir: str | os.PathLike | None = None,
                        providers: Sequence[str] | None = None, detector_size: int = DETECTOR_SIZE) -> "FaceAnalyzer":
        """An analyzer on the model pack in models_dir (else $FILM_RESTORE_MODELS, else buffalo_l from the cache, fetched on first use).

        providers: onnxruntime's, best first; default CUDA where the installed build has it, then the CPU."""
        pack = find_pack(models_dir)
        return cls(
            Detector(pack.detector, providers, input_size=detector_size),
            Landmarker68.load(pack.landmarker, providers),
            Recogniser(pack.recogniser, providers),
        )

    def analyze(self, frame: np.ndarray) -> list[Face]:
        """Every face in the frame, best detector score first."""
        check_rgb_image(frame, "frame")
        detections = self.detector.detect(frame)
        return [
            Face(box=box, score=score, keypoints=keypoints,
                 landmarks=self.landmarks(frame, box, keypoints),
                 embedding=self.recogniser.embedding(frame, keypoints))
            for box, score, keypoints in zip(detections.boxes, detections.scores, detections.keypoints)
        ]

    def landmarks(self, frame: np.ndarray, box, keypoints) -> np.ndarray:
        """68 x 2 float32 landmarks (frame pixels) of the face with this detector box and these keypoints."""
        check_rgb_image(frame, "frame")
        box = check_box(box)
        transform = alignment_transform(keypoints, TEMPLATE_SIZE)
        return self.landmarker.landmarks(frame, _box_in_crop(box, transform), transform)


def _box_in_crop(box: np.ndarray, transform: AlignmentTransform) -> np.ndarray:
    # Centre mapped and size scaled, rather than the hull of the rotated corners, so a
    # tilted face keeps the box size the landmarker was trained with.
    centre = transform.to_crop(((box[:2] + box[2:]) / 2)[None])[0]
    half = (box[2:] - box[:2]) / 2 * transform.scale
    return np.concatenate([centre - half, centre + half])

