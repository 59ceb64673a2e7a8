"""Model packs, the model classes' conventions, and clear errors for bad input."""
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime
import pytest
from insightface.app.common import Face as InsightfaceFace
from insightface.model_zoo.landmark import Landmark
from onnx import TensorProto, helper

from tests.assets import asset
from film_restore.faces.align import alignment_transform, ffhq_template
from film_restore.finish.paste import face_matte, paste_back
from film_restore.faces.detector import Detector
from film_restore.faces.landmarker import Landmarker68
from film_restore.faces.onnx import CPU_PROVIDERS, preferred_providers, session_providers
from film_restore.faces.recogniser import Recogniser
from film_restore.faces import FaceAnalyzer, align_face
from film_restore.models import MODELS_ENV, ModelsError, find_pack, resolve_models_dir
from film_restore.records import Face

def _models_folder(folder, names):
    """folder, holding links to these shared compact models (nothing is copied)."""
    for name in names:
        (folder / name).symlink_to(asset("models") / name)
    return folder


@pytest.fixture(scope="module")
def frame():
    return np.ascontiguousarray(cv2.imread(str(asset("media/photos/06.png")))[..., ::-1])


def test_compact_pack_is_recognised_and_prefers_the_larger_detector():
    pack = find_pack(asset("models"))
    assert pack.name == "compact"
    assert (pack.detector.name, pack.landmarker.name, pack.recogniser.name) == ("scrfd_2.5g.onnx", "pfld_68.onnx", "mobilefacenet_128.onnx")


def test_compact_pack_with_the_small_detector_only(tmp_path):
    folder = _models_folder(tmp_path, ["scrfd_500m.onnx", "pfld_68.onnx", "mobilefacenet_128.onnx"])
    assert find_pack(folder).detector.name == "scrfd_500m.onnx"


def test_missing_model_file_is_named_with_its_source(tmp_path):
    folder = _models_folder(tmp_path, ["scrfd_2.5g.onnx", "mobilefacenet_128.onnx"])
    with pytest.raises(ModelsError) as error:
        find_pack(folder)
    message = str(error.value)
    assert "pfld_68.onnx" in message and "cunjian/pytorch_face_landmark" in message and "\n" not in message


def test_partial_buffalo_l_names_its_missing_file(tmp_path):
    (tmp_path / "det_10g.onnx").write_bytes(b"stand-in")
    with pytest.raises(ModelsError, match=r"1k3d68\.onnx is missing .*buffalo_l pack.*/v0\.7/buffalo_l\.zip .*fetch buffalo_l"):
        find_pack(tmp_path)


def test_corrupt_model_file_fails_its_sha256(tmp_path):
    folder = _models_folder(tmp_path, ["scrfd_500m.onnx", "pfld_68.onnx"])
    (folder / "mobilefacenet_128.onnx").write_bytes(b"not a model")
    with pytest.raises(ModelsError, match=r"mobilefacenet_128\.onnx has sha256 .* expected f055d9c9a4d8"):
        find_pack(folder)


def test_empty_or_absent_models_folder(tmp_path):
    with pytest.raises(ModelsError, match="no face-analysis models .*buffalo_l.*compact"):
        find_pack(tmp_path)
    with pytest.raises(ModelsError, match=f"does not exist: pass --models DIR or set {MODELS_ENV}"):
        find_pack(tmp_path / "absent")


def test_models_folder_comes_from_argument_then_environment(tmp_path, monkeypatch):
    # then the cache, fetched on first use: test_models_registry.py
    monkeypatch.setenv(MODELS_ENV, str(tmp_path))
    assert resolve_models_dir() == tmp_path
    assert resolve_models_dir("~/elsewhere") == Path("~/elsewhere").expanduser()
    monkeypatch.setenv(MODELS_ENV, str(asset("models")))
    assert FaceAnalyzer.from_models_dir().recogniser.model_path.name == "mobilefacenet_128.onnx"


def test_mobilefacenet_gets_its_publishers_input_convention(analyzer, frame):
    # MODELS.md: RGB, (x - 127.5) / 127.5, 112 x 112 aligned to the ArcFace template.
    # insightface's ArcFaceONNX guesses the normalisation from node names; check its guess.
    recogniser = analyzer.recogniser
    keypoints = analyzer.detector.detect(frame).keypoints[0]
    crop = recogniser.aligned_crop(frame, keypoints)
    session = onnxruntime.InferenceSession(str(recogniser.model_path), providers=["CPUExecutionProvider"])
    blob = ((crop.astype(np.float32) - 127.5) / 127.5).transpose(2, 0, 1)[None]
    expected = session.run(None, {session.get_inputs()[0].name: blob})[0][0]
    assert np.allclose(recogniser.embedding(frame, keypoints), expected / np.linalg.norm(expected), atol=1e-5)


def _stand_in_1k3d68(path, points: np.ndarray, weights: np.ndarray) -> Path:
    """A model with 1k3d68's interface (192 px input, 3309 outputs): points + the input's channel means @ weights."""
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["data"], ["pooled"]), helper.make_node("Flatten", ["pooled"], ["flat"]),
         helper.make_node("MatMul", ["flat", "weights"], ["product"]), helper.make_node("Add", ["product", "points"], ["fc1"])],
        "stand_in_1k3d68",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 192, 192])],
        [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, [1, 3309])],
        [helper.make_tensor("weights", TensorProto.FLOAT, [3, 3309], weights.astype(np.float32).ravel()),
         helper.make_tensor("points", TensorProto.FLOAT, [3309], points.astype(np.float32).ravel())],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), path)
    return path


