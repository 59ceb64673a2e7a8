"""Face analysis, alignment and paste-back on real film frames and photos."""
import cv2
import numpy as np
import pytest

from tests.assets import asset
from film_restore.faces.align import alignment_transform, ffhq_template, warp_to_crop
from film_restore.finish.paste import face_matte, frame_matte, paste_back
from film_restore.faces import align_face

# Faces a person sees at once in each photo (counted by eye); heads seen from behind
# and people hidden behind others are not counted.
VISIBLE_FACES = {"00.jpg": 4, "01.jpg": 4, "02.png": 4, "03.jpg": 1, "04.jpg": 1, "05.jpg": 1, "06.png": 2}
# Old-film frames with two faces; in 132 the background face's matte overlaps the main one's.
TWO_FACE_FRAMES = ("132.png", "134.png", "136.png")


def _read_rgb(path) -> np.ndarray:
    return np.ascontiguousarray(cv2.imread(str(path))[..., ::-1])


def _aligned_faces(analyzer, frame):
    return [align_face(frame, face) for face in analyzer.analyze(frame)]


def _union_matte(frame, aligned_faces):
    return np.max([frame_matte(frame.shape, aligned) for aligned in aligned_faces], axis=0)


@pytest.mark.parametrize("name", sorted(VISIBLE_FACES))
def test_every_visible_face_in_the_photos_is_found(analyzer, name):
    detections = analyzer.detector.detect(_read_rgb(asset(f"media/photos/{name}")))
    print(f"{name}: {len(detections.scores)} faces, scores {[round(float(score), 2) for score in detections.scores]}")
    assert len(detections.scores) >= VISIBLE_FACES[name]


@pytest.mark.parametrize("name", TWO_FACE_FRAMES)
def test_both_faces_are_found_in_two_face_film_frames(analyzer, name):
    assert len(analyzer.analyze(_read_rgb(asset(f"media/oldfilm_001/{name}")))) == 2


@pytest.mark.parametrize("path", [f"media/oldfilm_001/{name}" for name in TWO_FACE_FRAMES] + ["media/photos/02.png", "media/photos/01.jpg"])
def test_round_trip_with_an_identity_restorer_keeps_the_frame(analyzer, path):
    frame = _read_rgb(asset(path))
    aligned_faces = _aligned_faces(analyzer, frame)
    pasted = paste_back(frame, [(aligned, aligned.crop) for aligned in aligned_faces])
    matte = _union_matte(frame, aligned_faces)
    difference = np.abs(pasted.astype(np.int16) - frame)
    print(f"{path}: {len(aligned_faces)} faces, inside the matte max diff {difference[matte > 0].max()}")
    assert np.array_equal(pasted[matte == 0], frame[matte == 0])
    assert difference[matte > 0].max() <= 2
    # The matte covers each face, not a sliver of it.
    for aligned in aligned_faces:
        jaw_width = np.linalg.norm(aligned.landmarks[16] - aligned.landmarks[0]) / aligned.transform.scale
        assert np.count_nonzero(frame_matte(frame.shape, aligned) > 0.99) >= 0.5 * jaw_width**2


def test_restorer_colour_shift_is_undone_and_its_detail_kept(analyzer):
    frame = _read_rgb(asset("media/photos/02.png"))
    aligned_faces = _aligned_faces(analyzer, frame)

    def tint_and_sharpen(crop):
        sharpened = cv2.addWeighted(crop, 2.0, cv2.GaussianBlur(crop, (0, 0), 2), -1.0, 0)
        return np.clip(sharpened.astype(np.int16) + (40, 0, -40), 0, 255).astype(np.uint8)

    pasted = paste_back(frame, [(aligned, tint_and_sharpen(aligned.crop)) for aligned in aligned_faces])
    core = _union_matte(frame, aligned_faces) >= 0.99
    mean_shift = pasted[core].mean(axis=0) - frame[core].mean(axis=0)
    print(f"mean colour shift inside the faces: {np.round(mean_shift, 2).tolist()} (restorer: +40, 0, -40)")
    assert np.abs(mean_shift).max() <= 2.0
    detail = lambda image: np.abs(cv2.Laplacian(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), cv2.CV_32F))[core].mean()
    assert detail(pasted) > 1.3 * detail(frame)


def test_monochrome_film_stays_monochrome(analyzer):
    frame = _read_rgb(asset("media/oldfilm_001/134.png"))
    aligned_faces = _aligned_faces(analyzer, frame)
    colourful = lambda crop: np.clip(crop.astype(np.int16) + np.where(np.arange(crop.shape[1]) % 8 < 4, 30, -30)[None, :, None] * (1, 0, -1), 0, 255).astype(np.uint8)
    pasted = paste_back(frame, [(aligned, colourful(aligned.crop)) for aligned in aligned_faces])
    matte = _union_matte(frame, aligned_faces) > 0
    chroma = lambda image: cv2.cvtColor(image, cv2.COLOR_RGB2YCrCb)[..., 1:][matte].astype(np.int16)
    assert np.abs(chroma(pasted) - chroma(frame)).max() <= 2


