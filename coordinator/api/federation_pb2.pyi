from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TaskKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_WAIT: _ClassVar[TaskKind]
    TASK_PROPOSAL: _ClassVar[TaskKind]
    TASK_KEYGEN: _ClassVar[TaskKind]
    TASK_TRAIN: _ClassVar[TaskKind]
    TASK_FINALIZE: _ClassVar[TaskKind]
    TASK_SCREEN: _ClassVar[TaskKind]
    TASK_WRAP_KEY: _ClassVar[TaskKind]

class BlobKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BLOB_UNSPECIFIED: _ClassVar[BlobKind]
    BLOB_MODEL: _ClassVar[BlobKind]
    BLOB_UPDATE: _ClassVar[BlobKind]
    BLOB_PUBLIC_CONTEXT: _ClassVar[BlobKind]
    BLOB_WRAPPED_KEY: _ClassVar[BlobKind]
    BLOB_FINAL_MODEL: _ClassVar[BlobKind]
    BLOB_KEY_BUNDLE: _ClassVar[BlobKind]
    BLOB_SCREEN_SCALARS: _ClassVar[BlobKind]
TASK_WAIT: TaskKind
TASK_PROPOSAL: TaskKind
TASK_KEYGEN: TaskKind
TASK_TRAIN: TaskKind
TASK_FINALIZE: TaskKind
TASK_SCREEN: TaskKind
TASK_WRAP_KEY: TaskKind
BLOB_UNSPECIFIED: BlobKind
BLOB_MODEL: BlobKind
BLOB_UPDATE: BlobKind
BLOB_PUBLIC_CONTEXT: BlobKind
BLOB_WRAPPED_KEY: BlobKind
BLOB_FINAL_MODEL: BlobKind
BLOB_KEY_BUNDLE: BlobKind
BLOB_SCREEN_SCALARS: BlobKind

class Ack(_message.Message):
    __slots__ = ("ok", "reason")
    OK_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    reason: str
    def __init__(self, ok: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

class JoinRequest(_message.Message):
    __slots__ = ("silo", "modalities", "wrap_public_key", "software_version")
    SILO_FIELD_NUMBER: _ClassVar[int]
    MODALITIES_FIELD_NUMBER: _ClassVar[int]
    WRAP_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    SOFTWARE_VERSION_FIELD_NUMBER: _ClassVar[int]
    silo: str
    modalities: _containers.RepeatedScalarFieldContainer[str]
    wrap_public_key: bytes
    software_version: str
    def __init__(self, silo: _Optional[str] = ..., modalities: _Optional[_Iterable[str]] = ..., wrap_public_key: _Optional[bytes] = ..., software_version: _Optional[str] = ...) -> None: ...

class JoinReply(_message.Message):
    __slots__ = ("coordinator",)
    COORDINATOR_FIELD_NUMBER: _ClassVar[int]
    coordinator: str
    def __init__(self, coordinator: _Optional[str] = ...) -> None: ...

class PullTaskRequest(_message.Message):
    __slots__ = ("silo", "wait_s", "deferred_studies")
    SILO_FIELD_NUMBER: _ClassVar[int]
    WAIT_S_FIELD_NUMBER: _ClassVar[int]
    DEFERRED_STUDIES_FIELD_NUMBER: _ClassVar[int]
    silo: str
    wait_s: float
    deferred_studies: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, silo: _Optional[str] = ..., wait_s: _Optional[float] = ..., deferred_studies: _Optional[_Iterable[str]] = ...) -> None: ...

class Task(_message.Message):
    __slots__ = ("kind", "study_id", "round", "nonce", "spec_json", "model_version", "participant_keys", "max_update_bytes", "round_seed", "publish_model", "other_silos", "wait_reason")
    class ParticipantKeysEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bytes
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...
    KIND_FIELD_NUMBER: _ClassVar[int]
    STUDY_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    SPEC_JSON_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANT_KEYS_FIELD_NUMBER: _ClassVar[int]
    MAX_UPDATE_BYTES_FIELD_NUMBER: _ClassVar[int]
    ROUND_SEED_FIELD_NUMBER: _ClassVar[int]
    PUBLISH_MODEL_FIELD_NUMBER: _ClassVar[int]
    OTHER_SILOS_FIELD_NUMBER: _ClassVar[int]
    WAIT_REASON_FIELD_NUMBER: _ClassVar[int]
    kind: TaskKind
    study_id: str
    round: int
    nonce: str
    spec_json: str
    model_version: int
    participant_keys: _containers.ScalarMap[str, bytes]
    max_update_bytes: int
    round_seed: int
    publish_model: bool
    other_silos: _containers.RepeatedScalarFieldContainer[str]
    wait_reason: str
    def __init__(self, kind: _Optional[_Union[TaskKind, str]] = ..., study_id: _Optional[str] = ..., round: _Optional[int] = ..., nonce: _Optional[str] = ..., spec_json: _Optional[str] = ..., model_version: _Optional[int] = ..., participant_keys: _Optional[_Mapping[str, bytes]] = ..., max_update_bytes: _Optional[int] = ..., round_seed: _Optional[int] = ..., publish_model: _Optional[bool] = ..., other_silos: _Optional[_Iterable[str]] = ..., wait_reason: _Optional[str] = ...) -> None: ...

