"""Each actor's references analysed once and their DMDNet dictionary built once, then reused.

Per actor the store keeps two files beside each other:
- `<actor>-<key>.json`: every reference with its sha256 and either its identity embedding
  or the reason it was skipped; key = (actor, face models, reference contents);
- `<actor>-<key>.dict`: the DMDNet specific dictionary of the used references;
  key = (the above, DMDNet model fingerprint).
An unchanged actor is found by its key and not rebuilt; any changed photo, face model or
checkpoint gives a new key. Nothing here is pickled.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from dmdnet import DMDNet
from dmdnet.files import file_sha256, write_json
from dmdnet.images import to_tensor
from film_restore.cast.castfile import Actor, Cast
from film_restore.faces import FaceAnalyzer, align_face
from film_restore.faces.identity import Identifier
from film_restore.records import AlignedFace, Face

# Shorter side of the detector box, in photo pixels: smaller faces make blurred references.
MIN_REFERENCE_FACE = 64
# A face larger than this fraction of the main one counts as a second person in the photo.
SECOND_FACE_FRACTION = 0.5


@dataclass(frozen=True)
class Reference:
    """One reference photo: used (with its embedding) or skipped (with the reason)."""

    path: Path
    sha256: str
    embedding: np.ndarray | None = None
    skipped: str | None = None


@dataclass(frozen=True)
class ActorReferences:
    actor: Actor
    references: tuple[Reference, ...]

    @property
    def used(self) -> list[Reference]:
        return [r for r in self.references if r.skipped is None]

    @property
    def embeddings(self) -> np.ndarray:
        return np.stack([r.embedding for r in self.used])


def read_photo(path: Path) -> np.ndarray:
    """A photo as uint8 RGB; ValueError if it cannot be read."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"{path} is not a readable image")
    return np.ascontiguousarray(image[:, :, ::-1])


