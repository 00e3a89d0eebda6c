from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class itimer_entry(_message.Message):
    __slots__ = ("isec", "iusec", "vsec", "vusec")
    ISEC_FIELD_NUMBER: _ClassVar[int]
    IUSEC_FIELD_NUMBER: _ClassVar[int]
    VSEC_FIELD_NUMBER: _ClassVar[int]
    VUSEC_FIELD_NUMBER: _ClassVar[int]
    isec: int
    iusec: int
    vsec: int
    vusec: int
    def __init__(self, isec: _Optional[int] = ..., iusec: _Optional[int] = ..., vsec: _Optional[int] = ..., vusec: _Optional[int] = ...) -> None: ...

class posix_timer_entry(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class task_timers_entry(_message.Message):
    __slots__ = ("real", "virt", "prof", "posix")
    REAL_FIELD_NUMBER: _ClassVar[int]
    VIRT_FIELD_NUMBER: _ClassVar[int]
    PROF_FIELD_NUMBER: _ClassVar[int]
    POSIX_FIELD_NUMBER: _ClassVar[int]
    real: itimer_entry
    virt: itimer_entry
    prof: itimer_entry
    posix: _containers.RepeatedCompositeFieldContainer[posix_timer_entry]
    def __init__(self, real: _Optional[_Union[itimer_entry, _Mapping]] = ..., virt: _Optional[_Union[itimer_entry, _Mapping]] = ..., prof: _Optional[_Union[itimer_entry, _Mapping]] = ..., posix: _Optional[_Iterable[_Union[posix_timer_entry, _Mapping]]] = ...) -> None: ...
