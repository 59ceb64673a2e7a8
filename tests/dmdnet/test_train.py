"""Training: what each phase changes, that a few steps learn, Ray Train resume, configs."""
import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from tests.assets import REPO
from tests.own_ray import own_ray

import dmdnet
from dmdnet import DMDNet
from dmdnet.boxes import component_boxes, mirrored_boxes
from dmdnet.checkpoint import authors_state_dict, save_checkpoint
from dmdnet.data import PreparedFaces
from dmdnet.engines.auto import native_bfloat16
from dmdnet.files import default_file_mode
from dmdnet.images import to_image
from dmdnet.metrics import psnr
from dmdnet.train import (RUN_NAME, STATE_FILE, ConfigError, Training, TrainingFaces, TrainConfig, check_resume, load_config,
                          split_identities, unsafe_bfloat16_convolutions)
from dmdnet.train import main as train_main

TINY = {"width": 4, "dictionary_size": 8, "batch_size": 2, "initialize_faces": 8, "references": 2, "heldout_fraction": 0.0}


def tiny_training(heldout_faces, **options) -> tuple[Training, TrainingFaces]:
    config = TrainConfig(data=str(heldout_faces), output="unused", **{**TINY, **options})
    faces = PreparedFaces(heldout_faces)
    torch.manual_seed(0)
    return Training(config, faces.size, torch.device("cpu")), TrainingFaces(faces, list(faces.identities), config.references, 0)


