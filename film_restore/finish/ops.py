"""The image primitives a face's last steps are written with, for numpy arrays (OpenCV) and torch tensors (any device).

The finishing math is written once: element-wise work through the array's own namespace
(`namespace`, the array API: numpy or torch), and the few primitives below, each implemented
with OpenCV for numpy arrays and with torch for tensors, so a restore actor that holds a GPU runs
the same steps there (film_restore.finish.device) and CPU nodes keep numpy and OpenCV. The two
agree to float rounding: OpenCV 5 warps float32 images of one, three or four channels with exact
bilinear and bicubic weights, as torch's grid_sample does (two channels, a flow, in fixed point: `sample`
gives them a third), and its Gaussian kernels are reproduced here.

Images are batches, N x H x W x C float32 (channel last, as numpy and OpenCV keep them); a
single image is N = 1. A batch made by `stack` is, on numpy, the list of its images (OpenCV works
image by image: a copy into one array would only cost), which the primitives take as an array.
Flows are N x H x W x 2: (dx, dy) in pixels, the image sampled at x + flow(x).
"""
from __future__ import annotations

import functools
import math

import array_api_compat
import cv2
import numpy as np

# OpenCV's border names for the ones used here; torch pads alike (reflect101: no edge repeat).
REFLECT101 = "reflect101"   # cv2.BORDER_REFLECT_101, OpenCV's default: dcb|abcd|cba
REFLECT = "reflect"         # cv2.BORDER_REFLECT: cba|abcd|dcb
REPLICATE = "replicate"
CONSTANT = "constant"       # zeros
_CV_BORDERS = {REFLECT101: cv2.BORDER_REFLECT_101, REFLECT: cv2.BORDER_REFLECT, REPLICATE: cv2.BORDER_REPLICATE,
               CONSTANT: cv2.BORDER_CONSTANT}
LINEAR, CUBIC, AREA, NEAREST = "linear", "cubic", "area", "nearest"
_CV_INTERPOLATIONS = {LINEAR: cv2.INTER_LINEAR, CUBIC: cv2.INTER_CUBIC, AREA: cv2.INTER_AREA, NEAREST: cv2.INTER_NEAREST}


def interpolation_named(flag: int) -> str:
    """The name here of an OpenCV interpolation flag (cv2.INTER_CUBIC -> CUBIC)."""
    return next(name for name, cv_flag in _CV_INTERPOLATIONS.items() if cv_flag == flag)


def namespace(*arrays):
    """The array API namespace of these arrays (numpy's or torch's)."""
    return array_api_compat.array_namespace(*arrays)


def is_numpy(array) -> bool:
    return isinstance(array, np.ndarray)


def to_numpy(array) -> np.ndarray:
    return array.detach().cpu().numpy() if hasattr(array, "detach") else np.asarray(array)


def like(array, values) -> object:
    """values (numpy, a tensor or a number) as an array of `array`'s kind and device, float32 (for a
    tensor, sent as they are and converted there: a uint8 picture crosses to a GPU at a quarter of the bytes)."""
    if is_numpy(array):
        return np.asarray(to_numpy(values), np.float32)
    import torch

    if isinstance(values, torch.Tensor):
        return values.to(device=array.device, dtype=torch.float32)
    values = np.asarray(values)
    values = values if values.flags.c_contiguous else np.ascontiguousarray(values)  # torch takes no negative strides
    return torch.as_tensor(values, device=array.device).to(torch.float32)


def send(array, values: np.ndarray) -> object:
    """values (numpy) as they are (their dtype kept) on `array`'s kind and device: numpy stays where it is."""
    if is_numpy(array):
        return values
    import torch

    return torch.as_tensor(np.ascontiguousarray(values), device=array.device)


def constant(array, values) -> object:
    """Values that never change (weights, a kernel, a number) as float32 of `array`'s kind and device:
    sent to a device once and kept there, so they must never be written to."""
    values = np.asarray(values, np.float32)
    if is_numpy(array):
        return values
    return _constant(values.tobytes(), values.shape, array.device)


@functools.lru_cache(maxsize=256)
def _constant(data: bytes, shape: tuple, device):
    import torch

    return torch.frombuffer(bytearray(data), dtype=torch.float32).reshape(shape).to(device)


def copy(array):
    """A copy of the array, of its own kind and device."""
    return array.copy() if is_numpy(array) else array.clone()


def as_float(array):
    """The array as float32, of its own kind and device (no copy where it already is)."""
    if is_numpy(array):
        return array.astype(np.float32, copy=False)
    import torch

    return array.to(torch.float32)


