"""Makes the example film (examples/old_print.mkv), its cast's references and nothing else, from
one shared clip: `python examples/make_old_print.py` (FILM_RESTORE_ASSETS, default ../shared).

Source: media/clips/retalk_1.mp4 (OpenTalker/video-retalking, examples/face, Apache-2.0),
700 x 700, about 22 frames a second (its own irregular timestamps, kept), with sound. What is
done to it (examples/README.md says the same):
- two shots cut from its first frames: frames 0..SHOT_FRAMES-1 framed 4:3 as they are, then
  frames SHOT_FRAMES..2*SHOT_FRAMES-1 as a closer shot (a tighter crop), both shrunk to
  FILM_SIZE, at the clip's own timestamps, with its sound of those seconds;
- degraded as an old print looks: softened (shrunk to SOFTEN of its size and enlarged back,
  then blurred), colour faded towards a warm cast, a slow flicker of exposure, fresh
  film grain on every frame (spatially correlated, stronger in the mid-tones), a few dust
  specks, and a little compression (x264 at CRF COMPRESSION_CRF);
- the references: REFERENCES frames from the clip's last third (never in the film), as they
  are (the cast's photos are good ones), cropped around the face, JPEG.
Seeded: running it again makes the same pictures and sound (the Matroska container differs in its ids).
"""
from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

HERE = Path(__file__).resolve().parent
ASSETS = Path(os.environ.get("FILM_RESTORE_ASSETS", HERE.parents[1] / "shared"))
SOURCE = "media/clips/retalk_1.mp4"
FILM = HERE / "old_print.mkv"
REFERENCES_FOLDER = HERE / "refs" / "speaker"

SHOT_FRAMES = 24  # frames per shot: two shots, 2.2 s (the example runs in the tests: few frames)
FILM_SIZE = (384, 288)  # width, height: 4:3
# The shots' crops of the clip (width, height) and their centres (x, y): the first frames him to the
# waist, the second closer; both are shrunk to FILM_SIZE.
WIDE_CROP, WIDE_CENTRE = (700, 525), (350, 262)
CLOSE_CROP, CLOSE_CENTRE = (512, 384), (380, 250)
SOFTEN = 0.5
BLUR_SIGMA = 0.7
FADE = 0.55  # share of the colour kept
WARM = np.array([1.06, 1.0, 0.88], np.float32)  # R, G, B gains of the faded print
FLICKER = 0.03  # exposure varies by this share, slowly
GRAIN_SIGMA = 7.0  # levels (8-bit) of the grain in the mid-tones
GRAIN_BLUR = 0.6  # pixels: the grain's spatial correlation
DUST_PER_FRAME = 2
COMPRESSION_CRF = 26
REFERENCES = 3
REFERENCE_SIDE, REFERENCE_CENTRE = 400, (380, 240)  # a square around the whole face
SEED = 1927
VIDEO_TIME_BASE = Fraction(1, 1000)  # Matroska's


def clip_frames(path: Path) -> tuple[list[np.ndarray], list[float]]:
    """The clip's pictures (RGB) and their times (seconds from the first)."""
    with av.open(str(path)) as container:
        decoded = [(frame.to_ndarray(format="rgb24"), float(frame.time)) for frame in container.decode(video=0)]
    return [picture for picture, _ in decoded], [time - decoded[0][1] for _, time in decoded]