def values(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def moved(before, model) -> dict[str, float]:
    """Parameter name -> largest absolute change, for the parameters that changed."""
    after = dict(model.named_parameters())
    change = {name: float((after[name].detach() - value).abs().max()) for name, value in before.items()}
    return {name: c for name, c in change.items() if c > 0}


def group(names, *markers) -> set[str]:
    return {name for name in names if any(marker in name for marker in markers)}


def test_each_phase_changes_exactly_its_parameters(heldout_faces):
    training, data = tiny_training(heldout_faces)
    model = training.model
    names = [name for name, _ in model.named_parameters()]
    dictionary = group(names, "generic_key", "generic_value")
    specific_only = group(names, "encoder_hq.", ".mask.", ".key.", ".value.")
    generic_network = set(names) - dictionary - specific_only
    assert len(dictionary) == 18 and specific_only and generic_network

    before = values(model)
    training.initialize_dictionary(data)
    assert set(moved(before, model)) == dictionary
    for part in model.parts.values():  # k-means items: distinct and finite
        assert torch.isfinite(part.generic_key).all() and part.generic_key.flatten(1).unique(dim=0).shape[0] > 1

    # Forward stage: the network learns; the dictionary follows the ground truth by moving averages.
    training.enter("forward")
    batch = data.batch(0, 2, references=False)
    truth = training.ground_truth_features(batch["hq"], batch["boxes"])
    part = model.parts["le_256"]
    key_before = part.generic_key.detach().flatten(1).clone()
    before = values(model)
    training.step(batch)
    changed = set(moved(before, model))
    assert dictionary <= changed and generic_network <= changed and not changed & specific_only
    key = truth["le_256"][0].detach().flatten(1)
    assigned = (key @ key_before.T).argmax(dim=1)
    decay = training.config.moving_average_decay
    for item in assigned.unique():
        members = key[assigned == item]
        expected = (decay * key_before[item] + (1 - decay) * members.sum(0)) / (decay + (1 - decay) * len(members))
        torch.testing.assert_close(part.generic_key.detach().flatten(1)[item], expected, rtol=1e-3, atol=1e-6)

    # Backward stage: the dictionary is a parameter at its own rate (Adam's first step moves by at most lr).
    training.enter("backward")
    before = values(model)
    training.step(data.batch(1, 2, references=False))
    change = moved(before, model)
    # Every value item is read; a key item whose softmax weight rounds to 0 or 1 (the
    # untrained network's deeper reads are nearly one-hot) gets no gradient.
    values_items = group(dictionary, "generic_value")
    assert values_items | generic_network <= set(change) <= dictionary | generic_network
    dictionary_step = max(change[name] for name in dictionary & set(change))
    network_step = max(change[name] for name in generic_network)
    assert 1e-7 < dictionary_step <= 2e-6 * 1.001
    assert 1e-4 < network_step <= 2e-4 * 1.001

    # Specific phase: E_hq starts as E_lq; the generic dictionary is frozen.
    training.copy_generic_extractor()
    for (_, hq), (_, lq) in zip(model.encoder_hq.state_dict().items(), model.encoder_lq.state_dict().items()):
        assert torch.equal(hq, lq)
    training.enter("specific")
    samples = [s for s in (data.sample(i) for i in range(40)) if s["ref_count"] > 0][:2]
    batch = {key: torch.stack([s[key] for s in samples]) for key in samples[0]}
    before = values(model)
    training.step(batch)
    changed = set(moved(before, model))
    # Queries learn here only through the reads' softmax (no query loss), which is nearly
    # one-hot at the deeper scales of this untrained network.
    assert not changed & dictionary and generic_network - group(names, ".query.") <= changed
    print("specific parameters without gradient:", sorted(specific_only - changed))
    for marker in ("encoder_hq.", ".mask.", ".key.", ".value."):
        assert group(changed, marker), f"no {marker} parameter learned in the specific phase"


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_a_few_steps_lower_the_loss(heldout_faces, precision):
    if precision == "bfloat16" and not native_bfloat16():
        # bfloat16 training's finite gradients are checked below in a few steps (width 20).
        pytest.skip("this CPU has no native bfloat16 (avx512_bf16 or amx): torch emulates 24 steps too slowly for a test")
    training, data = tiny_training(heldout_faces, width=8, learning_rate=1e-3, precision=precision)
    training.initialize_dictionary(data)
    training.enter("forward")
    batches = [data.batch(step % 2, 2, references=False) for step in range(24)]
    losses = [training.step(batch)["pixel"] for batch in batches]
    print("pixel loss", [round(x, 1) for x in losses])
    assert sum(losses[-4:]) < 0.7 * sum(losses[:4])


def test_width_20_trains_in_bfloat16_with_finite_gradients(heldout_faces):
    """oneDNN's bfloat16 weight gradient of the 20- and 40-channel dilated encoder convolutions is
    not finite (and can crash): those run in float32, every other layer in bfloat16."""
    training, data = tiny_training(heldout_faces, width=20, precision="bfloat16")
    unsafe = unsafe_bfloat16_convolutions(training.model)
    assert {(conv.out_channels, conv.dilation) for conv in unsafe} == {(20, (5, 5)), (20, (3, 3)), (40, (3, 3))}
    assert all(name.startswith(("encoder_lq.", "encoder_hq.")) for name, module in training.model.named_modules()
               if module in unsafe)
    training.initialize_dictionary(data)
    training.enter("backward")
    terms = [training.step(data.batch(step, 2, references=False)) for step in range(2)]
    assert not any("skipped" in step for step in terms)
    assert all(torch.isfinite(p.grad).all() for p in training.model.parameters() if p.grad is not None)


def test_samples_are_reproducible_and_references_are_other_photos_of_the_person(heldout_faces):
    _, data = tiny_training(heldout_faces)
    a, b = data.sample(5), data.sample(5)
    assert all(torch.equal(a[key], b[key]) for key in a)
    assert not torch.equal(data.sample(6)["lq"], a["lq"])
    identity, name = data.items[int(data.order(0)[5])]
    count = int(a["ref_count"])
    hq_refs = {data.faces.face(identity, other).crop.tobytes() for other in data.faces.identities[identity] if other != name}
    assert all(to_image(a["refs"][slot]).tobytes() in hq_refs for slot in range(count))
    assert not a["refs"][count:].any()


# iBUG 300-W index of each landmark's mirror image (jaw, brows, nose, eyes, mouth).
IBUG_MIRROR = [*range(16, -1, -1), *range(26, 16, -1), 27, 28, 29, 30, *range(35, 30, -1),
               45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40,
               *range(54, 47, -1), *range(59, 54, -1), *range(64, 59, -1), *range(67, 64, -1)]


def test_mirrored_boxes_are_the_boxes_of_the_mirrored_landmarks(heldout_faces):
    faces = PreparedFaces(heldout_faces)
    checked = 0
    for identity, names in faces.identities.items():
        for name in names:
            face = faces.face(identity, name)
            mirrored = face.landmarks[IBUG_MIRROR].copy()
            mirrored[:, 0] = faces.size - mirrored[:, 0]
            # the authors' rules truncate to pixels, so mirroring them moves a side by a pixel at most
            assert abs(mirrored_boxes(face.boxes, faces.size) - component_boxes(mirrored, faces.size)).max() <= 1
            checked += 1
    assert checked >= 10


def test_flipped_samples_mirror_faces_and_references_and_keep_the_degradations(heldout_faces):
    faces = PreparedFaces(heldout_faces)
    plain = TrainingFaces(faces, list(faces.identities), 2, 0)
    flipped = TrainingFaces(faces, list(faces.identities), 2, 0, flip=True)
    mirrored_faces = mirrored_references = 0
    for position in range(12):
        a, b = plain.sample(position), flipped.sample(position)
        assert torch.equal(b["lq"], flipped.sample(position)["lq"])
        assert torch.equal(a["ref_count"], b["ref_count"])
        if torch.equal(a["hq"], b["hq"]):
            assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["lq"], b["lq"])
        else:
            mirrored_faces += 1
            assert torch.equal(a["hq"].flip(-1), b["hq"])
            assert torch.equal(torch.from_numpy(mirrored_boxes(a["boxes"].numpy(), faces.size)), b["boxes"])
            # the same blur, scale, noise and JPEG draws on the mirrored face
            assert psnr(to_image(b["lq"][None])[0], to_image(b["hq"][None])[0]) == pytest.approx(
                psnr(to_image(a["lq"][None])[0], to_image(a["hq"][None])[0]), abs=1.0)
        for slot in range(int(a["ref_count"])):
            if not torch.equal(a["refs"][slot], b["refs"][slot]):
                mirrored_references += 1
                assert torch.equal(a["refs"][slot].flip(-1), b["refs"][slot])
    assert 2 <= mirrored_faces <= 10 and mirrored_references >= 1


