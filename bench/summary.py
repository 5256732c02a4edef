"""The closing table of ``make bench``: each figure of issue 15 against its target."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

MET = "MET"
NOT_MET = "NOT MET"
NOT_MEASURED = "not measured"


@dataclass(frozen=True)
class Figure:
    """One measured figure; met when ``value`` is below ``target``."""

    name: str
    value: float | None
    target: float
    unit: str
    #: Shown after the value (e.g. how far an unfinished phase got).
    note: str = ""
    #: The figure cannot be below the target whatever the value says (an unfinished phase).
    failed: bool = False
    digits: int = 2

    @property
    def verdict(self) -> str:
        if self.failed:
            return NOT_MET
        if self.value is None:
            return NOT_MEASURED
        return MET if self.value < self.target else NOT_MET

    def value_text(self) -> str:
        """The value to :attr:`digits` places, or as many more as it takes for the shown
        value to be on the same side of the target as the value itself (1.497 ms against
        1.5 is shown so, not as a "1.50 ms" that is MET)."""
        if self.value is None:
            return self.note or "–"
        digits = self.digits
        while digits < 6 and (round(self.value, digits) < self.target) != (self.value < self.target):
            digits += 1
        text = f"{self.value:.{digits}f} {self.unit}"
        return f"{text} ({self.note})" if self.note else text

    def target_text(self) -> str:
        target = f"{self.target:g}"
        return f"< {target} {self.unit}" if self.unit != "%" else f"< {target} %"


def print_summary(figures: Mapping[str, Sequence[Figure]]) -> None:
    """One row per figure and backend (``figures`` by backend, each in the same order)."""
    rows: list[tuple[str, str, str, str, str]] = []
    names: list[str] = []
    for backend_figures in figures.values():
        for figure in backend_figures:
            if figure.name not in names:
                names.append(figure.name)
    for name in names:
        for backend, backend_figures in figures.items():
            for f in backend_figures:
                if f.name == name:
                    rows.append((f.name, backend, f.value_text(), f.target_text(), f.verdict))
    head = ("figure", "backend", "value", "target", "verdict")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    print()
    print("Summary: each figure against its target (issue 15)")
    line = "  " + "  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))
    print(line.rstrip())
    print("  " + "-" * (len(line) - 2))
    for row in rows:
        print(("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True))).rstrip())
    counts = {v: sum(1 for r in rows if r[4] == v) for v in (MET, NOT_MET, NOT_MEASURED)}
    print(f"  {counts[MET]} met, {counts[NOT_MET]} not met, {counts[NOT_MEASURED]} not measured")


__all__ = ["MET", "NOT_MEASURED", "NOT_MET", "Figure", "print_summary"]