def stack(images: list):
    """Same-size images as one batch for the primitives below: a tensor on torch (one op serves them all),
    the list itself on numpy."""
    return images if is_numpy(images[0]) else namespace(*images).stack(images)


def added(first, terms, weights=None):
    """first + terms[0] weights[0] + terms[1] weights[1] + ... (terms: K x first's shape; weights: K x ..., broadcast
    to them, or None for 1), added in that order: numpy a term at a time (no K-fold temporaries), torch in one
    sum over a leading axis (which on the CPU adds in the same order)."""
    if is_numpy(first):
        for index, term in enumerate(terms):
            first = first + (term if weights is None else term * weights[index])
        return first
    import torch

    return torch.cat([first[None], terms if weights is None else terms * weights]).sum(0)


def frequency_filtered(images, transfer: np.ndarray):
    """Each real image (N x H x W, float64) filtered by a transfer function on its rfft2 grid (H x W // 2 + 1, complex),
    in float64."""
    height, width = images.shape[-2:]
    if is_numpy(images):
        return np.fft.irfft2(np.fft.rfft2(images) * transfer, s=(height, width))
    import torch

    return torch.fft.irfft2(torch.fft.rfft2(images) * send(images, transfer), s=(height, width))


def gaussian_kernel(sigma: float, size: int = 0) -> np.ndarray:
    """OpenCV's Gaussian kernel for float images, this sigma and size (0: its size rule, 8 sigma + 1, odd)."""
    size = size or int(round(sigma * 8 + 1)) | 1
    return cv2.getGaussianKernel(size, sigma, cv2.CV_32F)[:, 0]


