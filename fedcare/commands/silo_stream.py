"""`fedcare silo stream`: receive live wearable data ([streams] of the node config) into the node's stream store."""

from __future__ import annotations

from pathlib import Path

from fedcare.commands.common import (
    ConfigOpt,
    UserError,
    VerboseOpt,
    configure_logging,
    node_config,
)


def stream(config: ConfigOpt, verbose: VerboseOpt = False) -> None:
    """Receive wearable streams (MQTT, HTTPS) into the node's stream store until stopped; studies train on snapshots."""
    configure_logging(verbose)
    cfg = node_config(config)
    if cfg.streams is None:
        raise UserError(f"{config}: has no [streams] section; add [streams.mqtt] and/or [streams.http] (docs/streams.md)")
    from silo_node.pseudonym_key import (  # not ingest_command: no torch in the receiver
        KEY_FILE,
        load_or_create_key,
    )
    from silo_node.streams.mqtt import MqttRefused
    from silo_node.streams.service import StreamService, open_stream_audit

    state = Path(cfg.state_dir)
    state.mkdir(parents=True, exist_ok=True)
    with open_stream_audit(state, node=cfg.name) as audit:  # refusals are audited in the node's own log
        try:
            StreamService(cfg.streams, state_dir=state, pseudonym_key=load_or_create_key(state / KEY_FILE),
                          audit=audit).run()
        except MqttRefused as e:
            raise UserError(f"{config}: {e}") from None
