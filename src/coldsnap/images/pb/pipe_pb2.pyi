from . import fown_pb2 as _fown_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class pipe_entry(_message.Message):
    __slots__ = ("id", "pipe_id", "flags", "fown")
    ID_FIELD_NUMBER: _ClassVar[int]
    PIPE_ID_FIELD_NUMBER: _ClassVar[int]
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    FOWN_FIELD_NUMBER: _ClassVar[int]
    id: int
    pipe_id: int
    flags: int
    fown: _fown_pb2.fown_entry
    def __init__(self, id: _Optional[int] = ..., pipe_id: _Optional[int] = ..., flags: _Optional[int] = ..., fown: _Optional[_Union[_fown_pb2.fown_entry, _Mapping]] = ...) -> None: ...

class fifo_entry(_message.Message):
    __slots__ = ("id", "pipe_id", "regf_id")
    ID_FIELD_NUMBER: _ClassVar[int]
    PIPE_ID_FIELD_NUMBER: _ClassVar[int]
    REGF_ID_FIELD_NUMBER: _ClassVar[int]
    id: int
    pipe_id: int
    regf_id: int
    def __init__(self, id: _Optional[int] = ..., pipe_id: _Optional[int] = ..., regf_id: _Optional[int] = ...) -> None: ...

class pipe_data_entry(_message.Message):
    __slots__ = ("pipe_id", "bytes", "size", "cs_bufs")
    PIPE_ID_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    CS_BUFS_FIELD_NUMBER: _ClassVar[int]
    pipe_id: int
    bytes: int
    size: int
    cs_bufs: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, pipe_id: _Optional[int] = ..., bytes: _Optional[int] = ..., size: _Optional[int] = ..., cs_bufs: _Optional[_Iterable[int]] = ...) -> None: ...
