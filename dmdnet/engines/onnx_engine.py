"""The exported graph (dmdnet.export) on onnxruntime: TensorRT, CUDA or CPU provider.

Graphs are exported once per model, opset and kind (generic, or specific with the
dictionary as inputs) into the engine cache and reused. float16 converts the exported
graph, except the nodes that compute the crop windows from the boxes alone (pixel positions
up to 512 need float32); with the TensorRT provider the float32 graph runs and TensorRT
chooses fp16 layers itself.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dmdnet.engines.base import DictionaryTensors, Engine, EngineUnavailable
from dmdnet.engines.cache import cache_dir, cached_file, key_name
from dmdnet.export import dictionary_input_names, export_onnx
from dmdnet.files import atomic_path
from dmdnet.model import DMDNet, part_names

OPSET = 18
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
INSTALL = "pip install onnxruntime (onnxruntime-gpu on a GPU node), onnx and onnxscript"


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError as error:
        raise EngineUnavailable(f"onnxruntime is not installed: {INSTALL}") from error
    return onnxruntime


def providers_for(device: torch.device) -> list[str]:
    """onnxruntime's providers for this device that its installed build has, preferred first."""
    available = _onnxruntime().get_available_providers()
    if device.type == "cuda":
        wanted = [p for p in GPU_PROVIDERS if p in available]
        if not wanted:
            raise EngineUnavailable(
                f"this onnxruntime build has no GPU provider (it has {', '.join(available)}): pip install onnxruntime-gpu"
            )
        return wanted + ["CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def onnx_graph(model: DMDNet, specific: bool, precision: str, folder=None) -> tuple[Path, bool]:
    """(path, exported now) of the model's graph in the cache: exported once, then reused."""
    kind = "specific" if specific else "generic"
    folder = cache_dir(folder)
    fp32 = folder / f"{key_name('dmdnet', model.fingerprint, kind, f'opset{OPSET}', 'float32')}.onnx"

    def export(path: Path) -> None:
        try:
            export_onnx(model, path, specific=specific, opset=OPSET)
        except ImportError as error:
            raise EngineUnavailable(f"exporting the ONNX graph needs {error.name}: {INSTALL}") from error

    fp32, built = cached_file(fp32, export)
    if precision == "float32":
        return fp32, built
    half = fp32.with_name(fp32.name.replace("-float32", "-float16"))
    return cached_file(half, lambda path: _write_float16(fp32, path))


def _write_float16(source: Path, path: Path) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    graph = onnx.load(str(source))
    # Nodes reached from the boxes alone compute pixel positions and interpolation weights.
    data = {i.name for i in graph.graph.input if i.name != "boxes"}
    box_only = []
    for index, node in enumerate(graph.graph.node):
        node.name = node.name or f"node_{index}"
        if any(name in data for name in node.input):
            data.update(node.output)
        else:
            box_only.append(node.name)
    converted = convert_float_to_float16(graph, keep_io_types=True, node_block_list=box_only)
    with atomic_path(path) as temporary:
        onnx.save(converted, str(temporary))


class OnnxRuntimeEngine(Engine):
    name = "onnxruntime"

    def __init__(self, model: DMDNet, precision="float32", device=None, reason="", cache=None, threads: int | None = None):
        device = torch.device(device or "cpu")
        super().__init__(model, precision, device, reason)
        if precision == "bfloat16":
            raise ValueError("the onnxruntime engine runs float32 or float16 graphs: use precision='float32' or 'float16'")
        self.providers = providers_for(device)
        if device.type == "cpu" and precision == "float16":
            raise ValueError("onnxruntime has no fast float16 on the CPU: use precision='float32' there")
        self.threads = threads
        self._model, self._cache = model, cache
        self._sessions: dict[bool, object] = {}
        self.exported: dict[bool, bool] = {}
        self._dictionary = DictionaryTensors(self._dictionary_feed)
        self.session(specific=False)

    def session(self, specific: bool):
        """The generic or specific session, created on first use."""
        if specific not in self._sessions:
            ort = _onnxruntime()
            tensorrt = self.providers[0] == "TensorrtExecutionProvider"
            # TensorRT takes the float32 graph and picks fp16 layers itself.
            graph_precision = "float32" if tensorrt else self.precision
            path, self.exported[specific] = onnx_graph(self._model, specific, graph_precision, self._cache)
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            if self.threads:
                options.intra_op_num_threads = self.threads
            providers = [
                (name, {"trt_fp16_enable": self.precision == "float16", "trt_engine_cache_enable": True,
                        "trt_engine_cache_path": str(cache_dir(self._cache))})
                if name == "TensorrtExecutionProvider" else name
                for name in self.providers
            ]
            self._sessions[specific] = ort.InferenceSession(str(path), options, providers=providers)
            used = self._sessions[specific].get_providers()[0]
            if used != self.providers[0]:
                self.reason += f"; {self.providers[0]} did not load, {used} runs instead"
        return self._sessions[specific]

    def _dictionary_feed(self, dictionary) -> dict[str, np.ndarray]:
        keys, values = dictionary.tensors("cpu", torch.float32)
        tensors = [t for part in part_names() for t in (keys[part], values[part])]
        return {name: t.contiguous().numpy() for name, t in zip(dictionary_input_names(), tensors)}

    def run(self, lq, boxes, dictionary):
        feed = {"lq": lq.cpu().numpy(), "boxes": boxes.cpu().numpy()}
        if dictionary is not None:
            feed.update(self._dictionary(dictionary))
        (restored,) = self.session(dictionary is not None).run(["restored"], feed)
        return torch.from_numpy(restored)

    def describe(self) -> dict[str, str]:
        return {**super().describe(), "providers": ",".join(self.providers)}
