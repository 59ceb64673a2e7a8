"""Alignment of faces to the FFHQ template that DMDNet works on, and back.

A face is aligned by the similarity transform (rotation, uniform scale, translation)
that maps its 5 detector keypoints closest, in least squares, onto the FFHQ 5-point
template. The template is given for 512 x 512 and scaled for other crop sizes.
"""
from dataclasses import dataclass

import cv2
import numpy as np

from dmdnet.boxes import component_boxes
from film_restore.records import AlignedFace, Face
from film_restore.validation import check_points, check_rgb_image

TEMPLATE_SIZE = 512

# Image-left eye, image-right eye, nose tip, image-left and image-right mouth corner
# (image-left is the subject's right), the order of insightface's SCRFD keypoints.
FFHQ_TEMPLATE_512 = np.array(
    [
        [192.98138, 239.94708],
        [318.90277, 240.19360],
        [256.63416, 314.01935],
        [201.26117, 371.41043],
        [313.08905, 371.15118],
    ],
    dtype=np.float64,
)

# Cubic keeps the warp there and back within a level of the original where the crop
# enlarges the face 2x or more, the usual case for film faces; Lanczos is no better
# there and six times slower.
WARP_INTERPOLATION = cv2.INTER_CUBIC

# Where the crop has fewer pixels per frame pixel than this (a face larger than the crop),
# the frame is first shrunk by area averaging: the warp alone would sample it sparsely
# and alias.
SHRINK_BEFORE_WARP_BELOW = 0.75


def ffhq_template(size: int = TEMPLATE_SIZE) -> np.ndarray:
    """The FFHQ 5-point template (5 x 2, float64) for a square crop of side size."""
    if not isinstance(size, (int, np.integer)) or size < 16:
        raise ValueError(f"crop size must be an integer >= 16, got {size!r}")
    return FFHQ_TEMPLATE_512 * (size / TEMPLATE_SIZE)


