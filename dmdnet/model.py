"""DMDNet: dual memory dictionaries for blind face restoration (Li et al., TPAMI 2022).

One file for the whole inference network, following the authors' architecture exactly
(see `dmdnet.checkpoint` for how their checkpoint's keys map onto these modules).
The authors repeat each dictionary block for 3 components x 3 scales; here they are one
`PartMemory` class in a loop. Crops and paste-backs are interpolation matrices built from
the boxes on the device, so a batch of faces with different boxes runs in one call and
exports to ONNX as one graph.
"""
from __future__ import annotations

import hashlib

import torch
import torch.nn.functional as F
from torch import nn

from dmdnet.dictionary import SpecificDictionary

# Components read from the dictionaries, and their row in the 4 x 4 box array (the nose,
# row 2, is located but never used by the network).
COMPONENTS = ("le", "re", "mo")
BOX_ROW = {"le": 0, "re": 1, "mo": 3}
# The authors' image size; other sizes scale the geometry (crops, feature sides) with it.
IMAGE_SIZE = 512
# Side of each component's square crop in pixels of the 512 image; divided by the stride.
CROP_EXTENT = {"le": 80, "re": 80, "mo": 110}
# Feature scales: (name, the side at a 512 input as in the checkpoint's keys; channel
# multiple of the width; stride).
SCALES = ((256, 1, 2), (128, 2, 4), (64, 4, 8))
NEGATIVE_SLOPE = 0.2
# References encoded at once when building a dictionary: bounds memory for large casts.
DICTIONARY_CHUNK = 8
# Values per row of the dictionary reads: 16 float32 fill a 64-byte cache line (read_dictionary).
ROW_ALIGNMENT = 16


def part_names() -> list[str]:
    """Names of the nine (component, scale) dictionary parts, in the order they are applied."""
    return [f"{component}_{scale}" for scale, _, _ in SCALES for component in COMPONENTS]


def crop_side(component: str, stride: int, image_size: int = IMAGE_SIZE) -> int:
    """Side of a component's crop on the feature map of this stride (40/40/55 at stride 2 for 512)."""
    return CROP_EXTENT[component] * image_size // IMAGE_SIZE // stride


def conv(cin: int, cout: int, dilation: int = 1, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation)


def conv_pair(cin: int, cout: int, dilation: int = 1, stride: int = 1) -> nn.Sequential:
    """conv -> LeakyReLU -> conv; only the first convolution strides."""
    return nn.Sequential(
        conv(cin, cout, dilation, stride), nn.LeakyReLU(NEGATIVE_SLOPE), conv(cout, cout, dilation)
    )


