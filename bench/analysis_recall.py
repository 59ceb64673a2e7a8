"""Face analysis detecting every k-th frame (faces followed in between) against detecting on every frame.

On every shared clip (media/clips/*.mp4, all frames, own size), the 1080p two-face film of
bench.pool_size and the black-and-white oldfilm_001 frames (encoded as a film), the analyse
stage (stages.FaceTracker: faces, tracks, smoothing, identities) runs twice, with detection
on every frame (the reference) and every k-th; then per source:
  found       reference face-frames (every face of every track) that the k-th run has too:
              its matching track holds a face there whose box overlaps by IoU >= 0.5
  extra       face-frames of the k-th run that no reference face-frame matches
  tracks      reference / k-th run; same: one-to-one with the same shot, first and last frame
              and actor (tracks matched by the face-frames they share)
  landmarks   mean distance of the 68 landmarks to the reference's, / the reference's distance
              between the eye centres, per face-frame: mean and 99th percentile (smoothed
              tracks, what the pipeline uses); keypoints the same for the 5 alignment keypoints
  CPU         process CPU ms per frame of each run (all threads; decoding included)
The cast has one actor per clip (its face on one frame three quarters through) and the
oldfilm's two faces (its last frame). Prints a markdown table.

    FILM_RESTORE_ASSETS=../shared python -m bench.analysis_recall [--detect-every 5] [--film-frames 120]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np

from bench.pool_size import make_two_face_film
from film_restore.faces import FaceAnalyzer
from film_restore.faces.identity import Identifier
from film_restore.following import eye_distance
from film_restore.records import Track
from film_restore.settings import DETECT_EVERY
from film_restore.stages import FaceTracker, Scanner
from film_restore.tracking import box_iou
from film_restore.video import read_frames
from tests.assets import ASSETS

SAME_FACE_IOU = 0.5
CAST_THRESHOLD = 0.45  # the cast file's default match threshold


@dataclass
class Comparison:
    """A run's tracks against the reference's (see the module's docstring)."""

    face_frames: int
    found: int
    extra: int
    reference_tracks: int
    tracks: int
    same_tracks: bool
    landmark_errors: np.ndarray
    keypoint_errors: np.ndarray

    @property
    def recall(self) -> float:
        return self.found / self.face_frames if self.face_frames else 1.0


def compare(reference: list[Track], tracks: list[Track]) -> Comparison:
    """How far `tracks` are from the `reference` tracks of the same frames."""
    faces_by_frame = lambda track: {tracked.frame: tracked.face for tracked in track.faces}  # noqa: E731
    reference_faces, faces = [faces_by_frame(t) for t in reference], [faces_by_frame(t) for t in tracks]
    shared = lambda a, b: [frame for frame in a.keys() & b.keys() if box_iou(a[frame].box, b[frame].box) >= SAME_FACE_IOU]  # noqa: E731
    overlaps = sorted(((len(shared(r, t)), i, j) for i, r in enumerate(reference_faces) for j, t in enumerate(faces)), reverse=True)
    pairs, used_reference, used = [], set(), set()
    for count, i, j in overlaps:
        if count and i not in used_reference and j not in used:
            pairs.append((i, j))
            used_reference.add(i)
            used.add(j)
    landmark_errors, keypoint_errors, found = [], [], 0
    for i, j in pairs:
        for frame in shared(reference_faces[i], faces[j]):
            expected, got = reference_faces[i][frame], faces[j][frame]
            scale = eye_distance(expected.landmarks)
            landmark_errors.append(np.linalg.norm(got.landmarks - expected.landmarks, axis=1).mean() / scale)
            keypoint_errors.append(np.linalg.norm(got.keypoints - expected.keypoints, axis=1).mean() / scale)
            found += 1
    same = len(reference) == len(tracks) == len(pairs) and all(
        (reference[i].shot, reference[i].first_frame, reference[i].last_frame, reference[i].actor)
        == (tracks[j].shot, tracks[j].first_frame, tracks[j].last_frame, tracks[j].actor) for i, j in pairs)
    face_frames = sum(len(f) for f in reference_faces)
    return Comparison(face_frames, found, sum(len(f) for f in faces) - found, len(reference), len(tracks), same,
                      np.array(landmark_errors), np.array(keypoint_errors))


def write_film(path: Path, frames: list[np.ndarray], rate: int = 24) -> None:
    """Frames as a high-quality H.264 film (cropped to even sides, as 4:2:0 needs)."""
    height, width = (side - side % 2 for side in frames[0].shape[:2])
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.height, stream.width = height, width
        stream.pix_fmt, stream.codec_context.options = "yuv420p", {"crf": "12", "preset": "veryfast"}
        for image in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image[:height, :width]), format="rgb24")))
        container.mux(stream.encode())


