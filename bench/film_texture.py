"""Texture of restored faces against the film around them, before and after texture-aware paste-back.

For each shared talking-head clip, clean and with grain-like noise fresh on every frame
(grey grain correlated over about a pixel, stronger in the mid-tones, a little chroma),
consecutive frames from its middle are restored with our model (weights/, through FaceRestorer, generic
dictionary) and pasted back two ways:
  before  the plain paste-back (face_layer without the frame: restored band only, no grain)
  after   as the Composer pastes (compose.paste_window): the frame's detail above the crop's
          resolution kept but for the grain, fresh grain for the detail new each frame that was lost
and the texture ratio (texture.texture_ratio: the face's high-pass luma over the ring
around it, output over input; 1 = kept) is averaged over the frames. Also printed: the
noisy copies' estimated grain against the noise added (mid-tone luma bins).

    FILM_RESTORE_ASSETS=../shared python -m bench.film_texture [--frames 6] [--clips retalk_1 ...]
"""
import argparse
import time

import av
import cv2
import numpy as np

from film_restore import grain, texture
from film_restore.faces import FaceAnalyzer, align_face
from film_restore.compose import paste_window
from film_restore.paste import face_layer
from film_restore.restore import FaceRestorer
from tests.assets import ASSETS, TRAINED_MODEL

CLIPS = ("retalk_1", "retalk_2", "retalk_3", "liveportrait_d0", "liveportrait_d3", "liveportrait_d9", "liveportrait_d10")
# The noisy copies' grain: luma std at mid-grey, its spatial correlation (Gaussian sigma,
# pixels), and the chroma part relative to the luma part.
NOISE_STD, NOISE_CORRELATION, NOISE_CHROMA = 6.0, 0.7, 0.2
GOAL = (0.8, 1.25)


