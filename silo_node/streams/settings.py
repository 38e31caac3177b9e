"""`[streams]` of the node config: where live wearable data comes from and how much each device may send.

    [streams]
    queue_batches = 1000                 # messages waiting for the store; beyond it senders are held back
    audit_interval_s = 60                # refusals of one reason: one audit event per interval, with their count
    window_every_s = 5                   # studies' windows brought up to date with arriving samples this often
    fhir_validation = "used-fields"      # or "full": every element of each Observation (slower)
    [streams.mqtt]
    host = "broker.hospital.internal"
    port = 8883
    topics = ["fedcare/st-mary/+/+"]     # fedcare/<site>/<device>/<patient-ref>
    client_id = "fedcare-st-mary"        # fixed: the broker keeps unacknowledged messages for this session
    ca_cert = "broker-ca.pem"            # TLS to the broker (with cert/key for client authentication)
    [streams.http]
    listen = "10.0.0.5:8443"             # the hospital's internal network only
    cert = "streams.pem"
    key = "streams.key"
    [streams.rate]
    samples_per_s = 500                  # per device, sustained (token bucket)
    burst = 5000                         # per device, at once
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipelines.ehr.fhir_fields import FhirValidation

#: MQTT topic layout: fedcare/<site>/<device>/<patient-ref> (the last two levels name device and patient).
TOPIC_PREFIX = "fedcare"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MqttSettings(_Strict):
    host: str = Field(default="localhost", min_length=1)
    port: int = Field(default=1883, ge=1, le=65535)
    topics: list[str] = Field(default=[f"{TOPIC_PREFIX}/+/+/+"], min_length=1)
    client_id: str = Field(default="fedcare-silo-streams", min_length=1, max_length=128)
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    ca_cert: Path | None = None  # TLS to the broker when set
    cert: Path | None = None
    key: Path | None = None
    username: str | None = None
    password_file: Path | None = None  # the broker password, read from this file (never from the config)

    @model_validator(mode="after")
    def _pairs(self) -> "MqttSettings":
        if (self.cert is None) != (self.key is None):
            raise ValueError("set both cert and key (the client certificate for the broker), or neither")
        if self.cert is not None and self.ca_cert is None:
            raise ValueError("a client certificate needs ca_cert (the broker's CA) to use TLS")
        return self


class HttpSettings(_Strict):
    listen: str = Field(default="127.0.0.1:8443", pattern=r"^[^\s:]+:\d{1,5}$")
    cert: Path | None = None  # HTTPS when set (required unless insecure = true)
    key: Path | None = None
    ca_cert: Path | None = None  # when set, senders must present a certificate of this CA
    insecure: bool = False  # plain HTTP: tests and local demos only

    @model_validator(mode="after")
    def _tls(self) -> "HttpSettings":
        if not self.insecure and (self.cert is None or self.key is None):
            raise ValueError("set cert and key for HTTPS, or insecure = true for a local test")
        return self

    @property
    def host_port(self) -> tuple[str, int]:
        host, port = self.listen.rsplit(":", 1)
        return host, int(port)


class RateSettings(_Strict):
    samples_per_s: float = Field(default=1000.0, gt=0)  # per device, sustained
    burst: float = Field(default=10000.0, gt=0)  # per device, the bucket's size


class StreamsConfig(_Strict):
    mqtt: MqttSettings | None = None
    http: HttpSettings | None = None
    rate: RateSettings = RateSettings()
    queue_batches: int = Field(default=1000, ge=1, le=1_000_000)
    max_message_bytes: int = Field(default=1 << 20, ge=1024)
    max_samples_per_message: int = Field(default=10_000, ge=1)
    # refusals of one reason within this many seconds are one audit event with their count (a flood stays bounded)
    audit_interval_s: float = Field(default=60.0, gt=0, le=86_400)
    # the windows of studies' recordings are brought up to date with arriving samples this often
    window_every_s: float = Field(default=5.0, gt=0, le=3600)
    # FHIR Observations: the elements read validated (fast), or every element with fhir.resources ("full")
    fhir_validation: FhirValidation = FhirValidation.USED_FIELDS

    @model_validator(mode="after")
    def _some_receiver(self) -> "StreamsConfig":
        if self.mqtt is None and self.http is None:
            raise ValueError("name [streams.mqtt] or [streams.http] (or both), or remove [streams]")
        return self

    def resolved(self, base: Path) -> "StreamsConfig":
        """File paths relative to the node config's folder."""

        def r(p: Path | None) -> Path | None:
            return p if p is None or p.is_absolute() else base / p

        mqtt = self.mqtt and self.mqtt.model_copy(update={k: r(getattr(self.mqtt, k))
                                                          for k in ("ca_cert", "cert", "key", "password_file")})
        http = self.http and self.http.model_copy(update={k: r(getattr(self.http, k)) for k in ("cert", "key", "ca_cert")})
        return self.model_copy(update={"mqtt": mqtt, "http": http})
