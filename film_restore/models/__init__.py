"""The models film_restore uses: a registry of their sources, fetching into a cache, packs, resolution.

    registry.py  every model: URL, sha256 where known, licence, purpose
    fetch.py     the cache ($FILM_RESTORE_HOME/models) and fetching on first use
    resolve.py   which checkpoint and face models a run uses (flag, environment, cache, weights/)
    packs.py     the face-analysis packs recognised in a folder
    python -m film_restore.models fetch|list|verify
"""
from film_restore.models.packs import ModelFile, ModelPack, find_pack, pack_id
from film_restore.models.registry import MODELS, ModelsError
from film_restore.models.resolve import (
    CHECKPOINT_ENV,
    MODELS_ENV,
    Resolved,
    resolve_checkpoint,
    resolve_models,
    resolve_models_dir,
)

__all__ = [
    "CHECKPOINT_ENV", "MODELS", "MODELS_ENV", "ModelFile", "ModelPack", "ModelsError", "Resolved",
    "find_pack", "pack_id", "resolve_checkpoint", "resolve_models", "resolve_models_dir",
]
