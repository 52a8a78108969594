"""What the area modules' seed rows share."""

from __future__ import annotations

COMPANIES = ("usmf", "demf")  # the seeded legal entities
