"""Photo-folder datasets: `folder:PATH` (PATH/<user>/<images>), `lfw:PATH` and `celeba:PATH`."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from fl_sim.core.data.base import IMAGE_SUFFIXES, FaceDataset, UserRecord, check_images, decode_image, stack_same_size
from fl_sim.core.errors import DataError
from fl_sim.core.evaluators.face import AGE_BANDS, GENDERS, age_band

_BAND_NAMES = [b[0] for b in AGE_BANDS]


def _require_dir(path: Path, what: str) -> Path:
    if not path.exists():
        raise DataError(f"{what} not found: {path}")
    if not path.is_dir():
        raise DataError(f"{what} is not a folder: {path}")
    return path


def _norm_gender(value: str, where: str) -> str | None:
    v = value.strip().lower()
    if v in ("", "na", "none", "unknown"):
        return None
    if v in ("f", "female", "woman", "0"):
        return "female"
    if v in ("m", "male", "man", "1"):
        return "male"
    raise DataError(f"malformed {where}: gender {value!r} is not female/male")


def _norm_age(value: str, where: str) -> str | None:
    v = value.strip()
    if v.lower() in ("", "na", "none", "unknown"):
        return None
    if v in _BAND_NAMES:
        return v
    try:
        return _BAND_NAMES[age_band(float(v))]
    except ValueError:
        raise DataError(f"malformed {where}: age {value!r} is neither years nor one of {', '.join(_BAND_NAMES)}") from None


class FolderFaces(FaceDataset):
    """PATH/<user>/<image files>; optional PATH/attributes.csv with columns user, gender, age (or age_band)."""

    def __init__(self, path: str, kind: str = "folder") -> None:
        self.root = _require_dir(Path(path).expanduser(), f"{kind} dataset path")
        self.spec = f"{kind}:{path}"
        self._files: dict[str, list[Path]] = {}
        for d in sorted(p for p in self.root.iterdir() if p.is_dir()):
            files = sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise DataError(f"empty user folder (no images): {d}")
            self._files[d.name] = files
        if not self._files:
            raise DataError(f"no user folders in {self.root} (expected {self.root}/<user>/<images>)")
        self._attrs = self._read_attributes(self.root / "attributes.csv")

    def _read_attributes(self, path: Path) -> dict[str, dict[str, str | None]]:
        if not path.exists():
            return {}
        out: dict[str, dict[str, str | None]] = {}
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            cols = set(reader.fieldnames or [])
            if "user" not in cols or not ({"gender", "age", "age_band"} & cols):
                raise DataError(f"malformed {path}: needs a 'user' column and gender and/or age (or age_band) columns")
            for line, row in enumerate(reader, start=2):
                if None in row or any(v is None for v in row.values()):
                    raise DataError(f"malformed {path} line {line}: wrong number of fields")
                where = f"{path} line {line}"
                age = row.get("age_band") if "age_band" in cols else row.get("age", "")
                out[row["user"]] = {"gender": _norm_gender(row.get("gender", ""), where),
                                    "age_band": _norm_age(age or "", where)}
        return out

    def users(self) -> list[UserRecord]:
        return [UserRecord(user=u, n_photos=len(fs), attributes=self._attrs.get(u, {"gender": None, "age_band": None}))
                for u, fs in self._files.items()]

    def photos_uint8(self, user: str) -> np.ndarray:
        if user not in self._files:
            raise DataError(f"no user folder {self.root / user}")
        return stack_same_size([decode_image(p, str(p)) for p in self._files[user]], str(self.root / user))

    def check(self, users: list[str]) -> None:
        for user in users:
            if user not in self._files:
                raise DataError(f"no user folder {self.root / user}")
            check_images(self._files[user])


class LfwFaces(FolderFaces):
    """Labeled Faces in the Wild: PATH is the lfw (or lfw-deepfunneled) folder or its parent."""

    def __init__(self, path: str) -> None:
        root = _require_dir(Path(path).expanduser(), "lfw dataset path")
        for name in ("lfw", "lfw-deepfunneled", "lfw_funneled"):
            if (root / name).is_dir():
                root = root / name
                break
        super().__init__(str(root), kind="lfw")
        self.spec = f"lfw:{path}"


class CelebAFaces(FaceDataset):
    """CelebA: img_align_celeba/, identity_CelebA.txt and list_attr_celeba.txt under PATH.

    CelebA only says whether a person looks young; young maps to the '<30' band, the rest to '30-44'.
    """

    def __init__(self, path: str) -> None:
        self.root = _require_dir(Path(path).expanduser(), "celeba dataset path")
        self.spec = f"celeba:{path}"
        self.images = _require_dir(self.root / "img_align_celeba", "celeba image folder")
        ident_file = self.root / "identity_CelebA.txt"
        attr_file = self.root / "list_attr_celeba.txt"
        for f in (ident_file, attr_file):
            if not f.exists():
                raise DataError(f"celeba annotation file not found: {f}")
        self._files: dict[str, list[str]] = {}
        for line_no, line in enumerate(ident_file.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2 or not parts[1].isdigit():
                raise DataError(f"malformed {ident_file} line {line_no}: expected '<image> <identity>'")
            self._files.setdefault(parts[1], []).append(parts[0])
        self._attrs = self._read_attrs(attr_file)

    @staticmethod
    def _read_attrs(path: Path) -> dict[str, dict[str, str | None]]:
        lines = path.read_text().splitlines()
        if len(lines) < 2:
            raise DataError(f"malformed {path}: expected a count line and a header line")
        names = lines[1].split()
        if "Male" not in names or "Young" not in names:
            raise DataError(f"malformed {path} line 2: header lacks 'Male' and 'Young'")
        male, young = names.index("Male"), names.index("Young")
        out: dict[str, dict[str, str | None]] = {}
        for line_no, line in enumerate(lines[2:], start=3):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != len(names) + 1 or any(v not in ("1", "-1") for v in parts[1:]):
                raise DataError(f"malformed {path} line {line_no}: expected an image name and {len(names)} values of 1/-1")
            out[parts[0]] = {"gender": GENDERS[int(parts[1 + male] == "1")],
                             "age_band": _BAND_NAMES[0] if parts[1 + young] == "1" else _BAND_NAMES[1]}
        return out

    def users(self) -> list[UserRecord]:
        out = []
        for uid in sorted(self._files, key=int):
            files = self._files[uid]
            votes = [self._attrs[f] for f in files if f in self._attrs]
            attrs: dict[str, str | None] = {"gender": None, "age_band": None}
            for key in attrs:
                vals = [v[key] for v in votes if v[key] is not None]
                attrs[key] = max(set(vals), key=vals.count) if vals else None
            out.append(UserRecord(user=uid, n_photos=len(files), attributes=attrs))
        return out

    def _paths(self, user: str) -> list[Path]:
        """The user's listed image files, each checked to exist."""
        if user not in self._files:
            raise DataError(f"no identity {user!r} in {self.root / 'identity_CelebA.txt'}")
        paths = [self.images / f for f in self._files[user]]
        for p in paths:
            if not p.exists():
                raise DataError(f"celeba image listed but missing: {p}")
        return paths

    def photos_uint8(self, user: str) -> np.ndarray:
        return stack_same_size([decode_image(p, str(p)) for p in self._paths(user)], str(self.images))

    def check(self, users: list[str]) -> None:
        for user in users:
            check_images(self._paths(user))