class ProposalAnswer(_message.Message):
    __slots__ = ("silo", "study_id", "accept", "reason", "spec_sha256", "train_samples", "test_samples", "member_wrap_keys")
    class MemberWrapKeysEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bytes
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...
    SILO_FIELD_NUMBER: _ClassVar[int]
    STUDY_ID_FIELD_NUMBER: _ClassVar[int]
    ACCEPT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SPEC_SHA256_FIELD_NUMBER: _ClassVar[int]
    TRAIN_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    TEST_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    MEMBER_WRAP_KEYS_FIELD_NUMBER: _ClassVar[int]
    silo: str
    study_id: str
    accept: bool
    reason: str
    spec_sha256: str
    train_samples: int
    test_samples: int
    member_wrap_keys: _containers.ScalarMap[str, bytes]
    def __init__(self, silo: _Optional[str] = ..., study_id: _Optional[str] = ..., accept: _Optional[bool] = ..., reason: _Optional[str] = ..., spec_sha256: _Optional[str] = ..., train_samples: _Optional[int] = ..., test_samples: _Optional[int] = ..., member_wrap_keys: _Optional[_Mapping[str, bytes]] = ...) -> None: ...

class BlobRef(_message.Message):
    __slots__ = ("study_id", "kind", "version", "silo")
    STUDY_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SILO_FIELD_NUMBER: _ClassVar[int]
    study_id: str
    kind: BlobKind
    version: int
    silo: str
    def __init__(self, study_id: _Optional[str] = ..., kind: _Optional[_Union[BlobKind, str]] = ..., version: _Optional[int] = ..., silo: _Optional[str] = ...) -> None: ...

class BlobHeader(_message.Message):
    __slots__ = ("ref", "size", "sha256", "round", "nonce", "weight", "encoding", "metadata_json", "offset")
    REF_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    METADATA_JSON_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    ref: BlobRef
    size: int
    sha256: str
    round: int
    nonce: str
    weight: float
    encoding: str
    metadata_json: str
    offset: int
    def __init__(self, ref: _Optional[_Union[BlobRef, _Mapping]] = ..., size: _Optional[int] = ..., sha256: _Optional[str] = ..., round: _Optional[int] = ..., nonce: _Optional[str] = ..., weight: _Optional[float] = ..., encoding: _Optional[str] = ..., metadata_json: _Optional[str] = ..., offset: _Optional[int] = ...) -> None: ...

