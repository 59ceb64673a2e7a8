"""Which DMDNet checkpoint and which face models a run uses, and where they came from.

Each is, in order: the flag (--checkpoint FILE, --models DIR), then the environment
(FILM_RESTORE_CHECKPOINT, FILM_RESTORE_MODELS), then the cache, fetched on first use
(fetch.py). --models and FILM_RESTORE_MODELS also take a pack name of the registry
(buffalo_l, compact): that pack from the cache. With nothing given the face models are
buffalo_l (insightface's own ~/.insightface/models/buffalo_l when it is there), and the
checkpoint is the authors' DMDNet.pth; when that cannot be fetched, the demonstration model in
the repository's weights/ serves instead, with a note saying so.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from film_restore.models import registry
from film_restore.models.fetch import Unavailable, ensure, fetched, say
from film_restore.models.registry import ModelsError

CHECKPOINT_ENV = "FILM_RESTORE_CHECKPOINT"
MODELS_ENV = "FILM_RESTORE_MODELS"
# Our own model (MODEL_CARD.md), in the repository: present in a clone and an editable install.
SHIPPED_CHECKPOINT = Path("weights/dmdnet-celeba256-w20.safetensors")
INSIGHTFACE_BUFFALO_L = Path("~/.insightface/models/buffalo_l")  # where insightface unpacks it


@dataclass(frozen=True)
class Resolved:
    """A model's path, where it came from (flag, environment, cache, insightface, shipped) and a note to show."""

    path: Path
    source: str
    note: str | None = None

    def to_json(self) -> dict:
        return {"path": str(self.path), "source": self.source, **({"note": self.note} if self.note else {})}


def shipped_checkpoint() -> Path | None:
    """The repository's demonstration model, found beside the package's source; None in an installed wheel."""
    path = Path(__file__).resolve().parents[2] / SHIPPED_CHECKPOINT
    return path if path.is_file() else None


def resolve_checkpoint(explicit=None, log=say) -> Resolved:
    """The DMDNet checkpoint: --checkpoint, else $FILM_RESTORE_CHECKPOINT, else the cache (fetched), else weights/."""
    given = _given(explicit, CHECKPOINT_ENV)
    if given is not None:
        text, source = given
        path = Path(text).expanduser().absolute()
        if not path.is_file():
            where = "--checkpoint" if source == "flag" else CHECKPOINT_ENV
            raise ModelsError(f"no checkpoint file at {path} ({where}): give the path of DMDNet.pth, "
                              f"or leave it out to fetch the authors' model")
        return Resolved(path, source)
    try:
        return Resolved(ensure(registry.model(registry.CHECKPOINT_MODEL), log), "cache")
    except Unavailable as error:
        shipped = shipped_checkpoint()
        if shipped is None:
            raise ModelsError(f"{error} (the demonstration model {SHIPPED_CHECKPOINT} comes only with the "
                              f"repository, not with an installed package)") from None
        return Resolved(shipped, "shipped", f"restoring with the demonstration model {shipped}, far below the "
                                            f"authors' quality (MODEL_CARD.md), because {error}")


def resolve_models(explicit=None, log=say) -> Resolved:
    """The face models folder: --models, else $FILM_RESTORE_MODELS (a folder or a pack name), else buffalo_l."""
    given = _given(explicit, MODELS_ENV)
    if given is not None:
        text, source = given
        if text in registry.FACE_PACKS and not Path(text).exists():
            return Resolved(ensure(registry.model(text), log), "cache")
        return Resolved(Path(text).expanduser().absolute(), source)
    default = registry.model(registry.FACE_PACKS[0])
    insightface = INSIGHTFACE_BUFFALO_L.expanduser()
    if not fetched(default) and all((insightface / name).is_file() for name in default.contents):
        return Resolved(insightface, "insightface")
    return Resolved(ensure(default, log), "cache")


def resolve_models_dir(models_dir=None) -> Path:
    return resolve_models(models_dir).path


def _given(explicit, variable: str) -> tuple[str, str] | None:
    """The value given by the flag, else by the environment variable, and which ("flag", "environment")."""
    if explicit not in (None, ""):
        return str(explicit), "flag"
    text = os.environ.get(variable, "").strip()
    return (text, "environment") if text else None
