"""Example fl-sim plugin: a tiny CNN (``tinycnn``), a flat photo folder (``flatfolder:PATH``), an attack (``gray``),
a defense (``update_clip``)."""

from __future__ import annotations

from fl_sim.core.data import register_dataset
from fl_sim.core.models import register_model

from . import attack  # noqa: F401 - registers the ``gray`` attack method
from . import defense  # noqa: F401 - registers the ``update_clip`` defense (config section defenses.update_clip)
from .faces import FlatFolder
from .nets import TinyCNN

register_model("tinycnn", "two conv layers and a linear head (example plugin)")(TinyCNN)


@register_dataset("flatfolder", "flatfolder:PATH — PATH/<user>_<k>.png in one folder (example plugin)")
def _flatfolder(arg: str | None) -> FlatFolder:
    return FlatFolder(arg or ".")
