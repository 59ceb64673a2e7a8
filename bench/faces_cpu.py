"""Per-frame face-analysis time on CPU for 720p frames: detection, landmarks, embedding, total.

Frames come from a real clip, letterboxed into 1280 x 720. Prints a markdown table.

    python -m bench.faces_cpu --models ../shared/models --clip ../shared/media/clips/retalk_1.mp4
"""
import argparse
import os
import statistics
import time
from pathlib import Path

import av
import cv2
import numpy as np

from film_restore.faces.detector import Detector
from film_restore.faces import FaceAnalyzer
from film_restore.models import MODELS_ENV

FRAME_WIDTH, FRAME_HEIGHT = 1280, 720


def letterboxed_720p_frames(clip: Path, count: int) -> list[np.ndarray]:
    """count RGB frames spread over the clip, scaled to fit 1280 x 720 and centred on black."""
    with av.open(str(clip)) as container:
        decoded = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    chosen = [decoded[index] for index in np.linspace(0, len(decoded) - 1, count).round().astype(int)]
    frames = []
    for image in chosen:
        scale = min(FRAME_WIDTH / image.shape[1], FRAME_HEIGHT / image.shape[0])
        resized = cv2.resize(image, (round(image.shape[1] * scale), round(image.shape[0] * scale)), interpolation=cv2.INTER_AREA)
        canvas = np.zeros((FRAME_HEIGHT, FRAME_WIDTH, 3), dtype=np.uint8)
        top, left = (FRAME_HEIGHT - resized.shape[0]) // 2, (FRAME_WIDTH - resized.shape[1]) // 2
        canvas[top:top + resized.shape[0], left:left + resized.shape[1]] = resized
        frames.append(canvas)
    return frames


def time_stages(analyzer: FaceAnalyzer, frames: list[np.ndarray]) -> dict[str, list[float]]:
    """Milliseconds per frame for each stage, the per-face stages summed over the frame's faces."""
    times = {"detection": [], "landmarks": [], "embedding": [], "total (analyze)": [], "faces": []}
    analyzer.analyze(frames[0])  # first runs allocate; keep them out of the numbers
    for frame in frames:
        start = time.perf_counter()
        detections = analyzer.detector.detect(frame)
        detected = time.perf_counter()
        for box, keypoints in zip(detections.boxes, detections.keypoints):
            analyzer.landmarks(frame, box, keypoints)
        landmarked = time.perf_counter()
        for keypoints in detections.keypoints:
            analyzer.recogniser.embedding(frame, keypoints)
        embedded = time.perf_counter()
        analyzer.analyze(frame)
        analyzed = time.perf_counter()
        times["detection"].append((detected - start) * 1000)
        times["landmarks"].append((landmarked - detected) * 1000)
        times["embedding"].append((embedded - landmarked) * 1000)
        times["total (analyze)"].append((analyzed - embedded) * 1000)
        times["faces"].append(len(detections.boxes))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", help=f"models folder or pack name (default: ${MODELS_ENV}, else buffalo_l, fetched)")
    parser.add_argument("--clip", required=True, type=Path, help="video to take frames from")
    parser.add_argument("--frames", type=int, default=20, help="frames to time (default 20)")
    parser.add_argument("--detector", help="detector file name in the models folder, instead of the pack's choice")
    parser.add_argument("--detector-size", type=int, default=640, help="detector input side (default 640)")
    args = parser.parse_args()

    analyzer = FaceAnalyzer.from_models_dir(args.models, detector_size=args.detector_size)
    if args.detector:
        analyzer.detector = Detector(analyzer.detector.model_path.with_name(args.detector), input_size=args.detector_size)
    frames = letterboxed_720p_frames(args.clip, args.frames)
    times = time_stages(analyzer, frames)

    print(f"{len(frames)} frames {FRAME_WIDTH}x{FRAME_HEIGHT} from {args.clip.name}, {statistics.mean(times.pop('faces')):.1f} faces per frame; "
          f"detector {analyzer.detector.model_path.name} at {args.detector_size}, landmarks {analyzer.landmarker.model_path.name}, "
          f"recogniser {analyzer.recogniser.model_path.name}; {os.cpu_count()} CPU cores, CPUExecutionProvider")
    print()
    print("| stage | mean ms/frame | median ms/frame |")
    print("|---|---:|---:|")
    for stage, values in times.items():
        print(f"| {stage} | {statistics.mean(values):.1f} | {statistics.median(values):.1f} |")


if __name__ == "__main__":
    main()
