"""The message modules protoc generated from CRIU's .proto files, all in protobuf's default
pool. `pb.NAME_pb2` imports one on first use (PEP 562), for code that needs it only for
some images (a ghost file's): a command loads the modules of the images it handles."""
from importlib import import_module


def __getattr__(name: str):
    if name.endswith("_pb2"):
        return import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
