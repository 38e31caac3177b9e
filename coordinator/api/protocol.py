"""The study protocol, typed: what silo, coordinator and region agree on about one study.

Every mode, encoding and exchange format that crosses the wire is defined here once:

- enums for the encryption mode, the uplink codec and the downlink codec, the aggregation rule
  and the server optimiser (`StudySpec` fields are typed with them);
- the encodings of an update (`tensors`, a codec name, `ckks-*`) and of a model version
  (`tensors`, `seeded-init`, `delta+<codec>`, `ckks-*`), built from a spec by `StudyProtocol`;
- pydantic models of the JSON that travels: update metadata, version metadata, the CKKS key
  bundle, a region's wrapped-key blob and the encrypted-screening scalars;
- the key-free checks an update must pass before anyone aggregates it (weight, encoding,
  metadata, layout, dtype, finiteness): `check_update_header`, `decode_plain_update`;
- the one rule for names and ids that end up in paths and logs (`check_study_id`,
  `check_silo_name`, `study_id_for`).

This module is part of coordinator.api and imports none of the other rooms; the aggregation
rules' parameter schema lives here so that `StudySpec` can refuse a bad combination at
submission, naming the field, and `coordinator.aggregation.build_rule` reads the same table.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from coordinator.api.codecs import CodecError, build_codec, keep_count
from coordinator.api.tensors import TensorFormatError, TensorSpec, decode_tensors

if TYPE_CHECKING:
    from coordinator.api.study import StudySpec


class ProtocolError(ValueError):
    """A message or name that does not follow the study protocol; the text says what and what to do."""


# --- modes and encodings ---------------------------------------------------------------------------------
MODALITIES: tuple[str, ...] = ("ehr", "image", "signal")  # pipelines keeps its own copy (it imports no api)


class Encryption(StrEnum):
    """`privacy.encryption`: how updates travel. ckks-screen adds one multiplicative level so the
    coordinator can screen encrypted updates by norm / distance (privacy.he.screening)."""

    NONE = "none"
    CKKS_EXACT = "ckks-exact"
    CKKS_PACKED = "ckks-packed"
    CKKS_SCREEN = "ckks-screen"

    @property
    def encrypted(self) -> bool:
        return self is not Encryption.NONE

    @property
    def he_mode(self) -> str:
        """The privacy.he mode name ("exact", "packed", "screen")."""
        if not self.encrypted:
            raise ProtocolError("privacy.encryption = 'none' has no CKKS mode")
        return self.value.removeprefix("ckks-")


class Codec(StrEnum):
    """`compression.codec`: the uplink codec (coordinator/api/codecs)."""

    NONE = "none"
    FP16 = "fp16"
    Q8 = "q8"
    Q4 = "q4"
    TOPK = "topk"
    RANDK = "randk"

    @property
    def sparse(self) -> bool:
        """top-k / random-k drop most of the update and carry the rest forward (error feedback)."""
        return self in (Codec.TOPK, Codec.RANDK)


class DownlinkCodec(StrEnum):
    """`compression.downlink`: how versions >= 1 travel to the silos in the clear."""

    NONE = "none"
    FP16 = "fp16"
    Q8 = "q8"
    Q4 = "q4"


class Rule(StrEnum):
    """`aggregation.rule` (one class per rule in coordinator/aggregation)."""

    FEDAVG = "fedavg"
    MEDIAN = "median"
    TRIMMED_MEAN = "trimmed_mean"
    KRUM = "krum"
    CENTERED_CLIPPING = "centered_clipping"
    NORM_BOUNDING = "norm_bounding"


class ServerOptimizerName(StrEnum):
    """`aggregation.server_optimizer` (Reddi et al. 2021; FedAvgM: Hsu, Qi, Brown 2019)."""

    NONE = "none"
    FEDAVGM = "fedavgm"
    FEDADAM = "fedadam"
    FEDYOGI = "fedyogi"


class TrainingMode(StrEnum):
    """`training.mode`: synchronous rounds, or buffered asynchronous aggregation (FedBuff: Nguyen
    et al., "Federated Learning with Buffered Asynchronous Aggregation", AISTATS 2022)."""

    SYNC = "sync"
    ASYNC = "async"


class Staleness(StrEnum):
    """`training.staleness`: the weight of an update trained on a version `s` versions older than the
    newest (FedBuff's s(τ)); it scales the update before the study's rule aggregates the buffer."""

    POLYNOMIAL = "polynomial"  # (1 + s) ** -training.staleness_exponent (Nguyen et al. 2022, §5: exponent 0.5)
    CONSTANT = "constant"  # 1: stale updates count in full (only training.max_staleness bounds them)

    def weight(self, staleness: int, exponent: float) -> float:
        if staleness < 0:
            raise ProtocolError(f"staleness {staleness} is negative: an update cannot be trained on a future version")
        if self is Staleness.CONSTANT:
            return 1.0
        return float((1.0 + staleness) ** -exponent)


#: Robust rules that run under encryption by deciding on decrypted norms / distances (ckks-screen).
SCREENED_RULES: tuple[Rule, ...] = (Rule.NORM_BOUNDING, Rule.KRUM)


@dataclass(frozen=True)
class RuleParameter:
    kind: Literal["int", "float"]
    required: bool = False


#: The parameters each rule takes in `aggregation.params`; value ranges are the rule class's to check.
RULE_PARAMETERS: dict[Rule, dict[str, RuleParameter]] = {
    Rule.FEDAVG: {},
    Rule.MEDIAN: {},
    Rule.TRIMMED_MEAN: {"beta": RuleParameter("float")},
    Rule.KRUM: {"f": RuleParameter("int"), "m": RuleParameter("int")},
    Rule.CENTERED_CLIPPING: {"tau": RuleParameter("float", required=True), "iterations": RuleParameter("int")},
    Rule.NORM_BOUNDING: {"bound": RuleParameter("float", required=True)},
}


def rule_arguments(rule: Rule | str, params: Mapping[str, Any]) -> dict[str, int | float]:
    """`aggregation.params` checked against the rule's schema, converted to keyword arguments.

    Raises ProtocolError naming `aggregation.params.<name>` and what the rule takes."""
    rule = Rule(rule)
    known = RULE_PARAMETERS[rule]
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ProtocolError(f"aggregation.params.{unknown[0]}: unknown parameter {unknown[0]!r} for aggregation rule "
                            f"{rule.value!r}; it takes: {', '.join(known) or 'none'}")
    missing = [p for p, schema in known.items() if schema.required and p not in params]
    if missing:
        raise ProtocolError(f"aggregation.params.{missing[0]}: aggregation rule {rule.value!r} needs parameter "
                            f"{missing[0]!r} (set it in [aggregation.params])")
    out: dict[str, int | float] = {}
    for name, value in params.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
            raise ProtocolError(f"aggregation.params.{name}: parameter {name!r} must be a finite number, got {value!r}")
        if known[name].kind == "int":
            if not float(value).is_integer():
                raise ProtocolError(f"aggregation.params.{name}: parameter {name!r} must be a whole number, got {value!r}")
            value = int(value)
        out[name] = value
    return out


# --- encodings of updates and model versions -------------------------------------------------------------
TENSORS = "tensors"  # a full tensor list (coordinator.api.tensors), float32
SEEDED_INIT = "seeded-init"  # version 0 rebuilt at the silo from the spec's seed; only its SHA-256 travels
DELTA_PREFIX = "delta+"  # a compressed delta over the previous version, "delta+<codec>[+zstd]"


class VersionKind(StrEnum):
    """What a model version's blob holds, read from its `encoding` header."""

    FULL = "full"  # the weights
    SEEDED = "seeded"  # nothing: rebuild version 0 from the spec
    DELTA = "delta"  # a compressed plaintext delta over the previous version
    ENCRYPTED = "encrypted"  # the CKKS weighted sum of the round's deltas

    @classmethod
    def of(cls, encoding: str) -> "VersionKind":
        if encoding == TENSORS:
            return cls.FULL
        if encoding == SEEDED_INIT:
            return cls.SEEDED
        if encoding.startswith(DELTA_PREFIX):
            return cls.DELTA
        if encoding in {e.value for e in Encryption if e.encrypted}:
            return cls.ENCRYPTED
        raise ProtocolError(f"model version encoding {encoding[:60]!r} is not one this silo knows "
                            f"({TENSORS}, {SEEDED_INIT}, {DELTA_PREFIX}<codec>, ckks-*); update the node")


class StudyProtocol:
    """The protocol facts of one study, derived once from its spec."""

    def __init__(self, spec: "StudySpec") -> None:
        self.spec = spec
        self.encryption = Encryption(spec.privacy.encryption)
        self.codec = Codec(spec.compression.codec)
        self.downlink = DownlinkCodec(spec.compression.downlink)
        self.rule = Rule(spec.aggregation.rule)
        self.server_optimizer = ServerOptimizerName(spec.aggregation.server_optimizer)

    @property
    def encrypted(self) -> bool:
        return self.encryption.encrypted

    @property
    def screened(self) -> bool:
        """A robust rule under encryption: decide on decrypted norms/distances, then sum ciphertexts."""
        return self.encryption is Encryption.CKKS_SCREEN and self.rule in SCREENED_RULES

    @property
    def update_encoding(self) -> str:
        """The `encoding` header of a silo update in this study."""
        c = self.spec.compression
        if self.encrypted:
            return self.encryption.value + ("+randk" if self.codec is Codec.RANDK else "")
        if self.codec is Codec.NONE:
            return TENSORS
        return self.codec.value + ("+zstd" if c.zstd else "")

    @property
    def downlink_encoding(self) -> str | None:
        """How versions >= 1 travel: None = full tensors (or the CKKS sum), else "delta+<codec>"."""
        if self.encrypted or self.downlink is DownlinkCodec.NONE:
            return None
        return DELTA_PREFIX + self.downlink.value + ("+zstd" if self.spec.compression.zstd else "")

    @property
    def version_encoding(self) -> str:
        """The stored encoding of versions >= 1: full tensors in the clear, the CKKS sum otherwise."""
        return self.encryption.value if self.encrypted else TENSORS

    def uplink_codec(self):  # -> coordinator.api.codecs.UpdateCodec
        c = self.spec.compression
        return build_codec(c.codec, c.fraction, c.zstd)

    def encrypted_values(self, n_values: int) -> int:
        """Values per encrypted update: the model's, or the round's random-k share."""
        return keep_count(n_values, self.spec.compression.fraction) if self.codec is Codec.RANDK else n_values


def compatibility_error(spec: "StudySpec") -> str | None:
    """Why the spec's encryption, rule, optimiser and codec cannot go together, naming the field; or None."""
    p = StudyProtocol(spec)
    if p.encrypted and p.codec not in (Codec.NONE, Codec.RANDK):
        return (f"compression.codec: {p.codec.value!r} cannot run under encryption: ciphertexts only add up when "
                "every silo sends the same coordinates; use 'randk' or 'none'")
    if p.encrypted and p.rule is not Rule.FEDAVG and not p.screened:
        screened = " / ".join(r.value for r in SCREENED_RULES)
        return (f"aggregation.rule: {p.rule.value!r} cannot run under encryption; use fedavg, or {screened} with "
                "privacy.encryption = 'ckks-screen', or privacy.encryption = 'none'")
    if p.encryption is Encryption.CKKS_SCREEN and not p.screened:
        return (f"privacy.encryption: 'ckks-screen' is for the screened rules "
                f"({', '.join(r.value for r in SCREENED_RULES)}); use ckks-exact with fedavg")
    problem = _async_error(spec, p)
    if problem is not None:
        return problem
    try:
        rule_arguments(p.rule, spec.aggregation.params)
    except ProtocolError as e:
        return str(e)
    return None


def _async_error(spec: "StudySpec", p: StudyProtocol) -> str | None:
    """What cannot go with `training.mode = "async"` (coordinator/buffer.py), naming the field."""
    t = spec.training
    if TrainingMode(t.mode) is not TrainingMode.ASYNC:
        return None
    if spec.kind is StudyKind.ANALYSIS:
        return "training.mode: 'async' is for training studies; an analysis study has one round (use 'sync')"
    if p.screened:
        return ("privacy.encryption: 'ckks-screen' screens a whole round of updates with the key holder's help; "
                "a buffer of asynchronous updates cannot wait for it: use training.mode = 'sync', or fedavg under ckks-exact")
    if p.encrypted and p.codec is Codec.RANDK:
        return ("compression.codec: 'randk' under encryption keeps each round's own coordinates, so a stale update "
                "cannot be added to the buffer's ciphertext sum; use 'none' with training.mode = 'async'")
    if t.silos_per_round is not None:
        return ("training.silos_per_round: asynchronous training gives every silo its next task as soon as it is done; "
                "remove silos_per_round or use training.mode = 'sync'")
    if t.buffer_size < t.min_silos:
        return (f"training.buffer_size: {t.buffer_size} is below training.min_silos ({t.min_silos}); a version is built "
                "from at least the quorum's updates")
    return None


# --- names and ids -----------------------------------------------------------------------------------------
#: A study's name: letters (any script), digits, spaces and common punctuation; no path separator,
#: no control characters, not starting with '.', at most 200 characters.
STUDY_NAME_PATTERN = r"^\w[\w .,:;()+=#&'-]{0,199}$"
_STUDY_NAME = re.compile(STUDY_NAME_PATTERN)
_STUDY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_SLUG_DROP = re.compile(r"[^A-Za-z0-9_.-]+")
SILO_NAME_MAX = 200
NAME_SEP = "/"  # a region's members are "<region>/<member>" in key generation


def check_study_name(name: str) -> str:
    """A study's name as the researcher gives it (ProtocolError saying what a name may hold)."""
    if not _STUDY_NAME.fullmatch(name):
        raise ProtocolError(f"{name[:60]!r} is not a study name: use 1-200 letters, digits, spaces and .,:;()+=#&'-, "
                            "starting with a letter or digit (no '/', no control characters)")
    return name


def study_id_for(name: str) -> str:
    """A fresh study id from the study's name: its first 40 id-safe characters and 8 random hex digits."""
    slug = _SLUG_DROP.sub("-", name[:40]).strip("-.") or "study"
    return f"{slug}-{secrets.token_hex(4)}"


def check_study_id(study_id: str) -> str:
    """A study id as it may appear in paths and logs: letters, digits, '_', '.', '-', not starting
    with '.', at most 64 characters (the store's key). Raises ProtocolError saying so."""
    if not isinstance(study_id, str) or not _STUDY_ID.fullmatch(study_id):
        raise ProtocolError(f"study id {str(study_id)[:80]!r} is not valid: 1-64 letters, digits, '_', '.' or '-', "
                            "not starting with '.' or '-' (no '/')")
    return study_id


def check_silo_name(name: str, what: str = "silo name") -> str:
    if not name or len(name) > SILO_NAME_MAX:
        raise ProtocolError(f"{what} must be 1-{SILO_NAME_MAX} characters")
    if NAME_SEP in name or "\x00" in name:
        raise ProtocolError(f"{what} {name[:80]!r} may not contain '{NAME_SEP}' or NUL (a regional aggregator's "
                            f"members are named '<region>{NAME_SEP}<member>' in key generation)")
    return name


# --- JSON that travels ------------------------------------------------------------------------------------
class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json", exclude_none=True), sort_keys=True, separators=(",", ":"))

    @classmethod
    def parse(cls, text: str | bytes | bytearray | memoryview, *, what: str, limit: int = 64 * 1024) -> Any:
        if len(text) > limit:
            raise ProtocolError(f"{what}: {len(text)} bytes, more than the {limit} allowed")
        try:
            return cls.model_validate_json(bytes(text) if not isinstance(text, str) else (text or "{}"))
        except ValidationError as e:
            first = e.errors()[0]
            loc = ".".join(str(x) for x in first["loc"]) or "(top level)"
            raise ProtocolError(f"{what}: {loc}: {first['msg']}") from None


class PrivacyClaim(_Wire):
    """What a silo declares it spent on one update (the ledger entry's figures; further DP knobs
    of the ledger entry may ride along, within the metadata's size limit)."""

    model_config = ConfigDict(extra="allow", frozen=True, allow_inf_nan=False)

    enabled: bool = False
    epsilon: float | None = Field(default=None, ge=0)
    delta: float | None = Field(default=None, ge=0, le=1)
    noise_multiplier: float | None = Field(default=None, ge=0)
    sample_rate: float | None = Field(default=None, ge=0, le=1)
    steps: int | None = Field(default=None, ge=0)
    accountant: str | None = Field(default=None, max_length=16)


class RegionMembers(_Wire):
    silos: list[str] = Field(default_factory=list, max_length=10_000)
    skipped: list[str] = Field(default_factory=list, max_length=10_000)


class UpdateMetadata(_Wire):
    """`BlobHeader.metadata_json` of an update: privacy claim and the scalars silo selection uses."""

    privacy: PrivacyClaim = PrivacyClaim()
    train_loss: float | None = None
    update_norm: float | None = Field(default=None, ge=0)
    link_bytes_per_s: float | None = Field(default=None, ge=0)
    region: RegionMembers | None = None

    @classmethod
    def from_json(cls, text: str | bytes) -> "UpdateMetadata":
        return cls.parse(text, what="update metadata")

    @classmethod
    def stored(cls, text: str | None) -> "UpdateMetadata":
        """Metadata kept with an accepted update (checked on arrival); a row written before these
        checks that does not parse reads as empty rather than failing the study."""
        try:
            return cls.from_json(text or "{}")
        except ProtocolError:
            return cls()


class RandkSelection(_Wire):
    """The round's random-k coordinates under CKKS: `randk_indices(n, fraction, seed)`, `kept` of them."""

    seed: int
    fraction: float = Field(gt=0, le=1)
    kept: int = Field(ge=0)


class VersionMetadata(_Wire):
    """`BlobHeader.metadata_json` of a model version."""

    version: int = Field(ge=0)
    encoding: str = Field(max_length=64)
    base_version: int | None = Field(default=None, ge=0)
    total_weight: float | None = Field(default=None, gt=0)  # CKKS: divide the decrypted sum by it
    post_scale: float | None = None  # CKKS, screened rules: then multiply by this
    randk: RandkSelection | None = None
    seed: int | None = None  # seeded-init: the spec's training seed
    model_sha256: str | None = Field(default=None, max_length=64)  # seeded-init: what the rebuild must hash to

    @classmethod
    def from_json(cls, text: str | bytes) -> "VersionMetadata":
        return cls.parse(text, what="model version metadata")


def _b64decode(value: str, what: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError, TypeError) as e:
        raise ProtocolError(f"{what} is not base64: {e}") from None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@dataclass(frozen=True)
class KeyBundle:
    """What the key holder sends: the public CKKS context and the secret context wrapped for each
    recipient the KEYGEN task named (direct silos by name, a region's members as "<region>/<member>").

    Wire: `{"public_context": base64, "wrapped": {recipient: base64}}`."""

    public_context: bytes
    wrapped: dict[str, bytes]

    def to_json(self) -> bytes:
        return json.dumps({"public_context": _b64(self.public_context),
                           "wrapped": {s: _b64(w) for s, w in sorted(self.wrapped.items())}}, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes | bytearray | memoryview) -> "KeyBundle":
        try:
            bundle = json.loads(bytes(data))
            public = bundle["public_context"]
            entries = bundle["wrapped"]
            if not isinstance(public, str):
                raise TypeError("'public_context' must be a base64 string")
            if not isinstance(entries, dict) or not all(isinstance(v, str) for v in entries.values()):
                raise TypeError("'wrapped' must map recipient names to base64 strings")
        except (ValueError, KeyError, TypeError) as e:
            raise ProtocolError(f"key bundle is malformed: {e}") from None
        return cls(public_context=_b64decode(public, "key bundle: the public context"),
                   wrapped={s: _b64decode(w, f"key bundle: the wrapped key of {s!r}") for s, w in entries.items()})


def encode_wrapped_keys(wrapped: Mapping[str, bytes]) -> bytes:
    """A region's wrapped-key blob at the coordinator: `{member: base64(wrapped)}`."""
    return json.dumps({m: _b64(w) for m, w in sorted(wrapped.items())}, sort_keys=True).encode()


def decode_wrapped_keys(data: bytes | bytearray | memoryview) -> dict[str, bytes]:
    try:
        inner = json.loads(bytes(data))
        if not isinstance(inner, dict) or not all(isinstance(v, str) for v in inner.values()):
            raise TypeError("expected {member: base64}")
    except (ValueError, TypeError) as e:
        raise ProtocolError(f"the region's wrapped keys are malformed: {e}") from None
    return {m: _b64decode(w, f"the wrapped key of {m!r}") for m, w in inner.items()}


MAX_SCREENING_SCALARS = 1_000_000


def encode_screening_scalars(ciphertexts: Sequence[bytes]) -> bytes:
    """The encrypted scalars (squared norms, then pairwise squared distances) the key holder decrypts:
    a JSON list of base64 ciphertexts."""
    return json.dumps([_b64(c) for c in ciphertexts]).encode()


def decode_screening_scalars(data: bytes | bytearray | memoryview) -> list[bytes]:
    try:
        items = json.loads(bytes(data))
        if not isinstance(items, list) or not all(isinstance(c, str) for c in items):
            raise TypeError("expected a list of base64 ciphertexts")
    except (ValueError, TypeError) as e:
        raise ProtocolError(f"screening scalars are malformed: {e}") from None
    if len(items) > MAX_SCREENING_SCALARS:
        raise ProtocolError(f"{len(items)} screening scalars; at most {MAX_SCREENING_SCALARS} are taken")
    return [_b64decode(c, "a screening scalar") for c in items]


def check_screening_values(values: Sequence[float], expected: int) -> list[float]:
    """The key holder's decrypted scalars: exactly as many as asked, all finite."""
    out = [float(v) for v in values]
    if len(out) != expected or not all(np.isfinite(v) for v in out):
        raise ProtocolError(f"expected {expected} finite screening scalars, got {len(out)}")
    return out


# --- the key-free checks of an update ------------------------------------------------------------------
MAX_WEIGHT = 1e9
MAX_METADATA_BYTES = 64 * 1024


def check_update_header(protocol: StudyProtocol, *, weight: float, encoding: str, metadata_json: str,
                        size: int, limit: int) -> UpdateMetadata:
    """Size, weight, encoding and metadata of an update, before its body is read. ProtocolError says which."""
    if size > limit:
        raise ProtocolError(f"update of {size} bytes exceeds the study's limit of {limit} bytes")
    if not (np.isfinite(weight) and 0 < weight <= MAX_WEIGHT):
        raise ProtocolError(f"update weight {weight} is not in (0, {MAX_WEIGHT:g}]")
    expected = protocol.update_encoding
    if encoding != expected:
        raise ProtocolError(f"update encoding {encoding[:60]!r}; this study expects {expected!r}")
    return UpdateMetadata.parse(metadata_json or "{}", what="update metadata", limit=MAX_METADATA_BYTES)


def decode_plain_update(protocol: StudyProtocol, data: bytes | memoryview,
                        layout: Sequence[TensorSpec] | None, *, max_values: int) -> list[np.ndarray]:
    """A plaintext update as float32 arrays, checked against the study's layout (names, shapes and
    dtype; without a layout: float32 arrays) and finite. The codec's output is checked after its
    cast to float32, so nothing that overflows the model's dtype gets through."""
    try:
        if protocol.codec is Codec.NONE:
            names, arrays = decode_tensors(data, expected=layout)
            if layout is None:
                wrong = next((n for n, a in zip(names, arrays) if a.dtype != np.float32), None)
                if wrong is not None:
                    raise ProtocolError(f"update: array {wrong!r} is not float32, the model's dtype")
        else:
            arrays = protocol.uplink_codec().decode(bytes(data), max_values=max_values,
                                                    max_arrays=len(layout) if layout is not None else 100_000)
    except (TensorFormatError, CodecError) as e:
        raise ProtocolError(f"update ({protocol.update_encoding}): {e}") from None
    if layout is not None:
        got = [(tuple(a.shape), a.dtype) for a in arrays]
        want = [(tuple(t.shape), np.dtype(t.dtype)) for t in layout]
        if got != want:
            bad = next((i for i, (g, w) in enumerate(zip(got, want)) if g != w), min(len(got), len(want)))
            where = f"{layout[bad].name} {want[bad][0]} {want[bad][1]}" if bad < len(layout) else "-"
            found = f"{got[bad][0]} {got[bad][1]}" if bad < len(got) else "nothing"
            raise ProtocolError(f"update ({protocol.update_encoding}): {len(got)} arrays, the model has {len(want)}; "
                                f"array {bad} should be {where}, got {found}")
    out = [np.asarray(a, dtype=np.float32) for a in arrays]
    for i, a in enumerate(out):
        if not np.isfinite(a).all():
            raise ProtocolError(f"update ({protocol.update_encoding}): array {i} holds NaN or Inf (as float32)")
    return out


def check_finite_model(arrays: Sequence[np.ndarray], what: str) -> None:
    """A model (version or aggregate) must be finite in its own dtype: refuse what overflowed."""
    for i, a in enumerate(arrays):
        if not np.isfinite(a).all():
            raise ProtocolError(f"{what}: array {i} holds NaN or Inf; it is not used")


# --- analysis studies (federated statistics) ---------------------------------------------------------------
class StudyKind(StrEnum):
    """`StudySpec.kind`: a training study (rounds of model updates) or an analysis study (one round in
    which each approved silo releases statistics of its cohort; the coordinator pools them)."""

    TRAINING = "training"
    ANALYSIS = "analysis"


#: The `encoding` header of a silo's released statistics (a `CohortRelease` as JSON, in a BLOB_UPDATE).
ANALYSIS_ENCODING = "cohort-statistics+json"
MAX_RELEASE_BYTES = 4 * 1024 * 1024


class DisclosureMechanism(StrEnum):
    """The DP noise a silo adds to every released statistic (`[disclosure] dp` in node.toml)."""

    NONE = "none"
    GAUSSIAN = "gaussian"
    LAPLACE = "laplace"


class ColumnRelease(_Wire):
    """One EHR value column as a silo releases it. None = suppressed (said in `suppressed`, never hidden).

    `mean` and `m2` (the sum of squared deviations from the mean) pool exactly across silos (Chan,
    Golub, LeVeque 1979); `histogram` has one cell below the first edge, one per bin [e_i, e_i+1) and
    one at or above the last edge, so its cells add up to `present`."""

    name: str = Field(max_length=256)
    present: int | None = Field(default=None, ge=0)
    missing: int | None = Field(default=None, ge=0)
    mean: float | None = None
    m2: float | None = Field(default=None, ge=0)
    histogram: list[int | None] | None = Field(default=None, max_length=10_001)
    quantiles: list[float | None] | None = Field(default=None, max_length=101)


class DisclosureClaim(_Wire):
    """What the silo's disclosure control did to this release: its threshold, which cells it held
    back (primary: below the threshold; complementary: so that no total reveals one), and the DP noise."""

    min_cell_count: int = Field(ge=1)
    suppressed: list[str] = Field(default_factory=list, max_length=100_000)
    mechanism: DisclosureMechanism = DisclosureMechanism.NONE
    epsilon: float | None = Field(default=None, ge=0)
    delta: float | None = Field(default=None, ge=0, le=1)
    noise_multiplier: float | None = Field(default=None, ge=0)
    queries: int | None = Field(default=None, ge=0)
    per_silo: bool = True  # the silo lets the coordinator show its own column next to the pooled figures


class CohortRelease(_Wire):
    """A silo's statistics of its de-identified cohort for an analysis study (the BLOB_UPDATE body)."""

    patients: int | None = Field(default=None, ge=0)
    label_positive: int | None = Field(default=None, ge=0)
    label_negative: int | None = Field(default=None, ge=0)
    modalities: dict[str, int | None] = Field(default_factory=dict)
    columns: list[ColumnRelease] = Field(default_factory=list, max_length=10_000)
    disclosure: DisclosureClaim

    @classmethod
    def from_json(cls, text: str | bytes) -> "CohortRelease":
        return cls.parse(text, what="released cohort statistics", limit=MAX_RELEASE_BYTES)

    def check_against(self, spec: "StudySpec") -> "CohortRelease":
        """The release answers this study: its columns, histogram cells and quantiles are the spec's."""
        want = list(spec.analysis_columns)
        got = [c.name for c in self.columns]
        if got != want:
            raise ProtocolError(f"released cohort statistics: columns {got[:5]}…; the study asks for {want[:5]}…")
        unknown = sorted(set(self.modalities) - set(MODALITIES))
        if unknown:
            raise ProtocolError(f"released cohort statistics: unknown modality {unknown[0]!r}; expected {MODALITIES}")
        a = spec.analysis
        for c in self.columns:
            edges = a.bins.get(c.name)
            cells = None if edges is None else len(edges) + 1
            if c.histogram is not None and len(c.histogram) != cells:
                raise ProtocolError(f"released cohort statistics: column {c.name!r} has {len(c.histogram)} histogram "
                                    f"cells; the study's bins give {cells}")
            if c.quantiles is not None and len(c.quantiles) != len(a.quantiles):
                raise ProtocolError(f"released cohort statistics: column {c.name!r} has {len(c.quantiles)} quantiles; "
                                    f"the study asks for {len(a.quantiles)}")
        return self
