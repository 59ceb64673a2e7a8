"""The cast: file validation, identification of real degraded faces, cached dictionaries."""
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.assets import REPO, asset, save_small_checkpoint
from film_restore.cast import Cast, CastError
from film_restore.cast.store import find_faces, reference_face
from film_restore.faces.identity import Identifier

HELD_OUT = 3


# --- the cast file ------------------------------------------------------------------

def write(folder: Path, text: str) -> Path:
    path = folder / "cast.yaml"
    path.write_text(text)
    return path


@pytest.fixture
def refs_folder(tmp_path):
    (tmp_path / "refs").mkdir()
    for name in ("a.jpg", "b.jpg"):
        (tmp_path / "refs" / name).write_bytes(b"x")
    return tmp_path


def test_a_valid_cast_resolves_globs_relative_to_its_folder(refs_folder):
    cast = Cast.load(write(refs_folder, "actors:\n  - name: Audrey Hepburn\n    references: [refs/*.jpg]\n"))
    assert cast.actors[0].name == "Audrey Hepburn"
    assert [p.name for p in cast.actors[0].references] == ["a.jpg", "b.jpg"]
    assert cast.match_threshold == 0.45
    assert cast.strengths == {}


def test_an_actor_may_have_their_own_strength(refs_folder):
    cast = Cast.load(write(refs_folder, "actors:\n  - name: A\n    references: refs/a.jpg\n    strength: 0.6\n"
                                       "  - name: B\n    references: refs/b.jpg\n    strength: auto\n"
                                       "  - name: C\n    references: refs/b.jpg\n"))
    assert cast.strengths == {"A": 0.6, "B": "auto"}


@pytest.mark.parametrize(
    "text, expected",
    [
        ("actors:\n  - name: A\n    refs: [refs/*.jpg]\n", ":3: actors[0].refs: unknown field"),
        ("actors:\n  - references: [refs/*.jpg]\n", ":2: actors[0].name: missing"),
        ("actors:\n  - name: A\n    references: [refs/*.png]\n", ":3: actors[0].references: 'refs/*.png' matches no file"),
        ("actors:\n  - name: A\n    references: ../*/refs/*.jpg\n", "is outside the cast file's folder"),
        ("actors:\n  - name: A\n    references: [refs/a.jpg]\n  - name: A\n    references: [refs/b.jpg]\n",
         ":4: actors: 'A' is listed twice"),
        ("actors:\n  - name: A\n    references: [refs/a.jpg]\nmatch_threshold: 1.5\n", ":4: match_threshold: expected"),
        ("actors: [\n", "not valid YAML"),
        ("", "the file is empty"),
        ("actors: []\n", ":1: actors: expected a non-empty list"),
        ("actors:\n  - name: A\n    references: [refs/a.jpg]\n    strength: 2\n",
         ":4: actors[0].strength: strength must be a number from 0 to 1 or 'auto', got '2'"),
    ],
)
def test_cast_errors_name_the_line_and_field(refs_folder, text, expected):
    with pytest.raises(CastError) as error:
        Cast.load(write(refs_folder, text))
    assert expected in str(error.value)
    assert "\n" not in str(error.value)


# --- identification on the DMDNet test set (compact pack) ---------------------------

def degrade(image: np.ndarray, seed: int) -> np.ndarray:
    """x4 down and back, JPEG quality 60, Gaussian noise sigma 5."""
    small = cv2.resize(image, (128, 128), interpolation=cv2.INTER_AREA)
    blurry = cv2.resize(small, (512, 512), interpolation=cv2.INTER_CUBIC)
    _, jpeg = cv2.imencode(".jpg", blurry[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 60])
    decoded = cv2.imdecode(jpeg, cv2.IMREAD_COLOR)[:, :, ::-1].astype(np.float64)
    noise = np.random.default_rng(seed).normal(0, 5, decoded.shape)
    return np.clip(decoded + noise, 0, 255).round().astype(np.uint8)


def rgb(path: Path) -> np.ndarray:
    return np.ascontiguousarray(cv2.imread(str(path))[:, :, ::-1])


@pytest.fixture(scope="module")
def testset(analyzer):
    """Per identity: embeddings of its references minus the held-out ones, and query embeddings."""
    root = asset("media/dmdnet_testset")
    galleries, queries = {}, []
    for folder in sorted((root / "RefsImg").iterdir()):
        photos = sorted(folder.glob("*.png"))
        galleries[folder.name] = np.stack([reference_face(analyzer, rgb(p))[1].embedding for p in photos[:-HELD_OUT]])
        for seed, photo in enumerate(photos[-HELD_OUT:]):
            queries.append((folder.name, degrade(rgb(photo), seed)))
        queries += [(folder.name, rgb(p)) for p in (root / "SynLQ").glob(f"{folder.name}_*.png")]
    embeddings = []
    for identity, image in queries:
        _, faces, _ = find_faces(analyzer, image)
        largest = max(faces, key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))
        embeddings.append((identity, largest.embedding))
    return galleries, embeddings


