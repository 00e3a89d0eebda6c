from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class page_run(_message.Message):
    __slots__ = ("vaddr", "nr_pages")
    VADDR_FIELD_NUMBER: _ClassVar[int]
    NR_PAGES_FIELD_NUMBER: _ClassVar[int]
    vaddr: int
    nr_pages: int
    def __init__(self, vaddr: _Optional[int] = ..., nr_pages: _Optional[int] = ...) -> None: ...

class pagemap_head(_message.Message):
    __slots__ = ("pages_id", "cs_skipped")
    PAGES_ID_FIELD_NUMBER: _ClassVar[int]
    CS_SKIPPED_FIELD_NUMBER: _ClassVar[int]
    pages_id: int
    cs_skipped: _containers.RepeatedCompositeFieldContainer[page_run]
    def __init__(self, pages_id: _Optional[int] = ..., cs_skipped: _Optional[_Iterable[_Union[page_run, _Mapping]]] = ...) -> None: ...

class pagemap_entry(_message.Message):
    __slots__ = ("vaddr", "compat_nr_pages", "in_parent", "flags", "nr_pages")
    VADDR_FIELD_NUMBER: _ClassVar[int]
    COMPAT_NR_PAGES_FIELD_NUMBER: _ClassVar[int]
    IN_PARENT_FIELD_NUMBER: _ClassVar[int]
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    NR_PAGES_FIELD_NUMBER: _ClassVar[int]
    vaddr: int
    compat_nr_pages: int
    in_parent: bool
    flags: int
    nr_pages: int
    def __init__(self, vaddr: _Optional[int] = ..., compat_nr_pages: _Optional[int] = ..., in_parent: _Optional[bool] = ..., flags: _Optional[int] = ..., nr_pages: _Optional[int] = ...) -> None: ...