def test_overlapping_faces_larger_on_top_whatever_the_order(analyzer):
    frame = _read_rgb(asset("media/oldfilm_001/132.png"))
    aligned_faces = _aligned_faces(analyzer, frame)
    mattes = [frame_matte(frame.shape, aligned) for aligned in aligned_faces]
    assert np.count_nonzero((mattes[0] > 0) & (mattes[1] > 0)) > 0, "the two mattes should overlap in this frame"
    pairs = [(aligned, cv2.GaussianBlur(aligned.crop, (0, 0), 4)) for aligned in aligned_faces]
    pasted = paste_back(frame, pairs)
    assert np.array_equal(pasted, paste_back(frame, pairs[::-1]))
    larger = int(np.argmin([aligned.transform.scale for aligned in aligned_faces]))
    on_top = mattes[larger] >= 1.0
    assert np.abs(pasted[on_top].astype(np.int16) - paste_back(frame, [pairs[larger]])[on_top]).max() <= 1


def test_landmarks_are_consistent_between_frame_and_crop(analyzer):
    frame = _read_rgb(asset("media/photos/06.png"))
    for face in analyzer.analyze(frame):
        aligned = align_face(frame, face)
        assert aligned.crop.shape == (512, 512, 3) and aligned.boxes.shape == (4, 4)
        assert np.allclose(aligned.transform.to_frame(aligned.landmarks), face.landmarks, atol=1e-2)
        # Aligned faces sit on the template: outer eye corners near the template's eyes.
        eyes = aligned.landmarks[[36, 39]].mean(axis=0), aligned.landmarks[[42, 45]].mean(axis=0)
        assert np.linalg.norm(np.array(eyes) - ffhq_template()[:2], axis=1).max() <= 20
        small = align_face(frame, face, size=256)
        assert small.crop.shape == (256, 256, 3)
        assert np.abs(small.boxes * 2 - aligned.boxes).max() <= 2


def test_faces_larger_than_the_crop_are_shrunk_without_aliasing():
    # A one-pixel checkerboard seen three times larger than the crop must average to grey
    # (sampling it without shrinking first gives black and white pixels: std 127).
    checkerboard = (np.indices((1600, 1600)).sum(axis=0) % 2 * 255).astype(np.uint8)
    frame = np.repeat(checkerboard[..., None], 3, axis=2)
    transform = alignment_transform(ffhq_template() * 3 + 20)
    assert transform.scale == pytest.approx(1 / 3)
    crop = warp_to_crop(frame, transform).astype(np.float32)
    assert abs(crop.mean() - 127.5) < 2 and crop.std() < 10


def test_matte_erodes_its_hull_as_opencv_from_the_runs_of_its_rows():
    # The matte's erosion works on each row's run of the hull: the same pixels as cv2.erode, for real faces
    # whole, enlarged past the crop's edges and shrunk; its reach (the rectangle above 0) is the matte's.
    from film_restore.finish.landmarks import face_outline, face_width
    from film_restore.finish.paste import FOREHEAD_LIFT, MATTE_EDGE, _eroded, _matte

    labels = sorted((asset("media/dmdnet_testset/RefsLandmark")).glob("*/*.txt"))[::4]
    assert len(labels) >= 8
    for label in labels:
        landmarks = np.loadtxt(label)
        for size, scale, shift in ((512, 1.0, (0, 0)), (512, 1.6, (-150, 40)), (384, 0.6, (5, 5)), (512, 1.3, (200, -160))):
            points = (landmarks - 256) * scale + size / 2 + np.array(shift)
            hull = np.zeros((size, size), np.uint8)
            cv2.fillConvexPoly(hull, np.round(face_outline(points, FOREHEAD_LIFT) * 16).astype(np.int32), 1, cv2.LINE_8, 4)
            edge = max(int(round(MATTE_EDGE * face_width(points))), 1)
            kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * edge + 1, 2 * edge + 1))
            assert np.array_equal(_eroded(hull, kernel), cv2.erode(hull, kernel)), (label, size, scale, shift)
            matte, reach = _matte(points, size)
            rows, columns = np.flatnonzero(matte.any(axis=1)), np.flatnonzero(matte.any(axis=0))
            assert reach == np.s_[rows[0]:rows[-1] + 1, columns[0]:columns[-1] + 1]
    two_runs = np.zeros((64, 64), np.uint8)
    two_runs[10:50, 5:25] = two_runs[10:50, 35:60] = 1
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7))
    assert np.array_equal(_eroded(two_runs, kernel), cv2.erode(two_runs, kernel))


def test_matte_is_inside_the_crop_and_soft():
    template_face = np.loadtxt(asset("media/dmdnet_testset/RefsLandmark/00005/0.png.txt"))
    matte = face_matte(template_face, 512)
    assert matte.dtype == np.float32 and matte.max() == 1.0 and matte.min() == 0.0
    assert 0 < np.count_nonzero((matte > 0) & (matte < 1)) < np.count_nonzero(matte >= 1)
    # Between the eyes and above the brows (forehead) is face; the corners are not.
    assert matte[int(template_face[27, 1]), int(template_face[27, 0])] == 1.0
    assert matte[int(template_face[19, 1]) - 20, int(template_face[19, 0])] == 1.0
    assert matte[:20, :20].max() == 0 and matte[-20:, -20:].max() == 0