def test_heldout_split_is_stable_and_keeps_the_test_identities_out():
    from tests.assets import HELDOUT_IDENTITIES, asset

    identities = sorted(p.name for p in asset("datasets/celeba_identities").iterdir() if p.is_dir())
    train, heldout = split_identities(identities, 0.1)
    assert set(HELDOUT_IDENTITIES) <= set(heldout) and not set(train) & set(heldout)
    assert 0.05 < len(heldout) / len(identities) < 0.15
    _, heldout_more = split_identities([*identities, "new person"], 0.1)
    assert set(heldout) <= set(heldout_more)


def random_tiny_model(seed: int) -> DMDNet:
    """A width-4, 256 px network with every weight drawn from N(0, 0.1): nothing at its default."""
    torch.manual_seed(seed)
    model = DMDNet(width=4, dictionary_size=8, image_size=256)
    for parameter in model.parameters():
        parameter.data.normal_(0, 0.1)
    return model


def test_trained_weights_round_trip_through_the_authors_key_names(tmp_path):
    model = random_tiny_model(0)
    state = authors_state_dict(model)
    from dmdnet.checkpoint import authors_manifest
    assert set(state) == set(authors_manifest(model))
    for dtype, tolerance in ((torch.float32, 1e-6), (torch.float16, 2e-3)):
        path = save_checkpoint(model, tmp_path / "model.safetensors", dtype)
        assert path.stat().st_mode & 0o777 == default_file_mode()  # readable by the cluster's other jobs
        loaded = dmdnet.load(path)
        assert loaded.image_size == 256 and loaded.width == 4
        for name, value in model.state_dict().items():
            torch.testing.assert_close(loaded.state_dict()[name], value, rtol=tolerance, atol=tolerance)