def clip_frames(name: str, count: int) -> list[np.ndarray]:
    """count consecutive frames from the clip's middle (the grain's change from frame to frame is measured)."""
    with av.open(str(ASSETS / f"media/clips/{name}.mp4")) as container:
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    start = max(len(frames) // 2 - count // 2, 0)
    return frames[start:start + count]


def noise_amplitude(luma: np.ndarray) -> np.ndarray:
    """The noisy copies' luma grain std at this luma: strongest in the mid-tones, as film grain."""
    return NOISE_STD * (0.5 + np.sin(np.pi * np.clip(luma, 0, 255) / 255) / 2)


def add_grain(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    def field(shape):
        noise = cv2.GaussianBlur(rng.standard_normal(shape).astype(np.float32), (0, 0), NOISE_CORRELATION)
        return noise / noise.std()

    grey = field(rgb.shape[:2])[..., None] + NOISE_CHROMA * field(rgb.shape)
    amplitude = noise_amplitude(texture.luma(rgb))[..., None] / np.sqrt(1 + NOISE_CHROMA ** 2 * (texture.LUMA_WEIGHTS ** 2).sum())
    return np.clip(np.rint(rgb + amplitude * grey), 0, 255).astype(np.uint8)


def composite(rgb: np.ndarray, layer: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(rgb + alpha[..., None] * (layer - rgb)), 0, 255).astype(np.uint8)


def measure(frames, analyzer, restorer, size):
    """(mean ratio before, mean ratio after, crop pixels per frame pixel, grain model) over the frames' largest faces."""
    faces = []
    for rgb in frames:
        found = analyzer.analyze(rgb)
        if found:
            faces.append((rgb, max(found, key=lambda face: texture.face_width(face.landmarks))))
    if not faces:
        return None
    track_grain = grain.TrackGrain()
    track_grain.observe({(index, 0): (rgb, face.landmarks) for index, (rgb, face) in enumerate(faces)})
    aligned = [align_face(rgb, face, size) for rgb, face in faces]
    restored = restorer.restore(np.stack([a.crop for a in aligned]), np.stack([a.boxes for a in aligned]), None)
    kept = paste_window(frames[0].shape, {i: ([(i, 0)], [(aligned[i], restored[i])]) for i in range(len(faces))},
                        {i: rgb for i, (rgb, _) in enumerate(faces)}, {(i, 0): face.landmarks for i, (_, face) in enumerate(faces)},
                        track_grain, add_grain=True, held={0})
    before, after, scales = [], [], []
    for index, (rgb, face) in enumerate(faces):
        plain = composite(rgb, *face_layer(rgb.shape, [(aligned[index], restored[index])]))
        before.append(texture.texture_ratio(rgb, plain, face.landmarks))
        after.append(texture.texture_ratio(rgb, composite(rgb, *kept[index][2]), face.landmarks))
        scales.append(aligned[index].transform.scale)
    return np.nanmean(before), np.nanmean(after), np.mean(scales), track_grain.models.get(0), len(faces)


def main() -> None:
    arguments = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    arguments.add_argument("--frames", type=int, default=6, help="consecutive frames per clip, from its middle")
    arguments.add_argument("--clips", nargs="*", default=CLIPS)
    args = arguments.parse_args()
    analyzer = FaceAnalyzer.from_models_dir(ASSETS / "models")
    restorer = FaceRestorer(TRAINED_MODEL, {})
    size = restorer.image_size
    start = time.perf_counter()
    rows, grain_rows = [], []
    for name in args.clips:
        frames = clip_frames(name, args.frames)
        rng = np.random.default_rng(0)
        for copy, pictures in (("clean", frames), ("noisy", [add_grain(rgb, rng) for rgb in frames])):
            measured = measure(pictures, analyzer, restorer, size)
            if measured is None:
                print(f"{name} {copy}: no face found on its {len(pictures)} frames", flush=True)
                continue
            ratio_before, ratio_after, scale, model, faces = measured
            rows.append((name, copy, faces, scale, ratio_before, ratio_after))
            print(f"{name} {copy}: {ratio_before:.2f} -> {ratio_after:.2f}", flush=True)
            if copy == "noisy" and model is not None:
                grain_rows.append((name, model))
    seconds = time.perf_counter() - start
    print(f"texture ratio (face high-pass luma over the ring around it, output / input; goal {GOAL[0]}-{GOAL[1]}), "
          f"{TRAINED_MODEL.name} ({size} px crop), {args.frames} frames per clip, {seconds:.0f} s\n")
    print("| clip | copy | faces | crop px per frame px | before | after | in goal |")
    print("|---|---|---:|---:|---:|---:|---|")
    for name, copy, faces, scale, ratio_before, ratio_after in rows:
        inside = "yes" if GOAL[0] <= ratio_after <= GOAL[1] else "no"
        print(f"| {name} | {copy} | {faces} | {scale:.2f} | {ratio_before:.2f} | {ratio_after:.2f} | {inside} |")
    print("\nnoisy copies: grain estimated around the face (luma std per luma bin) against the noise added\n")
    centres = grain.LUMA_BIN_CENTRES
    print("| clip | " + " | ".join(f"luma {c:.0f}" for c in centres[2:6]) + " | monochrome | AR (0,-1) (-1,0) |")
    print("|---|" + "---:|" * 4 + "---|---|")
    print("| added | " + " | ".join(f"{noise_amplitude(c):.1f}" for c in centres[2:6]) + " | - | - |")
    left, up = grain.GRAIN_OFFSETS.index((0, -1)), grain.GRAIN_OFFSETS.index((-1, 0))
    for name, model in grain_rows:
        cells = " | ".join(f"{value:.1f}" for value in model.amplitude[2:6])
        print(f"| {name} | {cells} | {model.monochrome} | {model.ar[left]:.2f} {model.ar[up]:.2f} |")
    all_after = [row[5] for row in rows]
    print(f"\nafter: {sum(GOAL[0] <= r <= GOAL[1] for r in all_after)} of {len(all_after)} clip copies in the goal; "
          f"before: median {np.median([row[4] for row in rows]):.2f}, after: median {np.median(all_after):.2f}")


if __name__ == "__main__":
    main()
