from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TaskKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_KIND_UNSPECIFIED: _ClassVar[TaskKind]
    TASK_KIND_FIT: _ClassVar[TaskKind]
    TASK_KIND_EVALUATE: _ClassVar[TaskKind]

class ResultStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RESULT_STATUS_UNSPECIFIED: _ClassVar[ResultStatus]
    RESULT_STATUS_OK: _ClassVar[ResultStatus]
    RESULT_STATUS_FAILED: _ClassVar[ResultStatus]
    RESULT_STATUS_REFUSED: _ClassVar[ResultStatus]
TASK_KIND_UNSPECIFIED: TaskKind
TASK_KIND_FIT: TaskKind
TASK_KIND_EVALUATE: TaskKind
RESULT_STATUS_UNSPECIFIED: ResultStatus
RESULT_STATUS_OK: ResultStatus
RESULT_STATUS_FAILED: ResultStatus
RESULT_STATUS_REFUSED: ResultStatus

class SiteMessage(_message.Message):
    __slots__ = ("hello", "join", "heartbeat", "result", "secagg", "gossip")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    JOIN_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    SECAGG_FIELD_NUMBER: _ClassVar[int]
    GOSSIP_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    join: JoinProof
    heartbeat: Heartbeat
    result: TaskResult
    secagg: SecAggReply
    gossip: GossipReply
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., join: _Optional[_Union[JoinProof, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., result: _Optional[_Union[TaskResult, _Mapping]] = ..., secagg: _Optional[_Union[SecAggReply, _Mapping]] = ..., gossip: _Optional[_Union[GossipReply, _Mapping]] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("public_key", "agent_version", "task")
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    public_key: bytes
    agent_version: str
    task: str
    def __init__(self, public_key: _Optional[bytes] = ..., agent_version: _Optional[str] = ..., task: _Optional[str] = ...) -> None: ...

class JoinProof(_message.Message):
    __slots__ = ("signature",)
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    signature: bytes
    def __init__(self, signature: _Optional[bytes] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("sent_unix_ms",)
    SENT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    sent_unix_ms: int
    def __init__(self, sent_unix_ms: _Optional[int] = ...) -> None: ...

class TaskResult(_message.Message):
    __slots__ = ("task_id", "status", "num_examples", "metrics_json", "error", "duration_s")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    NUM_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    METRICS_JSON_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    DURATION_S_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    status: ResultStatus
    num_examples: int
    metrics_json: str
    error: str
    duration_s: float
    def __init__(self, task_id: _Optional[str] = ..., status: _Optional[_Union[ResultStatus, str]] = ..., num_examples: _Optional[int] = ..., metrics_json: _Optional[str] = ..., error: _Optional[str] = ..., duration_s: _Optional[float] = ...) -> None: ...

class ServerMessage(_message.Message):
    __slots__ = ("challenge", "welcome", "task", "notice", "secagg", "gossip")
    CHALLENGE_FIELD_NUMBER: _ClassVar[int]
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    NOTICE_FIELD_NUMBER: _ClassVar[int]
    SECAGG_FIELD_NUMBER: _ClassVar[int]
    GOSSIP_FIELD_NUMBER: _ClassVar[int]
    challenge: Challenge
    welcome: Welcome
    task: TaskOffer
    notice: Notice
    secagg: SecAggStage
    gossip: GossipStage
    def __init__(self, challenge: _Optional[_Union[Challenge, _Mapping]] = ..., welcome: _Optional[_Union[Welcome, _Mapping]] = ..., task: _Optional[_Union[TaskOffer, _Mapping]] = ..., notice: _Optional[_Union[Notice, _Mapping]] = ..., secagg: _Optional[_Union[SecAggStage, _Mapping]] = ..., gossip: _Optional[_Union[GossipStage, _Mapping]] = ...) -> None: ...

class Challenge(_message.Message):
    __slots__ = ("nonce", "server_id")
    NONCE_FIELD_NUMBER: _ClassVar[int]
    SERVER_ID_FIELD_NUMBER: _ClassVar[int]
    nonce: bytes
    server_id: str
    def __init__(self, nonce: _Optional[bytes] = ..., server_id: _Optional[str] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("session_id", "site_name", "heartbeat_interval_s", "upload_digests")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SITE_NAME_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    UPLOAD_DIGESTS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    site_name: str
    heartbeat_interval_s: float
    upload_digests: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, session_id: _Optional[str] = ..., site_name: _Optional[str] = ..., heartbeat_interval_s: _Optional[float] = ..., upload_digests: _Optional[_Iterable[str]] = ...) -> None: ...

class TaskOffer(_message.Message):
    __slots__ = ("task_id", "run_id", "round", "kind", "task", "model_digest", "model_size", "config_json", "deadline_s", "secagg", "gossip", "model_blake3")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    MODEL_DIGEST_FIELD_NUMBER: _ClassVar[int]
    MODEL_SIZE_FIELD_NUMBER: _ClassVar[int]
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_S_FIELD_NUMBER: _ClassVar[int]
    SECAGG_FIELD_NUMBER: _ClassVar[int]
    GOSSIP_FIELD_NUMBER: _ClassVar[int]
    MODEL_BLAKE3_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    run_id: str
    round: int
    kind: TaskKind
    task: str
    model_digest: str
    model_size: int
    config_json: str
    deadline_s: float
    secagg: SecAggSetup
    gossip: GossipSetup
    model_blake3: str
    def __init__(self, task_id: _Optional[str] = ..., run_id: _Optional[str] = ..., round: _Optional[int] = ..., kind: _Optional[_Union[TaskKind, str]] = ..., task: _Optional[str] = ..., model_digest: _Optional[str] = ..., model_size: _Optional[int] = ..., config_json: _Optional[str] = ..., deadline_s: _Optional[float] = ..., secagg: _Optional[_Union[SecAggSetup, _Mapping]] = ..., gossip: _Optional[_Union[GossipSetup, _Mapping]] = ..., model_blake3: _Optional[str] = ...) -> None: ...

class Notice(_message.Message):
    __slots__ = ("task_id", "code", "message")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    code: str
    message: str
    def __init__(self, task_id: _Optional[str] = ..., code: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class DownloadRequest(_message.Message):
    __slots__ = ("session_id", "digest", "offset")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    digest: str
    offset: int
    def __init__(self, session_id: _Optional[str] = ..., digest: _Optional[str] = ..., offset: _Optional[int] = ...) -> None: ...

class BlobChunk(_message.Message):
    __slots__ = ("offset", "total_size", "data")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    offset: int
    total_size: int
    data: bytes
    def __init__(self, offset: _Optional[int] = ..., total_size: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class UploadHeader(_message.Message):
    __slots__ = ("session_id", "task_id", "run_id", "round", "digest", "size", "num_examples", "metrics_json", "duration_s", "gossip", "digest_algorithm")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    NUM_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    METRICS_JSON_FIELD_NUMBER: _ClassVar[int]
    DURATION_S_FIELD_NUMBER: _ClassVar[int]
    GOSSIP_FIELD_NUMBER: _ClassVar[int]
    DIGEST_ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    task_id: str
    run_id: str
    round: int
    digest: str
    size: int
    num_examples: int
    metrics_json: str
    duration_s: float
    gossip: GossipAddress
    digest_algorithm: str
    def __init__(self, session_id: _Optional[str] = ..., task_id: _Optional[str] = ..., run_id: _Optional[str] = ..., round: _Optional[int] = ..., digest: _Optional[str] = ..., size: _Optional[int] = ..., num_examples: _Optional[int] = ..., metrics_json: _Optional[str] = ..., duration_s: _Optional[float] = ..., gossip: _Optional[_Union[GossipAddress, _Mapping]] = ..., digest_algorithm: _Optional[str] = ...) -> None: ...

class UploadMessage(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: UploadHeader
    chunk: bytes
    def __init__(self, header: _Optional[_Union[UploadHeader, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class UploadReply(_message.Message):
    __slots__ = ("grant", "receipt")
    GRANT_FIELD_NUMBER: _ClassVar[int]
    RECEIPT_FIELD_NUMBER: _ClassVar[int]
    grant: UploadGrant
    receipt: UploadReceipt
    def __init__(self, grant: _Optional[_Union[UploadGrant, _Mapping]] = ..., receipt: _Optional[_Union[UploadReceipt, _Mapping]] = ...) -> None: ...

class UploadGrant(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class UploadReceipt(_message.Message):
    __slots__ = ("accepted", "code", "message")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    code: str
    message: str
    def __init__(self, accepted: _Optional[bool] = ..., code: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class SecAggPeer(_message.Message):
    __slots__ = ("index", "name", "identity_key")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_KEY_FIELD_NUMBER: _ClassVar[int]
    index: int
    name: str
    identity_key: bytes
    def __init__(self, index: _Optional[int] = ..., name: _Optional[str] = ..., identity_key: _Optional[bytes] = ...) -> None: ...

class SecAggSetup(_message.Message):
    __slots__ = ("index", "threshold", "vector_length", "peers", "clip_range", "quantization_bits", "max_weight", "attempt", "stage_timeout_s", "dp_clipping_norm", "dp_noise_stddev")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    VECTOR_LENGTH_FIELD_NUMBER: _ClassVar[int]
    PEERS_FIELD_NUMBER: _ClassVar[int]
    CLIP_RANGE_FIELD_NUMBER: _ClassVar[int]
    QUANTIZATION_BITS_FIELD_NUMBER: _ClassVar[int]
    MAX_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    STAGE_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    DP_CLIPPING_NORM_FIELD_NUMBER: _ClassVar[int]
    DP_NOISE_STDDEV_FIELD_NUMBER: _ClassVar[int]
    index: int
    threshold: int
    vector_length: int
    peers: _containers.RepeatedCompositeFieldContainer[SecAggPeer]
    clip_range: float
    quantization_bits: int
    max_weight: int
    attempt: int
    stage_timeout_s: float
    dp_clipping_norm: float
    dp_noise_stddev: float
    def __init__(self, index: _Optional[int] = ..., threshold: _Optional[int] = ..., vector_length: _Optional[int] = ..., peers: _Optional[_Iterable[_Union[SecAggPeer, _Mapping]]] = ..., clip_range: _Optional[float] = ..., quantization_bits: _Optional[int] = ..., max_weight: _Optional[int] = ..., attempt: _Optional[int] = ..., stage_timeout_s: _Optional[float] = ..., dp_clipping_norm: _Optional[float] = ..., dp_noise_stddev: _Optional[float] = ...) -> None: ...

class SecAggKeys(_message.Message):
    __slots__ = ("index", "cipher_public", "mask_public", "signature")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    CIPHER_PUBLIC_FIELD_NUMBER: _ClassVar[int]
    MASK_PUBLIC_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    index: int
    cipher_public: bytes
    mask_public: bytes
    signature: bytes
    def __init__(self, index: _Optional[int] = ..., cipher_public: _Optional[bytes] = ..., mask_public: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class SecAggKeyList(_message.Message):
    __slots__ = ("keys",)
    KEYS_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedCompositeFieldContainer[SecAggKeys]
    def __init__(self, keys: _Optional[_Iterable[_Union[SecAggKeys, _Mapping]]] = ...) -> None: ...

class SecAggShare(_message.Message):
    __slots__ = ("sender", "receiver", "ciphertext")
    SENDER_FIELD_NUMBER: _ClassVar[int]
    RECEIVER_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXT_FIELD_NUMBER: _ClassVar[int]
    sender: int
    receiver: int
    ciphertext: bytes
    def __init__(self, sender: _Optional[int] = ..., receiver: _Optional[int] = ..., ciphertext: _Optional[bytes] = ...) -> None: ...

class SecAggShareList(_message.Message):
    __slots__ = ("shares",)
    SHARES_FIELD_NUMBER: _ClassVar[int]
    shares: _containers.RepeatedCompositeFieldContainer[SecAggShare]
    def __init__(self, shares: _Optional[_Iterable[_Union[SecAggShare, _Mapping]]] = ...) -> None: ...

class SecAggUnmaskRequest(_message.Message):
    __slots__ = ("survivors", "dropped")
    SURVIVORS_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    survivors: _containers.RepeatedScalarFieldContainer[int]
    dropped: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, survivors: _Optional[_Iterable[int]] = ..., dropped: _Optional[_Iterable[int]] = ...) -> None: ...

class SecAggRevealed(_message.Message):
    __slots__ = ("owner", "key", "share")
    OWNER_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    owner: int
    key: bool
    share: bytes
    def __init__(self, owner: _Optional[int] = ..., key: _Optional[bool] = ..., share: _Optional[bytes] = ...) -> None: ...

class SecAggRevealedList(_message.Message):
    __slots__ = ("shares",)
    SHARES_FIELD_NUMBER: _ClassVar[int]
    shares: _containers.RepeatedCompositeFieldContainer[SecAggRevealed]
    def __init__(self, shares: _Optional[_Iterable[_Union[SecAggRevealed, _Mapping]]] = ...) -> None: ...

class SecAggStage(_message.Message):
    __slots__ = ("task_id", "keys", "shares", "unmask")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    SHARES_FIELD_NUMBER: _ClassVar[int]
    UNMASK_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    keys: SecAggKeyList
    shares: SecAggShareList
    unmask: SecAggUnmaskRequest
    def __init__(self, task_id: _Optional[str] = ..., keys: _Optional[_Union[SecAggKeyList, _Mapping]] = ..., shares: _Optional[_Union[SecAggShareList, _Mapping]] = ..., unmask: _Optional[_Union[SecAggUnmaskRequest, _Mapping]] = ...) -> None: ...

class SecAggReply(_message.Message):
    __slots__ = ("task_id", "keys", "shares", "unmask")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    SHARES_FIELD_NUMBER: _ClassVar[int]
    UNMASK_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    keys: SecAggKeys
    shares: SecAggShareList
    unmask: SecAggRevealedList
    def __init__(self, task_id: _Optional[str] = ..., keys: _Optional[_Union[SecAggKeys, _Mapping]] = ..., shares: _Optional[_Union[SecAggShareList, _Mapping]] = ..., unmask: _Optional[_Union[SecAggRevealedList, _Mapping]] = ...) -> None: ...

class GossipPeer(_message.Message):
    __slots__ = ("index", "name", "identity_key", "weight", "send")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_KEY_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    SEND_FIELD_NUMBER: _ClassVar[int]
    index: int
    name: str
    identity_key: bytes
    weight: float
    send: bool
    def __init__(self, index: _Optional[int] = ..., name: _Optional[str] = ..., identity_key: _Optional[bytes] = ..., weight: _Optional[float] = ..., send: _Optional[bool] = ...) -> None: ...

class GossipSetup(_message.Message):
    __slots__ = ("index", "peers", "self_weight", "attempt", "stage_timeout_s", "topology")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    PEERS_FIELD_NUMBER: _ClassVar[int]
    SELF_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    STAGE_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    TOPOLOGY_FIELD_NUMBER: _ClassVar[int]
    index: int
    peers: _containers.RepeatedCompositeFieldContainer[GossipPeer]
    self_weight: float
    attempt: int
    stage_timeout_s: float
    topology: str
    def __init__(self, index: _Optional[int] = ..., peers: _Optional[_Iterable[_Union[GossipPeer, _Mapping]]] = ..., self_weight: _Optional[float] = ..., attempt: _Optional[int] = ..., stage_timeout_s: _Optional[float] = ..., topology: _Optional[str] = ...) -> None: ...

class GossipAddress(_message.Message):
    __slots__ = ("receiver",)
    RECEIVER_FIELD_NUMBER: _ClassVar[int]
    receiver: int
    def __init__(self, receiver: _Optional[int] = ...) -> None: ...

class GossipKey(_message.Message):
    __slots__ = ("index", "public_key", "signature")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    index: int
    public_key: bytes
    signature: bytes
    def __init__(self, index: _Optional[int] = ..., public_key: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class GossipKeyList(_message.Message):
    __slots__ = ("keys",)
    KEYS_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedCompositeFieldContainer[GossipKey]
    def __init__(self, keys: _Optional[_Iterable[_Union[GossipKey, _Mapping]]] = ...) -> None: ...

class GossipParcel(_message.Message):
    __slots__ = ("sender", "digest", "size")
    SENDER_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    sender: int
    digest: str
    size: int
    def __init__(self, sender: _Optional[int] = ..., digest: _Optional[str] = ..., size: _Optional[int] = ...) -> None: ...

class GossipMissing(_message.Message):
    __slots__ = ("index", "reason")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    index: int
    reason: str
    def __init__(self, index: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class GossipInbox(_message.Message):
    __slots__ = ("parcels", "missing")
    PARCELS_FIELD_NUMBER: _ClassVar[int]
    MISSING_FIELD_NUMBER: _ClassVar[int]
    parcels: _containers.RepeatedCompositeFieldContainer[GossipParcel]
    missing: _containers.RepeatedCompositeFieldContainer[GossipMissing]
    def __init__(self, parcels: _Optional[_Iterable[_Union[GossipParcel, _Mapping]]] = ..., missing: _Optional[_Iterable[_Union[GossipMissing, _Mapping]]] = ...) -> None: ...

class GossipDistance(_message.Message):
    __slots__ = ("index", "distance")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    DISTANCE_FIELD_NUMBER: _ClassVar[int]
    index: int
    distance: float
    def __init__(self, index: _Optional[int] = ..., distance: _Optional[float] = ...) -> None: ...

class GossipSkip(_message.Message):
    __slots__ = ("index", "reason")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    index: int
    reason: str
    def __init__(self, index: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class GossipReport(_message.Message):
    __slots__ = ("num_examples", "metrics_json", "distances", "skipped", "duration_s")
    NUM_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    METRICS_JSON_FIELD_NUMBER: _ClassVar[int]
    DISTANCES_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    DURATION_S_FIELD_NUMBER: _ClassVar[int]
    num_examples: int
    metrics_json: str
    distances: _containers.RepeatedCompositeFieldContainer[GossipDistance]
    skipped: _containers.RepeatedCompositeFieldContainer[GossipSkip]
    duration_s: float
    def __init__(self, num_examples: _Optional[int] = ..., metrics_json: _Optional[str] = ..., distances: _Optional[_Iterable[_Union[GossipDistance, _Mapping]]] = ..., skipped: _Optional[_Iterable[_Union[GossipSkip, _Mapping]]] = ..., duration_s: _Optional[float] = ...) -> None: ...

class GossipStage(_message.Message):
    __slots__ = ("task_id", "keys", "inbox")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    INBOX_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    keys: GossipKeyList
    inbox: GossipInbox
    def __init__(self, task_id: _Optional[str] = ..., keys: _Optional[_Union[GossipKeyList, _Mapping]] = ..., inbox: _Optional[_Union[GossipInbox, _Mapping]] = ...) -> None: ...

class GossipReply(_message.Message):
    __slots__ = ("task_id", "key", "report")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    key: GossipKey
    report: GossipReport
    def __init__(self, task_id: _Optional[str] = ..., key: _Optional[_Union[GossipKey, _Mapping]] = ..., report: _Optional[_Union[GossipReport, _Mapping]] = ...) -> None: ...
