"""Study parts the end-to-end tests share (not a test module)."""

from __future__ import annotations

from coordinator.api.study import ModelSpec

# The CNN encoders: a round takes seconds, long enough for a test to act inside one (pause, kill or copy
# a silo while it trains). The default "features" model's rounds take ~0.2 s, so a study ends first.
SECONDS_PER_ROUND_MODEL = ModelSpec(image_encoder="cnn", signal_encoder="cnn")