class Residual(nn.Module):
    """x + (conv d1 -> LeakyReLU -> conv d2)(x)."""

    def __init__(self, channels: int, dilations: tuple[int, int] = (1, 1)):
        super().__init__()
        self.body = nn.Sequential(
            conv(channels, channels, dilations[0]),
            nn.LeakyReLU(NEGATIVE_SLOPE),
            conv(channels, channels, dilations[1]),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class EncoderStage(nn.Module):
    """Halves the resolution, then residual, conv pair, residual."""

    def __init__(self, cin: int, cout: int, dilations: tuple[int, int]):
        super().__init__()
        self.down = conv_pair(cin, cout, stride=2)
        self.res_in = Residual(cout, dilations)
        self.pair = conv_pair(cout, cout)
        self.res_out = Residual(cout, dilations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_out(self.pair(self.res_in(self.down(x))))


class FeatureExtractor(nn.Module):
    """Features at 256, 128 and 64 pixels (strides 2, 4, 8) of a 512 face."""

    DILATIONS = ((5, 3), (3, 1), (1, 1))

    def __init__(self, width: int):
        super().__init__()
        channels = [3] + [width * multiple for _, multiple, _ in SCALES]
        self.stages = nn.ModuleList(
            EncoderStage(cin, cout, dilations)
            for cin, cout, dilations in zip(channels, channels[1:], self.DILATIONS)
        )

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for stage in self.stages:
            image = stage(image)
            features.append(image)
        return features


def read_dictionary(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Attention read: every item is a filter the size of the crop (the authors' conv2d).

    The softmax temperature is sqrt(number of items), computed from the tensor shape so
    that an exported graph follows the number of references. The products are batched
    (one 1-row product per face) rather than one matrix product for the whole batch, so a
    face's result does not depend on the batch it came in.
    """
    batch, items = query.shape[0], keys.shape[0]
    similarity = torch.bmm(_aligned_rows(query)[:, None], _aligned_rows(keys).T.expand(batch, -1, -1))
    temperature = torch.full_like(similarity[:1, :1, :1], 1.0) * items
    score = torch.softmax(similarity / temperature.sqrt(), dim=2)
    read = torch.bmm(score, _aligned_rows(values).expand(batch, -1, -1))
    return read[..., : values[0].numel()].reshape(batch, *values.shape[1:])


def _aligned_rows(x: torch.Tensor) -> torch.Tensor:
    """x flattened to one row per item, zero-padded to a multiple of ROW_ALIGNMENT values. CPU
    kernels take other code paths for rows that start unaligned, so with rows of any length a
    face's read changed in the last bits with its place in the batch."""
    row = x.flatten(1)
    missing = -row.shape[1] % ROW_ALIGNMENT
    return F.pad(row, (0, missing)) if missing else row  # the authors' sizes need no copy


def adain(content: torch.Tensor, style: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Gives `content` the per-channel mean and (unbiased) std of `style`."""
    c_mean, c_std = _mean_std(content, eps)
    s_mean, s_std = _mean_std(style, eps)
    return (content - c_mean) / c_std * s_std + s_mean


def _mean_std(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    flat = x.flatten(2)
    return flat.mean(2)[..., None, None], (flat.var(2, unbiased=True) + eps).sqrt()[..., None, None]


class MaskFusion(nn.Module):
    """Predicts where the specific read should replace the generic read (no sigmoid)."""

    def __init__(self, channels: int):
        super().__init__()
        branch = channels // 3
        self.degraded = conv_pair(channels, branch)
        self.specific = conv_pair(channels, branch)
        self.generic = conv_pair(channels, branch)
        self.fuse = conv_pair(3 * branch, channels)

    def forward(self, degraded: torch.Tensor, specific: torch.Tensor, generic: torch.Tensor) -> torch.Tensor:
        return self.fuse(
            torch.cat([self.degraded(degraded), self.specific(specific), self.generic(generic)], dim=1)
        )


class PartMemory(nn.Module):
    """One component at one scale: query, key/value heads, generic dictionary, fusion, attention."""

    def __init__(self, channels: int, crop: int, dictionary_size: int):
        super().__init__()
        key_channels = channels // 4
        self.query = conv_pair(channels, key_channels)
        self.key = conv_pair(channels, key_channels)
        self.value = conv_pair(channels, channels)
        self.mask = MaskFusion(channels)
        self.attention = conv_pair(channels, channels)
        # Parameters that do not learn by default: training's backward stage alone gives them
        # gradients (dmdnet.train); everywhere else they are the fixed generic dictionary.
        self.generic_key = nn.Parameter(torch.zeros(dictionary_size, key_channels, crop, crop), requires_grad=False)
        self.generic_value = nn.Parameter(torch.zeros(dictionary_size, channels, crop, crop), requires_grad=False)

    def forward(
        self, crop: torch.Tensor, specific_key: torch.Tensor | None = None, specific_value: torch.Tensor | None = None
    ) -> torch.Tensor:
        query = self.query(crop)
        memory = read_dictionary(query, self.generic_key, self.generic_value)
        if specific_key is not None:
            specific = read_dictionary(query, specific_key, specific_value)
            mask = self.mask(crop, specific, memory)
            memory = mask * specific + (1 - mask) * memory
        memory = adain(memory, crop)
        return self.attention(memory - crop) * memory + crop


def checked_batch(images, boxes, image_size: int, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (B x 3 x size x size, float) and boxes (B x 4 x 4) as tensors, or a one-line error."""
    images, boxes = torch.as_tensor(images), torch.as_tensor(boxes)
    size = image_size
    if images.dim() != 4 or images.shape[1:] != (3, size, size) or not images.is_floating_point():
        raise ValueError(
            f"{name} must be float B x 3 x {size} x {size} RGB in [-1, 1] (dmdnet.images.to_tensor "
            f"converts uint8 images), got {images.dtype} {tuple(images.shape)}"
        )
    if boxes.shape[:1] != images.shape[:1]:
        raise ValueError(f"{images.shape[0]} faces in {name} but {tuple(boxes.shape)} boxes: one 4 x 4 box set per face")
    check_boxes(boxes)
    return images, boxes


def check_boxes(boxes: torch.Tensor) -> None:
    if boxes.dim() != 3 or boxes.shape[1:] != (4, 4):
        raise ValueError(f"boxes must be B x 4 x 4 (LE, RE, NO, MO; x1, y1, x2, y2), got {tuple(boxes.shape)}")


def check_dictionary(dictionary: SpecificDictionary, fingerprint: str) -> None:
    """A one-line error unless `dictionary` was built by the model with this fingerprint."""
    if dictionary.fingerprint != fingerprint:
        raise ValueError(
            f"this dictionary was built by model {dictionary.fingerprint[:12]}, not by the loaded model "
            f"{fingerprint[:12]}: rebuild it with this checkpoint"
        )


def _interpolation(
    destination: torch.Tensor, source_length: torch.Tensor, destination_length, source_positions: torch.Tensor
) -> torch.Tensor:
    """Rows of bilinear weights, exactly as torch's resize with align_corners=False.

    destination: positions to compute (within the resized window); source_positions: the
    positions a weight may fall on (within the source window). The source index is clamped
    at 0 below and its right neighbour at the window's last pixel, as torch does.
    """
    scale = source_length / destination_length
    source = ((destination + 0.5) * scale - 0.5).clamp(min=0)
    left = source.floor()
    fraction = (source - left)[..., None]
    right = torch.minimum(left + 1, source_length - 1)
    return (source_positions == left[..., None]) * (1 - fraction) + (source_positions == right[..., None]) * fraction


class Window:
    """A component's box on a feature map, for every face of the batch.

    The window is the slice [y1//s : y2//s, x1//s : x2//s] of the authors' code; cropping
    resizes it to a fixed square, pasting resizes the square back into it. Both are
    products with interpolation matrices built here, on the device, from the boxes.
    """

    def __init__(self, box: torch.Tensor, stride: int, feature_side: int, crop: int):
        side = feature_side
        start = torch.div(box[:, :2], stride, rounding_mode="floor").clamp(0, side)  # x, y
        end = torch.div(box[:, 2:], stride, rounding_mode="floor").clamp(0, side)
        length = (end - start)[:, :, None]  # B x 2 x 1
        start = start[:, :, None]
        positions = torch.arange(side, dtype=box.dtype, device=box.device)
        crop_positions = torch.arange(crop, dtype=box.dtype, device=box.device)
        # B x 2 x crop x side: resamples the window down (or up) to the crop.
        self.crop_weights = _interpolation(crop_positions, length, crop, positions - start[..., None])
        inside = (positions >= start) & (positions < start + length)  # B x 2 x side
        # B x 2 x side x crop: resamples the crop into the window; rows outside it are 0.
        self.paste_weights = _interpolation(positions - start, torch.full_like(length, crop), length, crop_positions)
        self.paste_weights = self.paste_weights * inside[..., None]
        self.inside = (inside[:, 1, :, None] & inside[:, 0, None, :])[:, None]  # B x 1 x H x W

    def crop(self, features: torch.Tensor) -> torch.Tensor:
        rows, cols = self.crop_weights[:, 1, None], self.crop_weights[:, 0, None]
        return rows @ features @ cols.transpose(-1, -2)

    def paste(self, features: torch.Tensor, part: torch.Tensor) -> torch.Tensor:
        rows, cols = self.paste_weights[:, 1, None], self.paste_weights[:, 0, None]
        return torch.where(self.inside, rows @ part @ cols.transpose(-1, -2), features)


class MultiScaleDilation(nn.Module):
    """Four dilated conv pairs (4, 3, 2, 1) side by side, merged, plus the input."""

    DILATIONS = (4, 3, 2, 1)

    def __init__(self, channels: int):
        super().__init__()
        self.branches = nn.ModuleList(conv_pair(channels, channels, d) for d in self.DILATIONS)
        self.merge = conv(channels * len(self.DILATIONS), channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.merge(torch.cat([branch(x) for branch in self.branches], dim=1)) + x


class StyledUpBlock(nn.Module):
    """Conv pair modulated by scale and shift predicted from a style map, then x2 upsampling."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = conv_pair(cin, cout)
        self.scale = conv_pair(cin, cout)
        self.shift = conv_pair(cin, cout)
        self.up = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
            conv(cout, cout),
            nn.LeakyReLU(NEGATIVE_SLOPE),
            conv(cout, cout),
        )

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(self.conv(x), NEGATIVE_SLOPE)
        return self.up(x * self.scale(style) + self.shift(style))


class DMDNet(nn.Module):
    """The DMDNet restoration network at inference.

    width: channels at the 256 scale (the authors' ngf = 64; 128 and 256 follow).
    dictionary_size: items of the generic dictionary (the authors' 128).
    image_size: side of the aligned face (the authors' 512); crops and feature maps scale
    with it, so a 256 model has the same layers with half-size maps and crops.

    `model(lq, boxes)` restores with the generic dictionary; `model(lq, boxes, dictionary)`
    with an actor's `SpecificDictionary` from `build_dictionary`, without also decoding the
    generic result. Images are B x 3 x 512 x 512 RGB in [-1, 1]; boxes B x 4 x 4 from
    `dmdnet.component_boxes`.
    """

    def __init__(self, width: int = 64, dictionary_size: int = 128, image_size: int = IMAGE_SIZE):
        super().__init__()
        if image_size % 8 or crop_side("le", 8, image_size) < 1:
            raise ValueError(f"image_size must be a multiple of 8 of at least 64, got {image_size}")
        self.width = width
        self.dictionary_size = dictionary_size
        self.image_size = image_size
        self.encoder_lq = FeatureExtractor(width)
        self.encoder_hq = FeatureExtractor(width)
        self.parts = nn.ModuleDict()
        for scale, multiple, stride in SCALES:
            for component in COMPONENTS:
                crop = crop_side(component, stride, image_size)
                self.parts[f"{component}_{scale}"] = PartMemory(width * multiple, crop, dictionary_size)
        deepest = width * SCALES[-1][1]
        self.ms_dilate = MultiScaleDilation(deepest)
        self.up = nn.ModuleList(
            [StyledUpBlock(deepest, deepest // 2), StyledUpBlock(deepest // 2, width), StyledUpBlock(width, width)]
        )
        self.head = nn.Sequential(
            conv(width, width),
            nn.LeakyReLU(NEGATIVE_SLOPE),
            Residual(width),
            Residual(width),
            conv(width, 3),
            nn.Tanh(),
        )
        self._fingerprint: str | None = None
        self.register_load_state_dict_post_hook(self._forget_fingerprint)

    @staticmethod
    def _forget_fingerprint(module: "DMDNet", _incompatible) -> None:
        module._fingerprint = None

    @property
    def fingerprint(self) -> str:
        """sha256 of the weights as the network uses them (stable across file formats)."""
        if self._fingerprint is None:
            digest = hashlib.sha256(
                f"dmdnet width={self.width} items={self.dictionary_size} size={self.image_size}".encode()
            )
            for name, tensor in sorted(self.state_dict().items()):
                digest.update(name.encode())
                digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    def _batch(self, images, boxes, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Images and boxes (tensors or arrays) checked and placed on the model's device."""
        images, boxes = checked_batch(images, boxes, self.image_size, name)
        weight = next(self.parameters())
        return images.to(weight.device, weight.dtype), boxes.to(weight.device)

    def windows(self, boxes: torch.Tensor) -> dict[str, Window]:
        """Crop/paste windows of every part, for boxes B x 4 x 4."""
        check_boxes(boxes)
        boxes = boxes.to(torch.float32)
        return {
            f"{component}_{scale}": Window(
                boxes[:, BOX_ROW[component]], stride, self.image_size // stride, crop_side(component, stride, self.image_size)
            )
            for scale, _, stride in SCALES
            for component in COMPONENTS
        }

    @torch.no_grad()
    def build_dictionary(
        self, ref_images: torch.Tensor, ref_boxes: torch.Tensor, reference_hashes: list[str] | None = None
    ) -> SpecificDictionary:
        """An actor's specific dictionary from N aligned reference faces (N x 3 x 512 x 512, N x 4 x 4).

        reference_hashes: content hashes of the reference files, stored with the dictionary;
        by default the sha256 of each image tensor.
        """
        ref_images, ref_boxes = self._batch(ref_images, ref_boxes, "ref_images")
        if reference_hashes is None:
            reference_hashes = [
                hashlib.sha256(image.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()).hexdigest()
                for image in ref_images
            ]
        chunks = [
            self.dictionary_tensors(ref_images[start : start + DICTIONARY_CHUNK], ref_boxes[start : start + DICTIONARY_CHUNK])
            for start in range(0, ref_images.shape[0], DICTIONARY_CHUNK)
        ]
        keys = {name: torch.cat([chunk[0][name] for chunk in chunks]) for name in self.parts}
        values = {name: torch.cat([chunk[1][name] for chunk in chunks]) for name in self.parts}
        return SpecificDictionary(keys, values, self.fingerprint, list(reference_hashes))

    def dictionary_tensors(
        self, ref_images: torch.Tensor, ref_boxes: torch.Tensor, extractor: FeatureExtractor | None = None
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Keys and values of every part for the references (the authors' E_hq and KV heads).

        extractor: E_hq by default; training describes ground-truth faces with E_lq.
        """
        features = (extractor or self.encoder_hq)(ref_images)
        crops = self.part_crops(features, self.windows(ref_boxes))
        keys = {name: part.key(crops[name]) for name, part in self.parts.items()}
        values = {name: part.value(crops[name]) for name, part in self.parts.items()}
        return keys, values

    def part_crops(self, features: list[torch.Tensor], windows: dict[str, Window]) -> dict[str, torch.Tensor]:
        """Each part's crop of the feature map of its scale."""
        by_scale = dict(zip((scale for scale, _, _ in SCALES), features))
        return {name: windows[name].crop(by_scale[int(name.split("_")[1])]) for name in self.parts}

    def forward(
        self, lq: torch.Tensor, boxes: torch.Tensor, dictionary: SpecificDictionary | None = None
    ) -> torch.Tensor:
        lq, boxes = self._batch(lq, boxes, "lq")
        if dictionary is None:
            return self.restore(lq, boxes)
        check_dictionary(dictionary, self.fingerprint)
        return self.restore(lq, boxes, *dictionary.tensors(lq.device, lq.dtype))

    def restore(
        self,
        lq: torch.Tensor,
        boxes: torch.Tensor,
        specific_keys: dict[str, torch.Tensor] | None = None,
        specific_values: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The forward pass on plain tensors (what graph export traces)."""
        features = self.encoder_lq(lq)
        return self.decode(features, self.read_parts(features, self.windows(boxes), specific_keys, specific_values))

    def read_parts(
        self,
        features: list[torch.Tensor],
        windows: dict[str, Window],
        specific_keys: dict[str, torch.Tensor] | None = None,
        specific_values: dict[str, torch.Tensor] | None = None,
    ) -> list[torch.Tensor]:
        """Each scale's features with the eyes and mouth replaced by their dictionary reads."""
        styles = []
        for (scale, _, _), feature in zip(SCALES, features):
            style = feature
            for component in COMPONENTS:
                name = f"{component}_{scale}"
                window = windows[name]
                specific = (specific_keys[name], specific_values[name]) if specific_keys is not None else ()
                style = window.paste(style, self.parts[name](window.crop(feature), *specific))
            styles.append(style)
        return styles

    def decode(self, features: list[torch.Tensor], styles: list[torch.Tensor]) -> torch.Tensor:
        """The image from the deepest features, styled at each scale by the pasted maps."""
        x = self.ms_dilate(features[-1])
        for block, style in zip(self.up, reversed(styles)):
            x = block(x, style)
        return self.head(x)
