"""Model packs for face analysis, found in a models folder.

Two packs are known, recognised from the files in the folder:
- production: insightface's buffalo_l (det_10g.onnx, 1k3d68.onnx, w600k_r50.onnx);
- compact: small public models (scrfd_2.5g.onnx or scrfd_500m.onnx, pfld_68.onnx,
  mobilefacenet_128.onnx) for tests and CPU runs.
The folder is --models DIR, else $FILM_RESTORE_MODELS, else ~/.insightface/models/buffalo_l
(where insightface puts buffalo_l when it downloads it).
"""
import os
from dataclasses import dataclass
from pathlib import Path

from dmdnet.files import file_sha256

MODELS_ENV = "FILM_RESTORE_MODELS"
DEFAULT_MODELS_DIR = Path("~/.insightface/models/buffalo_l")

_BUFFALO_L_SOURCE = (
    "insightface's buffalo_l pack: run python -c \"from insightface.app import FaceAnalysis; "
    "FaceAnalysis(name='buffalo_l')\" online, which unpacks it into ~/.insightface/models/buffalo_l"
)
_COMPACT_SOURCES = {
    "scrfd_2.5g.onnx": "github.com/yukkki7/FaceAnalysisApp @ d4126572, models/scrfd_2.5g.onnx",
    "scrfd_500m.onnx": "github.com/yukkki7/FaceAnalysisApp @ d4126572, models/scrfd_500m.onnx",
    "pfld_68.onnx": "github.com/cunjian/pytorch_face_landmark @ 6f34bf9f, onnx/pfld.onnx",
    "mobilefacenet_128.onnx": "github.com/diandianti/photo_analyze @ 2715cee6, models/mobilefacenet.onnx",
}


class ModelsError(RuntimeError):
    """A models folder that cannot be used: missing folder, missing or corrupt file."""


@dataclass(frozen=True)
class ModelFile:
    """One known model file: its name, its role, its sha256 where known and where to get it."""

    name: str
    role: str
    sha256: str | None
    source: str


@dataclass(frozen=True)
class ModelPack:
    """The three model files of one face-analysis pack, found in one folder."""

    name: str
    directory: Path
    detector: Path
    landmarker: Path
    recogniser: Path


# Alternatives for one role are listed best first. buffalo_l's hashes are left unknown:
# none were measured here, and a wrong hash would reject a good download.
_PACKS = {
    "buffalo_l": {
        "detector": [ModelFile("det_10g.onnx", "SCRFD-10G face detector", None, _BUFFALO_L_SOURCE)],
        "landmarker": [ModelFile("1k3d68.onnx", "68-point 3-D landmarks", None, _BUFFALO_L_SOURCE)],
        "recogniser": [ModelFile("w600k_r50.onnx", "ArcFace R50 recogniser", None, _BUFFALO_L_SOURCE)],
    },
    "compact": {
        "detector": [
            ModelFile("scrfd_2.5g.onnx", "SCRFD-2.5G face detector",
                      "041f73f47371333d1d17a6fee6c8ab4e6aecabefe398ff32cca4e2d5eaee0af9", _COMPACT_SOURCES["scrfd_2.5g.onnx"]),
            ModelFile("scrfd_500m.onnx", "SCRFD-500M face detector",
                      "5e4447f50245bbd7966bd6c0fa52938c61474a04ec7def48753668a9d8b4ea3a", _COMPACT_SOURCES["scrfd_500m.onnx"]),
        ],
        "landmarker": [
            ModelFile("pfld_68.onnx", "PFLD 68-point landmarks",
                      "7d7bbd5c6a1d9272e58d9773898284a1905d872eba9a662df9b5f20f1ba6f83e", _COMPACT_SOURCES["pfld_68.onnx"]),
        ],
        "recogniser": [
            ModelFile("mobilefacenet_128.onnx", "MobileFaceNet recogniser",
                      "f055d9c9a4d826d198c42666590fdefa0fdc1374a75ccb6306c3d1b1bf8f74c5", _COMPACT_SOURCES["mobilefacenet_128.onnx"]),
        ],
    },
}


def resolve_models_dir(models_dir: str | os.PathLike | None = None) -> Path:
    """The models folder: the given one (--models), else $FILM_RESTORE_MODELS, else ~/.insightface/models/buffalo_l."""
    chosen = models_dir if models_dir not in (None, "") else os.environ.get(MODELS_ENV) or DEFAULT_MODELS_DIR
    return Path(chosen).expanduser()


def find_pack(models_dir: str | os.PathLike | None = None) -> ModelPack:
    """The model pack in the models folder (see resolve_models_dir), with known hashes checked.

    A complete buffalo_l wins over a complete compact pack. Raises ModelsError naming the
    missing or corrupt file and where to get it.
    """
    directory = resolve_models_dir(models_dir)
    if not directory.is_dir():
        raise ModelsError(
            f"models folder {directory} does not exist: pass --models DIR or set {MODELS_ENV} "
            f"to a folder holding buffalo_l or the compact pack ({_pack_listing('compact')})"
        )
    present = {path.name for path in directory.iterdir()}
    closest_name, closest_missing = None, None
    for pack_name, roles in _PACKS.items():
        chosen, missing = {}, []
        for role, alternatives in roles.items():
            found = next((candidate for candidate in alternatives if candidate.name in present), None)
            if found is None:
                missing.append(alternatives[0])
            else:
                chosen[role] = found
        if not missing:
            for model_file in chosen.values():
                _check_sha256(directory / model_file.name, model_file)
            return ModelPack(pack_name, directory, *(directory / chosen[role].name for role in ("detector", "landmarker", "recogniser")))
        if chosen and (closest_missing is None or len(missing) < len(closest_missing)):
            closest_name, closest_missing = pack_name, missing
    if closest_missing is None:
        raise ModelsError(
            f"no face-analysis models in {directory}: it needs buffalo_l ({_pack_listing('buffalo_l')}; {_BUFFALO_L_SOURCE}) "
            f"or the compact pack ({_pack_listing('compact')})"
        )
    first = closest_missing[0]
    raise ModelsError(f"{directory / first.name} is missing ({first.role} of the {closest_name} pack): get it from {first.source}")


def _pack_listing(pack_name: str) -> str:
    return ", ".join(" or ".join(f.name for f in alternatives) for alternatives in _PACKS[pack_name].values())


def _check_sha256(path: Path, model_file: ModelFile) -> None:
    if model_file.sha256 is None:
        return
    actual = file_sha256(path)
    if actual != model_file.sha256:
        raise ModelsError(
            f"{path} has sha256 {actual[:12]}…, expected {model_file.sha256[:12]}… (corrupt or a different model): "
            f"get it again from {model_file.source}"
        )
