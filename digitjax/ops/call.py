"""One convolution's shapes, as every route sees them: what `conv.plan` reports and the routes'
checks (oneDNN's kernels, Winograd's conditions) take."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Call:
    """One convolution as the routes see it: NHWC input, HWIO kernel, stride 1."""

    batch: int
    height: int
    width: int
    cin: int
    cout: int
    kh: int
    kw: int
    pads: tuple[tuple[int, int], tuple[int, int]] | None  # (low, high) per spatial axis; None: not 'SAME'/'VALID'
    unsupported: str | None  # why only XLA can compute it

    @property
    def out_hw(self) -> tuple[int, int]:
        (t, b), (left, right) = self.pads
        return self.height + t + b - self.kh + 1, self.width + left + right - self.kw + 1

    @property
    def even_pad(self) -> int | None:
        """The one padding on every side (what oneDNN's handlers take), or None where it differs."""
        (t, b), (left, right) = self.pads
        return t if t == b == left == right else None

    def __str__(self) -> str:
        return f"batch {self.batch}, {self.height}x{self.width}x{self.cin} -> {self.cout}, {self.kh}x{self.kw}"
