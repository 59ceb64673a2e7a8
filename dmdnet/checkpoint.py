"""The authors' checkpoint (DMDNet.pth) and our modules: key mapping and spectral-norm folding.

The authors name every block once per component and scale (`LE_256_KV.Key.0`), store
each convolution with spectral norm (`weight_orig`, `weight_u`, `weight_v`) and keep an
unused copy of the queries in `E_hq`. Our network loops over parts and holds plain
convolutions; this module is the one place that knows both naming schemes.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from dmdnet.model import COMPONENTS, CROP_EXTENT, IMAGE_SIZE, SCALES, DMDNet

SPECTRAL_NORM = ("weight_orig", "weight_u", "weight_v")
WRAPPER_KEYS = ("state_dict", "params_ema", "params", "model", "net")
OBTAIN = "download DMDNet.pth from the csxmli2016/DMDNet GitHub release v1 and pass its path"


class CheckpointError(ValueError):
    """The file or state dict is not a DMDNet checkpoint this network can load."""


def block_pairs() -> list[tuple[str, str, bool]]:
    """(authors' name, our name, loaded) for every block or buffer of the checkpoint.

    Names are prefixes: what follows them (`.0.bias`) is the same on both sides. The
    authors' E_hq queries are never used; they map onto the E_lq query only for shapes.
    """
    pairs = []
    for authors, ours in (("E_lq", "encoder_lq"), ("E_hq", "encoder_hq")):
        for stage in range(3):
            first, second = 2 * stage + 1, 2 * stage + 2
            prefix = f"{ours}.stages.{stage}"
            pairs += [
                (f"{authors}.conv{first}", f"{prefix}.down", True),
                (f"{authors}.res{first}.Res", f"{prefix}.res_in.body", True),
                (f"{authors}.conv{second}", f"{prefix}.pair", True),
                (f"{authors}.res{second}.Res", f"{prefix}.res_out.body", True),
            ]
    for side, _, _ in SCALES:
        for component in COMPONENTS:
            part, ours = f"{component.upper()}_{side}", f"parts.{component}_{side}"
            pairs += [
                (f"E_lq.{part}_Q.Query", f"{ours}.query", True),
                (f"E_hq.{part}_Q.Query", f"{ours}.query", False),
                (f"{part}_KV.Key", f"{ours}.key", True),
                (f"{part}_KV.Value", f"{ours}.value", True),
                (f"{part}_Attention", f"{ours}.attention", True),
                (f"{part}_Mask.conv1", f"{ours}.mask.degraded", True),
                (f"{part}_Mask.conv2", f"{ours}.mask.specific", True),
                (f"{part}_Mask.conv3", f"{ours}.mask.generic", True),
                (f"{part}_Mask.convCat", f"{ours}.mask.fuse", True),
                (f"{component}_{side}_mem_key", f"{ours}.generic_key", True),
                (f"{component}_{side}_mem_value", f"{ours}.generic_value", True),
            ]
    pairs += [(f"MSDilate.conv{i + 1}", f"ms_dilate.branches.{i}", True) for i in range(4)]
    pairs.append(("MSDilate.convi", "ms_dilate.merge", True))
    for i in range(3):
        for authors, ours in (("conv1", "conv"), ("ScaleModel1", "scale"), ("ShiftModel1", "shift"), ("convup", "up")):
            pairs.append((f"up{i + 1}.{authors}", f"up.{i}.{ours}", True))
    pairs += [
        ("up4.0", "head.0", True),
        ("up4.2.Model", "head.2.body", True),
        ("up4.3.Model", "head.3.body", True),
        ("up4.4", "head.4", True),
    ]
    return pairs


def authors_manifest(model: torch.nn.Module) -> dict[str, tuple[str, tuple[int, ...], bool]]:
    """Every key the authors' checkpoint has for this network: name -> (our key, shape, loaded)."""
    ours = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    manifest = {}
    for authors, prefix, loaded in block_pairs():
        for name, shape in ours.items():
            if name == prefix:
                manifest[authors] = (name, shape, loaded)
            elif name.startswith(prefix + "."):
                rest = name[len(prefix):]
                if rest.endswith(".weight"):
                    stem = authors + rest[: -len("weight")]
                    manifest[stem + "weight_orig"] = (name, shape, loaded)
                    manifest[stem + "weight_u"] = (name, shape[:1], loaded)
                    manifest[stem + "weight_v"] = (name, (int(np.prod(shape[1:])),), loaded)
                else:
                    manifest[authors + rest] = (name, shape, loaded)
    return manifest


def read_state_dict(source, map_location="cpu") -> dict[str, torch.Tensor]:
    """A checkpoint's tensors by name, from a path (.pth/.pt or .safetensors) or a mapping.

    Files are read without running pickled code; numpy arrays and half precision become
    float32 tensors.
    """
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise CheckpointError(f"no checkpoint file at {path}: {OBTAIN}")
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            try:
                state = load_file(str(path), device=str(map_location))
            except Exception as error:  # safetensors raises its own and OS errors alike
                raise CheckpointError(f"{path} is not a safetensors checkpoint ({error})") from error
        else:
            try:
                state = torch.load(path, map_location=map_location, weights_only=True)
            except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as error:
                reason = str(error).splitlines()[0] if str(error) else type(error).__name__
                raise CheckpointError(f"{path} is not a PyTorch checkpoint that loads safely ({reason}): {OBTAIN}") from error
    else:
        state = source
    if not isinstance(state, dict):
        raise CheckpointError(f"a checkpoint must hold a dict of tensors, got {type(state).__name__}")
    for wrapper in WRAPPER_KEYS:
        if isinstance(state.get(wrapper), dict) and not any(k.endswith("weight_orig") for k in state):
            state = state[wrapper]
            break
    if state and all(name.startswith("module.") for name in state):
        state = {name[len("module."):]: t for name, t in state.items()}
    tensors = {}
    for name, value in state.items():
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(np.ascontiguousarray(value))
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"checkpoint entry {name!r} is a {type(value).__name__}, not a tensor")
        tensors[name] = value.to(torch.float32) if value.is_floating_point() else value
    return tensors