def test_a_fine_tune_starts_from_its_checkpoint_and_a_mismatch_is_named(tmp_path, heldout_faces):
    trained = random_tiny_model(1)
    path = save_checkpoint(trained, tmp_path / "trained.safetensors", torch.float32)
    training, data = tiny_training(heldout_faces, initial_weights=str(path), forward_steps=0)
    assert "started from the weights of" in training.start(data)
    for name, value in trained.state_dict().items():
        torch.testing.assert_close(training.model.state_dict()[name], value, rtol=1e-6, atol=1e-6)
    training.enter("backward")
    before = values(training.model)
    training.step(data.batch(0, 2, references=False))
    assert moved(before, training.model)

    wider, data = tiny_training(heldout_faces, initial_weights=str(path), width=8)
    with pytest.raises(ConfigError, match=r"is a network of width 4, 8 dictionary items and 256 px, but this run "
                                          r"trains width 8, 8 items on 256 px data: set width"):
        wider.start(data)
    missing, data = tiny_training(heldout_faces, initial_weights=str(tmp_path / "none.safetensors"))
    with pytest.raises(ConfigError, match="initial_weights: no checkpoint file at"):
        missing.start(data)


def test_the_weight_average_follows_every_step_and_survives_a_checkpoint(heldout_faces):
    training, data = tiny_training(heldout_faces, weight_average_decay=0.75)
    training.initialize_dictionary(data)
    training.enter("forward")
    training.step(data.batch(0, 2, references=False))
    first = {name: value.clone() for name, value in training.model.state_dict().items()}
    assert training.final_weights() is training.weight_average
    training.step(data.batch(1, 2, references=False))
    second = training.model.state_dict()
    for name, average in training.final_weights().items():
        torch.testing.assert_close(average, 0.75 * first[name] + 0.25 * second[name])
    assert any(not torch.equal(training.weight_average[name], second[name]) for name in second)

    training.copy_generic_extractor()  # the averaged E_hq starts as the averaged E_lq, like the live one
    for name in training.model.encoder_lq.state_dict():
        assert torch.equal(training.weight_average[f"encoder_hq.{name}"], training.weight_average[f"encoder_lq.{name}"])
    resumed, _ = tiny_training(heldout_faces, weight_average_decay=0.75)
    resumed.load(training.state(2))
    for name, average in training.weight_average.items():
        assert torch.equal(resumed.weight_average[name], average)


