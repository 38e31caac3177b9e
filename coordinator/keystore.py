"""The coordinator's share of a study's CKKS keys: the public context and each participant's
wrapped secret, which it stores and serves but can never open.

The key holder's bundle (coordinator.api.protocol.KeyBundle) is split into one blob per
participant (a region's blob is its members' wrapped keys, coordinator.key_recipients); a
'public' context that carries a secret key is refused and not stored.
"""

from __future__ import annotations

from coordinator.api.protocol import KeyBundle, ProtocolError
from coordinator.blobs import BlobStore
from coordinator.errors import InvalidInput
from coordinator.key_recipients import split_wrapped
from privacy.errors import HEError
from privacy.he import context_has_secret_key


def public_only(public: bytes, where: str) -> bytes:
    """`public` if it is a CKKS context without the secret key; InvalidInput saying why otherwise.
    Neither the coordinator nor a regional aggregator may ever hold the study's secret key."""
    try:
        has_secret = context_has_secret_key(public)
    except HEError as e:
        raise InvalidInput(f"{where}: the public context does not load: {e}") from None
    if has_secret:
        raise InvalidInput(f"{where}: the 'public' context carries a secret key; refused and not stored")
    return public


def parse_key_bundle(data: bytes | bytearray | memoryview) -> KeyBundle:
    try:
        return KeyBundle.from_json(data)
    except ProtocolError as e:
        raise InvalidInput(str(e)) from None


def open_bundle(data: bytes | bytearray | memoryview, members: dict[str, list[str]]) -> tuple[bytes, dict[str, bytes], list[str]]:
    """The key holder's bundle, checked: its public context (without a secret key), one wrapped-key
    blob per participant (`split_wrapped`; `members`: {participant: its members, [] for a direct
    silo}) and the recipients the secret was wrapped for. InvalidInput says what is wrong; the
    coordinator and a region relaying a KEYGEN task both check a bundle with it."""
    bundle = parse_key_bundle(data)
    wrapped, wrapped_for = split_wrapped(bundle.wrapped, members)
    return public_only(bundle.public_context, "key bundle"), wrapped, wrapped_for


class KeyStore:
    def __init__(self, blobs: BlobStore) -> None:
        self.blobs = blobs

    def store_bundle(self, data: bytes, members: dict[str, list[str]]) -> tuple[str, dict[str, str], list[str]]:
        """Split the key holder's bundle. `members`: {participant: its members, [] for a direct silo}.

        Returns the public context's sha, each participant's wrapped-key blob sha and the
        recipients the secret was wrapped for."""
        public, wrapped, wrapped_for = open_bundle(data, members)
        return self.blobs.put(public), {s: self.blobs.put(w) for s, w in wrapped.items()}, wrapped_for
