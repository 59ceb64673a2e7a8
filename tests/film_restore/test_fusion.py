"""Track fusion (finish.guards) on a real talking-head track: it takes the noise off a face, leaves
what crosses the face as it was (no ghosts) and keeps the eyes and mouth as sharp as without it."""
import cv2
import numpy as np
import pytest

from film_restore.compose import ComposeSettings, Composer
from film_restore.faces import align_face
from film_restore.faces.identity import Identifier
from film_restore.finish import guards
from film_restore.finish.measures import fine_detail
from film_restore.records import ChunkResult, Frame, Track
from film_restore.tracking import identify_tracks
from film_restore.video import RGBPicture
from tests.assets import asset

NOISE_SIGMA = 6.0
OCCLUDED_FRAMES = 10


def noisy(pictures: np.ndarray, seed: int) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0, NOISE_SIGMA, pictures.shape)
    return np.clip(np.round(pictures + noise), 0, 255).astype(np.uint8)


def unchanged(crops, boxes, actor):
    return crops.astype(np.float32)


def test_fusion_takes_the_noise_off_a_face_its_restorer_left(talking_head):
    # A restorer that returns its noisy input: without fusion the faces come back as they were;
    # fused along the track, they come closer to the clean faces.
    clean = talking_head["crops"][:10]
    crops = noisy(clean, 1)
    error = lambda faces: np.sqrt(((faces - clean.astype(np.float32)) ** 2).mean())
    options = dict(embed=talking_head["embed"], reference=talking_head["reference"], strength=1.0)
    alone = guards.guard_track(crops, crops.astype(np.float32), fusion=False, **options)
    fused = guards.guard_track(crops, crops.astype(np.float32), **options)
    assert np.array_equal(alone.faces, crops.astype(np.float32))
    assert error(fused.faces) < 0.7 * error(crops), (error(fused.faces), error(crops))


def occluded(frames, faces, kind: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The frames with an occluder moving across the mouth over OCCLUDED_FRAMES frames, and each
    frame's mask of it: a dark bar (a microphone) or a skin-coloured patch (a hand)."""
    first, last = faces[0].face.landmarks, faces[OCCLUDED_FRAMES - 1].face.landmarks
    width = np.ptp(first[:17, 0])
    start, end = first[48, 0] - 0.3 * width, last[54, 0] + 0.1 * width
    pictures, masks = [], []
    for t in range(OCCLUDED_FRAMES):
        mouth = faces[t].face.landmarks[48:68]
        x = int(round(start + (end - start) * t / (OCCLUDED_FRAMES - 1)))
        mask = np.zeros(frames[t].shape[:2], np.uint8)
        if kind == "bar":
            cv2.rectangle(mask, (x, int(mouth[:, 1].min() - 0.3 * width)), (x + int(0.08 * width), int(mouth[:, 1].max() + 0.3 * width)),
                          1, -1)
            colour = (28, 26, 30)
        else:
            centre = (x, int(mouth[:, 1].mean()))
            cv2.ellipse(mask, centre, (int(0.2 * width), int(0.15 * width)), 0, 0, 360, 1, -1)
            cheek = faces[t].face.landmarks[[2, 3, 31]].mean(axis=0).astype(int)
            colour = tuple(int(c) for c in frames[t][cheek[1] - 3:cheek[1] + 3, cheek[0] - 3:cheek[0] + 3].reshape(-1, 3).mean(0))
        picture = frames[t].copy()
        picture[mask > 0] = colour
        pictures.append(picture)
        masks.append(mask > 0)
    return pictures, masks


@pytest.mark.parametrize("kind", ["bar", "hand"])
def test_what_crosses_the_mouth_is_not_smeared_with_the_face(talking_head, kind):
    # Noise for the fusion to take off the face; the occluder flat, so that whatever of the face
    # is fused into it shows.
    frames, masks = occluded(list(noisy(np.stack(talking_head["frames"]), 2)), talking_head["faces"], kind)
    tracks = identify_tracks([Track(0, talking_head["faces"][:OCCLUDED_FRAMES])],
                             Identifier({"Speaker": talking_head["reference"][None]}, 0.45))
    settings = ComposeSettings("ffv1", 128, grain="off", references={"Speaker": talking_head["reference"]},
                               models_dir=str(asset("models")))
    pictures = {}
    in_memory = [Frame(index, index, RGBPicture(frame)) for index, frame in enumerate(frames)]
    for window in Composer(None, settings, unchanged).windows(in_memory, tracks, ChunkResult(0, 0, 0)):
        pictures.update(window.pictures)
    change = np.stack([np.abs(pictures[t].rgb().astype(np.float32) - frames[t]).mean(axis=-1) for t in range(OCCLUDED_FRAMES)])
    occluder = np.stack(masks)
    face = np.zeros_like(occluder)
    for t, tracked in enumerate(talking_head["faces"][:OCCLUDED_FRAMES]):
        cv2.fillConvexPoly(face[t].view(np.uint8), cv2.convexHull(tracked.face.landmarks[:27].astype(np.int32)), 1)
    face &= ~occluder
    assert change[face].mean() > 1.5  # the fusion took noise off the face around it
    assert change[occluder].mean() <= 1.0 and (change[occluder] > 4).mean() < 0.02, \
        (change[occluder].mean(), (change[occluder] > 4).mean(), change[face].mean())


def test_eyes_and_mouth_stay_as_sharp_as_without_fusion_on_fast_motion(talking_head):
    # Every other frame of the track: the face moves twice as fast. A restorer that sharpens.
    frames, faces = talking_head["frames"][::2], talking_head["faces"][::2]
    aligned = [align_face(frame, tracked.face, 128) for frame, tracked in zip(frames, faces)]
    crops = np.stack([a.crop for a in aligned])
    sharpened = np.stack([crop + 1.0 * (crop - cv2.GaussianBlur(crop, (0, 0), 1.5)) for crop in crops.astype(np.float32)])
    options = dict(embed=talking_head["embed"], reference=talking_head["reference"], scale=aligned[0].transform.scale)

    def sharpness(result) -> float:
        """Fine detail's std in the eye and mouth boxes, over the faces."""
        stds = []
        for face, a in zip(result.faces, aligned):
            detail = fine_detail(np.clip(face, 0, 255))
            for x1, y1, x2, y2 in a.boxes[[0, 1, 3]]:
                stds.append(detail[y1:y2, x1:x2].std())
        return float(np.mean(stds))

    with_fusion, without = sharpness(guards.guard_track(crops, sharpened, **options)), \
        sharpness(guards.guard_track(crops, sharpened, fusion=False, **options))
    assert with_fusion >= 0.98 * without, (with_fusion, without)