def test_a_snapshot_writes_the_weight_average_of_the_newest_checkpoint_without_training(tmp_path, heldout_faces, capsys):
    config = write_config(tmp_path, data=str(heldout_faces), output=str(tmp_path / "run"), weight_average_decay=0.75, **TINY)
    model_path = tmp_path / "now.safetensors"
    assert train_main([str(config), "--snapshot", str(model_path)]) == 1
    assert capsys.readouterr().err.strip() == (f"error: {tmp_path / 'run'} holds no checkpoint yet: train first "
                                               "(checkpoint_every steps write one)")
    training, data = tiny_training(heldout_faces, weight_average_decay=0.75, learning_rate=1e-2)
    training.initialize_dictionary(data)
    training.enter("forward")
    for step in range(2):
        training.step(data.batch(step, 2, references=False))
    for name, step in (("checkpoint_old", 1), ("checkpoint_new", 2)):
        (tmp_path / "run" / RUN_NAME / name).mkdir(parents=True)
        torch.save(training.state(step), tmp_path / "run" / RUN_NAME / name / STATE_FILE)
        time.sleep(0.05)  # the newest by modification time
    assert train_main([str(config), "--snapshot", str(model_path)]) == 0
    assert "the model at step 2 of" in capsys.readouterr().out
    saved = dmdnet.load(model_path).state_dict()
    for name, average in training.weight_average.items():
        torch.testing.assert_close(saved[name], average, rtol=2e-3, atol=1e-4)  # saved in float16
    live = training.model.state_dict()
    assert any(not torch.allclose(saved[name], live[name], rtol=2e-3, atol=1e-4) for name in live)
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_a_resume_takes_a_changed_rate_from_the_config_and_keeps_the_halved_one_otherwise(heldout_faces):
    training, data = tiny_training(heldout_faces, forward_steps=1)
    training.initialize_dictionary(data)
    training.enter("backward")
    training.step(data.batch(0, 2, references=False))
    for group in training.optimizer.param_groups:
        group["lr"] /= 2  # as the plateau rule would have
    state = training.state(2)

    same, _ = tiny_training(heldout_faces, forward_steps=1)
    same.load(state)
    assert {g["name"]: g["lr"] for g in same.optimizer.param_groups} == {"network": 1e-4, "dictionary": 1e-6}

    changed, _ = tiny_training(heldout_faces, forward_steps=1, learning_rate=3e-5)
    changed.load(state)
    assert {g["name"]: g["lr"] for g in changed.optimizer.param_groups} == {"network": 3e-5, "dictionary": 1e-6}
    assert changed.scheduler.num_bad_epochs == 0 and changed.window == []


def test_a_resume_with_settings_the_run_cannot_continue_under_is_refused_before_ray(tmp_path, heldout_faces):
    training, _ = tiny_training(heldout_faces, forward_steps=4, backward_steps=4, specific_steps=4)
    checkpoint = tmp_path / "ray_train" / "checkpoint_1"
    checkpoint.mkdir(parents=True)
    state = training.state(6)  # in the backward phase: forward has finished
    torch.save(state, checkpoint / STATE_FILE)
    config = training.config

    check_resume(dataclasses.replace(config, learning_rate=1e-5, backward_steps=2, specific_steps=9), tmp_path / "ray_train")
    check_resume(config, tmp_path / "nothing_yet")
    with pytest.raises(ConfigError) as refused:
        check_resume(dataclasses.replace(config, width=8, forward_steps=5), tmp_path / "ray_train")
    message = str(refused.value)
    assert "\n" not in message and "step 6" in message
    assert "width 4 -> 8" in message and "forward_steps 4 -> 5" in message and "new output folder" in message


def write_config(folder: Path, **settings) -> Path:
    path = folder / "train.yaml"
    path.write_text("".join(f"{key}: {json.dumps(value)}\n" for key, value in settings.items()))
    return path