def crop(image: np.ndarray, size: tuple[int, int], centre: tuple[int, int]) -> np.ndarray:
    width, height = size
    x = int(np.clip(centre[0] - width // 2, 0, image.shape[1] - width))
    y = int(np.clip(centre[1] - height // 2, 0, image.shape[0] - height))
    return image[y:y + height, x:x + width]


def old_print(image: np.ndarray, index: int, rng: np.random.Generator) -> np.ndarray:
    """One frame as an old print shows it (see the module notes)."""
    height, width = image.shape[:2]
    small = cv2.resize(image, (round(width * SOFTEN), round(height * SOFTEN)), interpolation=cv2.INTER_AREA)
    picture = cv2.GaussianBlur(cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC), (0, 0), BLUR_SIGMA)
    picture = picture.astype(np.float32)
    grey = picture.mean(axis=2, keepdims=True)
    picture = (grey + FADE * (picture - grey)) * WARM
    picture *= 1.0 + FLICKER * np.sin(index * 0.9) * np.sin(index * 0.23 + 1.0)
    grain = cv2.GaussianBlur(rng.standard_normal((height, width)).astype(np.float32), (0, 0), GRAIN_BLUR)
    grain *= GRAIN_SIGMA / grain.std()
    mid_tones = 4.0 * (grey / 255.0) * (1.0 - grey / 255.0)
    picture += (grain[..., None] * (0.4 + 0.6 * mid_tones))
    for _ in range(DUST_PER_FRAME):
        centre = (int(rng.integers(width)), int(rng.integers(height)))
        cv2.circle(picture, centre, int(rng.integers(1, 3)), (235.0, 230.0, 215.0) if rng.random() < 0.5 else (25.0,) * 3, -1)
    return np.clip(np.round(picture), 0, 255).astype(np.uint8)


def shot_frames(frames: list[np.ndarray]) -> list[np.ndarray]:
    wide = [crop(frame, WIDE_CROP, WIDE_CENTRE) for frame in frames[:SHOT_FRAMES]]
    close = [crop(frame, CLOSE_CROP, CLOSE_CENTRE) for frame in frames[SHOT_FRAMES:2 * SHOT_FRAMES]]
    return [cv2.resize(frame, FILM_SIZE, interpolation=cv2.INTER_AREA) for frame in wide + close]


def sound(path: Path, seconds: float) -> tuple[np.ndarray, int]:
    """The clip's first seconds of sound, float32 stereo (2 x N), and its rate."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="fltp", layout="stereo", rate=stream.rate)
        chunks = [out.to_ndarray() for frame in container.decode(stream) for out in resampler.resample(frame)]
        rate = stream.rate
    return np.concatenate(chunks, axis=1)[:, :round(seconds * rate)].astype(np.float32), rate


def write_film(path: Path, pictures: list[np.ndarray], times: list[float], samples: np.ndarray, sample_rate: int) -> None:
    temporary = path.with_suffix(".tmp.mkv")
    with av.open(str(temporary), "w") as container:
        video = container.add_stream("libx264", rate=round(len(times) / times[-1]))
        video.width, video.height, video.pix_fmt = *FILM_SIZE, "yuv420p"
        video.codec_context.options = {"preset": "slow", "crf": str(COMPRESSION_CRF), "x264-params": "keyint=30:bframes=2"}
        video.metadata["title"] = "old print (example)"
        audio = container.add_stream("aac", rate=sample_rate, layout="stereo")
        video.time_base = video.codec_context.time_base = VIDEO_TIME_BASE
        for picture, time in zip(pictures, times):
            frame = av.VideoFrame.from_ndarray(picture, format="rgb24").reformat(format="yuv420p")
            frame.pts, frame.time_base = round(time / VIDEO_TIME_BASE), VIDEO_TIME_BASE
            container.mux(video.encode(frame))
        container.mux(video.encode())
        for start in range(0, samples.shape[1], 1024):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[:, start:start + 1024]), format="fltp", layout="stereo")
            frame.sample_rate, frame.pts, frame.time_base = sample_rate, start, Fraction(1, sample_rate)
            container.mux(audio.encode(frame))
        container.mux(audio.encode())
    temporary.replace(path)


def write_references(frames: list[np.ndarray]) -> None:
    REFERENCES_FOLDER.mkdir(parents=True, exist_ok=True)
    for old in REFERENCES_FOLDER.glob("*.jpg"):
        old.unlink()
    for index in np.linspace(2 * len(frames) // 3, len(frames) - 1, REFERENCES).astype(int):
        face = crop(frames[index], (REFERENCE_SIDE, REFERENCE_SIDE), REFERENCE_CENTRE)
        cv2.imwrite(str(REFERENCES_FOLDER / f"frame{index:03d}.jpg"), face[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 92])


def main() -> None:
    source = ASSETS / SOURCE
    if not source.is_file():
        raise SystemExit(f"{source} is missing: set FILM_RESTORE_ASSETS to the shared assets folder")
    frames, times = clip_frames(source)
    rng = np.random.default_rng(SEED)
    pictures = [old_print(picture, index, rng) for index, picture in enumerate(shot_frames(frames))]
    times = times[:len(pictures)]
    samples, sample_rate = sound(source, times[-1] + (times[-1] - times[-2]))
    write_film(FILM, pictures, times, samples, sample_rate)
    write_references(frames)
    print(f"{FILM} ({FILM.stat().st_size} bytes, {len(pictures)} frames) and {REFERENCES} references in {REFERENCES_FOLDER}")


if __name__ == "__main__":
    main()
