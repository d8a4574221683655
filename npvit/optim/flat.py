"""FlatDict: named arrays that are views into one flat, contiguous buffer.

A model's parameters, their gradients and the optimizer's moments each live in one 1-D array, and the named
arrays (``blocks.3.attn.qkv.w``) are reshaped views of consecutive stretches of it:

    flat = [ patch_embed.proj.w | patch_embed.proj.b | pos_embed | blocks.0.norm1.gamma | ... ]   (n,)
    d["pos_embed"] = flat[offset:offset + size].reshape(shape)

Whatever works on every parameter at once then takes one pass over one array: AdamW's update is one fused
kernel instead of one per parameter, the global gradient norm is one dot product, and a data-parallel job
sums gradients across processes with one allreduce of ``grads.flat``.

Assigning to a name copies into its view (``d[name] = g`` is ``d[name][...] = g``), so the views can never be
replaced by other arrays behind the buffer's back.
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any, Iterable, Mapping

from ..backend import get_array_module

Array = Any


class FlatDict(dict):
    """name -> view into ``self.flat``, in the order of ``layout``.

    Attributes:
        flat: the 1-D buffer holding every array.
        layout: ((name, offset, shape), ...), consecutive and in insertion order.
    """

    def __init__(self, flat: Array, layout: Iterable[tuple[str, int, tuple[int, ...]]]) -> None:
        self.flat = flat
        self.layout = tuple((name, int(offset), tuple(shape)) for name, offset, shape in layout)
        super().__init__(
            (name, flat[offset:offset + math.prod(shape)].reshape(shape)) for name, offset, shape in self.layout
        )

    @classmethod
    def zeros(cls, xp: ModuleType, shapes: Mapping[str, tuple[int, ...]], dtype: Any) -> "FlatDict":
        """A zero-filled FlatDict with one array per (name, shape), laid out in the mapping's order."""
        layout, offset = [], 0
        for name, shape in shapes.items():
            layout.append((name, offset, tuple(shape)))
            offset += math.prod(shape)
        return cls(xp.zeros(offset, dtype=dtype), layout)

    def zeros_like(self) -> "FlatDict":
        """A zero-filled FlatDict with the same names, shapes, layout, dtype and backend."""
        return FlatDict(get_array_module(self.flat).zeros_like(self.flat), self.layout)

    def same_layout(self, other: Any) -> bool:
        """True when ``other`` is a FlatDict whose buffer is laid out exactly like this one's."""
        return isinstance(other, FlatDict) and other.layout == self.layout and other.flat.shape == self.flat.shape

    def span(self, *names: str) -> Array | None:
        """The 1-D view of the buffer covering ``names`` when they lie side by side in that order, else None
        (one kernel can then write them all)."""
        where = {name: (offset, math.prod(shape)) for name, offset, shape in self.layout}
        if any(name not in where for name in names):
            return None
        start, end = where[names[0]][0], where[names[0]][0]
        for name in names:
            offset, size = where[name]
            if offset != end:
                return None
            end = offset + size
        return self.flat[start:end]

    def __setitem__(self, name: str, value: Array) -> None:
        if name not in self:
            raise KeyError(f"{name!r} is not one of the arrays of this flat buffer")
        view = dict.__getitem__(self, name)
        view[...] = value

    def update(self, *args: Any, **kwargs: Any) -> None:  # every write goes through __setitem__
        for name, value in dict(*args, **kwargs).items():
            self[name] = value

    def __delitem__(self, name: str) -> None:
        raise TypeError("arrays cannot be removed from a flat buffer")

    def _fixed(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError("a flat buffer's set of arrays is fixed: arrays cannot be added or removed")

    setdefault = pop = popitem = clear = _fixed