def frame_at(path: Path, fraction: float) -> np.ndarray:
    frames = [frame.picture.rgb() for frame in read_frames(path)]
    return frames[min(int(fraction * len(frames)), len(frames) - 1)]


def cast(analyzer: FaceAnalyzer, clips: list[Path], oldfilm: Path) -> Identifier:
    actors = {}
    for clip in clips:
        faces = analyzer.analyze(frame_at(clip, 0.75))
        actors[clip.stem] = max(faces, key=lambda face: face.box[2] - face.box[0]).embedding[None]
    for side, face in zip(("oldfilm left", "oldfilm right"), sorted(analyzer.analyze(frame_at(oldfilm, 1.0)), key=lambda f: f.box[0])):
        actors[side] = face.embedding[None]
    return Identifier(actors, CAST_THRESHOLD)


def run(tracker: FaceTracker, film: Path) -> tuple[list[Track], int, float, int]:
    """(tracks, frames, CPU seconds, frames the detector ran on) of the whole film, chunk by chunk."""
    scan = Scanner(10_000)(film)
    detected = tracker.follower.detected_frames
    start = time.process_time()
    tracks = [track for chunk in scan.chunks for track in tracker(film, chunk, scan.frame_pts)]
    return tracks, len(scan.frame_pts), time.process_time() - start, tracker.follower.detected_frames - detected


def main() -> None:
    arguments = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    arguments.add_argument("--detect-every", type=int, default=DETECT_EVERY)
    arguments.add_argument("--film-frames", type=int, default=120, help="frames of the 1080p two-face film")
    arguments.add_argument("--sources", help="comma-separated source names to run (default all)")
    args = arguments.parse_args()
    models = ASSETS / "models"
    clips = sorted((ASSETS / "media/clips").glob("*.mp4"))
    with tempfile.TemporaryDirectory() as folder:
        oldfilm = Path(folder) / "oldfilm_001.mp4"
        write_film(oldfilm, [cv2.imread(str(p))[:, :, ::-1].copy() for p in sorted((ASSETS / "media/oldfilm_001").glob("*.png"))])
        two_faces = Path(folder) / "two_faces_1080p.mp4"
        make_two_face_film(two_faces, args.film_frames)
        sources = [*clips, two_faces, oldfilm]
        if args.sources:
            sources = [source for source in sources if source.stem in args.sources.split(",")]
        identifier = cast(FaceAnalyzer.from_models_dir(models), clips, oldfilm)
        every_frame = FaceTracker(models, identifier, detect_every=1)
        kth = FaceTracker(models, identifier, detect_every=args.detect_every)
        print(f"detection every {args.detect_every} frames against every frame; compact pack, {os.cpu_count()} CPU cores, "
              f"load average {os.getloadavg()[0]:.1f}\n")
        print("| source | frames | detected | face-frames | found | extra | tracks (ref / k-th) | tracks same | "
              "landmarks mean / p99 (% eye dist.) | keypoints mean / p99 | CPU ms/frame every / k-th |")
        print("|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|")
        for source in sources:
            reference, frames, reference_cpu, _ = run(every_frame, source)
            tracks, _, cpu, detected = run(kth, source)
            result = compare(reference, tracks)
            spread = lambda errors: (f"{100 * errors.mean():.2f} / {100 * np.percentile(errors, 99):.2f}"  # noqa: E731
                                     if len(errors) else "-")
            print(f"| {source.stem} | {frames} | {detected / frames:.0%} | {result.face_frames} | {result.recall:.2%} | "
                  f"{result.extra} | {result.reference_tracks} / {result.tracks} | {'yes' if result.same_tracks else 'NO'} | "
                  f"{spread(result.landmark_errors)} | {spread(result.keypoint_errors)} | "
                  f"{1e3 * reference_cpu / frames:.0f} / {1e3 * cpu / frames:.0f} |", flush=True)


if __name__ == "__main__":
    main()
