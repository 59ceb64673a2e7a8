"""A short film, its cast and a narrow seeded DMDNet checkpoint, for the cluster and nightly tests.

Two real clips of 10 frames each at 256 x 256 joined with a hard cut (one chunk at the
default chunk size), a cast of the first clip's person from frames of the other half of
that clip, and the seeded width-8 network of conftest.small_state.
"""
from __future__ import annotations

from pathlib import Path

import av
import cv2
import numpy as np
import torch

from conftest import asset, small_state
from media import make_film

CLIPS = ("media/clips/retalk_2.mp4", "media/clips/liveportrait_d10.mp4")
FRAMES_PER_CLIP = 10
SIZE = (256, 256)


def make_case(folder: Path) -> dict:
    """{'folder', 'film', 'cast', 'checkpoint', 'models', 'frames'} in `folder` (made once per folder)."""
    folder.mkdir(parents=True, exist_ok=True)
    film = folder / "film.mkv"
    make_film(film, [asset(c) for c in CLIPS], FRAMES_PER_CLIP, size=SIZE, with_audio=True)
    refs = folder / "refs" / "actor0"
    refs.mkdir(parents=True, exist_ok=True)
    with av.open(str(asset(CLIPS[0]))) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    for taken in np.linspace(len(frames) // 2, len(frames) - 1, 2).astype(int):
        cv2.imwrite(str(refs / f"{taken}.png"), frames[taken][:, :, ::-1])
    cast = folder / "cast.yaml"
    cast.write_text("actors:\n  - name: Actor 0\n    references: refs/actor0/*.png\n")
    checkpoint = folder / "DMDNet.pth"
    torch.save({name: torch.from_numpy(value) for name, value in small_state().items()}, checkpoint)
    return {"folder": folder, "film": film, "cast": cast, "checkpoint": checkpoint, "models": asset("models"),
            "frames": len(CLIPS) * FRAMES_PER_CLIP}


def decoded_frames(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))
