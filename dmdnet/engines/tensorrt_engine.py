"""A TensorRT engine built from the exported graph, cached per model, GPU, TensorRT version,
precision and optimisation profile, built once per node (under a file lock) and shared by
that node's actors.
"""
from __future__ import annotations

import torch

from dmdnet.engines.base import DictionaryTensors, Engine, EngineUnavailable
from dmdnet.engines.cache import cache_dir, cached_file, key_name
from dmdnet.engines.onnx_engine import OPSET, onnx_graph
from dmdnet.export import build_tensorrt_engine, dictionary_input_names
from dmdnet.model import DMDNet, part_names

# Optimisation profile (min, opt, max): faces per call and references per dictionary.
BATCH_PROFILE = (1, 8, 32)
REFERENCE_PROFILE = (1, 8, 32)


def _tensorrt():
    if not torch.cuda.is_available():
        raise EngineUnavailable("TensorRT needs a CUDA GPU and torch has none here")
    try:
        import tensorrt
    except ImportError as error:
        raise EngineUnavailable("TensorRT is not installed: pip install tensorrt (matching the node's CUDA)") from error
    return tensorrt


class TensorRTEngine(Engine):
    name = "tensorrt"

    def __init__(self, model: DMDNet, precision="float16", device=None, reason="", cache=None,
                 batch=BATCH_PROFILE, references=REFERENCE_PROFILE):
        device = torch.device(device or "cuda")
        super().__init__(model, precision, device, reason)
        if device.type != "cuda":
            raise EngineUnavailable(f"TensorRT runs on a CUDA device, not {device}")
        if precision == "bfloat16":
            raise ValueError("the tensorrt engine builds float32 or float16 engines: use precision='float16'")
        self.trt = _tensorrt()
        self.batch, self.references = tuple(batch), tuple(references)
        self._model, self._cache = model, cache
        self._contexts: dict[bool, object] = {}
        self._dictionary = DictionaryTensors(self._dictionary_inputs)
        self.context(specific=False)

    def engine_path(self, specific: bool):
        gpu = torch.cuda.get_device_name(self.device)
        profile = f"b{'_'.join(map(str, self.batch))}" + (f"-r{'_'.join(map(str, self.references))}" if specific else "")
        name = key_name("dmdnet", self._model.fingerprint, "specific" if specific else "generic", f"opset{OPSET}",
                        gpu, f"trt{self.trt.__version__}", self.precision, profile)
        return cache_dir(self._cache) / f"{name}.engine"

    def context(self, specific: bool):
        """The generic or specific execution context, its engine built or read from the cache."""
        if specific not in self._contexts:
            onnx, _ = onnx_graph(self._model, specific, "float32", self._cache)
            path, _ = cached_file(
                self.engine_path(specific),
                lambda target: build_tensorrt_engine(
                    onnx, target, fp16=self.precision == "float16", batch=self.batch, references=self.references
                ),
            )
            runtime = self.trt.Runtime(self.trt.Logger(self.trt.Logger.WARNING))
            engine = runtime.deserialize_cuda_engine(path.read_bytes())
            if engine is None:
                raise EngineUnavailable(f"TensorRT cannot read the cached engine {path}: delete it to rebuild")
            self._contexts[specific] = (engine, engine.create_execution_context())
        return self._contexts[specific][1]

    def _dictionary_inputs(self, dictionary) -> dict[str, torch.Tensor]:
        keys, values = dictionary.tensors(self.device, torch.float32)
        tensors = [t for part in part_names() for t in (keys[part], values[part])]
        return {name: t.contiguous() for name, t in zip(dictionary_input_names(), tensors)}

    def run(self, lq, boxes, dictionary):
        if not self.batch[0] <= lq.shape[0] <= self.batch[2]:
            raise ValueError(f"{lq.shape[0]} faces outside the engine's batch profile {self.batch}: split the batch")
        inputs = {"lq": lq.to(self.device).contiguous(), "boxes": boxes.to(self.device).contiguous()}
        if dictionary is not None:
            inputs.update(self._dictionary(dictionary))
        context = self.context(dictionary is not None)
        for name, tensor in inputs.items():
            context.set_input_shape(name, tuple(tensor.shape))
            context.set_tensor_address(name, tensor.data_ptr())
        restored = torch.empty(tuple(context.get_tensor_shape("restored")), dtype=torch.float32, device=self.device)
        context.set_tensor_address("restored", restored.data_ptr())
        stream = torch.cuda.current_stream(self.device)
        if not context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT failed to run the engine (see its log above)")
        stream.synchronize()
        return restored
