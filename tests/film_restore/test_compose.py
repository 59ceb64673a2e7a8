"""The Composer sends a window's faces before it waits for the previous window's; faces that come back
through requests in flight give the output that faces returned at once give."""
import cv2
import numpy as np

from film_restore.compose import COMPOSE_WINDOW, ComposeSettings, Composer
from film_restore.faces.identity import Identifier
from film_restore.stages import FaceTracker, Scanner
from film_restore.video import probe, read_frames
from tests.assets import asset
from tests.media import make_film

FRAMES = 2 * COMPOSE_WINDOW + 4  # two full windows and a short one


def blurred(crops) -> np.ndarray:
    """A restorer that changes the faces (so guards and grain have work), deterministically."""
    return np.stack([cv2.GaussianBlur(crop, (0, 0), 2.0) for crop in crops]).astype(np.float32)


class InFlight:
    """A request in flight, as pipeline.cluster.RemoteRestore returns: result() waits for it."""

    def __init__(self, crops, events: list, number: int):
        self.crops, self.events, self.number = crops, events, number

    def result(self):
        self.events.append(("wait", self.number))
        return blurred(self.crops)


def test_next_window_is_sent_before_the_previous_is_waited_for_and_output_is_unchanged(tmp_path, talking_head):
    film = tmp_path / "film.mkv"
    make_film(film, [asset("media/clips/retalk_2.mp4")], FRAMES, size=(256, 256), with_audio=False)
    scan = Scanner(250)(film)
    chunk = scan.chunks[0]
    tracks = FaceTracker(asset("models"), Identifier({"Speaker": talking_head["reference"][None]}, 0.45),
                         detector_size=320)(film, chunk, scan.frame_pts)
    assert sum(len(t.faces) for t in tracks) == FRAMES
    settings = ComposeSettings("ffv1", 128, references={"Speaker": talking_head["reference"]}, models_dir=str(asset("models")))
    events = []

    def send(crops, boxes, actor):
        number = sum(1 for kind, _ in events if kind == "send")
        events.append(("send", number))
        return InFlight(crops, events, number)

    outputs = {"waits": tmp_path / "waits.mkv", "sends_ahead": tmp_path / "sends_ahead.mkv"}
    results = {name: Composer(probe(film), settings, restore)(chunk, tracks, scan.frame_pts, outputs[name])
               for name, restore in (("waits", lambda crops, boxes, actor: blurred(crops)), ("sends_ahead", send))}
    assert events == [("send", 0), ("send", 1), ("wait", 0), ("send", 2), ("wait", 1), ("wait", 2)]
    frames = {name: [frame.picture.rgb() for frame in read_frames(path)] for name, path in outputs.items()}
    assert len(frames["waits"]) == FRAMES
    assert all(np.array_equal(a, b) for a, b in zip(frames["waits"], frames["sends_ahead"]))
    assert results["waits"].tracks == results["sends_ahead"].tracks
    assert results["waits"].faces_held_still == 0  # a smoothing restorer never makes the face flicker

    def flickering(crops, boxes, actor):
        # 2 levels of fresh noise on faces smoothed by 2 px: enough new change from frame to frame
        # for every window (1 level barely outweighs the change the smoothing takes away).
        noise = np.random.default_rng(len(crops)).normal(0, 2, crops.shape).astype(np.float32)
        return blurred(crops) + noise

    unguarded = ComposeSettings("ffv1", 128)  # the guards' stabilisation would take most of this flicker away
    flickered = Composer(probe(film), unguarded, flickering)(chunk, tracks, scan.frame_pts, tmp_path / "flickers.mkv")
    assert 0 < flickered.faces_held_still <= flickered.faces
