"""The cast: actors' reference photos turned into identity embeddings and DMDNet dictionaries.

    python -m film_restore.cast build cast.yaml --checkpoint DMDNet.pth [--models DIR] [--store DIR]
    python -m film_restore.cast identify cast.yaml IMAGE... [--models DIR] [--store DIR]
"""
from film_restore.cast.castfile import Actor, Cast, CastError
from film_restore.cast.store import ActorReferences, CastStore, Reference

__all__ = ["Actor", "ActorReferences", "Cast", "CastError", "CastStore", "Reference"]
