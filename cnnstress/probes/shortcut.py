"""Background shortcut (shapes): whether the model follows a background hue that names another
class, and how much of its Grad-CAM energy falls inside the object. Measured by the shortcut report
section from what every run stores (test predictions, Grad-CAM maps) and the dataset's annotations;
this probe owns the results.h5 group a measure of its own writes to (``shortcut/<name>``)."""

from __future__ import annotations

from ..layout import Field
from .base import Probe


class ShortcutProbe(Probe):
    name = "shortcut"
    rows = (Field("shortcut/<name>", "float32", None, chunked=True, doc="optional shortcut array"),)
    section = "shortcut"

    def enabled(self, stress) -> bool:
        return False  # no keys, nothing measured on the device: the section reads /test


PROBE = ShortcutProbe()
