"""A short film, its cast and a narrow seeded DMDNet checkpoint, for the cluster and nightly tests.

Two real clips of 10 frames each at 256 x 256 joined with a hard cut (one chunk at the
default chunk size), a cast of the first clip's person from frames of the other half of
that clip, and the seeded width-8 network of conftest.small_state.
"""
from __future__ import annotations

from pathlib import Path

import av

from tests.assets import asset, save_small_checkpoint
from tests.media import make_film, write_references

CLIPS = ("media/clips/retalk_2.mp4", "media/clips/liveportrait_d10.mp4")
FRAMES_PER_CLIP = 10
SIZE = (256, 256)


def make_case(folder: Path, shots: int = len(CLIPS), frames_per_shot: int = FRAMES_PER_CLIP) -> dict:
    """{'folder', 'film', 'cast', 'checkpoint', 'models', 'frames'} in `folder` (made once per folder).

    shots: the clips take turns, one shot each (their first frames_per_shot frames), so a film of more
    shots has as many chunks at --chunk-frames frames_per_shot.
    """
    folder.mkdir(parents=True, exist_ok=True)
    film = folder / "film.mkv"
    make_film(film, [asset(CLIPS[shot % len(CLIPS)]) for shot in range(shots)], frames_per_shot, size=SIZE,
              with_audio=True)
    write_references(asset(CLIPS[0]), folder / "refs" / "actor0", 2)
    cast = folder / "cast.yaml"
    cast.write_text("actors:\n  - name: Actor 0\n    references: refs/actor0/*.png\n")
    checkpoint = save_small_checkpoint(folder / "DMDNet.pth")
    return {"folder": folder, "film": film, "cast": cast, "checkpoint": checkpoint, "models": asset("models"),
            "frames": shots * frames_per_shot}


def decoded_frames(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))
