"""The silo's MQTT receiver against a real Mosquitto speaking TLS only, with user names and passwords."""

from __future__ import annotations

import ssl
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from compliance.audit import AuditLog
from fedcare.commands.common import UserError
from fedcare.commands.silo_stream import stream
from fedcare.pki import init_ca, issue
from silo_node.streams.local_broker import BrokerTls, local_broker
from silo_node.streams.mqtt import MqttRefused
from silo_node.streams.service import StreamService
from silo_node.streams.settings import MqttSettings, StreamsConfig

from .test_streams import KEY, START, heart_rate_observation, wait_for

USERS = {"silo-st-mary": "correct horse battery", "watch-gw": "gateway secret"}


def _secret(path: Path, text: str) -> Path:
    path.write_text(text + "\n")
    path.chmod(0o600)
    return path


def test_the_receiver_signs_in_over_tls_and_a_wrong_password_or_ca_is_refused_in_one_line(tmp_path: Path,
                                                                                           node_audit: AuditLog):
    ca = init_ca(tmp_path / "pki")
    cert, key = issue(tmp_path / "pki", name="broker", role="coordinator")  # serverAuth, SAN 127.0.0.1
    other_ca = init_ca(tmp_path / "other-pki", name="someone else's CA")
    with local_broker(tmp_path, tls=BrokerTls(cert=cert, key=key, ca_cert=ca), users=USERS) as port:
        good = MqttSettings(host="127.0.0.1", port=port, client_id="silo-tls", ca_cert=ca, username="silo-st-mary",
                            password_file=_secret(tmp_path / "mqtt.pw", USERS["silo-st-mary"]))
        service = StreamService(StreamsConfig(mqtt=good), state_dir=tmp_path, pseudonym_key=KEY, audit=node_audit)
        service.mqtt.start()
        assert service.mqtt.connected.is_set()
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="watch-gw", protocol=mqtt.MQTTv311)
        pub.tls_set(ca_certs=str(ca), tls_version=ssl.PROTOCOL_TLS_CLIENT)
        pub.username_pw_set("watch-gw", USERS["watch-gw"])
        pub.connect("127.0.0.1", port)
        pub.loop_start()
        pub.publish("fedcare/st-mary/watch-1/MRN-7", heart_rate_observation(START, [70.0, 71.0, 72.0]),
                    qos=1).wait_for_publish(10)
        wait_for(lambda: service.store.counts()["samples"] == 3)
        pub.loop_stop()
        service.stop()

        wrong = good.model_copy(update={"client_id": "silo-wrong", "password_file": _secret(tmp_path / "bad.pw", "x")})
        with pytest.raises(MqttRefused) as refused:
            StreamService(StreamsConfig(mqtt=wrong), state_dir=tmp_path / "b", pseudonym_key=KEY,
                          audit=node_audit).run()
        line = str(refused.value)
        assert "\n" not in line and f"127.0.0.1:{port} refused user 'silo-st-mary'" in line
        assert f"password in password_file ({tmp_path / 'bad.pw'})" in line  # what to fix

        anonymous = good.model_copy(update={"client_id": "silo-anon", "username": None, "password_file": None})
        with pytest.raises(MqttRefused, match="refused an anonymous client: Not authorized; this broker refuses anonymous clients: set "
                                               r"\[streams.mqtt\] username"):
            StreamService(StreamsConfig(mqtt=anonymous), state_dir=tmp_path / "c", pseudonym_key=KEY,
                          audit=node_audit).run()

        untrusted = good.model_copy(update={"client_id": "silo-ca", "ca_cert": other_ca})
        with pytest.raises(MqttRefused, match="certificate does not verify against ca_cert .*other-pki"):
            StreamService(StreamsConfig(mqtt=untrusted), state_dir=tmp_path / "d", pseudonym_key=KEY,
                          audit=node_audit).run()

        absent = good.model_copy(update={"password_file": tmp_path / "nowhere.pw"})
        with pytest.raises(MqttRefused, match=r"password_file .*nowhere.pw cannot be read \(No such file"):
            StreamService(StreamsConfig(mqtt=absent), state_dir=tmp_path / "e", pseudonym_key=KEY, audit=node_audit)

        config = tmp_path / "node.toml"  # the command: one line naming the config and the setting to fix
        config.write_text(f'name = "st-mary"\ncoordinator = "127.0.0.1:1"\nstate_dir = "{tmp_path / "cli"}"\n'
                          f'insecure = true\n[data]\ndataset = "d"\nwearables = ["{tmp_path}"]\n'
                          f'[streams.mqtt]\nhost = "127.0.0.1"\nport = {port}\nclient_id = "silo-cli"\n'
                          f'ca_cert = "{ca}"\nusername = "silo-st-mary"\npassword_file = "bad.pw"\n')
        with pytest.raises(UserError, match=f"^{config}: MQTT broker 127.0.0.1:{port} refused user 'silo-st-mary'"):
            stream(config)
    assert not [t for t in threading.enumerate() if t.name == "mqtt" and t.is_alive()]


def test_a_broker_that_requires_client_certificates_takes_the_silos_from_fedcare_pki(tmp_path: Path,
                                                                                    node_audit: AuditLog):
    ca = init_ca(tmp_path / "pki")
    cert, key = issue(tmp_path / "pki", name="broker", role="coordinator")
    silo_cert, silo_key = issue(tmp_path / "pki", name="st-mary", role="silo")  # clientAuth
    with local_broker(tmp_path, tls=BrokerTls(cert=cert, key=key, ca_cert=ca, require_client=True)) as port:
        settings = MqttSettings(host="127.0.0.1", port=port, client_id="silo-mtls", ca_cert=ca, cert=silo_cert,
                                key=silo_key)
        service = StreamService(StreamsConfig(mqtt=settings), state_dir=tmp_path, pseudonym_key=KEY, audit=node_audit)
        service.mqtt.start()
        assert service.mqtt.connected.is_set()
        service.stop()
        without = settings.model_copy(update={"client_id": "silo-no-cert", "cert": None, "key": None})
        with pytest.raises(MqttRefused, match="closed the connection before answering the sign-in.*set "
                                              r"\[streams.mqtt\] cert and key"):
            StreamService(StreamsConfig(mqtt=without), state_dir=tmp_path / "b", pseudonym_key=KEY,
                          audit=node_audit).run()
