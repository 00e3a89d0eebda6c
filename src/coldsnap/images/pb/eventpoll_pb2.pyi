from . import fown_pb2 as _fown_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class eventpoll_tfd_entry(_message.Message):
    __slots__ = ("id", "tfd", "events", "data", "dev", "inode", "pos", "cs_via")
    ID_FIELD_NUMBER: _ClassVar[int]
    TFD_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    DEV_FIELD_NUMBER: _ClassVar[int]
    INODE_FIELD_NUMBER: _ClassVar[int]
    POS_FIELD_NUMBER: _ClassVar[int]
    CS_VIA_FIELD_NUMBER: _ClassVar[int]
    id: int
    tfd: int
    events: int
    data: int
    dev: int
    inode: int
    pos: int
    cs_via: int
    def __init__(self, id: _Optional[int] = ..., tfd: _Optional[int] = ..., events: _Optional[int] = ..., data: _Optional[int] = ..., dev: _Optional[int] = ..., inode: _Optional[int] = ..., pos: _Optional[int] = ..., cs_via: _Optional[int] = ...) -> None: ...

class eventpoll_file_entry(_message.Message):
    __slots__ = ("id", "flags", "fown", "tfd")
    ID_FIELD_NUMBER: _ClassVar[int]
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    FOWN_FIELD_NUMBER: _ClassVar[int]
    TFD_FIELD_NUMBER: _ClassVar[int]
    id: int
    flags: int
    fown: _fown_pb2.fown_entry
    tfd: _containers.RepeatedCompositeFieldContainer[eventpoll_tfd_entry]
    def __init__(self, id: _Optional[int] = ..., flags: _Optional[int] = ..., fown: _Optional[_Union[_fown_pb2.fown_entry, _Mapping]] = ..., tfd: _Optional[_Iterable[_Union[eventpoll_tfd_entry, _Mapping]]] = ...) -> None: ...
