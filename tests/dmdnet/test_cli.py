"""`python -m dmdnet` on the authors' test-example format: real faces, landmark files, clear errors."""
import subprocess
import sys

import cv2
import numpy as np
import pytest

from tests.assets import REPO, asset, save_small_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_small_checkpoint(tmp_path_factory.mktemp("model") / "DMDNet.pth")


@pytest.fixture(scope="module")
def person():
    """One identity's references: all but the first as references, the first degraded as input."""
    identity = sorted(p.name for p in asset("media/dmdnet_testset/RefsImg").iterdir())[0]
    return asset(f"media/dmdnet_testset/RefsImg/{identity}"), asset(f"media/dmdnet_testset/RefsLandmark/{identity}")


def dmdnet(*args, expect_ok=True):
    result = subprocess.run([sys.executable, "-m", "dmdnet", *map(str, args)], capture_output=True, text=True, cwd=REPO)
    assert (result.returncode == 0) == expect_ok, result.stderr
    return result


def test_restore_generic_specific_and_stored_dictionary(tmp_path, checkpoint, person):
    images, landmarks = person
    face = sorted(images.glob("*.png"))[0]
    refs = tmp_path / "refs"
    refs.mkdir()
    for image in sorted(images.glob("*.png"))[1:4]:
        (refs / image.name).write_bytes(image.read_bytes())
    common = ["--landmarks", landmarks / f"{face.name}.txt", "--checkpoint", checkpoint]

    dmdnet("restore", face, *common, "-o", tmp_path / "generic.png")
    out = dmdnet("restore", face, *common, "--refs", refs, "--ref-landmarks", landmarks, "-o", tmp_path / "specific.png")
    assert "specific, 3 references" in out.stdout
    dmdnet("dictionary", refs, "--ref-landmarks", landmarks, "--checkpoint", checkpoint, "-o", tmp_path / "actor.dict")
    stored = dmdnet("restore", face, *common, "--dictionary", tmp_path / "actor.dict", "-o", tmp_path / "stored.png")
    assert "with torch float32 on " in stored.stdout

    generic, specific, stored = (cv2.imread(str(tmp_path / f"{n}.png")) for n in ("generic", "specific", "stored"))
    assert generic.shape == (512, 512, 3)
    assert np.array_equal(specific, stored)
    assert np.abs(specific.astype(int) - generic).max() > 10


def test_errors_are_one_line_and_write_nothing(tmp_path, checkpoint, person):
    images, landmarks = person
    face = sorted(images.glob("*.png"))[0]
    out = tmp_path / "out.png"

    result = dmdnet("restore", face, "--landmarks", landmarks / f"{face.name}.txt", "--checkpoint",
                    tmp_path / "DMDNet.pth", "-o", out, expect_ok=False)
    assert result.stderr.count("\n") == 1 and "no checkpoint file at" in result.stderr

    small = tmp_path / "small.png"
    cv2.imwrite(str(small), np.zeros((100, 100, 3), np.uint8))
    result = dmdnet("restore", small, "--landmarks", landmarks / f"{face.name}.txt", "--checkpoint", checkpoint,
                    "-o", out, expect_ok=False)
    assert "is 100x100: this model takes FFHQ-aligned 512x512 faces" in result.stderr

    bad = tmp_path / "bad.txt"
    bad.write_text("1 2\nthree four\n")
    result = dmdnet("restore", face, "--landmarks", bad, "--checkpoint", checkpoint, "-o", out, expect_ok=False)
    assert "bad.txt:2: expected two numbers" in result.stderr

    result = dmdnet("restore", face, "--landmarks", landmarks / f"{face.name}.txt", "--checkpoint", checkpoint,
                    "--engine", "tensorrt", "--device", "cpu", "-o", out, expect_ok=False)
    assert result.stderr.count("\n") == 1 and "error: TensorRT runs on a CUDA device, not cpu" in result.stderr
    assert not out.exists()
