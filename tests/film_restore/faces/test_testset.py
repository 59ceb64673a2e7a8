"""Face analysis on the 117 labelled FFHQ-aligned faces of the DMDNet test set (9 identities)."""
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.assets import asset
from dmdnet.boxes import component_boxes
from film_restore.faces.align import FFHQ_TEMPLATE_512
from film_restore.faces import FaceAnalyzer

# The references are 512 px faces that fill the image; the detector needs context around them.
PADDING = 256
COMPONENTS = ("left eye", "right eye", "nose", "mouth")


def _box_iou(first: np.ndarray, second: np.ndarray) -> float:
    width = max(0, min(first[2], second[2]) - max(first[0], second[0]))
    height = max(0, min(first[3], second[3]) - max(first[1], second[1]))
    overlap = width * height
    area = lambda box: (box[2] - box[0]) * (box[3] - box[1])
    return overlap / (area(first) + area(second) - overlap)


@pytest.fixture(scope="module")
def references():
    """One record per reference face: identity, labelled and found landmarks, keypoints, embedding."""
    images = sorted(asset("media/dmdnet_testset/RefsImg").glob("*/*.png"))
    # A 320 px detector input is plenty for faces of 512 px in a 1024 px image, and 4x faster.
    analyzer = FaceAnalyzer.from_models_dir(asset("models"), detector_size=320)
    records = []
    for image_path in images:
        image = np.ascontiguousarray(cv2.imread(str(image_path))[..., ::-1])
        padded = cv2.copyMakeBorder(image, *[PADDING] * 4, cv2.BORDER_CONSTANT, value=(0, 0, 0))
        faces = analyzer.analyze(padded)
        assert faces, f"{image_path}: no face found"
        # A few references show someone else in the background too: the reference is the largest face.
        face = max(faces, key=lambda found: (found.box[2] - found.box[0]) * (found.box[3] - found.box[1]))
        label_path = Path(str(image_path).replace("RefsImg", "RefsLandmark") + ".txt")
        records.append({
            "identity": image_path.parent.name,
            "labels": np.loadtxt(label_path),
            "landmarks": face.landmarks - PADDING,
            "keypoints": face.keypoints - PADDING,
            "embedding": face.embedding,
        })
    assert len(records) == 117 and len({record["identity"] for record in records}) == 9
    return records


def test_landmarks_match_the_labels(references):
    errors = []
    for record in references:
        labels = record["labels"]
        outer_eye_corners = np.linalg.norm(labels[36] - labels[45])
        errors.append(np.linalg.norm(record["landmarks"] - labels, axis=1).mean() / outer_eye_corners)
    print(f"landmark error / outer-eye-corner distance: mean {np.mean(errors):.4f}, worst {np.max(errors):.4f}")
    assert np.mean(errors) <= 0.06
    assert np.max(errors) <= 0.12


def test_dmdnet_boxes_match_the_boxes_from_the_labels(references):
    ious = np.array([
        [_box_iou(ours, theirs) for ours, theirs in zip(component_boxes(record["landmarks"]), component_boxes(record["labels"]))]
        for record in references
    ])
    mean_iou = dict(zip(COMPONENTS, ious.mean(axis=0)))
    print("mean box IoU: " + ", ".join(f"{name} {value:.3f}" for name, value in mean_iou.items()))
    assert min(mean_iou["left eye"], mean_iou["right eye"], mean_iou["mouth"]) >= 0.6
    assert mean_iou["nose"] >= 0.5


def test_template_matches_the_mean_keypoints_of_aligned_faces(references):
    # The references are FFHQ-aligned, so their mean keypoints must sit on the template:
    # this also checks that the detector's keypoint order is the template's.
    mean_keypoints = np.mean([record["keypoints"] for record in references], axis=0)
    distances = np.linalg.norm(mean_keypoints - FFHQ_TEMPLATE_512, axis=1)
    print(f"mean keypoints off the template by at most {distances.max():.2f} px")
    assert distances.max() <= 5


def test_same_identity_embeddings_are_closer_than_different_ones(references):
    embeddings = np.stack([record["embedding"] for record in references])
    identities = np.array([record["identity"] for record in references])
    cosine = embeddings @ embeddings.T
    same = identities[:, None] == identities[None, :]
    off_diagonal = ~np.eye(len(identities), dtype=bool)
    same_mean, different_mean = cosine[same & off_diagonal].mean(), cosine[~same].mean()
    np.fill_diagonal(cosine, -np.inf)
    nearest_is_same = identities[cosine.argmax(axis=1)] == identities
    print(f"cosine same {same_mean:.3f}, different {different_mean:.3f}; nearest neighbour same identity {nearest_is_same.mean():.3f}")
    assert same_mean > different_mean + 0.4
    assert nearest_is_same.mean() >= 0.95
