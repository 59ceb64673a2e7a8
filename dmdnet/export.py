"""Graph export of batched DMDNet inference: ONNX (checked with onnxruntime) and TensorRT.

Two graphs, as the pipeline uses them:
- generic:  inputs `lq` (B x 3 x 512 x 512), `boxes` (B x 4 x 4)              -> `restored`
- specific: the same plus each part's dictionary, `{part}_key` (N x c/4 x h x w) and
  `{part}_value` (N x c x h x w), so one engine serves every actor.
The batch B and the number of references N are dynamic; the image size is the model's (512).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from dmdnet.files import atomic_path
from dmdnet.model import IMAGE_SIZE, DMDNet, part_names


def dictionary_input_names() -> list[str]:
    """Names of the specific graph's dictionary inputs, in input order."""
    return [f"{part}_{kind}" for part in part_names() for kind in ("key", "value")]


class _GenericGraph(nn.Module):
    def __init__(self, model: DMDNet):
        super().__init__()
        self.model = model

    def forward(self, lq: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        return self.model.restore(lq, boxes)


class _SpecificGraph(nn.Module):
    def __init__(self, model: DMDNet):
        super().__init__()
        self.model = model

    def forward(self, lq: torch.Tensor, boxes: torch.Tensor, *dictionary: torch.Tensor) -> torch.Tensor:
        keys = dict(zip(part_names(), dictionary[0::2]))
        values = dict(zip(part_names(), dictionary[1::2]))
        return self.model.restore(lq, boxes, keys, values)


def example_inputs(model: DMDNet, batch: int = 2, references: int | None = None) -> tuple[torch.Tensor, ...]:
    """Inputs of the right shapes for tracing or for checking an exported graph."""
    generator = torch.Generator().manual_seed(0)
    size = model.image_size
    lq = torch.rand(batch, 3, size, size, generator=generator) * 2 - 1
    box_512 = torch.tensor([[151, 188, 232, 269], [277, 182, 363, 268], [229, 273, 297, 341], [202, 316, 318, 433]])
    box = box_512 * size // IMAGE_SIZE
    boxes = (box[None] + torch.arange(batch)[:, None, None] * 3).to(torch.float32)
    if references is None:
        return lq, boxes
    refs = torch.rand(references, 3, size, size, generator=generator) * 2 - 1
    with torch.no_grad():
        keys, values = model.dictionary_tensors(refs, box[None].expand(references, -1, -1).to(torch.float32))
    return (lq, boxes, *[t for part in part_names() for t in (keys[part], values[part])])


def export_onnx(model: DMDNet, path, specific: bool = False, opset: int = 18) -> Path:
    """Writes the generic or specific graph of `model` to `path` (written atomically)."""
    path = Path(path)
    graph = (_SpecificGraph(model) if specific else _GenericGraph(model)).eval()  # the wrapper and the model inside
    inputs = example_inputs(model, batch=2, references=3 if specific else None)
    names = ["lq", "boxes"] + (dictionary_input_names() if specific else [])
    batch = torch.export.Dim("batch", min=1, max=1024)
    dynamic: tuple = ({0: batch}, {0: batch})
    if specific:
        references = torch.export.Dim("references", min=1, max=4096)
        dynamic += (tuple({0: references} for _ in dictionary_input_names()),)  # the *dictionary varargs
    with atomic_path(path) as temporary, torch.no_grad():
        program = torch.onnx.export(
            graph,
            inputs,
            dynamo=True,
            input_names=names,
            output_names=["restored"],
            dynamic_shapes=dynamic,
            opset_version=opset,
            external_data=False,
            verbose=False,
        )
        program.save(str(temporary))
    return path


def build_tensorrt_engine(
    onnx_path,
    engine_path,
    *,
    fp16: bool = True,
    batch: tuple[int, int, int] = (1, 8, 32),
    references: tuple[int, int, int] = (1, 8, 32),
    workspace_gib: float = 8.0,
) -> Path:
    """Builds a serialized TensorRT engine from an exported graph (needs the tensorrt package).

    batch and references are the optimisation profile's (min, opt, max) for the batch
    inputs (`lq`, `boxes`) and for the dictionary inputs of a specific graph. fp16 lets
    TensorRT run layers in half precision where it judges them safe.
    """
    try:
        import tensorrt as trt
    except ImportError as error:
        raise RuntimeError(
            "TensorRT is not installed: on a GPU node, `pip install tensorrt` matching its CUDA version"
        ) from error
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    explicit_batch = getattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH", None)  # implied from TensorRT 10
    network = builder.create_network(0 if explicit_batch is None else 1 << int(explicit_batch))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    for index in range(network.num_inputs):
        tensor = network.get_input(index)
        sizes = batch if tensor.name in ("lq", "boxes") else references
        shapes = [(size, *tuple(tensor.shape)[1:]) for size in sizes]
        profile.set_shape(tensor.name, *shapes)
    config.add_optimization_profile(profile)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} (see its log above)")
    with atomic_path(engine_path) as temporary:
        temporary.write_bytes(bytes(engine))
    return Path(engine_path)
