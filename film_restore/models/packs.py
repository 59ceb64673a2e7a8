"""Face-analysis model packs, recognised from the files in a models folder.

Two packs are known:
- production: insightface's buffalo_l (det_10g.onnx, 1k3d68.onnx, w600k_r50.onnx);
- compact: small public models (scrfd_2.5g.onnx or scrfd_500m.onnx, pfld_68.onnx,
  mobilefacenet_128.onnx) for tests and CPU runs.
Which folder is resolve.py's business; where each file comes from and its sha256, registry.py's.
"""
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from dmdnet.files import file_sha256
from film_restore.models import registry
from film_restore.models.registry import ModelsError
from film_restore.models.resolve import MODELS_ENV, resolve_models_dir


@dataclass(frozen=True)
class ModelFile:
    """One file of a pack and its role; its sha256 and source are the registry's."""

    name: str
    role: str

    @property
    def sha256(self) -> str | None:
        download = registry.download_of(self.name)[1]
        return download.sha256 if download else None

    @property
    def source(self) -> str:
        model, download = registry.download_of(self.name)
        url = download.url if download else model.downloads[0].url
        return f"{url} (or run `python -m film_restore.models fetch {model.name}` and pass --models {model.name})"


@dataclass(frozen=True)
class ModelPack:
    """The three model files of one face-analysis pack, found in one folder."""

    name: str
    directory: Path
    detector: Path
    landmarker: Path
    recogniser: Path


# Alternatives for one role are listed best first.
_PACKS = {
    "buffalo_l": {
        "detector": [ModelFile("det_10g.onnx", "SCRFD-10G face detector")],
        "landmarker": [ModelFile("1k3d68.onnx", "68-point 3-D landmarks")],
        "recogniser": [ModelFile("w600k_r50.onnx", "ArcFace R50 recogniser")],
    },
    "compact": {
        "detector": [ModelFile("scrfd_2.5g.onnx", "SCRFD-2.5G face detector"),
                     ModelFile("scrfd_500m.onnx", "SCRFD-500M face detector")],
        "landmarker": [ModelFile("pfld_68.onnx", "PFLD 68-point landmarks")],
        "recogniser": [ModelFile("mobilefacenet_128.onnx", "MobileFaceNet recogniser")],
    },
}


def find_pack(models_dir: str | os.PathLike | None = None) -> ModelPack:
    """The model pack in the models folder (see resolve_models_dir), with known hashes checked.

    A complete buffalo_l wins over a complete compact pack. Raises ModelsError naming the
    missing or corrupt file and where to get it.
    """
    directory = resolve_models_dir(models_dir)
    if not directory.is_dir():
        raise ModelsError(
            f"models folder {directory} does not exist: pass --models DIR or set {MODELS_ENV} "
            f"to a folder holding buffalo_l or the compact pack ({_pack_listing('compact')}), "
            f"or to a pack name ({', '.join(registry.FACE_PACKS)}) to fetch it"
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
            f"no face-analysis models in {directory}: it needs buffalo_l ({_pack_listing('buffalo_l')}; {_PACKS['buffalo_l']['detector'][0].source}) "
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


def pack_id(pack: ModelPack) -> str:
    """Identity of the face models, so embeddings of another pack are never mixed in."""
    digest = hashlib.sha256()
    for path in (pack.detector, pack.landmarker, pack.recogniser):
        digest.update(file_sha256(path).encode())
    return digest.hexdigest()
