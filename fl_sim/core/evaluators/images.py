"""Image plumbing shared by the face evaluators: where a model package lives, uint8 frames, resizing."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fl_sim.core.errors import FlSimError


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise FlSimError(f"package {name!r} is not installed (it ships a face model fl-sim needs)")
    return Path(list(spec.submodule_search_locations)[0])


def to_uint8_hwc(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """Images in [-1, 1] as (N, 3, H, W) -> uint8 (N, H, W, 3) RGB."""
    if isinstance(images, torch.Tensor):
        images = images.detach().float().cpu().numpy()
    arr = np.clip((np.asarray(images) + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(arr.transpose(0, 2, 3, 1))


def _resize_uint8(images: np.ndarray, size: int) -> np.ndarray:
    """Bicubic resize of uint8 (N, H, W, 3) images to size x size, float32 0..255 result."""
    t = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    if t.shape[-1] != size:
        t = F.interpolate(t, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
    return t.clamp(0, 255).permute(0, 2, 3, 1).numpy()
