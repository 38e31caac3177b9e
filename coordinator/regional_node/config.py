"""The regional aggregator's configuration, validated at the edge (CLI flags become this model)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from coordinator.inbound import InboundLimits


class RegionalConfig(BaseModel):
    """One regional aggregator: a name upstream, an address downstream, and how long to wait for its silos."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    upstream: str = Field(min_length=3)  # host:port of the central coordinator
    listen: str = "127.0.0.1:50061"  # where this region's silos dial in
    state_dir: Path
    insecure: bool = False
    # downstream mutual TLS (server certificate: `fedcare pki issue --coordinator NAME --host ...`)
    ca_cert: Path | None = None
    server_cert: Path | None = None
    server_key: Path | None = None
    crl: Path | None = None
    # upstream mutual TLS: this region acts as a silo (`fedcare pki issue --silo NAME`)
    upstream_cert: Path | None = None
    upstream_key: Path | None = None
    # Answer a proposal upstream once this many silos answered it; None: once every silo that has
    # joined (and polled in the last 30 s) answered, or when enrollment_timeout_s has passed.
    expected_silos: int | None = Field(default=None, ge=1)
    enrollment_timeout_s: float = Field(default=60.0, gt=0)
    # Share of the study's round_timeout_s the region waits for its silos before forwarding what it has.
    deadline_share: float = Field(default=0.8, gt=0, lt=1)
    poll_wait_s: float = Field(default=10.0, gt=0, le=60)
    # Quick retries of a failed upstream call; then the central coordinator counts as away and the
    # call waits for it with backoff, as a silo's does (coordinator.api.client).
    max_retries: int = Field(default=8, ge=0)
    workers: int = Field(default=32, ge=4)
    inbound: InboundLimits = InboundLimits()  # sizes of names, reasons and metric maps its silos may send

    @model_validator(mode="after")
    def _tls_or_insecure(self) -> "RegionalConfig":
        if not self.insecure:
            missing = [n for n in ("ca_cert", "server_cert", "server_key", "upstream_cert", "upstream_key")
                       if getattr(self, n) is None]
            if missing:
                raise ValueError(f"secure mode needs {', '.join(missing)} (see `fedcare pki`), or insecure = true "
                                 "for a local demo")
        return self