def find_faces(analyzer: FaceAnalyzer, photo: np.ndarray) -> tuple[np.ndarray, list[Face], np.ndarray]:
    """(image the faces are on, faces, offset of the photo in that image).

    A face that fills the whole photo (an aligned crop) escapes the detector; such a
    photo is searched again inside a black border of half its size.
    """
    faces = analyzer.analyze(photo)
    if faces:
        return photo, faces, np.zeros(2)
    pad = max(photo.shape[:2]) // 2
    padded = cv2.copyMakeBorder(photo, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
    return padded, analyzer.analyze(padded), np.array([pad, pad], dtype=float)


def _face_side(face: Face) -> float:
    return min(face.box[2] - face.box[0], face.box[3] - face.box[1])


def reference_face(analyzer: FaceAnalyzer, photo: np.ndarray) -> tuple[np.ndarray, Face]:
    """The one sufficiently large face of a reference photo, or ValueError with the reason."""
    image, faces, _ = find_faces(analyzer, photo)
    if not faces:
        raise ValueError("no face found")
    faces = sorted(faces, key=_face_side, reverse=True)
    main = faces[0]
    if _face_side(main) < MIN_REFERENCE_FACE:
        raise ValueError(f"face only {_face_side(main):.0f} px (needs {MIN_REFERENCE_FACE})")
    others = [f for f in faces[1:] if _face_side(f) >= SECOND_FACE_FRACTION * _face_side(main)]
    if others:
        raise ValueError(f"{len(others) + 1} faces of similar size: crop the photo to the actor")
    return image, main


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "actor"


class CastStore:
    """Analysed references and dictionaries of a cast's actors, in a folder."""

    def __init__(self, folder, analyzer: FaceAnalyzer, face_models_id: str):
        self.folder = Path(folder)
        self.analyzer = analyzer
        self.face_models_id = face_models_id
        # References analysed in this run (photo, face) by content hash: aligned at the model's size when a dictionary is built.
        self._faces: dict[str, tuple[np.ndarray, Face]] = {}
        # Each actor's references are hashed and looked up once per store.
        self._analysed: dict[Actor, ActorReferences] = {}

    @staticmethod
    def default_folder(cast: Cast) -> Path:
        return cast.path.parent / f"{cast.path.stem}.store"

    def _key(self, actor: Actor, hashes: list[str], *extra: str) -> str:
        digest = hashlib.sha256(json.dumps([actor.name, self.face_models_id, sorted(hashes), *extra]).encode())
        return f"{_slug(actor.name)}-{digest.hexdigest()[:16]}"

    def references(self, actor: Actor) -> ActorReferences:
        """The actor's analysed references, from the store or analysed now and stored."""
        if actor not in self._analysed:
            self._analysed[actor] = self._references(actor)
        return self._analysed[actor]

    def _references(self, actor: Actor) -> ActorReferences:
        hashes = [file_sha256(path) for path in actor.references]
        record = self.folder / f"{self._key(actor, hashes)}.json"
        if record.is_file():
            return self._read_record(actor, record)
        outcomes = []
        for path, sha256 in zip(actor.references, hashes):
            try:
                image, face = reference_face(self.analyzer, read_photo(path))
                self._faces[sha256] = image, face
                outcomes.append(Reference(path, sha256, embedding=face.embedding))
            except ValueError as reason:
                outcomes.append(Reference(path, sha256, skipped=str(reason)))
        analysed = ActorReferences(actor, tuple(outcomes))
        self._write_record(analysed, record)
        return analysed

    def dictionary(self, analysed: ActorReferences, model: DMDNet) -> tuple[Path, bool]:
        """(the stored file of the actor's DMDNet dictionary, whether it was built now rather than found)."""
        used = analysed.used
        if not used:
            raise ValueError(f"{analysed.actor.name} has no usable reference photo: {_skip_summary(analysed)}")
        hashes = [r.sha256 for r in used]
        path = self.folder / f"{self._key(analysed.actor, hashes, model.fingerprint)}.dict"
        if path.is_file():
            return path, False
        aligned = [self._align(r, model.image_size) for r in used]
        device = next(model.parameters()).device
        with torch.inference_mode():
            dictionary = model.build_dictionary(
                to_tensor([a.crop for a in aligned]).to(device),
                torch.from_numpy(np.stack([a.boxes for a in aligned])).to(device),
                reference_hashes=hashes,
            )
        self.folder.mkdir(parents=True, exist_ok=True)
        dictionary.save(path)
        return path, True

    def _align(self, reference: Reference, size: int) -> AlignedFace:
        """The reference aligned at the model's face size (analysed again if this run has not)."""
        if reference.sha256 not in self._faces:
            self._faces[reference.sha256] = reference_face(self.analyzer, read_photo(reference.path))
        image, face = self._faces[reference.sha256]
        return align_face(image, face, size)

    def identifier(self, cast: Cast) -> Identifier:
        """Identifier over the cast's actors; an actor without a usable reference is an error."""
        actors = {}
        for actor in cast.actors:
            analysed = self.references(actor)
            if not analysed.used:
                raise ValueError(f"{actor.name} has no usable reference photo: {_skip_summary(analysed)}")
            actors[actor.name] = analysed.embeddings
        return Identifier(actors, cast.match_threshold)

    def _write_record(self, analysed: ActorReferences, path: Path) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        record = {
            "actor": analysed.actor.name,
            "face_models": self.face_models_id,
            "references": [
                {
                    "path": str(r.path),
                    "sha256": r.sha256,
                    "embedding": None if r.embedding is None else [float(x) for x in r.embedding],
                    "skipped": r.skipped,
                }
                for r in analysed.references
            ],
        }
        write_json(path, record)

    def _read_record(self, actor: Actor, path: Path) -> ActorReferences:
        try:
            record = json.loads(path.read_text())
            references = tuple(
                Reference(
                    Path(r["path"]),
                    r["sha256"],
                    None if r["embedding"] is None else np.array(r["embedding"], dtype=np.float32),
                    r["skipped"],
                )
                for r in record["references"]
            )
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{path} is damaged ({error}): delete it and build the cast again") from error
        return ActorReferences(actor, references)


def _skip_summary(analysed: ActorReferences) -> str:
    return "; ".join(f"{r.path.name}: {r.skipped}" for r in analysed.references if r.skipped)
