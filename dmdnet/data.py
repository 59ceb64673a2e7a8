"""Aligned training and evaluation faces: prepared once from folders of photos, then loaded.

    python -m dmdnet.data prepare SRC_DIR OUT_DIR --size 256|512 [--models DIR]
        [--min-face PX] [--detector-size PX]

SRC_DIR holds one folder per identity (SRC_DIR/<identity>/*.jpg|png|...). Every photo's
one main face is found by a face stack (detection, 68 landmarks, identity embedding;
dmdnet.face_stack: prepare() takes its FaceFinder, the command uses the installed one,
such as film_restore's, with --models and --detector-size), aligned to the FFHQ template
at size x size, and kept with its landmarks and DMDNet component boxes at that size.

Which face, and which photos are skipped (each with its reason, never silently):
- unreadable file; no face found (film_restore's stack searches a photo that is itself a
  tight face crop again inside a black border);
- faces are ranked by the shorter side of the detector box; the largest must be at least
  --min-face photo pixels, default 3/16 of the crop size (48 px at 256, 96 at 512): below
  that, the crop would enlarge the photo about 3x or more and the "high-quality"
  target is itself blurred;
- faces at least SECOND_FACE_FRACTION (0.8) of the largest one's side are candidates
  (smaller faces are bystanders). Candidates of different people (identity cosine below
  SAME_PERSON_SIMILARITY, 0.45, the cast's default match threshold) make it unclear which
  is the identity: skipped as ambiguous. Candidates that are one person (copies: the
  reflection-filled borders of celeba_identities show mirrored faces, mirrors, photos in
  photos) give the one nearest the photo's centre;
- landmarks that contradict the alignment: the eye centres of the 68 landmarks more than
  MAX_EYE_ERROR (0.1) of the crop size from the template's eyes (the crop is aligned on
  the detector's 5 keypoints, so a large gap means the 68-point fit failed and DMDNet's
  component boxes would miss the eyes); component boxes outside the crop likewise;
- a second photo with the same stem in one identity folder (a.jpg and a.png) would
  overwrite the first crop: skipped.

Output (no pickle anywhere):
- OUT_DIR/<identity>/<stem>.png: the aligned crops, RGB;
- OUT_DIR/<identity>/faces.json: the identity's record: settings (size, face models id,
  minimum face, the finder's own settings such as the detector size), every source
  photo with its sha256, per face the source,
  68 landmarks and the 5 detector keypoints (crop pixels, 3 decimals), the 4 x 4 component
  boxes (rows left eye, right eye, nose, mouth; x1, y1, x2, y2; crop pixels), the face's
  side in the photo, the enlargement of the crop (crop pixels per photo pixel), the
  detector score, the eye error and the identity embedding; and the skipped photos;
- OUT_DIR/index.json: identity -> image names, counts, size, face models id, every
  skipped photo with its reason.
Every file is written to a temporary name and renamed into place. A run first removes
index.json and writes it last, so a folder without index.json is an unfinished prepare
(PreparedFaces refuses it). An identity's faces.json is removed before its crops are
rewritten and written after them, so it exists only for a complete identity. A rerun
keeps an identity whose faces.json has the same settings, the same source photos (names
and sha256) and all its crops, and redoes the others: rerunning after a kill, or after
adding photos, redoes only what is missing or changed.

Loading: PreparedFaces(OUT_DIR)[i] -> PreparedFace(crop, landmarks, boxes, identity, name);
PreparedFaces.identities maps each identity to its image names.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np

from dmdnet.face_stack import FaceFinder, FaceStackError, installed_face_stack
from dmdnet.files import file_sha256, write_image, write_json

FORMAT = "dmdnet-prepared-faces/1"
INDEX_NAME = "index.json"
RECORD_NAME = "faces.json"
SIZES = (256, 512)
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
SECOND_FACE_FRACTION = 0.8
SAME_PERSON_SIMILARITY = 0.45
MAX_EYE_ERROR = 0.1
DEFAULT_DETECTOR_SIZE = 640


class PrepareError(Exception):
    """A prepare that cannot run (bad arguments or output folder), as one line."""


def default_min_face(size: int) -> int:
    """Shortest accepted detector-box side, in photo pixels: 3/16 of the crop size (48 at 256, 96 at 512)."""
    return size * 3 // 16


def _points(array, decimals: int = 3) -> list:
    return np.round(np.asarray(array, dtype=np.float64), decimals).tolist()


def _main_face(finder: FaceFinder, path: Path, size: int, min_face: int) -> tuple[dict | None, np.ndarray | None, str | None, str | None]:
    """(face record, crop, skip kind, skip reason) for one photo, by the rules of the module notes."""
    try:
        image, faces = finder.faces_in_photo(path)
    except ValueError:
        return None, None, "unreadable", "not a readable image"
    if not faces:
        return None, None, "no face", "no face found"

    def side(face):
        return float(min(face.box[2] - face.box[0], face.box[3] - face.box[1]))

    faces = sorted(faces, key=side, reverse=True)
    largest = side(faces[0])
    if largest < min_face:
        return None, None, "small face", f"face only {largest:.1f} px (needs {min_face})"
    similar = [f for f in faces if side(f) >= SECOND_FACE_FRACTION * largest]
    others = [f for f in similar[1:] if float(f.embedding @ similar[0].embedding) < SAME_PERSON_SIMILARITY]
    if others:
        return None, None, "ambiguous", f"{len(others) + 1} people's faces of similar size: unclear which is the identity"
    # Copies of one face (mirrored borders, reflections): the one nearest the photo's centre.
    centre = np.array(image.shape[1::-1], dtype=np.float64) / 2
    main = min(similar, key=lambda f: float(np.hypot(*((np.array(f.box[:2]) + f.box[2:]) / 2 - centre))))
    aligned = finder.align(image, main, size)
    landmarks = aligned.landmarks.astype(np.float64)
    template = finder.template(size)
    eyes = np.stack([landmarks[36:42].mean(axis=0), landmarks[42:48].mean(axis=0)])
    eye_error = float(np.linalg.norm(eyes - template[:2], axis=1).max())
    if eye_error > MAX_EYE_ERROR * size:
        return None, None, "landmarks", (
            f"68-point eyes {eye_error:.0f} px from the aligned eyes (limit {MAX_EYE_ERROR * size:.0f}): landmark fit failed")
    boxes = np.asarray(aligned.boxes)
    if boxes.min() < 0 or boxes.max() > size or (boxes[:, 2:] <= boxes[:, :2]).any():
        return None, None, "boxes", f"component boxes {boxes.tolist()} fall outside the {size} px crop"
    record = {
        "landmarks": _points(landmarks),
        "keypoints": _points(aligned.keypoints),
        "boxes": boxes.astype(int).tolist(),
        "face_side": round(side(main), 1),
        "enlargement": round(aligned.enlargement, 4),
        "score": round(float(main.score), 4),
        "eye_error": round(eye_error, 2),
        "faces_in_photo": len(faces),
        "embedding": _points(main.embedding, 6),
    }
    return record, aligned.crop, None, None


def _identity_folders(src: Path) -> list[Path]:
    return sorted(p for p in src.iterdir() if p.is_dir() and not p.name.startswith("."))


def _photos(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in PHOTO_SUFFIXES)


def _settings(size: int, finder: FaceFinder, min_face: int) -> dict:
    return {"size": size, "face_models": finder.models_id, "min_face": min_face, **finder.settings,
            "second_face_fraction": SECOND_FACE_FRACTION, "same_person_similarity": SAME_PERSON_SIMILARITY,
            "max_eye_error": MAX_EYE_ERROR}


def _complete_record(folder: Path, settings: dict, sources: dict[str, str]) -> dict | None:
    """The identity's record if it is complete for these settings and source photos, else None."""
    path = folder / RECORD_NAME
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        if record.get("format") != FORMAT or record.get("settings") != settings or record.get("sources") != sources:
            return None
        if not all((folder / face["name"]).is_file() for face in record["faces"]):
            return None
    except (ValueError, KeyError, TypeError):
        return None
    return record


