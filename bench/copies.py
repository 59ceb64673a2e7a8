"""Damaged copies of a clip's frames, each with the truth its restoration is measured against.

    clean          the frames as they are
    noise + blur   x3 down and up, Gaussian noise of sigma 6 on each frame, then x264 CRF 18
    compression    half size, x264 CRF 35, back up (bicubic): blocks and smeared detail
    scanned film   a print scanned: softness, the grain of a real black-and-white film (its spectrum
                   and luma scaling measured on media/oldfilm_001, fresh on every frame), dust and
                   hairs (a few specks each frame), a vertical scratch that wanders, gate weave (the
                   frame moved by a fraction of a pixel, slowly) and exposure flicker (a brightness
                   gain per frame). Weave and exposure move the picture itself, so its truth is the
                   clean frames weaved and exposed alike: only the damage is to be undone.

All seeded: the same frames give the same copies.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import av
import cv2
import numpy as np

from film_restore.finish.colour import luma
from film_restore.finish.grain import GrainTile
from film_restore.finish.grain_model import estimate_grain

COPIES = ("clean", "noise + blur", "compression", "scanned film")
DEGRADE_SCALE, NOISE_SIGMA, NOISE_CRF = 3, 6.0, 18
COMPRESSION_SCALE, COMPRESSION_CRF = 2, 35
# Scanned film: softness (Gaussian sigma, pixels), grain amplitude relative to the old film's own,
# specks per frame and their radius, the scratch's darkening, weave (pixels, std) and exposure (gain std).
SOFTNESS = 0.8
GRAIN_GAIN = 1.5
SPECKS, SPECK_RADIUS = 6, (1, 3)
SCRATCH_DEPTH = 25.0
WEAVE_PX, EXPOSURE_STD = 0.6, 0.03


def copy_of(name: str, frames: list[np.ndarray], seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(damaged frames, truth frames) of one named copy (COPIES)."""
    if name == "clean":
        return frames, frames
    if name == "noise + blur":
        return noisy_and_blurred(frames, seed), frames
    if name == "compression":
        return compressed(frames), frames
    if name == "scanned film":
        return scanned(frames, seed)
    raise ValueError(f"unknown copy {name!r}: one of {', '.join(COPIES)}")


def noisy_and_blurred(frames: list[np.ndarray], seed: int = 0) -> list[np.ndarray]:
    random = np.random.default_rng(seed)
    out = []
    for frame in frames:
        height, width = frame.shape[:2]
        small = cv2.resize(frame, (width // DEGRADE_SCALE, height // DEGRADE_SCALE), interpolation=cv2.INTER_AREA)
        blurred = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC).astype(np.float32)
        out.append(np.clip(np.round(blurred + random.normal(0, NOISE_SIGMA, blurred.shape)), 0, 255).astype(np.uint8))
    return x264(out, NOISE_CRF)


def compressed(frames: list[np.ndarray]) -> list[np.ndarray]:
    height, width = frames[0].shape[:2]
    small = [cv2.resize(frame, (width // COMPRESSION_SCALE // 2 * 2, height // COMPRESSION_SCALE // 2 * 2),
                        interpolation=cv2.INTER_AREA) for frame in frames]
    return [cv2.resize(frame, (width, height), interpolation=cv2.INTER_CUBIC) for frame in x264(small, COMPRESSION_CRF)]


def scanned(frames: list[np.ndarray], seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    from tests.media import old_film

    random = np.random.default_rng(seed)
    film = old_film().astype(np.float32)
    model = estimate_grain([(film, np.ones(film.shape[:2], bool))])
    tile = GrainTile(model, seed)
    height, width = frames[0].shape[:2]
    weave = np.cumsum(random.normal(0, WEAVE_PX / 3, (len(frames), 2)), axis=0)
    weave -= weave.mean(axis=0)
    weave = WEAVE_PX * weave / max(weave.std(), 1e-6)
    exposure = 1 + random.normal(0, EXPOSURE_STD, len(frames))
    scratch_x = width * random.uniform(0.3, 0.7) + np.cumsum(random.normal(0, 0.7, len(frames)))
    damaged, truth = [], []
    for index, frame in enumerate(frames):
        moved = cv2.warpAffine(frame.astype(np.float32), np.float32([[1, 0, weave[index, 0]], [0, 1, weave[index, 1]]]),
                               (width, height), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT) * exposure[index]
        truth.append(np.clip(np.round(moved), 0, 255).astype(np.uint8))
        picture = cv2.GaussianBlur(moved, (0, 0), SOFTNESS)
        grain = tile.field((height, width), (seed, index))[..., 0] * model.amplitude_at(luma(picture)) * GRAIN_GAIN
        picture = picture + grain[..., None]
        for _ in range(SPECKS):
            centre = (int(random.integers(0, width)), int(random.integers(0, height)))
            level = 20.0 if random.random() < 0.7 else 235.0  # dust prints dark, holes in the emulsion bright
            cv2.circle(picture, centre, int(random.integers(*SPECK_RADIUS)), (level, level, level), -1, cv2.LINE_AA)
        x = int(round(scratch_x[index])) % width
        picture[:, x:x + 2] -= SCRATCH_DEPTH
        damaged.append(np.clip(np.round(picture), 0, 255).astype(np.uint8))
    return damaged, truth


def x264(frames: list[np.ndarray], crf: int) -> list[np.ndarray]:
    """The frames through x264 at this CRF (yuv420p, preset medium) and back."""
    height, width = frames[0].shape[:2]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "copy.mp4"
        with av.open(str(path), "w") as container:
            stream = container.add_stream("libx264", rate=25)
            stream.width, stream.height, stream.pix_fmt = width // 2 * 2, height // 2 * 2, "yuv420p"
            stream.codec_context.options = {"crf": str(crf), "preset": "medium"}
            for frame in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame[:height // 2 * 2, :width // 2 * 2], format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        with av.open(str(path)) as container:
            decoded = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    if decoded[0].shape[:2] != (height, width):
        decoded = [cv2.copyMakeBorder(frame, 0, height - frame.shape[0], 0, width - frame.shape[1], cv2.BORDER_REPLICATE)
                   for frame in decoded]
    return decoded
