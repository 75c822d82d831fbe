"""dlib ResNet face-recognition evaluator: a second identity model, independent of SFace."""

from __future__ import annotations

import threading
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from fl_sim.core.errors import FlSimError
from fl_sim.core.evaluators.images import _package_dir, _resize_uint8, to_uint8_hwc


class DlibEmbedder:
    """dlib's ResNet-34-like face descriptor (Davis King, ~3M faces; face_recognition_models).

    Alignment: dlib's network was trained on 150x150 chips cut with its 5-point shape predictor
    at padding 0.25, so each image is upscaled (bicubic, 200 px: the chip is then resampled at
    roughly 1:1 instead of from 32 raw pixels), the 5-point predictor runs inside a fixed box,
    and the chip is cut around the predicted landmarks. No detector: the frame already is the
    aligned face, and on blurry reconstructions a detector would fail or move between images.

    Output: dlib compares raw descriptors by Euclidean distance (same person below 0.6); they
    are not unit-norm (|d| ~ 1.5) and share a large common component, so plain cosines of
    different people are ~0.89 and of the same person ~0.96 at 32x32. With ``center=True`` (the
    default) a fixed mean descriptor is subtracted before normalising to unit norm, so cosine
    reads like SFace's (different people ~0.03, same person ~0.61 at 32x32) and identity gains
    of the two evaluators are on a comparable scale. ``center=False`` gives the plainly
    normalised descriptor. The mean comes from synthetic FFHQ-like faces; on other photos it
    still removes most of the common part, but between-people cosines may sit a little above 0.
    """

    name = "dlib"
    UPSCALE = 200  # px; 150 and 300 gave the same re-identification (measured at 32x32)
    # Box (fractions of the frame: left, top, right, bottom) the 5-point predictor starts from:
    # the mean box dlib's own HOG detector finds on these upscaled frames (it finds all 80 of 80
    # test photos at 32 and 64 px; std ~0.04), i.e. the kind of box the predictor was trained on.
    # The box hardly matters: (0.1,0.2,0.9,1.0), the whole frame, (0.15,0.15,0.85,0.85) and
    # (0.2,0.3,0.8,0.9) moved landmarks by <= 0.01 of the frame and gave the same
    # re-identification (0.94-0.95 on 12 users x 8 photos at 32x32); a box in the wrong place
    # (the top-left 30% of the frame) does break it (re-identification 0.65 on 8 users).
    FACE_BOX = (0.14, 0.25, 0.88, 0.99)
    CHIP_SIZE = 150
    # dlib's compute_face_descriptor default, the padding its network was trained with. The chip
    # then reaches a little below the tightly cropped frame (a thin black strip); replicating the
    # frame's edges there instead made no measurable difference, so the chip is left as dlib cuts it.
    CHIP_PADDING = 0.25

    def __init__(self, center: bool = True) -> None:
        try:
            import dlib
        except ImportError:
            raise FlSimError("package 'dlib-bin' (import dlib) is not installed; "
                             "the dlib face evaluator needs it") from None
        # Located, not imported: its __init__ needs pkg_resources, which new setuptools lacks.
        root = _package_dir("face_recognition_models") / "models"
        paths = [root / "shape_predictor_5_face_landmarks.dat", root / "dlib_face_recognition_resnet_model_v1.dat"]
        for p in paths:
            if not p.exists():
                raise FlSimError(f"dlib model missing at {p} (reinstall face_recognition_models==0.3.0)")
        self._dlib = dlib
        self._predictor = dlib.shape_predictor(str(paths[0]))
        self._net = dlib.face_recognition_model_v1(str(paths[1]))
        self._mean = np.asarray(_MEAN_DESCRIPTOR, np.float32) if center else None
        self._lock = threading.Lock()  # dlib objects are not documented as thread-safe

    @staticmethod
    def _as_uint8(images: torch.Tensor | np.ndarray) -> np.ndarray:
        """Validated uint8 (N, H, W, 3) RGB from [-1, 1] (N, 3, H, W) floats or uint8 (N, H, W, 3)."""
        if isinstance(images, np.ndarray) and images.dtype == np.uint8:
            arr = images
        else:
            shape = tuple(images.shape)
            if len(shape) != 4 or shape[1] != 3:
                raise FlSimError(f"dlib evaluator wants images as (N, 3, H, W) in [-1, 1], got shape {shape}")
            arr = to_uint8_hwc(images)
        if arr.ndim != 4 or arr.shape[-1] != 3 or min(arr.shape[1:3], default=0) < 1:
            raise FlSimError(f"dlib evaluator wants uint8 images as (N, H, W, 3), got shape {arr.shape}")
        return arr

    def _upscale(self, arr: np.ndarray) -> np.ndarray:
        """uint8 (N, UPSCALE, UPSCALE, 3), bicubic: the predictor and chip need more than 32 px."""
        return np.ascontiguousarray(np.rint(_resize_uint8(np.ascontiguousarray(arr), self.UPSCALE)).astype(np.uint8))

    def _shapes(self, big: np.ndarray) -> list[Any]:
        box = self._dlib.rectangle(*(int(round(v * self.UPSCALE)) for v in self.FACE_BOX))
        return [self._predictor(im, box) for im in big]

    def landmarks(self, images: torch.Tensor | np.ndarray) -> np.ndarray:
        """The 5 predicted points (N, 5, 2) as (x, y) fractions of the frame.

        dlib's order: 0-1 the corners of the eye on the image's right, 2-3 of the other eye,
        4 the base of the nose.
        """
        arr = self._as_uint8(images)
        if not len(arr):
            return np.zeros((0, 5, 2), np.float32)
        big = self._upscale(arr)
        with self._lock:
            shapes = self._shapes(big)
        return np.array([[[s.part(i).x, s.part(i).y] for i in range(5)] for s in shapes], np.float32) / self.UPSCALE

    def embed(self, images: torch.Tensor | np.ndarray, batch_size: int = 64) -> np.ndarray:
        """Unit-norm 128-d embeddings of images in [-1, 1] (N, 3, H, W) or uint8 (N, H, W, 3)."""
        arr = self._as_uint8(images)
        out = []
        for start in range(0, len(arr), batch_size):
            big = self._upscale(arr[start : start + batch_size])
            with self._lock:
                shapes = self._shapes(big)
                chips = [self._dlib.get_face_chip(im, s, size=self.CHIP_SIZE, padding=self.CHIP_PADDING)
                         for im, s in zip(big, shapes)]
                feats = np.asarray(self._net.compute_face_descriptor(chips), dtype=np.float32).reshape(len(chips), 128)
            if self._mean is not None:
                feats = feats - self._mean
            out.append(feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12))
        return np.concatenate(out).astype(np.float32, copy=False) if out else np.zeros((0, 128), np.float32)