def _prepare_identity(finder: FaceFinder, source_folder: Path, out_folder: Path, settings: dict,
                      sources: dict[str, str], paths: list[Path]) -> dict:
    out_folder.mkdir(parents=True, exist_ok=True)
    (out_folder / RECORD_NAME).unlink(missing_ok=True)
    faces, skipped, names = [], [], {}
    for path in paths:
        name = f"{path.stem}.png"
        if name in names:
            skipped.append({"file": path.name, "kind": "duplicate name",
                            "reason": f"same output name {name} as {names[name]}"})
            continue
        names[name] = path.name
        face, crop, kind, reason = _main_face(finder, path, settings["size"], settings["min_face"])
        if face is None:
            skipped.append({"file": path.name, "kind": kind, "reason": reason})
            continue
        write_image(out_folder / name, crop)
        faces.append({"name": name, "source": path.name, **face})
    kept = {face["name"] for face in faces}
    for stale in out_folder.glob("*.png"):
        if stale.name not in kept:
            stale.unlink()
    record = {"format": FORMAT, "identity": source_folder.name, "settings": settings,
              "sources": sources, "faces": faces, "skipped": skipped}
    write_json(out_folder / RECORD_NAME, record)
    return record


def _checked(src: Path, out: Path, size: int, min_face: int | None) -> tuple[int, list[Path]]:
    """(minimum face, identity folders) of a prepare that can run, else PrepareError."""
    if size not in SIZES:
        raise PrepareError(f"--size must be one of {SIZES}, got {size}")
    min_face = default_min_face(size) if min_face is None else int(min_face)
    if min_face < 1:
        raise PrepareError(f"--min-face must be at least 1 px, got {min_face}")
    if not src.is_dir():
        raise PrepareError(f"no folder at {src}")
    if out.resolve() == src.resolve() or src.resolve() in out.resolve().parents:
        raise PrepareError(f"OUT_DIR {out} must lie outside SRC_DIR {src}")
    identity_folders = _identity_folders(src)
    if not identity_folders:
        raise PrepareError(f"{src} has no identity sub-folders (expected SRC_DIR/<identity>/*.jpg)")
    index_path = out / INDEX_NAME
    if index_path.is_file():
        try:
            previous_size = json.loads(index_path.read_text()).get("size")
        except ValueError:
            previous_size = None
        if previous_size not in (None, size):
            raise PrepareError(f"{out} holds faces prepared at {previous_size} px: prepare {size} px faces into another folder")
    return min_face, identity_folders


