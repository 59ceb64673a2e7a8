"""What the review page costs on a 1080p film: the pictures of its tracks decoded from the input and the output,
cropped, measured and encoded (film_restore.review.review_tracks), per track and in all.

The film: real clips enlarged to 1920 x 1080, x264 with the encoder's default keyframe interval (250) and
B-frames, as a long master would be; the output is the same file (its decoding costs the same as a restored
x264 output's). Each shot's face is found once and held for its frames, cut into tracks of --track-seconds.
Prints a markdown table: tracks with pictures, pictures decoded, seconds, seconds per track, bytes.

    python -m bench.review_page [--seconds 40] [--track-seconds 4] [--limits 4,40] [--keep DIR]
"""
import argparse
import platform
import tempfile
import time
from pathlib import Path

import av
import cv2
import numpy as np

from film_restore.faces import FaceAnalyzer
from film_restore.records import Track, TrackedFace
from film_restore.review import Pictures, frame_seconds, review_tracks
from tests.assets import asset

CLIPS = ("media/clips/retalk_2.mp4", "media/clips/retalk_3.mp4", "media/clips/liveportrait_d10.mp4")
SIZE = (1920, 1080)
RATE = 25


def enlarged(clip: Path, frames: int) -> list[np.ndarray]:
    """The clip's first frames (looped back and forth to the count), centred on a 1920 x 1080 canvas at 1080 high."""
    with av.open(str(clip)) as container:
        pictures = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    pictures = pictures + pictures[::-1]
    width, height = SIZE
    out = []
    for index in range(frames):
        picture = pictures[index % len(pictures)]
        scale = height / picture.shape[0]
        resized = cv2.resize(picture, (round(picture.shape[1] * scale), height), interpolation=cv2.INTER_CUBIC)
        canvas = np.zeros((height, width, 3), np.uint8)
        x = (width - resized.shape[1]) // 2
        canvas[:, x:x + resized.shape[1]] = resized
        out.append(canvas)
    return out


def make_film(path: Path, seconds: float) -> list[tuple[int, int]]:
    """The film and its shots (first, last frame): one clip per shot, in turn."""
    frames_per_shot = round(seconds * RATE / len(CLIPS))
    shots = []
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=RATE)
        stream.width, stream.height, stream.pix_fmt = *SIZE, "yuv420p"
        stream.codec_context.options = {"preset": "ultrafast", "crf": "18"}
        index = 0
        for clip in CLIPS:
            shots.append((index, index + frames_per_shot - 1))
            for picture in enlarged(asset(clip), frames_per_shot):
                frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
                frame.pts = index
                container.mux(stream.encode(frame))
                index += 1
        container.mux(stream.encode())
    return shots


def tracks_of(path: Path, shots, track_seconds: float) -> list[Track]:
    analyzer = FaceAnalyzer.from_models_dir(asset("models"))
    tracks = []
    with av.open(str(path)) as container:
        firsts = {}
        for index, frame in enumerate(container.decode(video=0)):
            if any(index == first for first, _ in shots):
                firsts[index] = max(analyzer.analyze(frame.to_ndarray(format="rgb24")), key=lambda f: f.box[2] - f.box[0])
            if len(firsts) == len(shots):
                break
    length = round(track_seconds * RATE)
    for number, (first, last) in enumerate(shots):
        for start in range(first, last + 1, length):
            frames = range(start, min(start + length, last + 1))
            tracks.append(Track(number, tuple(TrackedFace(f, firsts[first]) for f in frames), None, 0.0))
    return tracks


def main() -> None:
    arguments = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    arguments.add_argument("--seconds", type=float, default=40.0)
    arguments.add_argument("--track-seconds", type=float, default=4.0)
    arguments.add_argument("--limits", default="4,40", help="MEDIA_TRACKS values to measure")
    arguments.add_argument("--keep", type=Path, help="make the film here (and keep it) instead of a temporary folder")
    args = arguments.parse_args()
    with tempfile.TemporaryDirectory() as temporary:
        folder = args.keep or Path(temporary)
        folder.mkdir(parents=True, exist_ok=True)
        film = folder / "film_1080p.mkv"
        shots = make_film(film, args.seconds)
        tracks = tracks_of(film, shots, args.track_seconds)
        with av.open(str(film)) as container:
            pts = [frame.pts for frame in container.decode(video=0)]
            time_base = container.streams.video[0].time_base
        pictures = Pictures(film, film, pts, frame_seconds(pts, time_base, RATE), None)
        print(f"{platform.processor() or platform.machine()}; {len(pts)} frames 1920x1080 x264 (keyint 250, B-frames), "
              f"{len(tracks)} tracks of {args.track_seconds} s")
        print("| tracks with pictures | pictures decoded | seconds | s per track | MB |")
        print("|---|---|---|---|---|")
        for limit in map(int, args.limits.split(",")):
            entries = [{"id": f"s{t.shot}t{i}", "chunk": 0, "number": i, "faces": len(t.faces)} for i, t in enumerate(tracks)]
            started = time.perf_counter()
            files, cost = review_tracks(lambda chunk: tracks, entries, pictures, limit)
            seconds = time.perf_counter() - started
            print(f"| {cost['tracks_with_media']} | {cost['pictures_decoded']} | {seconds:.1f} | "
                  f"{seconds / max(cost['tracks_with_media'], 1):.2f} | {cost['bytes'] / 1e6:.1f} |")


if __name__ == "__main__":
    main()
