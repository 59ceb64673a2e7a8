"""`python -m dmdnet evaluate` and our trained model on identities it never saw."""
import json
import subprocess
import sys

import pytest

from tests.assets import HELDOUT_IDENTITIES, REPO, TRAINED_MODEL, asset, save_small_checkpoint

from dmdnet.data import PreparedFaces


def evaluate(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dmdnet", "evaluate", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def x4_scores(heldout_faces) -> dict:
    result = evaluate("--checkpoint", TRAINED_MODEL, "--data", heldout_faces, "--scale", 4, "--references", 3,
                      "--models", asset("models"))
    assert result.returncode == 0, result.stderr
    scores = json.loads(result.stdout)
    print(scores)
    return scores


def test_trained_model_on_unseen_faces_improves_structure_and_keeps_identity(heldout_faces, x4_scores):
    """What our CPU-trained model does on people it never saw (MODEL_CARD.md has the whole held-out set)."""
    scores = x4_scores
    assert scores["faces"] == len(PreparedFaces(heldout_faces)) > 40
    assert set(scores) == {"input", "generic", "specific", "faces"}
    for kind in ("generic", "specific"):
        assert scores[kind]["ssim"] > scores["input"]["ssim"] + 0.01  # measured +0.023
        assert scores[kind]["psnr"] > scores["input"]["psnr"] + 0.4  # measured +0.68, +0.64; a broken loader costs 10 dB
        assert scores[kind]["identity"] > scores["input"]["identity"]
    assert scores["specific"]["identity"] > scores["generic"]["identity"]  # the references help
    for kind in ("input", "generic", "specific"):
        assert 0.2 < scores[kind]["identity"] < 1.0


@pytest.mark.xfail(strict=True, reason="under-trained on CPU (33,500 steps, width 20): x4 PSNR is 0.6-0.9 dB above "
                                       "the degraded input's, not 1 dB; see MODEL_CARD.md. Remove this mark when a "
                                       "better model passes.")
def test_trained_model_restores_unseen_faces_1_db_above_the_degraded_input(x4_scores):
    for kind in ("generic", "specific"):
        assert x4_scores[kind]["psnr"] >= x4_scores["input"]["psnr"] + 1.0


def test_evaluate_errors_are_one_line(heldout_faces, tmp_path):
    small = save_small_checkpoint(tmp_path / "DMDNet.pth")  # a 512 px network
    cases = [
        (("--checkpoint", small, "--data", heldout_faces, "--scale", 4), "prepare the data with --size 512"),
        (("--checkpoint", TRAINED_MODEL, "--data", tmp_path, "--scale", 4), "has no index.json"),
        (("--checkpoint", TRAINED_MODEL, "--data", heldout_faces, "--scale", 4, "--identities", tmp_path / "none.txt"),
         "no identities file"),
    ]
    for args, message in cases:
        result = evaluate(*args, "--models", asset("models"))
        assert result.returncode == 1 and message in result.stderr and result.stderr.count("\n") == 1, result.stderr
    (tmp_path / "ids.txt").write_text(f"{HELDOUT_IDENTITIES[0]}\n")
    result = evaluate("--checkpoint", TRAINED_MODEL, "--data", heldout_faces, "--scale", 8, "--identities",
                      tmp_path / "ids.txt", "--limit", 2, "--models", asset("models"))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["faces"] == 2
