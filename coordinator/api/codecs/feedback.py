"""Error feedback for lossy update codecs (Seide et al. 2014, "1-Bit Stochastic Gradient
Descent"; Stich, Cordonnier, Jaggi 2018, "Sparsified SGD with Memory"; Karimireddy et al.
2019, "Error Feedback Fixes SignSGD").

The silo keeps a residual: before compressing it adds the residual to the update, and after
compressing it keeps whatever the coordinator will not receive (the corrected update minus its
decoded form). Nothing is lost, only delayed: over any number of rounds,
    sum of what was sent + final residual == sum of the updates.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from coordinator.api.codecs.wire import CodecError, Layout, flatten, unflatten

if TYPE_CHECKING:
    from coordinator.api.codecs import UpdateCodec


class ErrorFeedback:
    """Silo-side state wrapping one codec: `encode(arrays, seed=...)` like the codec itself."""

    def __init__(self, codec: "UpdateCodec") -> None:
        self.codec = codec
        self.residual: np.ndarray | None = None  # flat float64, one value per model value
        self._layout: Layout | None = None

    def encode(self, arrays: Sequence[np.ndarray], *, seed: int | None = None) -> bytes:
        layout, flat = flatten(arrays)
        if self.residual is not None and (layout.shapes != self._layout.shapes or self.residual.size != layout.total):
            raise CodecError("the update's arrays differ from the previous round's; call reset() for a new model")
        corrected = flat if self.residual is None else flat + self.residual
        data = self.codec.encode_flat(corrected, layout, seed=seed)
        received = self.codec.decode(data, max_values=layout.total, max_arrays=len(layout.shapes))
        self.residual = corrected - flatten(received)[1]
        self._layout = layout
        return data

    def give_back(self, data: bytes) -> None:
        """`data`, from `encode`, never reached the aggregate (the coordinator refused it, e.g. too
        stale for an asynchronous buffer): what it carried goes back into the residual, so the
        invariant above still holds and the next update sends it."""
        if self.residual is None or self._layout is None:
            raise CodecError("give_back before any encode: there is nothing this residual sent")
        received = self.codec.decode(data, max_values=self._layout.total, max_arrays=len(self._layout.shapes))
        self.residual = self.residual + flatten(received)[1]

    def residual_arrays(self) -> list[np.ndarray]:
        """The residual shaped like the update (float64); empty before the first round."""
        if self.residual is None or self._layout is None:
            return []
        shapes = self._layout.shapes
        return unflatten(self.residual, Layout(tuple(np.dtype("<f8") for _ in shapes), shapes))

    def state_bytes(self) -> bytes:
        """The residual as a lossless float64 update (codec 'none'), for the silo to keep on disk."""
        from coordinator.api.codecs import build_codec

        return build_codec("none").encode(self.residual_arrays()) if self.residual is not None else b""

    def restore(self, data: bytes, *, max_values: int) -> None:
        """Load a residual written by `state_bytes` (e.g. after a silo restart); b"" means none."""
        from coordinator.api.codecs import build_codec

        if not data:
            self.reset()
            return
        arrays = build_codec("none").decode(data, max_values=max_values)
        self._layout, self.residual = flatten(arrays)

    def reset(self) -> None:
        self.residual, self._layout = None, None
