"""Who the study's CKKS secret is wrapped for: direct silos by name, a region's members as "<region>/<member>".

A regional aggregator takes part as ONE participant but must never be able to decrypt, so
the key holder does not wrap the secret for the region: when the region accepts a study it
sends its accepting members' X25519 wrap keys (ProposalAnswer.member_wrap_keys), the KEYGEN
task lists them as "<region>/<member>", and the region's wrapped-key blob at the coordinator
is the set of its members' wrapped keys, `{member: base64(wrapped)}`, which the region
fetches and hands each member only its own. Neither the region nor the coordinator holds a
private key that opens any of them. Silo names may not contain "/", so a recipient name
means one thing only.
"""

from __future__ import annotations

from collections.abc import Mapping

from coordinator.api.protocol import NAME_SEP, ProtocolError, decode_wrapped_keys, encode_wrapped_keys
from coordinator.api.protocol import check_silo_name as protocol_check_silo_name
from coordinator.errors import InvalidInput

SEP = NAME_SEP
MAX_MEMBERS = 10_000
WRAP_KEY_BYTES = 32  # X25519 public key


def check_silo_name(name: str, what: str = "silo name") -> None:
    """The protocol's rule for silo names (coordinator.api.protocol), as InvalidInput."""
    try:
        protocol_check_silo_name(name, what)
    except ProtocolError as e:
        raise InvalidInput(str(e)) from None


def check_wrap_public_key(key: bytes) -> None:
    """A joining silo's wrap key: none, or a 32-byte X25519 public key."""
    if key and len(key) != WRAP_KEY_BYTES:
        raise InvalidInput(f"wrap_public_key: {len(key)} bytes, expected a 32-byte X25519 public key; "
                           "send the node's wrap key as it is (or none)")


def check_member_keys(keys: Mapping[str, bytes]) -> dict[str, bytes]:
    """A region's members' wrap keys from a proposal answer, checked (names and 32-byte keys)."""
    if len(keys) > MAX_MEMBERS:
        raise InvalidInput(f"member_wrap_keys names {len(keys)} members; at most {MAX_MEMBERS} are taken")
    out = {}
    for member, key in keys.items():
        check_silo_name(member, "member_wrap_keys: member name")
        if len(key) != WRAP_KEY_BYTES:
            raise InvalidInput(f"member_wrap_keys[{member!r}]: {len(key)} bytes, expected a 32-byte X25519 public key")
        out[member] = bytes(key)
    return dict(sorted(out.items()))


def member_keys_to_json(keys: Mapping[str, bytes]) -> str | None:
    return encode_wrapped_keys(keys).decode() if keys else None


def member_keys_from_json(text: str | None) -> dict[str, bytes]:
    return decode_wrapped_keys(text.encode()) if text else {}


def recipients(participants: Mapping[str, tuple[bytes, Mapping[str, bytes]]]) -> dict[str, bytes]:
    """Task.participant_keys for KEYGEN from {participant: (its wrap key, its members' wrap keys)}."""
    keys: dict[str, bytes] = {}
    for name, (own, members) in participants.items():
        if members:
            keys.update({f"{name}{SEP}{m}": k for m, k in members.items()})
        else:
            keys[name] = own
    return keys


def participants_of(recipient_keys: Mapping[str, bytes]) -> dict[str, list[str]]:
    """`recipients` read back: {participant: its members, [] for a direct silo} from a KEYGEN task's
    participant_keys (a region relaying the task checks its key holder's bundle with it)."""
    members: dict[str, list[str]] = {}
    for name in recipient_keys:
        participant, _, member = name.partition(SEP)
        members.setdefault(participant, [])
        if member:
            members[participant].append(member)
    return {p: sorted(m) for p, m in members.items()}


def split_wrapped(wrapped: Mapping[str, bytes], members: Mapping[str, list[str]]) -> tuple[dict[str, bytes], list[str]]:
    """The key holder's wrapped keys as one blob per participant, and the recipients wrapped for.

    `wrapped`: the bundle's {recipient: wrapped key}; `members`: {participant: its members, [] for a
    direct silo}. A direct silo's blob is its wrapped key; a region's is `{member: base64}` of
    all its members. A missing recipient, or one for a region or member the study does not
    have, refuses the bundle with the reason.
    """
    for name in wrapped:
        if SEP not in name:
            continue  # a direct silo's entry (entries for non-participants are ignored, as before)
        region, member = name.split(SEP, 1)
        if not members.get(region):
            raise InvalidInput(f"key bundle wraps a key for {name!r}, but {region!r} is not a regional aggregator "
                               "taking part in this study (it sent no member keys); refused, nothing stored")
        if member not in members[region]:
            raise InvalidInput(f"key bundle wraps a key for {name!r}, but {member!r} is not a member region {region!r} "
                               f"enrolled ({', '.join(members[region])}); refused, nothing stored")
    blobs: dict[str, bytes] = {}
    wrapped_for: list[str] = []
    for participant, its_members in sorted(members.items()):
        if its_members:
            names = [f"{participant}{SEP}{m}" for m in its_members]
            missing = [n for n in names if n not in wrapped]
            if missing:
                raise InvalidInput(f"key bundle lacks the wrapped key of region {participant}'s member(s) "
                                   f"{', '.join(missing)}: the key holder must wrap for every recipient the KEYGEN "
                                   "task names; refused, nothing stored")
            blobs[participant] = encode_wrapped_keys({m: wrapped[n] for m, n in zip(its_members, names)})
            wrapped_for += names
        else:
            if participant not in wrapped:
                raise InvalidInput(f"key bundle lacks the wrapped key of {participant}; refused, nothing stored")
            blobs[participant] = bytes(wrapped[participant])
            wrapped_for.append(participant)
    return blobs, sorted(wrapped_for)
