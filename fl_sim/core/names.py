"""Names that reading a run needs without the heavy modules that define their meaning (no torch import)."""

from __future__ import annotations

# The identity evaluators every attack is scored by (fl_sim.core.evaluators.face.identity_embedder names).
EVALUATORS: tuple[str, ...] = ("sface", "dlib")
# What an undefended user leaves the server (fl_sim.core.defenses' visibility of no defense).
EXACT_UPDATE = "the server sees each user's exact update"
