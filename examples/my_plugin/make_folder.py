"""Write a small flat folder of photos for the example dataset, taken from the embedded synthfaces."""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image

from fl_sim.core.data import open_dataset


def make_flat_folder(out: Path, users: int = 4, photos: int = 8) -> Path:
    """OUT/<user>_<k>.png: ``photos`` photos of each of the first ``users`` synthfaces identities."""
    out.mkdir(parents=True, exist_ok=True)
    ds = open_dataset("synthfaces")
    for rec in ds.users()[:users]:
        for k, img in enumerate(ds.photos_uint8(rec.user)[:photos]):
            Image.fromarray(img).save(out / f"{rec.user}_{k:02d}.png")
    return out


if __name__ == "__main__":
    print(make_flat_folder(Path(sys.argv[1] if len(sys.argv) > 1 else "my-faces")))
