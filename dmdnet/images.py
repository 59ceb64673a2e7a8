"""Conversions between RGB uint8 images and the network's tensors."""
import numpy as np
import torch


def to_tensor(images) -> torch.Tensor:
    """N RGB uint8 images (H x W x 3) -> N x 3 x H x W float32 in [-1, 1]."""
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255 * 2 - 1


def to_image(tensor: torch.Tensor) -> np.ndarray:
    """3 x H x W (or N x 3 x H x W) in [-1, 1] -> RGB uint8 H x W x 3 (or N x H x W x 3)."""
    return ((tensor.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().movedim(-3, -1).cpu().numpy()
