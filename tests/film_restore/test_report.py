"""The HTML report as a browser shows it: headless chromium renders it, and every image in it is on the page."""
import base64
import os
import shutil
import subprocess

import cv2
import numpy as np
import pytest

from film_restore import report
from film_restore.report import SAMPLE_SIDE, _detail, _thumbnail
from tests.assets import asset

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
WINDOW = (1100, 900)


def _report(photo: np.ndarray) -> dict:
    """A report of one 12-frame track whose sample shows a real photo (before: blurred), as report.build lays it out."""
    before = cv2.GaussianBlur(photo, (0, 0), 2.0)
    centre = np.array([[photo.shape[1] / 2, photo.shape[0] / 2]], np.float32)
    before_1to1, after_1to1 = _detail(before, photo, centre)
    frames = list(range(40, 52))
    series = {"frame": frames, "identity_in": [0.88] * 12, "identity_out": [0.9, 0.87] + [0.89] * 10,
              "strength": [1.0, 0.5] + [0.75] * 4 + [1.0] * 6}
    guards = {"flicker_ratio": 0.93, "identity_in": 0.88, "identity_out": 0.888, "strength_mean": 0.833,
              "strength_min": 0.5, "held_back": 6, "held_back_why": {"identity: restored face less like the actor than the input": 6}}
    return {
        "input": {"path": "film.mkv"},
        "totals": {"frames": 60, "shots": 1, "tracks": 1, "faces_restored": 12,
                   "faces_too_small": {"min_face": 24, "faces": 0}, "faces_held_still": 2},
        "tracks": [{"shot": 0, "first_frame": 40, "last_frame": 51, "actor": "Speaker", "similarity": 0.8,
                    "faces": 12, "guards": guards, "series": series}],
        "samples": [{"frame": 46, "actor": "Speaker", "before": _thumbnail(before[:, :SAMPLE_SIDE * 2]),
                     "after": _thumbnail(photo[:, :SAMPLE_SIDE * 2]), "texture_ratio": 0.97,
                     "before_1to1": before_1to1, "after_1to1": after_1to1}],
    }


def _decoded(data_uri_or_base64: str) -> np.ndarray:
    payload = data_uri_or_base64.split(",", 1)[-1]
    return cv2.imdecode(np.frombuffer(base64.b64decode(payload), np.uint8), cv2.IMREAD_COLOR)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (install.sh installs it where apt-get runs as root)")
def test_the_html_report_renders_with_every_image_at_its_own_size(tmp_path):
    photo = cv2.imread(str(asset("media/photos/00.jpg")))[:, :, ::-1]
    content = _report(photo)
    report.write(content, tmp_path / "report.json")
    page = (tmp_path / "report.html").read_text()
    assert "2 restored in part only" in page
    sample = content["samples"][0]
    [plot] = [part.split('"')[0] for part in page.split('src="')[1:] if part.startswith("data:image/png")]
    images = {"plot": _decoded(plot), **{key: _decoded(sample[key]) for key in ("before", "after", "before_1to1", "after_1to1")}}
    assert images["before_1to1"].shape == (160, 160, 3) and images["plot"].shape[:2] == (140, 360)

    screenshot = tmp_path / "screenshot.png"
    command = [CHROMIUM, "--headless", "--disable-gpu", "--hide-scrollbars", "--force-device-scale-factor=1",
               f"--user-data-dir={tmp_path / 'profile'}", f"--window-size={WINDOW[0]},{WINDOW[1]}",
               f"--screenshot={screenshot}", (tmp_path / "report.html").as_uri()]
    if os.geteuid() == 0:
        command.insert(1, "--no-sandbox")  # chromium refuses to run as root with its sandbox
    subprocess.run(command, check=True, capture_output=True, timeout=60)
    shot = cv2.imread(str(screenshot), cv2.IMREAD_COLOR)
    assert shot.shape[:2] == (WINDOW[1], WINDOW[0])
    assert shot.std() > 20 and len(np.unique(shot.reshape(-1, 3), axis=0)) > 1000, "the screenshot is blank"
    # Every image is drawn, at 1:1 (thumbnails are SAMPLE_SIDE px and shown so): each is found in the screenshot,
    # pixel for pixel (a drawn image matches at 1.0; a missing "after" crop still finds its blurred "before" at 0.97).
    for name, image in images.items():
        match = cv2.matchTemplate(shot, image, cv2.TM_CCOEFF_NORMED).max()
        assert match > 0.99, f"{name} is not on the page (best match {match:.2f})"