class Chunk(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: BlobHeader
    data: bytes
    def __init__(self, header: _Optional[_Union[BlobHeader, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class PushReply(_message.Message):
    __slots__ = ("accepted", "reason", "sha256", "size")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    reason: str
    sha256: str
    size: int
    def __init__(self, accepted: _Optional[bool] = ..., reason: _Optional[str] = ..., sha256: _Optional[str] = ..., size: _Optional[int] = ...) -> None: ...

class PrivacyReport(_message.Message):
    __slots__ = ("enabled", "epsilon", "delta", "noise_multiplier", "sample_rate", "steps", "accountant")
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    NOISE_MULTIPLIER_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    ACCOUNTANT_FIELD_NUMBER: _ClassVar[int]
    enabled: bool
    epsilon: float
    delta: float
    noise_multiplier: float
    sample_rate: float
    steps: int
    accountant: str
    def __init__(self, enabled: _Optional[bool] = ..., epsilon: _Optional[float] = ..., delta: _Optional[float] = ..., noise_multiplier: _Optional[float] = ..., sample_rate: _Optional[float] = ..., steps: _Optional[int] = ..., accountant: _Optional[str] = ...) -> None: ...

class MetricsReport(_message.Message):
    __slots__ = ("silo", "study_id", "round", "model_version", "metrics", "samples", "skipped", "skip_reason", "privacy", "model_sha256", "nonce", "budget_spent")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    SILO_FIELD_NUMBER: _ClassVar[int]
    STUDY_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    SKIP_REASON_FIELD_NUMBER: _ClassVar[int]
    PRIVACY_FIELD_NUMBER: _ClassVar[int]
    MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    BUDGET_SPENT_FIELD_NUMBER: _ClassVar[int]
    silo: str
    study_id: str
    round: int
    model_version: int
    metrics: _containers.ScalarMap[str, float]
    samples: int
    skipped: bool
    skip_reason: str
    privacy: PrivacyReport
    model_sha256: str
    nonce: str
    budget_spent: bool
    def __init__(self, silo: _Optional[str] = ..., study_id: _Optional[str] = ..., round: _Optional[int] = ..., model_version: _Optional[int] = ..., metrics: _Optional[_Mapping[str, float]] = ..., samples: _Optional[int] = ..., skipped: _Optional[bool] = ..., skip_reason: _Optional[str] = ..., privacy: _Optional[_Union[PrivacyReport, _Mapping]] = ..., model_sha256: _Optional[str] = ..., nonce: _Optional[str] = ..., budget_spent: _Optional[bool] = ...) -> None: ...

class ScreenReport(_message.Message):
    __slots__ = ("silo", "study_id", "round", "nonce", "values")
    SILO_FIELD_NUMBER: _ClassVar[int]
    STUDY_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    silo: str
    study_id: str
    round: int
    nonce: str
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, silo: _Optional[str] = ..., study_id: _Optional[str] = ..., round: _Optional[int] = ..., nonce: _Optional[str] = ..., values: _Optional[_Iterable[float]] = ...) -> None: ...

class SubmitStudyRequest(_message.Message):
    __slots__ = ("spec_json",)
    SPEC_JSON_FIELD_NUMBER: _ClassVar[int]
    spec_json: str
    def __init__(self, spec_json: _Optional[str] = ...) -> None: ...

class SubmitStudyReply(_message.Message):
    __slots__ = ("study_id",)
    STUDY_ID_FIELD_NUMBER: _ClassVar[int]
    study_id: str
    def __init__(self, study_id: _Optional[str] = ...) -> None: ...

class StudyRef(_message.Message):
    __slots__ = ("study_id",)
    STUDY_ID_FIELD_NUMBER: _ClassVar[int]
    study_id: str
    def __init__(self, study_id: _Optional[str] = ...) -> None: ...

class StudyStatus(_message.Message):
    __slots__ = ("study_id", "name", "state", "current_round", "rounds", "silos", "summary_json", "error")
    STUDY_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CURRENT_ROUND_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    SILOS_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_JSON_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    study_id: str
    name: str
    state: str
    current_round: int
    rounds: int
    silos: _containers.RepeatedScalarFieldContainer[str]
    summary_json: str
    error: str
    def __init__(self, study_id: _Optional[str] = ..., name: _Optional[str] = ..., state: _Optional[str] = ..., current_round: _Optional[int] = ..., rounds: _Optional[int] = ..., silos: _Optional[_Iterable[str]] = ..., summary_json: _Optional[str] = ..., error: _Optional[str] = ...) -> None: ...

class ListStudiesRequest(_message.Message):
    __slots__ = ("limit",)
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    limit: int
    def __init__(self, limit: _Optional[int] = ...) -> None: ...

class StudyList(_message.Message):
    __slots__ = ("studies", "truncated")
    STUDIES_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    studies: _containers.RepeatedCompositeFieldContainer[StudyStatus]
    truncated: bool
    def __init__(self, studies: _Optional[_Iterable[_Union[StudyStatus, _Mapping]]] = ..., truncated: _Optional[bool] = ...) -> None: ...

class SignedHead(_message.Message):
    __slots__ = ("node", "public_key", "count", "hash", "signature")
    NODE_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    node: str
    public_key: str
    count: int
    hash: str
    signature: str
    def __init__(self, node: _Optional[str] = ..., public_key: _Optional[str] = ..., count: _Optional[int] = ..., hash: _Optional[str] = ..., signature: _Optional[str] = ...) -> None: ...
