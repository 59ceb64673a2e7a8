"""Training data groundwork: the paper's synthetic degradations, PSNR/SSIM, and prepared aligned faces."""
import json
import shutil
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

from tests.assets import REPO, asset
from dmdnet.degradations import (
    DegradationParams,
    add_noise,
    degrade,
    degrade_for_evaluation,
    evaluation_params,
    sample_params,
)
from dmdnet.metrics import identity_similarity, psnr, rgb_to_y, ssim

FFHQ_TEMPLATE_512 = np.array(
    [[192.98138, 239.94708], [318.90277, 240.19360], [256.63416, 314.01935], [201.26117, 371.41043], [313.08905, 371.15118]]
)


def read_rgb(path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert image is not None, path
    return np.ascontiguousarray(image[:, :, ::-1])


@pytest.fixture(scope="module")
def real_faces():
    """Six aligned 512 faces of six people from the DMDNet test set, shrunk to 256 (faster, same content)."""
    folders = sorted(p for p in asset("media/dmdnet_testset/RefsImg").iterdir() if p.is_dir())[:6]
    faces = [read_rgb(sorted(folder.glob("*.png"))[0]) for folder in folders]
    return [cv2.resize(face, (256, 256), interpolation=cv2.INTER_AREA) for face in faces]


def high_frequency_energy(image: np.ndarray) -> float:
    return float(cv2.Laplacian(rgb_to_y(image), cv2.CV_64F).var())


# --- degradation parameters ------------------------------------------------------------

def test_sampled_parameters_stay_in_the_papers_ranges_and_on_their_grids():
    rng = np.random.default_rng(2024)
    draws = [sample_params(rng) for _ in range(3000)]
    rho = np.array([d.rho for d in draws])
    scale = np.array([d.scale for d in draws])
    sigma = np.array([d.sigma for d in draws])
    quality = np.array([d.quality for d in draws])
    assert rho.min() == 1.0 and rho.max() == 3.0
    assert scale.min() == 1.0 and scale.max() == 10.0
    assert np.all(np.abs(rho * 10 - np.round(rho * 10)) < 1e-9)
    assert np.all(np.abs(scale * 10 - np.round(scale * 10)) < 1e-9)
    assert len(set(rho.tolist())) == 21 and len(set(scale.tolist())) == 91
    assert 0 <= sigma.min() < 0.5 and 14.5 < sigma.max() <= 15
    assert all(isinstance(d.quality, int) for d in draws)
    assert quality.min() == 50 and quality.max() == 100 and len(set(quality.tolist())) == 51


def test_same_seed_same_parameters_and_image_different_seed_different(real_faces):
    face = real_faces[0]

    def run(seed):
        rng = np.random.default_rng(seed)
        params = sample_params(rng)
        return params, degrade(face, params, rng)

    params_a, image_a = run(7)
    params_b, image_b = run(7)
    params_c, image_c = run(8)
    assert params_a == params_b and np.array_equal(image_a, image_b)
    assert params_a != params_c and not np.array_equal(image_a, image_c)
    assert image_a.shape == face.shape and image_a.dtype == np.uint8
    # Fixed parameters, different noise seeds: only the noise differs.
    fixed = DegradationParams(2.0, 4.0, 10.0, 90)
    assert np.array_equal(degrade(face, fixed, np.random.default_rng(1)), degrade(face, fixed, np.random.default_rng(1)))
    assert not np.array_equal(degrade(face, fixed, np.random.default_rng(1)), degrade(face, fixed, np.random.default_rng(2)))


def test_bad_parameters_and_images_are_refused():
    with pytest.raises(ValueError):
        DegradationParams(2.0, 0.5, 0.0, 90)
    with pytest.raises(ValueError):
        DegradationParams(2.0, 2.0, -1.0, 90)
    with pytest.raises(ValueError):
        DegradationParams(2.0, 2.0, 1.0, 90.5)
    with pytest.raises(ValueError):
        degrade(np.zeros((8, 8, 3), np.float32), DegradationParams(1.0, 1.0, 0.0, 90), np.random.default_rng(0))
    with pytest.raises(ValueError):
        evaluation_params(2)


# --- each step has its effect ---------------------------------------------------------

def test_more_blur_leaves_less_high_frequency_energy(real_faces):
    rng = np.random.default_rng(0)
    for face in real_faces:
        energies = [high_frequency_energy(degrade(face, DegradationParams(rho, 1.0, 0.0, 100), rng)) for rho in (1.0, 2.0, 3.0)]
        assert high_frequency_energy(face) > energies[0] > energies[1] > energies[2]


def test_larger_downsampling_lowers_psnr_on_average(real_faces):
    rng = np.random.default_rng(0)
    means = [np.mean([psnr(face, degrade(face, DegradationParams(1.0, r, 0.0, 100), rng)) for face in real_faces])
             for r in (1.0, 2.0, 4.0, 8.0)]
    assert means[0] > means[1] > means[2] > means[3], means


def test_jpeg_quality_50_loses_more_than_100(real_faces):
    rng = np.random.default_rng(0)
    for face in real_faces:
        at_50 = psnr(face, degrade(face, DegradationParams(1.0, 1.0, 0.0, 50), rng))
        at_100 = psnr(face, degrade(face, DegradationParams(1.0, 1.0, 0.0, 100), rng))
        assert at_50 + 1 < at_100


def test_noise_sigma_15_adds_a_residual_of_std_about_15(real_faces):
    for seed, face in enumerate(real_faces):
        residual = add_noise(face, 15.0, np.random.default_rng(seed)).astype(np.float64) - face
        assert abs(residual.mean()) < 1.5                      # clipping at 0 and 255 biases a little
        assert 14.0 < residual.std() < 15.5, residual.std()   # and trims the spread a little
        # Through the whole pipeline (JPEG at 100) the noise's luma survives in full:
        # independent RGB noise of 15 gives Y noise of 15 * |Y coefficients|.
        clean = degrade(face, DegradationParams(1.0, 1.0, 0.0, 100), np.random.default_rng(seed))
        noisy = degrade(face, DegradationParams(1.0, 1.0, 15.0, 100), np.random.default_rng(seed))
        expected = 15 * np.linalg.norm([65.481, 128.553, 24.966]) / 255
        luma = (rgb_to_y(noisy) - rgb_to_y(clean)).std()
        assert 0.9 * expected < luma < 1.05 * expected, (luma, expected)


# --- the evaluation protocol ----------------------------------------------------------

def test_evaluation_protocol_is_fixed_deterministic_and_x8_is_harder(real_faces):
    assert evaluation_params(4) == DegradationParams(2.0, 4.0, 7.5, 75)
    assert evaluation_params(8) == DegradationParams(2.0, 8.0, 7.5, 75)
    for face in real_faces:
        x4, x8 = degrade_for_evaluation(face, 4, seed=0), degrade_for_evaluation(face, 8, seed=0)
        assert np.array_equal(x4, degrade_for_evaluation(face, 4, seed=0))
        assert not np.array_equal(x4, degrade_for_evaluation(face, 4, seed=1))
        assert psnr(face, x8) < psnr(face, x4) and ssim(face, x8) < ssim(face, x4)


# --- metrics --------------------------------------------------------------------------

def test_psnr_and_ssim_match_scikit_image_on_real_faces(real_faces):
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    options = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255)
    for index, face in enumerate(real_faces[:4]):
        degraded = degrade_for_evaluation(face, 4 if index % 2 else 8, seed=index)
        assert abs(psnr(face, degraded) - peak_signal_noise_ratio(face, degraded, data_range=255)) < 1e-3
        assert abs(psnr(face, degraded, "y") - peak_signal_noise_ratio(rgb_to_y(face), rgb_to_y(degraded), data_range=255)) < 1e-3
        assert abs(ssim(face, degraded) - structural_similarity(rgb_to_y(face), rgb_to_y(degraded), **options)) < 1e-3
        assert abs(ssim(face, degraded, "rgb") - structural_similarity(face, degraded, channel_axis=2, **options)) < 1e-3
    face = real_faces[0]
    assert psnr(face, face) == float("inf") and ssim(face, face) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        psnr(face, face[:100])


