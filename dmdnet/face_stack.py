"""What dmdnet needs of a face stack (detection, 68 landmarks, identity embeddings, FFHQ
alignment), and how its command lines find one.

dmdnet finds no faces itself: `dmdnet.data.prepare` takes a FaceFinder and
`dmdnet.evaluate.evaluate` an embed function. `python -m dmdnet.data prepare` and
`python -m dmdnet evaluate` get them from the FaceStack an installed package registers
under the entry point group `dmdnet.face_stacks` (film_restore registers its own), so
this library imports no face stack. With several installed, DMDNET_FACE_STACK names the
one to use.
"""
from __future__ import annotations

import os
from importlib.metadata import entry_points
from pathlib import Path
from typing import NamedTuple, Protocol

import numpy as np

ENTRY_POINT_GROUP = "dmdnet.face_stacks"
CHOICE_VARIABLE = "DMDNET_FACE_STACK"


class FaceStackError(ValueError):
    """No usable face stack (none installed, not importable, or its models missing), as one line."""


class DetectedFace(Protocol):
    """One face found in a photo."""

    box: np.ndarray        # x1, y1, x2, y2 in image pixels
    score: float           # the detector's confidence
    keypoints: np.ndarray  # 5 x 2 (eyes, nose, mouth corners), image pixels
    embedding: np.ndarray  # unit-length identity embedding


class Alignment(NamedTuple):
    """A face warped to the FFHQ template at size x size."""

    crop: np.ndarray       # size x size x 3 uint8 RGB
    landmarks: np.ndarray  # 68 x 2, crop pixels (iBUG order)
    keypoints: np.ndarray  # the detector's 5 keypoints, crop pixels
    boxes: np.ndarray      # 4 x 4 DMDNet component boxes (dmdnet.component_boxes of the landmarks)
    enlargement: float     # crop pixels per image pixel


class FaceFinder(Protocol):
    """Faces of photos, on one set of face models."""

    models_id: str    # identifies the models, so prepared data of other models is redone
    models_name: str  # the models' name, for people
    settings: dict    # what else decides the faces found (e.g. the detector size), JSON-ready: kept with the data

    def faces_in_photo(self, path: Path) -> tuple[np.ndarray, list[DetectedFace]]:
        """(RGB image the faces are on, every face found); ValueError if the file is not a
        readable image. A photo that is itself a tight face crop may be searched inside a border."""

    def align(self, image: np.ndarray, face: DetectedFace, size: int) -> Alignment: ...

    def template(self, size: int) -> np.ndarray:
        """The 5 x 2 FFHQ template points the crop of that size is aligned on."""


class Embed(Protocol):
    def __call__(self, image: np.ndarray, keypoints: np.ndarray) -> np.ndarray:
        """Unit-length identity embedding of the face with these 5 keypoints (image pixels)."""


class FaceStack(Protocol):
    """What the `dmdnet.face_stacks` entry point gives (a module will do); models_dir None:
    the stack's default models. Both raise FaceStackError naming missing models and the fix."""

    def face_finder(self, models_dir: str | os.PathLike | None, detector_size: int) -> FaceFinder: ...

    def recogniser(self, models_dir: str | os.PathLike | None) -> Embed: ...


def installed_face_stack(purpose: str) -> FaceStack:
    """The installed face stack (the one DMDNET_FACE_STACK names when several are); purpose
    ("prepare", "evaluate") begins the FaceStackError raised when there is none."""
    needs = f"{purpose} needs a face stack (face detection, 68 landmarks, identity embeddings)"
    found = {entry.name: entry for entry in entry_points(group=ENTRY_POINT_GROUP)}
    if not found:
        raise FaceStackError(f"{needs} and none is installed (entry point group {ENTRY_POINT_GROUP}): "
                             "install one such as film_restore's (pip install film-restore)")
    chosen = os.environ.get(CHOICE_VARIABLE)
    if chosen is None and len(found) > 1:
        raise FaceStackError(f"{needs}: {len(found)} are installed ({', '.join(sorted(found))}): "
                             f"set {CHOICE_VARIABLE} to one of them")
    name = chosen if chosen is not None else next(iter(found))
    if name not in found:
        raise FaceStackError(f"{CHOICE_VARIABLE}={name} is not an installed face stack ({', '.join(sorted(found))})")
    try:
        return found[name].load()
    except ImportError as error:
        raise FaceStackError(f"{needs}: the installed one, {name}, cannot be imported ({error}): "
                             "reinstall it (pip install film-restore for film_restore's)") from error
