"""Every model film_restore can fetch: where its publisher serves it, its checksum where known, its licence.

A sha256 is written here only when it was measured on the publisher's file; the others are
recorded at the first download (see fetch.py) and checked on every later use. A mirror (or a
test server) replaces every publisher at once: FILM_RESTORE_MODEL_BASE_URL=URL serves each
download under URL/<download name>.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

BASE_URL_ENV = "FILM_RESTORE_MODEL_BASE_URL"

_GITHUB = "https://github.com"
_RAW = "https://raw.githubusercontent.com"


class ModelsError(RuntimeError):
    """A model that cannot be used: missing, corrupt, or not fetchable; the message says which and the fix."""


@dataclass(frozen=True)
class Download:
    """One file as a publisher serves it; `name` is what it is called in the cache and on a mirror."""

    name: str
    publisher_url: str
    sha256: str | None = None
    size: int | None = None

    @property
    def url(self) -> str:
        base = os.environ.get(BASE_URL_ENV, "").strip()
        return f"{base.rstrip('/')}/{self.name}" if base else self.publisher_url


@dataclass(frozen=True)
class Model:
    """A model of the registry: one file, or a folder of files (downloaded one by one, or one zip unpacked)."""

    name: str
    purpose: str
    licence: str
    downloads: tuple[Download, ...]
    contents: tuple[str, ...] = ()  # a zip's files the project needs (the others are kept too)

    @property
    def zipped(self) -> bool:
        return self.downloads[0].name.endswith(".zip")

    @property
    def single_file(self) -> bool:
        return len(self.downloads) == 1 and not self.zipped

    @property
    def files(self) -> tuple[str, ...]:
        """The files the cache entry must hold (the file itself, or the folder's files)."""
        return self.contents if self.zipped else tuple(d.name for d in self.downloads)


def _raw(repository: str, commit: str, path: str) -> str:
    return f"{_RAW}/{repository}/{commit}/{path}"


_FACE_ANALYSIS_COMMITS = {
    "yukkki7/FaceAnalysisApp": "d4126572f7642f97f903cfab7ab73f67e99622db",
    "cunjian/pytorch_face_landmark": "6f34bf9f034aa2f521952f825e6ccc567deb42d6",
    "diandianti/photo_analyze": "2715cee6d1f39fc63b431a4fa14b0fc4f8334309",
}


def _compact(name: str, repository: str, path: str, sha256: str, size: int) -> Download:
    return Download(name, _raw(repository, _FACE_ANALYSIS_COMMITS[repository], path), sha256, size)


MODELS = {model.name: model for model in (
    Model(
        name="dmdnet",
        purpose="DMDNet restoration weights of the paper's authors (--checkpoint)",
        licence="CC BY-NC-SA 4.0 (non-commercial)",
        downloads=(Download("DMDNet.pth", f"{_GITHUB}/csxmli2016/DMDNet/releases/download/v1/DMDNet.pth"),),
    ),
    Model(
        name="buffalo_l",
        purpose="production face analysis: SCRFD-10G detector, 68-point 3-D landmarks, ArcFace R50 recogniser (--models)",
        licence="insightface's pretrained models: non-commercial research only",
        downloads=(Download("buffalo_l.zip", f"{_GITHUB}/deepinsight/insightface/releases/download/v0.7/buffalo_l.zip"),),
        contents=("det_10g.onnx", "1k3d68.onnx", "w600k_r50.onnx"),
    ),
    Model(
        name="compact",
        purpose="small face analysis for tests and CPU runs: SCRFD-2.5G or -500M, PFLD 68 points, MobileFaceNet (--models)",
        licence="none stated by the repositories that publish them: research and test use",
        downloads=(
            _compact("scrfd_2.5g.onnx", "yukkki7/FaceAnalysisApp", "models/scrfd_2.5g.onnx",
                     "041f73f47371333d1d17a6fee6c8ab4e6aecabefe398ff32cca4e2d5eaee0af9", 3292009),
            _compact("scrfd_500m.onnx", "yukkki7/FaceAnalysisApp", "models/scrfd_500m.onnx",
                     "5e4447f50245bbd7966bd6c0fa52938c61474a04ec7def48753668a9d8b4ea3a", 2524817),
            _compact("pfld_68.onnx", "cunjian/pytorch_face_landmark", "onnx/pfld.onnx",
                     "7d7bbd5c6a1d9272e58d9773898284a1905d872eba9a662df9b5f20f1ba6f83e", 2987921),
            _compact("mobilefacenet_128.onnx", "diandianti/photo_analyze", "models/mobilefacenet.onnx",
                     "f055d9c9a4d826d198c42666590fdefa0fdc1374a75ccb6306c3d1b1bf8f74c5", 3973728),
        ),
    ),
)}
CHECKPOINT_MODEL = "dmdnet"
FACE_PACKS = ("buffalo_l", "compact")  # best first; the default is the first
DEFAULT_FETCH = (CHECKPOINT_MODEL, FACE_PACKS[0])  # what a run with no model flags uses


def model(name: str) -> Model:
    if name not in MODELS:
        raise ModelsError(f"no model named {name!r} in the registry: choose from {', '.join(MODELS)}")
    return MODELS[name]


def download_of(file_name: str) -> tuple[Model, Download | None]:
    """The model a file belongs to, and its own download (None for a file unpacked from a zip)."""
    for candidate in MODELS.values():
        for download in candidate.downloads:
            if download.name == file_name:
                return candidate, download
        if file_name in candidate.contents:
            return candidate, None
    raise KeyError(file_name)