def test_bad_configs_are_named_one_line_errors(tmp_path, heldout_faces):
    base = {"data": str(heldout_faces), "output": "run"}
    cases = [
        ({**base, "widht": 8}, "unknown setting(s) widht"),
        ({**base, "width": "wide"}, "width must be like 16"),
        ({"output": "run"}, "missing data"),
        ({**base, "initialize_faces": 4}, "initialize_faces (4) must be at least dictionary_size (128)"),
        ({**base, "precision": "fp8"}, "precision must be float32 or bfloat16, got 'fp8'"),
    ]
    for settings, message in cases:
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
            load_config(write_config(tmp_path, **settings))
    config = load_config(write_config(tmp_path, **base))
    assert config.output == str((tmp_path / "run").resolve())
    result = subprocess.run([sys.executable, "-m", "dmdnet.train", str(tmp_path / "missing.yaml")],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and result.stderr.count("\n") == 1 and "cannot read training config" in result.stderr


def read_steps(path: Path) -> list[int]:
    return [json.loads(line)["step"] for line in path.read_text().splitlines()] if path.is_file() else []


def train_workers_of_this_process() -> list[int]:
    """Pids of Ray Train workers started by this test's own Ray (not any other Ray on the machine)."""
    table = subprocess.run(["ps", "-eo", "pid=,ppid=,args="], capture_output=True, text=True, check=True).stdout
    processes = [line.split(None, 2) for line in table.splitlines()]
    children: dict[int, list[int]] = {}
    for pid, ppid, _ in processes:
        children.setdefault(int(ppid), []).append(int(pid))
    descendants, stack = set(), [os.getpid()]
    while stack:
        for child in children.get(stack.pop(), []):
            descendants.add(child)
            stack.append(child)
    return [int(pid) for pid, _, args in processes if int(pid) in descendants and args.startswith("ray::RayTrainWorker")]


def test_ray_train_resumes_after_a_killed_worker_and_a_rerun_redoes_nothing(tmp_path, heldout_faces):
    from dmdnet.train import run

    config = TrainConfig(data=str(heldout_faces), output=str(tmp_path / "run"), **TINY, forward_steps=14,
                         backward_steps=2, specific_steps=2, checkpoint_every=4, report_every=1, weight_average_decay=0.9)
    metrics = Path(config.output) / "metrics.jsonl"
    killed = []

    def kill_worker_after_a_checkpoint():
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not killed:
            if len(read_steps(metrics)) >= 6:
                workers = train_workers_of_this_process()
                if workers:
                    os.kill(workers[0], signal.SIGKILL)
                    killed.append(read_steps(metrics)[-1])
            time.sleep(0.05)

    with own_ray(num_cpus=2):
        killer = threading.Thread(target=kill_worker_after_a_checkpoint, daemon=True)
        killer.start()
        path = run(config)
        killer.join()
        steps = read_steps(metrics)
        assert killed, "the worker was not killed"
        # After the kill the run went back to the step after the last checkpoint, not to 1.
        restart = next(i for i in range(1, len(steps)) if steps[i] <= steps[i - 1])
        assert steps[restart] > 1 and (steps[restart] - 1) % config.checkpoint_every == 0
        assert steps[restart] - 1 <= killed[0]
        assert steps[-1] == config.total_steps and steps[restart:] == list(range(steps[restart], config.total_steps + 1))
        model = dmdnet.load(path)
        assert model.image_size == 256 and model.width == 4
        newest = max(Path(config.output, "ray_train").glob("checkpoint_*/state.pt"), key=os.path.getmtime)
        state = torch.load(newest, weights_only=True)
        assert state["step"] == config.total_steps
        for name, value in model.state_dict().items():  # the saved model is the weights' average
            torch.testing.assert_close(value, state["weight_average"][name].float(), rtol=2e-3, atol=2e-3)
        assert any(not torch.equal(state["model"][name], state["weight_average"][name]) for name in state["model"])

        run(config)
        assert read_steps(metrics) == steps  # the finished run resumed at its end: no step redone


def test_non_finite_steps_are_skipped_and_a_run_of_them_stops_training(heldout_faces):
    from dmdnet.train import MAX_SKIPPED_STEPS

    training, data = tiny_training(heldout_faces)
    training.initialize_dictionary(data)
    training.enter("forward")
    batch = data.batch(0, 2, references=False)
    broken = {**batch, "lq": batch["lq"].clone().fill_(float("nan"))}
    before = values(training.model)
    for _ in range(MAX_SKIPPED_STEPS):
        assert training.step(broken)["skipped"] == 1.0
    assert not moved(before, training.model)
    assert "skipped" not in training.step(batch) and moved(before, training.model)
    for _ in range(MAX_SKIPPED_STEPS):
        training.step(broken)
    with pytest.raises(FloatingPointError, match="lower learning_rate"):
        training.step(broken)
