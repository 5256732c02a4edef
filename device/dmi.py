"""The machine's serial number and model from DMI (SMBIOS), as the factory DI step uses them.

Linux exposes the SMBIOS system information under ``/sys/class/dmi/id``:
``product_serial`` (readable by root only) and ``product_name``. Firmware often leaves
placeholders there ("To Be Filled By O.E.M.", "Default string", "System Serial
Number", ...); a placeholder is no serial, since every board of that vendor shares it,
so it counts as missing and the caller falls back to something else.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DMI_DIR = Path("/sys/class/dmi/id")
SERIAL_FILE = "product_serial"
MODEL_FILE = "product_name"

#: Values firmware writes when the vendor filled in nothing (compared case-insensitively).
PLACEHOLDERS = frozenset(
    {
        "",
        "none",
        "n/a",
        "na",
        "not specified",
        "not applicable",
        "not available",
        "default string",
        "to be filled by o.e.m.",
        "to be filled by oem",
        "system serial number",
        "system product name",
        "chassis serial number",
        "0",
        "0123456789",
        "1234567890",
        "123456789",
        "00000000",
        "ffffffff",
        "unknown",
        "invalid",
        "oem",
        "o.e.m.",
    }
)


@dataclass(frozen=True, slots=True)
class DmiValue:
    """One DMI field: its value (None when missing or a placeholder) and why."""

    value: str | None
    source: str  # the file read, for messages
    problem: str | None = None  # why value is None


def read_field(dmi_dir: Path, name: str) -> DmiValue:
    """``dmi_dir/name`` stripped, or None with the reason (unreadable, empty, placeholder)."""
    path = dmi_dir / name
    try:
        raw = path.read_bytes()
    except OSError as exc:
        return DmiValue(None, str(path), exc.strerror or type(exc).__name__)
    text = raw.decode("utf-8", errors="replace").replace("\x00", "").strip()
    if text.lower() in PLACEHOLDERS:
        return DmiValue(None, str(path), f"placeholder {text!r}" if text else "empty")
    if len(text.encode()) > 255:
        return DmiValue(None, str(path), "longer than 255 bytes")
    return DmiValue(text, str(path))


def serial(dmi_dir: Path = DMI_DIR) -> DmiValue:
    """The system serial number (``product_serial``)."""
    return read_field(dmi_dir, SERIAL_FILE)


def model(dmi_dir: Path = DMI_DIR) -> DmiValue:
    """The system product name (``product_name``), used as the device's model."""
    return read_field(dmi_dir, MODEL_FILE)
