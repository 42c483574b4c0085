"""Raw shared ctypes cannot be honoured: calls may run on other machines."""

from .shared_memory import _WHY

__all__ = ["RawArray", "RawValue"]


def RawArray(typecode_or_type, size_or_initializer):  # noqa: N802 - the standard library's name
    raise NotImplementedError(_WHY.format("sharedctypes.RawArray"))


def RawValue(typecode_or_type, *args):  # noqa: N802 - the standard library's name
    raise NotImplementedError(_WHY.format("sharedctypes.RawValue"))
