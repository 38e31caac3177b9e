"""MQTT subscriber (MQTT 3.1.1, OASIS 2014, through paho-mqtt): QoS 1, acknowledged only after the store committed.

The subscriber keeps a persistent session (`clean_session=False` under a fixed client id), so the
broker holds every QoS 1 message the silo has not acknowledged, including those published while
the silo was down, and delivers them again when it reconnects (§4.4). With `manual_ack` the PUBACK
for a message is sent from the store's writer, after the transaction holding its samples has
committed: a kill -9 between arrival and commit leaves the message unacknowledged, so the broker
redelivers it, and the store keeps a redelivered sample once.

The broker is reached over TLS when `ca_cert` is set (with a client certificate when `cert`/`key`
are) and the silo signs in with `username` and the password in `password_file`. A broker that
refuses the sign-in (wrong password, user not allowed) or a certificate that does not verify stops
the receiver at start with one line naming the setting to fix (`MqttRefused`); a broker that is
away is waited for.

Malformed and rate-limited messages are acknowledged once their quarantine entry or refusal has
committed (MQTT 3.1.1 has no negative acknowledgement; leaving them unacknowledged would fill the
broker's in-flight window and block the device's later messages). When the writer's queue is full the
network loop waits for room instead of reading on, so the broker queues messages (backpressure).
"""

from __future__ import annotations

import logging
import ssl
import sys
import threading

import paho.mqtt.client as mqtt

from .intake import Outcome, StreamIntake
from .settings import MqttSettings

log = logging.getLogger(__name__)
QOS = 1
VIA = "mqtt"  # the receiver's name in the quarantine and the audit log
CONNECT_WAIT_S = 15.0  # how long `start` waits for the broker's answer before going on retrying in the background
#: connections the broker closes before answering the sign-in, at start, before the receiver gives up: a broker that
#: requires a client certificate does so under TLS 1.3 (the handshake itself succeeded)
CLOSED_BEFORE_ANSWER = 2
#: the CONNACK reasons of a refused sign-in (MQTT 3.1.1 §3.2.2.3: 4 and 5; Mosquitto answers 5 to a wrong password)
SIGN_IN_REFUSALS = {"Bad user name or password", "Not authorized"}


class MqttRefused(RuntimeError):
    """The broker refused the silo (its sign-in or TLS): retrying cannot help until the settings change."""


def topic_parts(topic: str) -> tuple[str, str]:
    """fedcare/<site>/<device>/<patient-ref> -> (device, patient-ref); empty strings when the topic has fewer levels."""
    levels = topic.split("/")
    return (levels[-2], levels[-1]) if len(levels) >= 4 else ("", "")