def test_insightface_1k3d68_route_maps_points_back_to_the_image(tmp_path, frame):
    # A stand-in that always predicts the same normalised points: they must come back at
    # box centre + points x 0.75 x box side.
    points = np.random.default_rng(0).uniform(-0.5, 0.5, (1103, 3)).astype(np.float32)
    landmarker = Landmarker68.load(_stand_in_1k3d68(tmp_path / "1k3d68.onnx", points, np.zeros((3, 3309))))
    box = np.array([100.0, 120.0, 300.0, 360.0])
    found = landmarker.landmarks(frame, box)
    expected = (box[:2] + box[2:]) / 2 + points[-68:, :2] * 0.75 * 240
    assert found.shape == (68, 2) and np.allclose(found, expected, atol=0.05)


def test_insightface_1k3d68_sees_what_insightface_gives_it(tmp_path, frame):
    # The stand-in's points move with the mean of each input channel, so a swapped channel
    # order or another normalisation than insightface's Landmark.get would move them.
    rng = np.random.default_rng(1)
    path = _stand_in_1k3d68(tmp_path / "1k3d68.onnx", rng.uniform(-0.5, 0.5, (1103, 3)), rng.normal(0, 0.5, (3, 3309)))
    box = np.array([100.0, 120.0, 300.0, 360.0])
    found = Landmarker68.load(path).landmarks(frame, box)
    theirs = Landmark(str(path), onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"]))
    expected = theirs.get(np.ascontiguousarray(frame[..., ::-1]), InsightfaceFace(bbox=box))[:, :2]
    assert np.abs(found - expected).max() < 1.0


def test_face_models_run_on_cuda_where_the_onnxruntime_build_has_it():
    cuda, cpu = "CUDAExecutionProvider", "CPUExecutionProvider"
    assert preferred_providers([cpu, cuda]) == (cuda, cpu)
    assert preferred_providers(["TensorrtExecutionProvider", cuda, cpu]) == (cuda, cpu)
    assert preferred_providers(["AzureExecutionProvider", cpu]) == (cpu,)
    # By default the installed build decides (this machine's has no CUDA, a GPU node's onnxruntime-gpu has).
    assert preferred_providers() == preferred_providers(onnxruntime.get_available_providers())
    assert session_providers(None) == list(preferred_providers()) and session_providers(CPU_PROVIDERS) == [cpu]


def test_faces_are_typed_and_frozen(analyzer, frame):
    face = analyzer.analyze(frame)[0]
    assert face.keypoints.dtype == face.landmarks.dtype == face.embedding.dtype == np.float32
    assert np.linalg.norm(face.embedding) == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError):
        face.landmarks[0, 0] = 1.0
    with pytest.raises(AttributeError):
        face.score = 1.0


@pytest.mark.parametrize("bad_frame, message", [
    (np.zeros((64, 64, 3), np.float32), "uint8"),
    (np.zeros((64, 64), np.uint8), "H x W x 3"),
    (np.zeros((64, 64, 4), np.uint8), "H x W x 3"),
    (np.zeros((0, 64, 3), np.uint8), "H x W x 3"),
    ([[0, 0, 0]], "numpy array"),
])
def test_bad_frames_are_refused(analyzer, bad_frame, message):
    with pytest.raises(ValueError, match=message):
        analyzer.analyze(bad_frame)


def test_bad_arguments_are_refused(analyzer, frame):
    face = analyzer.analyze(frame)[0]
    aligned = align_face(frame, face)
    with pytest.raises(ValueError, match="needs a Face"):
        align_face(frame, face.box)
    with pytest.raises(ValueError, match="keypoints must be 5 x 2"):
        alignment_transform(np.zeros((4, 2)))
    with pytest.raises(ValueError, match="not all the same point"):
        alignment_transform(np.ones((5, 2)))
    with pytest.raises(ValueError, match="crop size"):
        ffhq_template(0)
    with pytest.raises(ValueError, match="x2 > x1"):
        analyzer.landmarker.landmarks(frame, (50, 50, 40, 80))
    with pytest.raises(ValueError, match="landmarks must be 68 x 2"):
        face_matte(np.zeros((5, 2)), 512)
    with pytest.raises(ValueError, match="restore at the aligned size"):
        paste_back(frame, [(aligned, aligned.crop[:256, :256])])
    with pytest.raises(ValueError, match="uint8"):
        paste_back(frame, [(aligned, aligned.crop.astype(np.float32))])
    with pytest.raises(ValueError, match=r"Face landmarks must have shape \(68, 2\)"):
        Face(face.box, face.score, face.keypoints, face.landmarks[:67], face.embedding)
    with pytest.raises(ValueError, match="unit-length"):
        Face(face.box, face.score, face.keypoints, face.landmarks, face.embedding * 2)
    with pytest.raises(ValueError, match="x2 > x1"):
        Face((10, 10, 5, 20), face.score, face.keypoints, face.landmarks, face.embedding)
    with pytest.raises(ValueError, match="not a known 68-point landmark model"):
        Landmarker68.load(analyzer.recogniser.model_path)
    with pytest.raises(ValueError, match="is not a SCRFD detector model"):
        Detector(analyzer.recogniser.model_path)
    with pytest.raises(ValueError, match="is not a recognition model"):
        Recogniser(analyzer.detector.model_path)