def test_identity_similarity_is_cosine():
    a = np.array([1.0, 0.0, 0.0])
    others = np.array([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [-1.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
    assert identity_similarity(a, others) == pytest.approx([1.0, 0.0, -1.0, np.sqrt(0.5)])
    assert identity_similarity(a, others[3]) == pytest.approx(np.sqrt(0.5))
    with pytest.raises(ValueError):
        identity_similarity(a, np.zeros(3))
    with pytest.raises(ValueError):
        identity_similarity(a, np.ones((2, 4)))


# --- prepared faces -------------------------------------------------------------------

IDENTITIES = ("7201", "7202", "7203")


def run_prepare_cli(*args, env_code: str = "") -> subprocess.CompletedProcess:
    code = f"import sys; {env_code}from dmdnet.data import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=REPO, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """Three real identities (plus a planted blank photo) prepared once at 256 with the command."""
    root = tmp_path_factory.mktemp("prepare")
    source, out = root / "src", root / "out"
    for identity in IDENTITIES:
        shutil.copytree(asset(f"datasets/celeba_identities/{identity}"), source / identity)
    cv2.imwrite(str(source / "7201" / "blank.png"), np.full((240, 240, 3), 128, np.uint8))
    (source / "7202" / "notes.txt").write_text("not a photo")
    started = time.monotonic()
    result = run_prepare_cli("prepare", source, out, "--size", "256", "--models", asset("models"))
    seconds = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    return {"source": source, "out": out, "stdout": result.stdout, "seconds": seconds}


def test_prepare_aligns_crops_with_landmarks_and_boxes(prepared):
    from dmdnet.data import PreparedFaces

    index = json.loads((prepared["out"] / "index.json").read_text())
    assert index["size"] == 256 and sorted(index["identities"]) == list(IDENTITIES)
    photos = sum(len(list((prepared["source"] / i).glob("*.jpg"))) for i in IDENTITIES) + 1
    assert index["counts"]["photos"] == photos
    assert index["counts"]["faces"] + index["counts"]["skipped"] == photos
    assert index["counts"]["faces"] >= 0.9 * photos
    assert len(index["face_models"]) == 64
    assert {"identity": "7201", "file": "blank.png", "kind": "no face", "reason": "no face found"} in index["skipped"]
    assert "prepared" in prepared["stdout"] and "skipped" in prepared["stdout"]

    faces = PreparedFaces(prepared["out"])
    assert len(faces) == index["counts"]["faces"]
    assert faces.identities == {k: sorted(v) for k, v in index["identities"].items()}
    template = FFHQ_TEMPLATE_512 / 2
    five_points, keypoints = [], []
    for face in faces:
        assert face.crop.shape == (256, 256, 3) and face.crop.dtype == np.uint8
        assert face.landmarks.shape == (68, 2) and face.boxes.shape == (4, 4)
        assert face.boxes.min() >= 0 and face.boxes.max() <= 256
        assert (face.boxes[:, 2:] > face.boxes[:, :2]).all()
        assert face.identity in IDENTITIES and face.name in faces.identities[face.identity]
        points = face.landmarks
        five_points.append([points[36:42].mean(0), points[42:48].mean(0), points[30], points[48], points[54]])
        keypoints.append(faces.record(face.identity, face.name)["keypoints"])
    assert np.abs(np.mean(five_points, axis=0) - template).max() < 8
    assert np.abs(np.mean(keypoints, axis=0) - template).max() < 4
    # Real content, not blank crops.
    assert np.mean([f.crop.std() for f in faces]) > 20


def test_prepare_rerun_skips_complete_identities_and_redoes_changed_ones(prepared, tmp_path):
    from dmdnet.data import DEFAULT_DETECTOR_SIZE, PreparedFaces, prepare
    from film_restore.training_faces import face_finder

    out = tmp_path / "out"
    shutil.copytree(prepared["out"], out)
    lines = []
    started = time.monotonic()
    finder = face_finder(asset("models"), DEFAULT_DETECTOR_SIZE)  # timed as the command times it
    index = prepare(prepared["source"], out, 256, finder, log=lines.append)
    assert time.monotonic() - started < max(3.0, prepared["seconds"] / 3)
    assert "3 of 3 identities already complete" in lines[0]
    assert index == json.loads((prepared["out"] / "index.json").read_text())

    # A killed prepare leaves no index: the folder is refused until a rerun completes it.
    (out / "index.json").unlink()
    (out / "7202" / "faces.json").unlink()
    with pytest.raises(ValueError, match="did not finish"):
        PreparedFaces(out)
    source = tmp_path / "src"
    shutil.copytree(prepared["source"], source)
    first = sorted((source / "7203").glob("*.jpg"))[0]
    shutil.copy(first, source / "7203" / "copy.jpg")
    lines.clear()
    index = prepare(source, out, 256, finder, log=lines.append)
    assert "1 of 3 identities already complete" in lines[0]
    assert "copy.png" in index["identities"]["7203"]
    assert len(PreparedFaces(out)) == len(PreparedFaces(prepared["out"])) + 1


def test_prepare_errors_are_one_line(tmp_path, prepared):
    result = run_prepare_cli("prepare", tmp_path / "absent", tmp_path / "out", "--size", "256")
    assert result.returncode == 2 and result.stderr.startswith("error: no folder at")
    # The command finds film_restore's face stack by its entry point (dmdnet never imports
    # it): a stack that cannot be imported, and none installed, are each named in one line.
    result = run_prepare_cli("prepare", prepared["source"], tmp_path / "out", "--size", "256",
                             env_code="sys.modules['film_restore'] = None; ")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "prepare needs a face stack" in result.stderr and "film_restore, cannot be imported" in result.stderr
    result = run_prepare_cli("prepare", prepared["source"], tmp_path / "out", "--size", "256",
                             env_code="import importlib.metadata as m; m.entry_points = lambda **_: []; ")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "none is installed" in result.stderr and "pip install film-restore" in result.stderr
    assert not (tmp_path / "out").exists()
    result = run_prepare_cli("prepare", prepared["source"], prepared["out"], "--size", "512", "--models", asset("models"))
    assert result.returncode == 2 and "prepared at 256 px" in result.stderr
