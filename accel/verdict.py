"""The verdict of proving a converted image against its source (`accel.verify`): a row per target layer
(what was checked, the first problem) and every difference in the order found. Its own module so each
format's reader (`accel.drivers.reader`) can report into it without importing `accel.verify`."""

from __future__ import annotations

from dataclasses import dataclass, field

from accel import digest as dg


@dataclass
class LayerVerdict:
    platform: str
    position: int
    target: str  # digest
    format: str
    source: str | None = None  # digest of the source layer it stands for, when paired one to one
    checks: list[str] = field(default_factory=list)
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None


@dataclass
class Verdict:
    source: str
    target: str
    layers: list[LayerVerdict] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # every difference, in the order found

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def first_difference(self) -> str | None:
        return self.problems[0] if self.problems else None

    def fail(self, problem: str, layer: LayerVerdict | None = None) -> None:
        self.problems.append(problem)
        if layer is not None and layer.problem is None:
            layer.problem = problem

    def table(self) -> str:
        """The per-layer verdict table, then the first difference (or "ok")."""
        rows = [("platform", "#", "format", "source", "target", "verdict", "checked")]
        for v in self.layers:
            rows.append(
                (
                    v.platform,
                    str(v.position),
                    v.format,
                    dg.short(v.source)[7:] if v.source else "-",
                    dg.short(v.target)[7:],
                    "ok" if v.ok else "FAIL",
                    ", ".join(v.checks) or "-",
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1] for r in rows]
        lines.append(f"first difference: {self.first_difference}" if self.problems else "ok: target proven")
        return "\n".join(line.rstrip() for line in lines)