def prepare(src_dir, out_dir, size: int, finder: FaceFinder, min_face: int | None = None, log=print) -> dict:
    """Align every identity folder's photos into out_dir with the finder's faces (see the
    module notes); returns the index."""
    src, out = Path(src_dir), Path(out_dir)
    min_face, identity_folders = _checked(src, out, size, min_face)
    index_path = out / INDEX_NAME
    started = time.monotonic()
    settings = _settings(size, finder, min_face)
    out.mkdir(parents=True, exist_ok=True)
    index_path.unlink(missing_ok=True)   # from here until the end the folder reads as unfinished

    identities, skipped, kinds = {}, [], Counter()
    reused = photos = 0
    for folder in identity_folders:
        paths = _photos(folder)
        sources = {path.name: file_sha256(path) for path in paths}
        photos += len(paths)
        record = _complete_record(out / folder.name, settings, sources)
        if record is None:
            record = _prepare_identity(finder, folder, out / folder.name, settings, sources, paths)
        else:
            reused += 1
        if record["faces"]:
            identities[folder.name] = [face["name"] for face in record["faces"]]
        for skip in record["skipped"]:
            skipped.append({"identity": folder.name, **skip})
            kinds[skip["kind"]] += 1

    faces = sum(len(names) for names in identities.values())
    index = {
        "format": FORMAT,
        "size": size,
        "face_models": finder.models_id,
        "face_models_pack": finder.models_name,
        "settings": settings,
        "source": str(src.resolve()),
        "counts": {"identities": len(identities), "identities_without_faces": len(identity_folders) - len(identities),
                   "photos": photos, "faces": faces, "skipped": len(skipped), "skipped_by_kind": dict(sorted(kinds.items()))},
        "identities": identities,
        "skipped": skipped,
    }
    write_json(index_path, index)
    seconds = time.monotonic() - started
    by_kind = ", ".join(f"{count} {kind}" for kind, count in sorted(kinds.items())) or "none"
    log(f"prepared {faces} faces of {len(identities)} identities at {size} px from {photos} photos "
        f"(skipped {len(skipped)}: {by_kind}; {reused} of {len(identity_folders)} identities already complete) "
        f"in {seconds:.1f} s -> {out}")
    return index


