from . import core_x86_pb2 as _core_x86_pb2
from . import creds_pb2 as _creds_pb2
from . import ids_pb2 as _ids_pb2
from . import rlimit_pb2 as _rlimit_pb2
from . import rseq_pb2 as _rseq_pb2
from . import sa_pb2 as _sa_pb2
from . import siginfo_pb2 as _siginfo_pb2
from . import timer_pb2 as _timer_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class march(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    UNKNOWN: _ClassVar[march]
    X86_64: _ClassVar[march]
    ARM: _ClassVar[march]
    AARCH64: _ClassVar[march]
    PPC64: _ClassVar[march]
    S390: _ClassVar[march]
    MIPS: _ClassVar[march]
    LOONGARCH64: _ClassVar[march]
    RISCV64: _ClassVar[march]

class seccomp_mode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    disabled: _ClassVar[seccomp_mode]
    strict: _ClassVar[seccomp_mode]
    filter: _ClassVar[seccomp_mode]
UNKNOWN: march
X86_64: march
ARM: march
AARCH64: march
PPC64: march
S390: march
MIPS: march
LOONGARCH64: march
RISCV64: march
disabled: seccomp_mode
strict: seccomp_mode
filter: seccomp_mode

class task_core_entry(_message.Message):
    __slots__ = ("task_state", "exit_code", "personality", "flags", "blk_sigset", "comm", "timers", "rlimits", "cg_set", "signals_s", "loginuid", "oom_score_adj", "sigactions", "child_subreaper", "blk_sigset_extended", "stop_signo", "membarrier_registration_mask")
    TASK_STATE_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    PERSONALITY_FIELD_NUMBER: _ClassVar[int]
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    BLK_SIGSET_FIELD_NUMBER: _ClassVar[int]
    COMM_FIELD_NUMBER: _ClassVar[int]
    TIMERS_FIELD_NUMBER: _ClassVar[int]
    RLIMITS_FIELD_NUMBER: _ClassVar[int]
    CG_SET_FIELD_NUMBER: _ClassVar[int]
    SIGNALS_S_FIELD_NUMBER: _ClassVar[int]
    LOGINUID_FIELD_NUMBER: _ClassVar[int]
    OOM_SCORE_ADJ_FIELD_NUMBER: _ClassVar[int]
    SIGACTIONS_FIELD_NUMBER: _ClassVar[int]
    CHILD_SUBREAPER_FIELD_NUMBER: _ClassVar[int]
    BLK_SIGSET_EXTENDED_FIELD_NUMBER: _ClassVar[int]
    STOP_SIGNO_FIELD_NUMBER: _ClassVar[int]
    MEMBARRIER_REGISTRATION_MASK_FIELD_NUMBER: _ClassVar[int]
    task_state: int
    exit_code: int
    personality: int
    flags: int
    blk_sigset: int
    comm: str
    timers: _timer_pb2.task_timers_entry
    rlimits: _rlimit_pb2.task_rlimits_entry
    cg_set: int
    signals_s: _siginfo_pb2.signal_queue_entry
    loginuid: int
    oom_score_adj: int
    sigactions: _containers.RepeatedCompositeFieldContainer[_sa_pb2.sa_entry]
    child_subreaper: bool
    blk_sigset_extended: int
    stop_signo: int
    membarrier_registration_mask: int
    def __init__(self, task_state: _Optional[int] = ..., exit_code: _Optional[int] = ..., personality: _Optional[int] = ..., flags: _Optional[int] = ..., blk_sigset: _Optional[int] = ..., comm: _Optional[str] = ..., timers: _Optional[_Union[_timer_pb2.task_timers_entry, _Mapping]] = ..., rlimits: _Optional[_Union[_rlimit_pb2.task_rlimits_entry, _Mapping]] = ..., cg_set: _Optional[int] = ..., signals_s: _Optional[_Union[_siginfo_pb2.signal_queue_entry, _Mapping]] = ..., loginuid: _Optional[int] = ..., oom_score_adj: _Optional[int] = ..., sigactions: _Optional[_Iterable[_Union[_sa_pb2.sa_entry, _Mapping]]] = ..., child_subreaper: _Optional[bool] = ..., blk_sigset_extended: _Optional[int] = ..., stop_signo: _Optional[int] = ..., membarrier_registration_mask: _Optional[int] = ...) -> None: ...

class thread_sas_entry(_message.Message):
    __slots__ = ("ss_sp", "ss_size", "ss_flags")
    SS_SP_FIELD_NUMBER: _ClassVar[int]
    SS_SIZE_FIELD_NUMBER: _ClassVar[int]
    SS_FLAGS_FIELD_NUMBER: _ClassVar[int]
    ss_sp: int
    ss_size: int
    ss_flags: int
    def __init__(self, ss_sp: _Optional[int] = ..., ss_size: _Optional[int] = ..., ss_flags: _Optional[int] = ...) -> None: ...

class thread_core_entry(_message.Message):
    __slots__ = ("futex_rla", "futex_rla_len", "sched_nice", "sched_policy", "sched_prio", "blk_sigset", "sas", "pdeath_sig", "signals_p", "creds", "seccomp_mode", "seccomp_filter", "comm", "blk_sigset_extended", "rseq_entry", "cg_set", "cs_timer_slack_ns")
    FUTEX_RLA_FIELD_NUMBER: _ClassVar[int]
    FUTEX_RLA_LEN_FIELD_NUMBER: _ClassVar[int]
    SCHED_NICE_FIELD_NUMBER: _ClassVar[int]
    SCHED_POLICY_FIELD_NUMBER: _ClassVar[int]
    SCHED_PRIO_FIELD_NUMBER: _ClassVar[int]
    BLK_SIGSET_FIELD_NUMBER: _ClassVar[int]
    SAS_FIELD_NUMBER: _ClassVar[int]
    PDEATH_SIG_FIELD_NUMBER: _ClassVar[int]
    SIGNALS_P_FIELD_NUMBER: _ClassVar[int]
    CREDS_FIELD_NUMBER: _ClassVar[int]
    SECCOMP_MODE_FIELD_NUMBER: _ClassVar[int]
    SECCOMP_FILTER_FIELD_NUMBER: _ClassVar[int]
    COMM_FIELD_NUMBER: _ClassVar[int]
    BLK_SIGSET_EXTENDED_FIELD_NUMBER: _ClassVar[int]
    RSEQ_ENTRY_FIELD_NUMBER: _ClassVar[int]
    CG_SET_FIELD_NUMBER: _ClassVar[int]
    CS_TIMER_SLACK_NS_FIELD_NUMBER: _ClassVar[int]
    futex_rla: int
    futex_rla_len: int
    sched_nice: int
    sched_policy: int
    sched_prio: int
    blk_sigset: int
    sas: thread_sas_entry
    pdeath_sig: int
    signals_p: _siginfo_pb2.signal_queue_entry
    creds: _creds_pb2.creds_entry
    seccomp_mode: seccomp_mode
    seccomp_filter: int
    comm: str
    blk_sigset_extended: int
    rseq_entry: _rseq_pb2.rseq_entry
    cg_set: int
    cs_timer_slack_ns: int
    def __init__(self, futex_rla: _Optional[int] = ..., futex_rla_len: _Optional[int] = ..., sched_nice: _Optional[int] = ..., sched_policy: _Optional[int] = ..., sched_prio: _Optional[int] = ..., blk_sigset: _Optional[int] = ..., sas: _Optional[_Union[thread_sas_entry, _Mapping]] = ..., pdeath_sig: _Optional[int] = ..., signals_p: _Optional[_Union[_siginfo_pb2.signal_queue_entry, _Mapping]] = ..., creds: _Optional[_Union[_creds_pb2.creds_entry, _Mapping]] = ..., seccomp_mode: _Optional[_Union[seccomp_mode, str]] = ..., seccomp_filter: _Optional[int] = ..., comm: _Optional[str] = ..., blk_sigset_extended: _Optional[int] = ..., rseq_entry: _Optional[_Union[_rseq_pb2.rseq_entry, _Mapping]] = ..., cg_set: _Optional[int] = ..., cs_timer_slack_ns: _Optional[int] = ...) -> None: ...

class core_entry(_message.Message):
    __slots__ = ("mtype", "thread_info", "tc", "ids", "thread_core")
    MTYPE_FIELD_NUMBER: _ClassVar[int]
    THREAD_INFO_FIELD_NUMBER: _ClassVar[int]
    TC_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    THREAD_CORE_FIELD_NUMBER: _ClassVar[int]
    mtype: march
    thread_info: _core_x86_pb2.thread_info_x86
    tc: task_core_entry
    ids: _ids_pb2.task_kobj_ids_entry
    thread_core: thread_core_entry
    def __init__(self, mtype: _Optional[_Union[march, str]] = ..., thread_info: _Optional[_Union[_core_x86_pb2.thread_info_x86, _Mapping]] = ..., tc: _Optional[_Union[task_core_entry, _Mapping]] = ..., ids: _Optional[_Union[_ids_pb2.task_kobj_ids_entry, _Mapping]] = ..., thread_core: _Optional[_Union[thread_core_entry, _Mapping]] = ...) -> None: ...
