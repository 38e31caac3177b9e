"""Live wearable streams at the silo: MQTT and HTTPS receivers feeding `pipelines.wearables.stream_store` (docs/streams.md)."""