def test_degraded_held_out_and_synthetic_faces_are_identified(testset):
    galleries, queries = testset
    assert len(galleries) == 9 and len(queries) == 9 * (HELD_OUT + 1)
    identifier = Identifier(galleries, threshold=0.45)
    correct = sum(identifier.identify(embedding).actor == identity for identity, embedding in queries)
    assert correct / len(queries) >= 0.95


def test_faces_of_an_actor_missing_from_the_cast_come_back_unknown(testset):
    galleries, queries = testset
    unknown = total = 0
    for removed in galleries:
        identifier = Identifier({k: v for k, v in galleries.items() if k != removed}, threshold=0.45)
        matches = [identifier.identify(e) for identity, e in queries if identity == removed]
        unknown += sum(m.actor is None for m in matches)
        total += len(matches)
    assert unknown / total >= 0.90


def test_photos_that_cannot_be_references_are_refused_with_the_reason(analyzer):
    with pytest.raises(ValueError, match="2 faces of similar size"):
        reference_face(analyzer, rgb(asset("media/photos/06.png")))
    with pytest.raises(ValueError, match=r"face only 4\d px \(needs 64\)"):
        reference_face(analyzer, rgb(asset("media/photos/00.jpg")))
    with pytest.raises(ValueError, match="no face found"):
        reference_face(analyzer, np.full((300, 300, 3), 128, np.uint8))


# --- building and identifying through the command line -----------------------------

def cast_cli(*args, expect_ok=True):
    result = subprocess.run([sys.executable, "-m", "film_restore.cast", *map(str, args)],
                            capture_output=True, text=True, cwd=REPO)
    assert (result.returncode == 0) == expect_ok, result.stderr
    return result


def test_build_caches_unchanged_actors_and_identify_prints_json(tmp_path):
    models = asset("models")
    testset = asset("media/dmdnet_testset/RefsImg")
    identities = sorted(p.name for p in testset.iterdir())[:2]
    for identity in identities:
        (tmp_path / identity).mkdir()
        for photo in sorted((testset / identity).glob("*.png"))[:3]:
            (tmp_path / identity / photo.name).write_bytes(photo.read_bytes())
    cv2.imwrite(str(tmp_path / identities[0] / "blank.png"), np.full((300, 300, 3), 90, np.uint8))
    cast = write(tmp_path, "actors:\n" + "".join(f"  - name: Person {i}\n    references: {i}/*.png\n" for i in identities))
    checkpoint = save_small_checkpoint(tmp_path / "DMDNet.pth")

    first = cast_cli("build", cast, "--checkpoint", checkpoint, "--models", models).stdout
    assert f"Person {identities[0]}: skipped" in first and "blank.png (no face found)" in first
    assert f"Person {identities[0]}: 3 of 4 references used, dictionary built" in first
    assert len(list((tmp_path / "cast.store").glob("*.dict"))) == 2
    second = cast_cli("build", cast, "--checkpoint", checkpoint, "--models", models).stdout
    assert second.count("dictionary unchanged") == 2

    changed = sorted((tmp_path / identities[1]).glob("*.png"))[0]
    cv2.imwrite(str(changed), cv2.flip(cv2.imread(str(changed)), 1))
    third = cast_cli("build", cast, "--checkpoint", checkpoint, "--models", models).stdout
    assert f"Person {identities[1]}: 3 of 3 references used, dictionary built" in third
    assert f"Person {identities[0]}: 3 of 4 references used, dictionary unchanged" in third

    query = sorted((testset / identities[1]).glob("*.png"))[-1]
    lines = cast_cli("identify", cast, query, asset("media/photos/02.png"), "--models", models).stdout.splitlines()
    results = [json.loads(line) for line in lines]
    assert results[0]["image"] == str(query) and results[0]["actor"] == f"Person {identities[1]}"
    assert len(results[0]["box"]) == 4 and results[0]["similarity"] >= 0.45
    assert [r["actor"] for r in results[1:]] == [None] * 4


def test_build_errors_are_one_line(tmp_path):
    (tmp_path / "refs").mkdir()
    cv2.imwrite(str(tmp_path / "refs" / "blank.png"), np.full((300, 300, 3), 90, np.uint8))
    cast = write(tmp_path, "actors:\n  - name: Nobody\n    references: refs/*.png\n")
    result = cast_cli("build", cast, "--checkpoint", tmp_path / "absent.pth", "--models", asset("models"), expect_ok=False)
    assert result.stderr.startswith("error: no checkpoint file at") and result.stderr.count("\n") == 1
    checkpoint = save_small_checkpoint(tmp_path / "DMDNet.pth")
    result = cast_cli("build", cast, "--checkpoint", checkpoint, "--models", asset("models"), expect_ok=False)
    assert "error: Nobody has no usable reference photo: blank.png: no face found" in result.stderr