def blur(images, sigma: float, border: str = REFLECT101, size: int = 0):
    """Gaussian blur of each image (N x H x W x C), as cv2.GaussianBlur(image, (size, size), sigma)
    (size: odd, 0 for OpenCV's rule)."""
    if sigma <= 0:
        return images
    if is_numpy(images[0]):
        return _each(images, images[0].shape[:2], lambda image, border, out: cv2.GaussianBlur(
            image, (size, size), sigma, dst=out, borderType=_CV_BORDERS[border]), border)
    import torch.nn.functional as F

    channels = images.shape[-1]
    across, down = _blur_weights(float(sigma), size, channels, images.device)
    planes = _pad(images.permute(0, 3, 1, 2), across.shape[-1] // 2, border)
    planes = F.conv2d(planes, across, groups=channels)
    planes = F.conv2d(planes, down, groups=channels)
    return planes.permute(0, 2, 3, 1)


@functools.lru_cache(maxsize=256)
def _blur_weights(sigma: float, size: int, channels: int, device):
    """blur's Gaussian as conv2d weights for each channel, across then down, made on a device and kept
    there (never written to): a window's faces share their few sigmas."""
    import torch

    kernel = gaussian_kernel(sigma, size)
    return (torch.as_tensor(np.tile(kernel, (channels, 1, 1, 1)), device=device),
            torch.as_tensor(np.tile(kernel[:, None], (channels, 1, 1, 1)), device=device))


def warp(images, flows, border: str = REPLICATE):
    """Each image sampled at x + flow(x) (bilinear): brought onto the grid of the image the flow starts from."""
    return sample(images, flows + grid(flows), border)


def sample(images, points, border: str = REPLICATE, interpolation: str = LINEAR):
    """Each image sampled (bilinear, or nearest) at its points: N x h x w x 2 pixel coordinates (x, y) ->
    N x h x w x C (one set of points, 1 x h x w x 2, serves every image)."""
    if is_numpy(images[0]):
        if images[0].shape[-1] == 2:
            # OpenCV 5 interpolates two-channel float images in fixed point (1/32 pixel), one, three
            # and four channels exactly: a third channel keeps a flow's samples exact, as torch's are.
            padded = [np.concatenate([image, np.zeros_like(image[..., :1])], axis=-1) for image in images]
            return sample(padded, points, border, interpolation)[..., :2]
        points = np.broadcast_to(points, (len(images), *points.shape[1:]))
        where = iter(np.ascontiguousarray(points, np.float32))

        def remap(image, border, out):
            return cv2.remap(image, next(where), None, _CV_INTERPOLATIONS[interpolation], dst=out, borderMode=_CV_BORDERS[border])

        return _each(images, points.shape[1:3], remap, border)
    return _sample(images, points.expand(len(images), *points.shape[1:]), interpolation, border)


def grid(like_flows):
    """The pixel coordinates (x, y) of a flow field's own grid (1 x h x w x 2), of its kind and device."""
    height, width = like_flows.shape[1:3]
    return _grid(height, width) if is_numpy(like_flows) else _device_grid(height, width, like_flows.device)


@functools.lru_cache(maxsize=16)
def _grid(height: int, width: int) -> np.ndarray:
    grid_x, grid_y = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    points = np.stack([grid_x, grid_y], axis=-1)[None]
    points.flags.writeable = False
    return points


def affine(images, matrices: np.ndarray, size: tuple[int, int], interpolation: str = LINEAR, border: str = REPLICATE):
    """Each image warped by its 2 x 3 matrix (source to destination pixels, as cv2.warpAffine) into height x width
    (or every image by one)."""
    height, width = size
    matrices = np.asarray(matrices, np.float64).reshape(-1, 2, 3)
    if is_numpy(images[0]):
        matrices = np.broadcast_to(matrices, (len(images), 2, 3))
        matrix = iter(matrices)
        return _each(images, size, lambda image, border, out: cv2.warpAffine(
            image, next(matrix), (width, height), dst=out, flags=_CV_INTERPOLATIONS[interpolation],
            borderMode=_CV_BORDERS[border]), border)
    import torch

    grid = _homogeneous_grid(height, width, images.device)
    # Each destination pixel (x, y, 1) times the inverse: its source, in float64 as OpenCV computes it.
    points = torch.stack([grid @ torch.as_tensor(cv2.invertAffineTransform(matrix).T, device=images.device) for matrix in matrices])
    if len(points) != len(images):
        points = points.expand(len(images), *points.shape[1:])
    return _sample(images, points, interpolation, border)


@functools.lru_cache(maxsize=16)
def _device_grid(height: int, width: int, device):
    """_grid made on a device and kept there (never written to)."""
    import torch

    grid_y, grid_x = torch.meshgrid(torch.arange(height, dtype=torch.float32, device=device),
                                    torch.arange(width, dtype=torch.float32, device=device), indexing="ij")
    return torch.stack([grid_x, grid_y], dim=-1)[None]


@functools.lru_cache(maxsize=16)
def _homogeneous_grid(height: int, width: int, device):
    """Each pixel's (x, y, 1), float64 (h x w x 3), made on a device and kept there (never written to)."""
    import torch

    grid_y, grid_x = torch.meshgrid(torch.arange(height, dtype=torch.float64, device=device),
                                    torch.arange(width, dtype=torch.float64, device=device), indexing="ij")
    return torch.stack([grid_x, grid_y, torch.ones_like(grid_x)], dim=-1)


def resize(images, size: tuple[int, int], interpolation: str = LINEAR):
    """Each image resized to height x width (cv2.resize; AREA shrinks only, on torch; NEAREST as OpenCV's:
    the source pixel below dst x scale)."""
    height, width = size
    if is_numpy(images[0]):
        return _each(images, size, lambda image, _, out: cv2.resize(
            image, (width, height), dst=out, interpolation=_CV_INTERPOLATIONS[interpolation]), None)
    import torch.nn.functional as F

    planes = images.permute(0, 3, 1, 2)
    if interpolation == AREA:
        if planes.shape[2] < height or planes.shape[3] < width:
            raise ValueError(f"area resize on torch shrinks only, got {tuple(planes.shape[2:])} -> {size}")
        factor = planes.shape[2] // height
        if planes.shape[2:] == (factor * height, factor * width):  # a whole factor, the same both ways
            planes = F.avg_pool2d(planes, factor)
        else:
            planes = _area_shrink(planes, size)
    elif interpolation == NEAREST:  # OpenCV's source rows and columns (torch's own are rounded otherwise)
        rows, columns = (_nearest_index(source, target, images.device) for source, target in zip(planes.shape[2:], size))
        planes = planes.index_select(2, rows).index_select(3, columns)
    else:
        planes = F.interpolate(planes, size=size, mode="bilinear", align_corners=False)
    return planes.permute(0, 2, 3, 1)


def _each(images, size: tuple[int, int], work, border) -> np.ndarray:
    """work(image, border, out) for each image of a batch, into one float32 N x height x width x C
    array: OpenCV writes float32 results into out itself (a single channel without its axis)."""
    images = [image.astype(np.float32, copy=False) for image in images]
    out = np.empty((len(images), *size, images[0].shape[-1]), np.float32)
    for image, result in zip(images, out):
        target = result[..., 0] if result.shape[-1] == 1 else result
        done = work(image[..., 0] if image.shape[-1] == 1 else image, border, target)
        if done is not target and not np.shares_memory(done, target):
            target[...] = done
    return out


def _pad(planes, reach: int, border: str):
    import torch.nn.functional as F

    if border == REFLECT:  # torch has no edge-repeating reflection: OpenCV's rows and columns, gathered
        rows, columns = (_border_index(n, reach, planes.device) for n in planes.shape[-2:])
        return planes.index_select(-2, rows).index_select(-1, columns)
    mode = {REFLECT101: "reflect", REPLICATE: "replicate", CONSTANT: "constant"}[border]
    return F.pad(planes, (reach, reach, reach, reach), mode=mode)


def _area_shrink(planes, size: tuple[int, int]):
    """Planes (N x C x H x W) shrunk as cv2.resize's INTER_AREA shrinks them by other than whole factors, to
    the last bit: each row's columns first, then the rows, each sum taken in OpenCV's order (by whole
    factors OpenCV sums a block and scales it: within float rounding of this)."""
    rows, columns = (_area_taps(source, target, planes.device) for source, target in zip(planes.shape[2:], size))
    (column_index, column_weight), (row_index, row_weight) = columns, rows
    across = planes.index_select(3, column_index[0]) * column_weight[0]
    for index, weight in zip(column_index[1:], column_weight[1:]):
        across = across + planes.index_select(3, index) * weight
    shrunk = across.index_select(2, row_index[0]) * row_weight[0][:, None]
    for index, weight in zip(row_index[1:], row_weight[1:]):
        shrunk = shrunk + across.index_select(2, index) * weight[:, None]
    return shrunk


@functools.lru_cache(maxsize=64)
def _area_taps(source: int, target: int, device):
    """The source pixels and weights (each K x target, K the most a target pixel reads) with which cv2.resize's
    INTER_AREA shrinks `source` pixels to `target`: each target pixel the mean of those it covers, those it
    covers in part by the part (OpenCV's computeResizeAreaTab, float weights); made on a device and kept there
    (never written to). A target pixel with fewer than K reads source pixel 0 with weight 0 for the rest."""
    import torch

    scale = 1 / (target / source)
    start = np.arange(target) * scale
    end = start + scale
    cell = np.minimum(scale, source - start)
    last = np.minimum(np.floor(end), source - 1).astype(np.int64)
    first = np.minimum(np.ceil(start).astype(np.int64), last)
    left, right = first - start > 1e-3, end - last > 1e-3  # pixels covered in part on either side
    whole = last - first
    reads = np.arange((left + whole + right).max())[:, None] - left  # each read's place after the left part
    index = np.where(reads < 0, first - 1, np.where(reads < whole, first + reads, np.where(right & (reads == whole), last, 0)))
    weight = np.where(reads < 0, (first - start) / cell, np.where(reads < whole, 1 / cell, np.where(
        right & (reads == whole), np.minimum(np.minimum(end - last, 1.0), cell) / cell, 0.0))).astype(np.float32)
    return torch.as_tensor(index, device=device), torch.as_tensor(weight, device=device)


@functools.lru_cache(maxsize=64)
def _nearest_index(source: int, target: int, device):
    """The source pixels cv2.resize's INTER_NEAREST reads for `target` pixels from `source`: floor(x / (target / source))."""
    import torch

    scale = 1 / (target / source)
    return torch.as_tensor(np.minimum(np.floor(np.arange(target) * scale).astype(np.int64), source - 1), device=device)


@functools.lru_cache(maxsize=256)
def _border_index(size: int, reach: int, device):
    """The rows (or columns) of a side of `size` padded by reach either side, as OpenCV's BORDER_REFLECT reads
    them; made here and sent once (a face region's sides change from frame to frame), kept there (never written to)."""
    import torch

    period = np.arange(-reach, size + reach) % (2 * size)
    return torch.as_tensor(np.where(period < size, period, 2 * size - 1 - period), device=device)


def _sample(images, points, interpolation: str, border: str):
    """images (N x H x W x C tensor) sampled at source pixel coordinates (N x h x w x 2: x, y)."""
    import torch.nn.functional as F

    height, width = images.shape[1:3]
    grid = points * constant(images, [2 / max(width - 1, 1), 2 / max(height - 1, 1)]) - 1
    mode = {LINEAR: "bilinear", CUBIC: "bicubic", NEAREST: "nearest"}[interpolation]
    padding = {REPLICATE: "border", CONSTANT: "zeros"}[border]
    sampled = F.grid_sample(images.permute(0, 3, 1, 2), grid.to(images.dtype), mode=mode, padding_mode=padding,
                            align_corners=True)
    return sampled.permute(0, 2, 3, 1)