class PreparedFace(NamedTuple):
    """One prepared face: crop uint8 RGB size x size x 3; landmarks 68 x 2 float32 (crop pixels);
    boxes int64 4 x 4 (left eye, right eye, nose, mouth; x1, y1, x2, y2); identity; name (file in the identity folder)."""

    crop: np.ndarray
    landmarks: np.ndarray
    boxes: np.ndarray
    identity: str
    name: str


class PreparedFaces:
    """The faces of a finished prepare, in a fixed order (identities, then names, sorted).

    faces[i] -> PreparedFace; len(faces); faces.identities: identity -> image names;
    faces.items: (identity, name) per index; faces.record(identity, name): the stored
    record (keypoints, embedding, enlargement, ...); faces.size; faces.face_models.
    """

    def __init__(self, out_dir):
        self.folder = Path(out_dir)
        index_path = self.folder / INDEX_NAME
        if not index_path.is_file():
            raise ValueError(f"{self.folder} has no {INDEX_NAME}: the prepare did not finish (run it again to complete it)")
        try:
            index = json.loads(index_path.read_text())
            if index.get("format") != FORMAT:
                raise ValueError(f"format {index.get('format')!r}, expected {FORMAT!r}")
            self.size = int(index["size"])
            self.face_models = str(index["face_models"])
            self.identities: dict[str, list[str]] = {k: list(v) for k, v in sorted(index["identities"].items())}
            self.skipped: list[dict] = list(index["skipped"])
            self._records: dict[tuple[str, str], dict] = {}
            for identity, names in self.identities.items():
                record = json.loads((self.folder / identity / RECORD_NAME).read_text())
                by_name = {face["name"]: face for face in record["faces"]}
                for name in names:
                    self._records[identity, name] = by_name[name]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{self.folder} is not a complete prepared-faces folder ({error}): run prepare again") from error
        self.items: list[tuple[str, str]] = [(identity, name) for identity, names in self.identities.items() for name in names]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> PreparedFace:
        identity, name = self.items[index]
        return self.face(identity, name)

    def record(self, identity: str, name: str) -> dict:
        return self._records[identity, name]

    def face(self, identity: str, name: str) -> PreparedFace:
        record = self._records[identity, name]
        path = self.folder / identity / name
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None or image.shape[:2] != (self.size, self.size):
            raise ValueError(f"{path} is missing or not a {self.size} x {self.size} image: run prepare again")
        return PreparedFace(
            np.ascontiguousarray(image[:, :, ::-1]),
            np.array(record["landmarks"], dtype=np.float32),
            np.array(record["boxes"], dtype=np.int64),
            identity,
            name,
        )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dmdnet.data", description="Aligned face data for DMDNet training and evaluation.")
    commands = parser.add_subparsers(dest="command", required=True)
    command = commands.add_parser("prepare", help="align every face of SRC_DIR/<identity>/* into OUT_DIR")
    command.add_argument("src_dir", type=Path, metavar="SRC_DIR")
    command.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    command.add_argument("--size", type=int, choices=SIZES, required=True, help="crop side in pixels")
    command.add_argument("--models", default=None, help="face models folder or pack name (default $FILM_RESTORE_MODELS, else buffalo_l, fetched)")
    command.add_argument("--min-face", type=int, default=None, help="shortest accepted face box side in photo pixels (default 3/16 of --size)")
    command.add_argument("--detector-size", type=int, default=DEFAULT_DETECTOR_SIZE,
                         help=f"detector input side (default {DEFAULT_DETECTOR_SIZE}; 320 is ~4x faster on photos of at most 320 px)")
    args = parser.parse_args(argv)
    try:
        _checked(args.src_dir, args.out_dir, args.size, args.min_face)  # bad arguments are named before models load
        finder = installed_face_stack("prepare").face_finder(args.models, args.detector_size)
        prepare(args.src_dir, args.out_dir, args.size, finder, args.min_face)
    except (PrepareError, FaceStackError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