def fold_spectral_norm(weight_orig: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The weight spectral norm uses at inference: weight_orig / (u . W v), no power iteration."""
    sigma = torch.dot(u, torch.mv(weight_orig.reshape(weight_orig.shape[0], -1), v))
    return weight_orig / sigma


def load(source, map_location="cpu") -> DMDNet:
    """The network a checkpoint describes (its width, dictionary and image size), loaded in eval mode.

    source: a path to the authors' DMDNet.pth (or a trained model's .safetensors) or a state
    dict under the authors' key names.
    """
    state = read_state_dict(source, map_location)
    for required in ("E_lq.conv1.0.weight_orig", "le_256_mem_key"):
        if required not in state:
            raise CheckpointError(f"not a DMDNet checkpoint: it has no {required!r} ({len(state)} keys): {OBTAIN}")
    if state["le_256_mem_key"].dim() != 4:
        raise CheckpointError(f"le_256_mem_key has shape {tuple(state['le_256_mem_key'].shape)}: expected 4 dimensions")
    width = state["E_lq.conv1.0.weight_orig"].shape[0]
    dictionary_size, _, _, eye_crop = state["le_256_mem_key"].shape
    # The eye crop at stride 2 is 80 / 2 pixels of a 512 face: it gives the image size.
    image_size = round(eye_crop * 2 * IMAGE_SIZE / CROP_EXTENT["le"] / 8) * 8
    model = DMDNet(width=width, dictionary_size=dictionary_size, image_size=image_size)
    manifest = authors_manifest(model)
    missing = [name for name in manifest if name not in state]
    unexpected = [name for name in state if name not in manifest]
    misshaped = [
        f"{name} {tuple(state[name].shape)} (expected {manifest[name][1]})"
        for name in manifest
        if name in state and tuple(state[name].shape) != manifest[name][1]
    ]
    if missing or unexpected or misshaped:
        problems = [
            f"{label} ({len(names)}): {', '.join(names)}"
            for label, names in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped))
            if names
        ]
        raise CheckpointError("checkpoint does not match DMDNet: " + "; ".join(problems))
    ours = {}
    for name, (our_name, _, loaded) in manifest.items():
        if not loaded or name.endswith(("weight_u", "weight_v")):
            continue
        if name.endswith("weight_orig"):
            stem = name[: -len("weight_orig")]
            ours[our_name] = fold_spectral_norm(state[name], state[stem + "weight_u"], state[stem + "weight_v"])
        else:
            ours[our_name] = state[name]
    model.load_state_dict(ours, strict=True)
    model.to(map_location).eval()
    _ = model.fingerprint  # hashed now, while the weights are as loaded (before any dtype change)
    return model


def authors_state_dict(model, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Our network's weights under the authors' key names, loadable by `load`
    (and by the authors' code): what a trained model is saved as.

    Spectral-normalised weights are stored as weight_orig = W with u = e_i (the row of W
    with the largest norm) and v = W[i] / |W[i]|^2, so u . W v = 1 and folding gives W back.
    The authors' E_hq queries, which the network never uses, are stored as zeros.
    """
    ours = {name: tensor.detach().to("cpu", torch.float32) for name, tensor in model.state_dict().items()}
    state = {}
    for name, (our_name, shape, loaded) in authors_manifest(model).items():
        weight = ours[our_name]
        if not loaded:
            state[name] = torch.zeros(shape)
        elif name.endswith("weight_orig"):
            state[name] = weight
        elif name.endswith(("weight_u", "weight_v")):
            rows = weight.reshape(weight.shape[0], -1)
            row = int(rows.norm(dim=1).argmax())
            if name.endswith("weight_u"):
                state[name] = torch.nn.functional.one_hot(torch.tensor(row), rows.shape[0]).float()
            else:
                state[name] = rows[row] / rows[row].dot(rows[row])
        else:
            state[name] = weight
    return {name: tensor.to(dtype).contiguous() for name, tensor in state.items()}


def save_checkpoint(model, path, dtype: torch.dtype = torch.float16, metadata: dict[str, str] | None = None) -> Path:
    """Writes the model as a .safetensors checkpoint under the authors' key names (atomically)."""
    from safetensors.torch import save_file

    from dmdnet.files import atomic_path, default_file_mode

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"trained models are saved as .safetensors, got {path.name}")
    with atomic_path(path) as temporary:
        save_file(authors_state_dict(model, dtype), str(temporary), metadata=metadata)
        # safetensors writes 0600; models are shared (cluster storage, other users' jobs).
        temporary.chmod(default_file_mode())
    return path
