"""film_restore's face stack for dmdnet's training data and evaluation (dmdnet.face_stack).

Registered as the `dmdnet.face_stacks` entry point `film_restore` (pyproject.toml): this
module is the FaceStack that `python -m dmdnet.data prepare` and `python -m dmdnet
evaluate` use; tests and scripts pass face_finder(...) or recogniser(...) to
dmdnet.data.prepare and dmdnet.evaluate.evaluate directly.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from dmdnet.face_stack import Alignment, FaceStackError
from film_restore.cast.store import find_faces, read_photo
from film_restore.models import pack_id
from film_restore.faces import FaceAnalyzer, align_face
from film_restore.faces.align import ffhq_template
from film_restore.faces.recogniser import Recogniser
from film_restore.models import ModelsError, find_pack
from film_restore.records import Face

ModelsDir = str | os.PathLike | None


@contextmanager
def _models_checked():
    """A models folder that cannot be used, as the error dmdnet reports in one line."""
    try:
        yield
    except ModelsError as error:
        raise FaceStackError(str(error)) from error


class PhotoFaces:
    """dmdnet's FaceFinder on a model pack: FaceAnalyzer's faces, find_faces' border search
    for tight crops, align_face's FFHQ crops."""

    def __init__(self, models_dir: ModelsDir, detector_size: int):
        with _models_checked():
            pack = find_pack(models_dir)
            self.analyzer = FaceAnalyzer.from_models_dir(pack.directory, detector_size=detector_size)
        self.models_id = pack_id(pack)
        self.models_name = pack.name
        self.settings = {"detector_size": detector_size}

    def faces_in_photo(self, path: Path) -> tuple[np.ndarray, list[Face]]:
        image, faces, _ = find_faces(self.analyzer, read_photo(path))
        return image, faces

    def align(self, image: np.ndarray, face: Face, size: int) -> Alignment:
        aligned = align_face(image, face, size)
        return Alignment(aligned.crop, aligned.landmarks, aligned.transform.to_crop(face.keypoints), aligned.boxes,
                         aligned.transform.scale)

    def template(self, size: int) -> np.ndarray:
        return ffhq_template(size)


def face_finder(models_dir: ModelsDir, detector_size: int) -> PhotoFaces:
    return PhotoFaces(models_dir, detector_size)


def recogniser(models_dir: ModelsDir):
    """embed(image, keypoints) -> the pack recogniser's unit embedding."""
    with _models_checked():
        return Recogniser(find_pack(models_dir).recogniser).embedding