@lru_cache(maxsize=2)
def dlib_embedder(center: bool = True) -> DlibEmbedder:
    """Process-wide dlib evaluator (the models are read once)."""
    return DlibEmbedder(center=center)


# Mean raw dlib descriptor (this module's alignment, center=False path before normalising) over
# 192 synthfaces:prior photos (identities disjoint from the users) at 32x32 and the same at 64x64;
# the two halves' means agree to cosine 0.994. Its norm (~1.46) is ~3x a face's distance from it
# (~0.51), which is why plain cosines of dlib descriptors are all ~0.9.
_MEAN_DESCRIPTOR: tuple[float, ...] = (
    -0.1116, 0.0810, 0.0495, -0.0465, -0.1380, 0.0073, -0.0202, -0.1391, 0.1892, -0.1174,
    0.1586, -0.0277, -0.2658, -0.0149, -0.0084, 0.1217, -0.1677, -0.1757, -0.0688, -0.0508,
    0.0190, 0.0299, 0.0101, 0.0567, -0.1602, -0.3703, -0.0786, -0.0727, 0.0329, -0.0553,
    -0.0176, 0.0674, -0.1820, -0.0348, 0.0465, 0.0985, -0.0397, -0.0849, 0.1993, 0.0199,
    -0.2310, -0.0210, 0.0616, 0.2571, 0.2036, 0.0121, 0.0125, -0.1133, 0.1670, -0.2966, 0.0799,
    0.1575, 0.1044, 0.0489, 0.0819, -0.1812, 0.0231, 0.1270, -0.2193, 0.0546, 0.0995, -0.0903,
    -0.0278, -0.0621, 0.1936, 0.1041, -0.1190, -0.1321, 0.1696, -0.1770, -0.0416, 0.0576,
    -0.0946, -0.2078, -0.2935, 0.0356, 0.4168, 0.1658, -0.1751, 0.0159, -0.0701, -0.0138,
    0.0628, 0.0915, -0.0699, -0.0489, -0.0985, 0.0205, 0.2255, -0.0035, -0.0105, 0.2480, 0.0269,
    0.0126, 0.0443, 0.0770, -0.1477, -0.0128, -0.1582, -0.0119, 0.0113, -0.0586, 0.0073, 0.1200,
    -0.2194, 0.1909, -0.0172, -0.0534, 0.0010, -0.0680, -0.1028, -0.0239, 0.1544, -0.2850,
    0.1649, 0.1567, 0.0532, 0.1896, 0.0557, 0.0377, 0.0147, -0.0404, -0.1723, -0.0856, 0.0668,
    -0.0644, 0.0131, 0.0314,
)
