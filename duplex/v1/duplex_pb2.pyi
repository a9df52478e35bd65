# mypy: ignore-errors
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AudioEncoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AUDIO_ENCODING_UNSPECIFIED: _ClassVar[AudioEncoding]
    PCM16_LE: _ClassVar[AudioEncoding]

class FloorControl(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FLOOR_LISTEN: _ClassVar[FloorControl]
    FLOOR_SPEAK: _ClassVar[FloorControl]
    FLOOR_BACKCHANNEL: _ClassVar[FloorControl]
    FLOOR_YIELD: _ClassVar[FloorControl]

class TurnEventType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TURN_EVENT_UNSPECIFIED: _ClassVar[TurnEventType]
    MODEL_TURN_START: _ClassVar[TurnEventType]
    MODEL_TURN_END: _ClassVar[TurnEventType]
    BACKCHANNEL: _ClassVar[TurnEventType]
    USER_BARGE_IN: _ClassVar[TurnEventType]

class AgentState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AGENT_STATE_UNSPECIFIED: _ClassVar[AgentState]
    QUEUED: _ClassVar[AgentState]
    RUNNING: _ClassVar[AgentState]
    DONE: _ClassVar[AgentState]
    FAILED: _ClassVar[AgentState]
AUDIO_ENCODING_UNSPECIFIED: AudioEncoding
PCM16_LE: AudioEncoding
FLOOR_LISTEN: FloorControl
FLOOR_SPEAK: FloorControl
FLOOR_BACKCHANNEL: FloorControl
FLOOR_YIELD: FloorControl
TURN_EVENT_UNSPECIFIED: TurnEventType
MODEL_TURN_START: TurnEventType
MODEL_TURN_END: TurnEventType
BACKCHANNEL: TurnEventType
USER_BARGE_IN: TurnEventType
AGENT_STATE_UNSPECIFIED: AgentState
QUEUED: AgentState
RUNNING: AgentState
DONE: AgentState
FAILED: AgentState

class AudioFormat(_message.Message):
    __slots__ = ("sample_rate", "channels", "encoding")
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    sample_rate: int
    channels: int
    encoding: AudioEncoding
    def __init__(self, sample_rate: _Optional[int] = ..., channels: _Optional[int] = ..., encoding: _Optional[_Union[AudioEncoding, str]] = ...) -> None: ...

class SessionStart(_message.Message):
    __slots__ = ("model", "format", "chunk_ms", "instructions", "tools", "session_id", "client_time_us", "resume_token", "resume_events_seen", "no_resume", "voice", "temperature", "top_k")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    CHUNK_MS_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTIONS_FIELD_NUMBER: _ClassVar[int]
    TOOLS_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_TIME_US_FIELD_NUMBER: _ClassVar[int]
    RESUME_TOKEN_FIELD_NUMBER: _ClassVar[int]
    RESUME_EVENTS_SEEN_FIELD_NUMBER: _ClassVar[int]
    NO_RESUME_FIELD_NUMBER: _ClassVar[int]
    VOICE_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    model: str
    format: AudioFormat
    chunk_ms: int
    instructions: str
    tools: _containers.RepeatedScalarFieldContainer[str]
    session_id: str
    client_time_us: int
    resume_token: str
    resume_events_seen: int
    no_resume: bool
    voice: str
    temperature: float
    top_k: int
    def __init__(self, model: _Optional[str] = ..., format: _Optional[_Union[AudioFormat, _Mapping]] = ..., chunk_ms: _Optional[int] = ..., instructions: _Optional[str] = ..., tools: _Optional[_Iterable[str]] = ..., session_id: _Optional[str] = ..., client_time_us: _Optional[int] = ..., resume_token: _Optional[str] = ..., resume_events_seen: _Optional[int] = ..., no_resume: _Optional[bool] = ..., voice: _Optional[str] = ..., temperature: _Optional[float] = ..., top_k: _Optional[int] = ...) -> None: ...

class AudioChunk(_message.Message):
    __slots__ = ("seq", "pcm", "client_time_us")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    PCM_FIELD_NUMBER: _ClassVar[int]
    CLIENT_TIME_US_FIELD_NUMBER: _ClassVar[int]
    seq: int
    pcm: bytes
    client_time_us: int
    def __init__(self, seq: _Optional[int] = ..., pcm: _Optional[bytes] = ..., client_time_us: _Optional[int] = ...) -> None: ...

class VideoFrame(_message.Message):
    __slots__ = ("seq", "rgb", "width", "height", "client_time_us")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    RGB_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    CLIENT_TIME_US_FIELD_NUMBER: _ClassVar[int]
    seq: int
    rgb: bytes
    width: int
    height: int
    client_time_us: int
    def __init__(self, seq: _Optional[int] = ..., rgb: _Optional[bytes] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., client_time_us: _Optional[int] = ...) -> None: ...

class TextInput(_message.Message):
    __slots__ = ("text", "client_time_us")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    CLIENT_TIME_US_FIELD_NUMBER: _ClassVar[int]
    text: str
    client_time_us: int
    def __init__(self, text: _Optional[str] = ..., client_time_us: _Optional[int] = ...) -> None: ...

class EndOfStream(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AgentRequest(_message.Message):
    __slots__ = ("call_id", "tool", "arguments_json", "deadline_s")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    TOOL_FIELD_NUMBER: _ClassVar[int]
    ARGUMENTS_JSON_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_S_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    tool: str
    arguments_json: str
    deadline_s: float
    def __init__(self, call_id: _Optional[str] = ..., tool: _Optional[str] = ..., arguments_json: _Optional[str] = ..., deadline_s: _Optional[float] = ...) -> None: ...

class ClientEvent(_message.Message):
    __slots__ = ("start", "audio", "video", "text", "end", "agent")
    START_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    VIDEO_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    AGENT_FIELD_NUMBER: _ClassVar[int]
    start: SessionStart
    audio: AudioChunk
    video: VideoFrame
    text: TextInput
    end: EndOfStream
    agent: AgentRequest
    def __init__(self, start: _Optional[_Union[SessionStart, _Mapping]] = ..., audio: _Optional[_Union[AudioChunk, _Mapping]] = ..., video: _Optional[_Union[VideoFrame, _Mapping]] = ..., text: _Optional[_Union[TextInput, _Mapping]] = ..., end: _Optional[_Union[EndOfStream, _Mapping]] = ..., agent: _Optional[_Union[AgentRequest, _Mapping]] = ...) -> None: ...

class SessionReady(_message.Message):
    __slots__ = ("session_id", "model", "input_format", "output_format", "chunk_ms", "frame_ms", "chunk_samples", "tools", "replica", "send_in_us", "resume_token", "resumed", "resume_events_received", "resume_next_seq", "resume_grace_ms", "start_held_us", "video_size")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INPUT_FORMAT_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FORMAT_FIELD_NUMBER: _ClassVar[int]
    CHUNK_MS_FIELD_NUMBER: _ClassVar[int]
    FRAME_MS_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    TOOLS_FIELD_NUMBER: _ClassVar[int]
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    SEND_IN_US_FIELD_NUMBER: _ClassVar[int]
    RESUME_TOKEN_FIELD_NUMBER: _ClassVar[int]
    RESUMED_FIELD_NUMBER: _ClassVar[int]
    RESUME_EVENTS_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    RESUME_NEXT_SEQ_FIELD_NUMBER: _ClassVar[int]
    RESUME_GRACE_MS_FIELD_NUMBER: _ClassVar[int]
    START_HELD_US_FIELD_NUMBER: _ClassVar[int]
    VIDEO_SIZE_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    model: str
    input_format: AudioFormat
    output_format: AudioFormat
    chunk_ms: int
    frame_ms: int
    chunk_samples: int
    tools: _containers.RepeatedScalarFieldContainer[str]
    replica: str
    send_in_us: int
    resume_token: str
    resumed: bool
    resume_events_received: int
    resume_next_seq: int
    resume_grace_ms: int
    start_held_us: int
    video_size: int
    def __init__(self, session_id: _Optional[str] = ..., model: _Optional[str] = ..., input_format: _Optional[_Union[AudioFormat, _Mapping]] = ..., output_format: _Optional[_Union[AudioFormat, _Mapping]] = ..., chunk_ms: _Optional[int] = ..., frame_ms: _Optional[int] = ..., chunk_samples: _Optional[int] = ..., tools: _Optional[_Iterable[str]] = ..., replica: _Optional[str] = ..., send_in_us: _Optional[int] = ..., resume_token: _Optional[str] = ..., resumed: _Optional[bool] = ..., resume_events_received: _Optional[int] = ..., resume_next_seq: _Optional[int] = ..., resume_grace_ms: _Optional[int] = ..., start_held_us: _Optional[int] = ..., video_size: _Optional[int] = ...) -> None: ...

class ChunkTiming(_message.Message):
    __slots__ = ("seq", "client_time_us", "server_recv_us", "step_start_us", "server_send_us", "queue_wait_ms", "compute_ms", "batch_size", "cohort", "late", "substituted", "aim_error_ms", "video", "video_seq")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    CLIENT_TIME_US_FIELD_NUMBER: _ClassVar[int]
    SERVER_RECV_US_FIELD_NUMBER: _ClassVar[int]
    STEP_START_US_FIELD_NUMBER: _ClassVar[int]
    SERVER_SEND_US_FIELD_NUMBER: _ClassVar[int]
    QUEUE_WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_MS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    COHORT_FIELD_NUMBER: _ClassVar[int]
    LATE_FIELD_NUMBER: _ClassVar[int]
    SUBSTITUTED_FIELD_NUMBER: _ClassVar[int]
    AIM_ERROR_MS_FIELD_NUMBER: _ClassVar[int]
    VIDEO_FIELD_NUMBER: _ClassVar[int]
    VIDEO_SEQ_FIELD_NUMBER: _ClassVar[int]
    seq: int
    client_time_us: int
    server_recv_us: int
    step_start_us: int
    server_send_us: int
    queue_wait_ms: float
    compute_ms: float
    batch_size: int
    cohort: int
    late: bool
    substituted: bool
    aim_error_ms: float
    video: bool
    video_seq: int
    def __init__(self, seq: _Optional[int] = ..., client_time_us: _Optional[int] = ..., server_recv_us: _Optional[int] = ..., step_start_us: _Optional[int] = ..., server_send_us: _Optional[int] = ..., queue_wait_ms: _Optional[float] = ..., compute_ms: _Optional[float] = ..., batch_size: _Optional[int] = ..., cohort: _Optional[int] = ..., late: _Optional[bool] = ..., substituted: _Optional[bool] = ..., aim_error_ms: _Optional[float] = ..., video: _Optional[bool] = ..., video_seq: _Optional[int] = ...) -> None: ...

class ModelAudio(_message.Message):
    __slots__ = ("seq", "pcm", "samples", "output_sample", "control", "timing")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    PCM_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_SAMPLE_FIELD_NUMBER: _ClassVar[int]
    CONTROL_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    seq: int
    pcm: bytes
    samples: int
    output_sample: int
    control: _containers.RepeatedScalarFieldContainer[int]
    timing: ChunkTiming
    def __init__(self, seq: _Optional[int] = ..., pcm: _Optional[bytes] = ..., samples: _Optional[int] = ..., output_sample: _Optional[int] = ..., control: _Optional[_Iterable[int]] = ..., timing: _Optional[_Union[ChunkTiming, _Mapping]] = ...) -> None: ...

class TextDelta(_message.Message):
    __slots__ = ("seq", "text", "final")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    seq: int
    text: str
    final: bool
    def __init__(self, seq: _Optional[int] = ..., text: _Optional[str] = ..., final: _Optional[bool] = ...) -> None: ...

class TurnEvent(_message.Message):
    __slots__ = ("seq", "type", "frame", "output_sample", "truncated_at_sample")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    FRAME_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_SAMPLE_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_AT_SAMPLE_FIELD_NUMBER: _ClassVar[int]
    seq: int
    type: TurnEventType
    frame: int
    output_sample: int
    truncated_at_sample: int
    def __init__(self, seq: _Optional[int] = ..., type: _Optional[_Union[TurnEventType, str]] = ..., frame: _Optional[int] = ..., output_sample: _Optional[int] = ..., truncated_at_sample: _Optional[int] = ...) -> None: ...

class AgentEvent(_message.Message):
    __slots__ = ("job_id", "tool", "state", "detail", "arguments_json")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    TOOL_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    ARGUMENTS_JSON_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    tool: str
    state: AgentState
    detail: str
    arguments_json: str
    def __init__(self, job_id: _Optional[str] = ..., tool: _Optional[str] = ..., state: _Optional[_Union[AgentState, str]] = ..., detail: _Optional[str] = ..., arguments_json: _Optional[str] = ...) -> None: ...

class Warning(_message.Message):
    __slots__ = ("code", "message", "seq")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    seq: int
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ..., seq: _Optional[int] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class ServerEvent(_message.Message):
    __slots__ = ("ready", "audio", "text", "turn", "agent", "warning", "error")
    READY_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TURN_FIELD_NUMBER: _ClassVar[int]
    AGENT_FIELD_NUMBER: _ClassVar[int]
    WARNING_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ready: SessionReady
    audio: ModelAudio
    text: TextDelta
    turn: TurnEvent
    agent: AgentEvent
    warning: Warning
    error: Error
    def __init__(self, ready: _Optional[_Union[SessionReady, _Mapping]] = ..., audio: _Optional[_Union[ModelAudio, _Mapping]] = ..., text: _Optional[_Union[TextDelta, _Mapping]] = ..., turn: _Optional[_Union[TurnEvent, _Mapping]] = ..., agent: _Optional[_Union[AgentEvent, _Mapping]] = ..., warning: _Optional[_Union[Warning, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ...) -> None: ...

class LoadRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReplicaLoad(_message.Message):
    __slots__ = ("active_sessions", "capacity", "model", "chunk_ms", "step_ms_p50", "draining", "sessions_by_key", "placements_seen", "http_port")
    class SessionsByKeyEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class PlacementsSeenEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    ACTIVE_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CHUNK_MS_FIELD_NUMBER: _ClassVar[int]
    STEP_MS_P50_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    SESSIONS_BY_KEY_FIELD_NUMBER: _ClassVar[int]
    PLACEMENTS_SEEN_FIELD_NUMBER: _ClassVar[int]
    HTTP_PORT_FIELD_NUMBER: _ClassVar[int]
    active_sessions: int
    capacity: int
    model: str
    chunk_ms: int
    step_ms_p50: float
    draining: bool
    sessions_by_key: _containers.ScalarMap[str, int]
    placements_seen: _containers.ScalarMap[str, int]
    http_port: int
    def __init__(self, active_sessions: _Optional[int] = ..., capacity: _Optional[int] = ..., model: _Optional[str] = ..., chunk_ms: _Optional[int] = ..., step_ms_p50: _Optional[float] = ..., draining: _Optional[bool] = ..., sessions_by_key: _Optional[_Mapping[str, int]] = ..., placements_seen: _Optional[_Mapping[str, int]] = ..., http_port: _Optional[int] = ...) -> None: ...