def estimate_similarity(source, target) -> np.ndarray:
    """Least-squares similarity transform (Umeyama, no reflection) mapping source onto target.

    source, target: N x 2 points (N >= 2). Returns the 2 x 3 float64 matrix M with
    target ~= M @ [x, y, 1].
    """
    source = np.asarray(source, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    if source.shape != target.shape or source.ndim != 2 or source.shape[1] != 2 or len(source) < 2:
        raise ValueError(f"similarity needs two N x 2 point sets of equal shape, got {source.shape} and {target.shape}")
    source_mean, target_mean = source.mean(axis=0), target.mean(axis=0)
    source_centred, target_centred = source - source_mean, target - target_mean
    source_variance = (source_centred**2).sum() / len(source)
    if source_variance <= 1e-12:
        raise ValueError("similarity needs source points that are not all the same point")
    covariance = target_centred.T @ source_centred / len(source)
    u, singular_values, vt = np.linalg.svd(covariance)
    reflection_fix = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        reflection_fix[1, 1] = -1
    rotation = u @ reflection_fix @ vt
    scale = (singular_values * np.diag(reflection_fix)).sum() / source_variance
    translation = target_mean - scale * rotation @ source_mean
    return np.hstack([scale * rotation, translation[:, None]])


@dataclass(frozen=True, eq=False)
class AlignmentTransform:
    """The similarity between a frame and one aligned square crop of it.

    matrix maps frame pixels to crop pixels (2 x 3); inverse maps crop pixels back to
    the frame, for paste-back. size is the crop's side in pixels.
    """

    matrix: np.ndarray
    size: int

    def __post_init__(self):
        matrix = np.array(self.matrix, dtype=np.float64)
        if matrix.shape != (2, 3) or not np.isfinite(matrix).all():
            raise ValueError(f"alignment matrix must be 2 x 3 finite numbers, got shape {matrix.shape}")
        matrix.flags.writeable = False
        object.__setattr__(self, "matrix", matrix)

    @property
    def inverse(self) -> np.ndarray:
        """2 x 3 matrix from crop pixels to frame pixels."""
        return cv2.invertAffineTransform(self.matrix)

    @property
    def scale(self) -> float:
        """Crop pixels per frame pixel."""
        return float(np.sqrt(abs(np.linalg.det(self.matrix[:, :2]))))

    def to_crop(self, points) -> np.ndarray:
        """Frame points (N x 2) in crop pixels, float64."""
        points = np.asarray(points, dtype=np.float64)
        return points @ self.matrix[:, :2].T + self.matrix[:, 2]

    def to_frame(self, points) -> np.ndarray:
        """Crop points (N x 2) in frame pixels, float64."""
        inverse = self.inverse
        points = np.asarray(points, dtype=np.float64)
        return points @ inverse[:, :2].T + inverse[:, 2]

    def corners_in_frame(self) -> np.ndarray:
        """The crop's four corners (4 x 2) in frame pixels, float64: its footprint in the frame."""
        size = self.size
        return self.to_frame(np.array([[0, 0], [size, 0], [0, size], [size, size]], dtype=np.float64))


def alignment_transform(keypoints, size: int = TEMPLATE_SIZE) -> AlignmentTransform:
    """The transform that aligns a face with these 5 keypoints (frame pixels) to a size x size crop."""
    keypoints = check_points(keypoints, 5, "keypoints")
    return AlignmentTransform(estimate_similarity(keypoints, ffhq_template(size)), size)


def warp_to_crop(frame: np.ndarray, transform: AlignmentTransform, interpolation: int = WARP_INTERPOLATION) -> np.ndarray:
    """The aligned crop (uint8 RGB, size x size x 3); parts outside the frame are black.

    interpolation is a cv2.INTER_* flag: cubic by default, linear where speed matters more.
    """
    check_rgb_image(frame, "frame")
    source, matrix = frame, transform.matrix
    warp = CropWarp.of(transform, frame.shape)
    if warp.shrunk is not None:
        source, matrix = cv2.resize(frame[warp.source], warp.shrunk[::-1], interpolation=cv2.INTER_AREA), warp.matrix
    return cv2.warpAffine(
        source,
        matrix,
        (transform.size, transform.size),
        flags=interpolation,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(0, 0, 0),
    )


def crop_source(transform: AlignmentTransform, frame_shape: tuple) -> tuple[slice, slice]:
    """The frame rectangle warp_to_crop reads for this face: its crop's footprint, with the reach of
    the shrink or of the cubic kernel either side, cut to the frame."""
    height, width = frame_shape[:2]
    reach = transform.corners_in_frame()
    x0, y0 = np.clip(np.floor(reach.min(axis=0)).astype(int) - 2, 0, (width - 1, height - 1))
    x1, y1 = np.clip(np.ceil(reach.max(axis=0)).astype(int) + 2, (x0 + 1, y0 + 1), (width, height))
    return np.s_[int(y0):int(y1), int(x0):int(x1)]


@dataclass(frozen=True, eq=False)
class CropWarp:
    """How warp_to_crop makes a face's crop from a frame: the frame rectangle it reads (source), the
    size (height, width) that rectangle is first shrunk to by area averaging (None: a face the crop holds
    at SHRINK_BEFORE_WARP_BELOW or more of its pixels per frame pixel is warped as the frame has it;
    warp_to_crop then warps the whole frame, which reads no pixel outside source), and the matrix from
    the source's pixels (shrunk, where it is) to the crop's."""

    source: tuple[slice, slice]
    shrunk: tuple[int, int] | None
    matrix: np.ndarray

    @classmethod
    def of(cls, transform: AlignmentTransform, frame_shape: tuple) -> "CropWarp":
        rows, columns = crop_source(transform, frame_shape)
        y0, x0 = rows.start, columns.start
        source_to_frame = np.array([[1, 0, x0], [0, 1, y0], [0, 0, 1]], np.float64)
        if transform.scale >= SHRINK_BEFORE_WARP_BELOW:
            return cls((rows, columns), None, transform.matrix @ source_to_frame)
        height, width = rows.stop - y0, columns.stop - x0
        shrunk = (max(round(height * transform.scale), 1), max(round(width * transform.scale), 1))
        # cv2.resize puts shrunk pixel x at source pixel (x + 0.5) / factor - 0.5.
        factor_y, factor_x = shrunk[0] / height, shrunk[1] / width
        shrunk_to_frame = np.array([
            [1 / factor_x, 0, 0.5 / factor_x - 0.5 + x0],
            [0, 1 / factor_y, 0.5 / factor_y - 0.5 + y0],
            [0, 0, 1],
        ])
        return cls((rows, columns), shrunk, transform.matrix @ shrunk_to_frame)


def align_face(frame: np.ndarray, face: Face, size: int = TEMPLATE_SIZE, transform: AlignmentTransform | None = None) -> AlignedFace:
    """The face warped to the FFHQ template at size x size, with its landmarks, DMDNet boxes and transform
    (transform: alignment_transform(face.keypoints, size) where the caller has it already)."""
    check_rgb_image(frame, "frame")
    placed = place_face(face, size, transform)
    return placed._replace(crop=warp_to_crop(frame, placed.transform))


def place_face(face: Face, size: int = TEMPLATE_SIZE, transform: AlignmentTransform | None = None) -> AlignedFace:
    """What align_face gives but the crop (None: warped elsewhere, as a GPU node warps it on its device).

    DMDNet's boxes are defined on the 512 template; for other sizes they are computed
    there and scaled to the crop.
    """
    if not isinstance(face, Face):
        raise ValueError(f"align needs a Face from FaceAnalyzer.analyze, got {type(face).__name__}")
    transform = alignment_transform(face.keypoints, size) if transform is None else transform
    crop_landmarks = transform.to_crop(face.landmarks)
    boxes = component_boxes(crop_landmarks, size)
    return AlignedFace(None, crop_landmarks.astype(np.float32), boxes, transform)
