"""Shared ctypes values and arrays, kept in the state store so that calls anywhere share them."""

from .values import Array, RawArray, RawValue, Value, copy, synchronized

__all__ = ["Array", "RawArray", "RawValue", "Value", "copy", "synchronized"]
