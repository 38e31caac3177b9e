"""MQTT subscriber (MQTT 3.1.1, OASIS 2014, through paho-mqtt): QoS 1, acknowledged only after the store committed.

The subscriber keeps a persistent session (`clean_session=False` under a fixed client id), so the
broker holds every QoS 1 message the silo has not acknowledged, including those published while
the silo was down, and delivers them again when it reconnects (§4.4). With `manual_ack` the PUBACK
for a message is sent from the store's writer, after the transaction holding its samples has
committed: a kill -9 between arrival and commit leaves the message unacknowledged, so the broker
redelivers it, and the store keeps a redelivered sample once.

Malformed and rate-limited messages are acknowledged once their quarantine entry or refusal has
committed (MQTT 3.1.1 has no negative acknowledgement; leaving them unacknowledged would fill the
broker's in-flight window and block the device's later messages). When the writer's queue is full the
network loop waits for room instead of reading on, so the broker queues messages (backpressure).
"""

from __future__ import annotations

import logging
import ssl
import threading

import paho.mqtt.client as mqtt

from .intake import Outcome, StreamIntake
from .settings import MqttSettings

log = logging.getLogger(__name__)
QOS = 1
VIA = "mqtt"  # the receiver's name in the quarantine and the audit log


def topic_parts(topic: str) -> tuple[str, str]:
    """fedcare/<site>/<device>/<patient-ref> -> (device, patient-ref); empty strings when the topic has fewer levels."""
    levels = topic.split("/")
    return (levels[-2], levels[-1]) if len(levels) >= 4 else ("", "")


class MqttReceiver:
    """Subscribes to `settings.topics` and offers each message to `intake`; `run()` blocks, `stop()` ends it."""

    def __init__(self, settings: MqttSettings, intake: StreamIntake) -> None:
        self.settings, self.intake = settings, intake
        self.connected = threading.Event()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=settings.client_id, clean_session=False,
                        protocol=mqtt.MQTTv311, manual_ack=True)
        c.max_inflight_messages_set(100)
        if settings.ca_cert is not None:
            c.tls_set(ca_certs=str(settings.ca_cert), certfile=settings.cert and str(settings.cert),
                      keyfile=settings.key and str(settings.key), tls_version=ssl.PROTOCOL_TLS_CLIENT)
        if settings.username is not None:
            password = settings.password_file.read_text().strip() if settings.password_file else None
            c.username_pw_set(settings.username, password)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        self.client = c

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: object, reason: object, props: object) -> None:
        if getattr(reason, "is_failure", False):
            log.error("MQTT broker %s:%d refused the connection: %s", self.settings.host, self.settings.port, reason)
            return
        client.subscribe([(t, QOS) for t in self.settings.topics])
        log.info("MQTT: subscribed to %s at %s:%d", self.settings.topics, self.settings.host, self.settings.port)
        self.connected.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: object, flags: object, reason: object, props: object) -> None:
        self.connected.clear()
        log.warning("MQTT: disconnected from %s:%d (%s); reconnecting", self.settings.host, self.settings.port, reason)

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        device, patient = topic_parts(msg.topic)
        mid, qos = msg.mid, msg.qos

        def done(outcome: Outcome, reason: str | None) -> None:
            if outcome is not Outcome.BUSY:  # stored, or its quarantine entry / refusal committed
                client.ack(mid, qos)
            else:
                log.warning("MQTT message %d on %s not acknowledged (%s); the broker delivers it again", mid,
                            msg.topic, reason)

        # Waiting here holds the network loop: the broker stops sending and queues (backpressure).
        self.intake.offer(device=device, patient=patient, payload=msg.payload, via=VIA, done=done,
                          wait_s=self.settings.keepalive_s / 2)

    def run(self) -> None:
        """Connect (retrying while the broker is away) and process messages until `stop()`."""
        self.client.reconnect_delay_set(min_delay=1, max_delay=30)
        self.client.connect_async(self.settings.host, self.settings.port, keepalive=self.settings.keepalive_s)
        self.client.loop_forever(retry_first_connection=True)

    def stop(self) -> None:
        self.client.disconnect()
