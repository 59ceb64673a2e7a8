"""Who is this face (or track)? Cosine similarity to each actor's reference centroid.

An actor is the normalised mean of their reference embeddings; a query (one face, or all
faces of a track) likewise. On the DMDNet test set with the compact pack, degraded
held-out faces scored 0.61-0.95 against their own actor and at most 0.34 against others,
with the centroid separating better than the best single reference or the top-3 mean.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Match:
    """The best actor (None below the threshold) and the cosine similarity to them."""

    actor: str | None
    similarity: float


def centroid(embeddings: np.ndarray) -> np.ndarray:
    """Unit-length mean of unit embeddings (k x d, or d)."""
    mean = np.atleast_2d(np.asarray(embeddings, dtype=np.float32)).mean(axis=0)
    norm = float(np.linalg.norm(mean))
    if norm == 0 or not np.isfinite(norm):
        raise ValueError("cannot average embeddings that cancel out or are not finite")
    return mean / norm


class Identifier:
    """Matches embeddings against the cast's actors."""

    def __init__(self, actors: dict[str, np.ndarray], threshold: float):
        if not actors:
            raise ValueError("an identifier needs at least one actor with references")
        self.names = list(actors)
        self.centroids = np.stack([centroid(embeddings) for embeddings in actors.values()])
        self.threshold = threshold

    def identify(self, embeddings: np.ndarray) -> Match:
        """The actor of one face's embedding (d) or of a track's embeddings (k x d)."""
        query = centroid(embeddings)
        if query.shape[0] != self.centroids.shape[1]:
            raise ValueError(
                f"embedding of size {query.shape[0]} against a cast built with size {self.centroids.shape[1]}: "
                "identify with the same face models the cast was built with"
            )
        similarities = self.centroids @ query
        best = int(np.argmax(similarities))
        similarity = float(similarities[best])
        return Match(self.names[best] if similarity >= self.threshold else None, similarity)