class MqttReceiver:
    """Subscribes to `settings.topics` and offers each message to `intake`; `run()` blocks, `stop()` ends it."""

    def __init__(self, settings: MqttSettings, intake: StreamIntake) -> None:
        self.settings, self.intake = settings, intake
        self.connected = threading.Event()
        self.refused: MqttRefused | None = None
        self._answered = threading.Event()  # connected, or refused
        self._starting = True  # until the first connection or the end of `start`'s wait: a refusal stops the receiver
        self._thread: threading.Thread | None = None
        self._closed_before_answer = 0
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=settings.client_id, clean_session=False,
                        protocol=mqtt.MQTTv311, manual_ack=True)
        c.max_inflight_messages_set(100)
        if settings.ca_cert is not None:
            c.tls_set(ca_certs=str(settings.ca_cert), certfile=settings.cert and str(settings.cert),
                      keyfile=settings.key and str(settings.key), tls_version=ssl.PROTOCOL_TLS_CLIENT)
        if settings.username is not None:
            c.username_pw_set(settings.username, self._password())
        c.on_connect = self._on_connect
        c.on_connect_fail = self._on_connect_fail
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        self.client = c

    def _password(self) -> str | None:
        path = self.settings.password_file
        if path is None:
            return None
        try:
            return path.read_text().strip()
        except OSError as e:
            raise MqttRefused(f"[streams.mqtt] password_file {path} cannot be read ({e.strerror}); write the broker "
                              "password for the silo's user there (readable by the node only)") from None

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: object, reason: object, props: object) -> None:
        if getattr(reason, "is_failure", False):
            self._refuse(f"MQTT broker {self.settings.host}:{self.settings.port} refused {self._who()}: {reason}; "
                         f"{self._sign_in_hint(str(reason))}")
            return
        client.subscribe([(t, QOS) for t in self.settings.topics])
        log.info("MQTT: subscribed to %s at %s:%d", self.settings.topics, self.settings.host, self.settings.port)
        self._starting = False
        self.connected.set()
        self._answered.set()

    def _who(self) -> str:
        return f"user {self.settings.username!r}" if self.settings.username else "an anonymous client"

    def _sign_in_hint(self, reason: str) -> str:
        if reason not in SIGN_IN_REFUSALS:
            return "check [streams.mqtt] and the broker's log"
        if self.settings.username is None:
            return "this broker refuses anonymous clients: set [streams.mqtt] username and password_file"
        return (f"check [streams.mqtt] username and the password in password_file ({self.settings.password_file}), "
                "and that the broker's administrator allows this user")

    def _on_connect_fail(self, client: mqtt.Client, userdata: object) -> None:
        """No connection (broker away, or TLS failed): a certificate that does not verify is refused, else retried."""
        error = sys.exc_info()[1]  # called from paho's `except OSError` around the connection attempt
        if isinstance(error, ssl.SSLError):
            what = "its certificate does not verify against" if isinstance(error, ssl.SSLCertVerificationError) \
                else "the TLS handshake failed with"
            self._refuse(f"MQTT broker {self.settings.host}:{self.settings.port}: {what} ca_cert "
                         f"{self.settings.ca_cert} ({getattr(error, 'reason', None) or error}); set [streams.mqtt] "
                         "ca_cert to the CA that issued the broker's certificate and host to a name it holds")

    def _refuse(self, message: str) -> None:
        log.error("%s", message)
        if self._starting and self.refused is None:  # at start: stop, the settings must change (later: retried)
            self.refused = MqttRefused(message)
            self._answered.set()
            self.client.disconnect()

    def _on_disconnect(self, client: mqtt.Client, userdata: object, flags: object, reason: object, props: object) -> None:
        self.connected.clear()
        if self.refused is not None:
            return  # said once, in `_refuse`
        if self._starting:
            self._closed_before_answer += 1
            if self._closed_before_answer >= CLOSED_BEFORE_ANSWER:
                hint = ("if it requires a client certificate, set [streams.mqtt] cert and key (issued by its CA)"
                        if self.settings.cert is None else "check that its CA issued [streams.mqtt] cert")
                self._refuse(f"MQTT broker {self.settings.host}:{self.settings.port} closed the connection before "
                             f"answering the sign-in, {self._closed_before_answer} times ({reason}); {hint}, "
                             "else see the broker's log")
                return
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
        """Connect (retrying while the broker is away) and process messages until `stop()` or a refusal at start."""
        self.client.reconnect_delay_set(min_delay=1, max_delay=30)
        self.client.connect_async(self.settings.host, self.settings.port, keepalive=self.settings.keepalive_s)
        self.client.loop_forever(retry_first_connection=True)

    def start(self, *, wait_s: float = CONNECT_WAIT_S) -> None:
        """`run()` in a thread; raises `MqttRefused` if the broker refuses the silo within `wait_s` (a broker that
        does not answer by then is retried in the background, as when it goes away later)."""
        self._thread = threading.Thread(target=self.run, name="mqtt", daemon=True)
        self._thread.start()
        self._answered.wait(wait_s)
        self._starting = False
        if self.refused is not None:
            raise self.refused

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join()
        if self.refused is not None:
            raise self.refused

    def stop(self) -> None:
        self.client.disconnect()
