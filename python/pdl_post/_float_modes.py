"""IEEE default floating-point modes around each public call.

A thread's float modes are its own: ``torch.set_flush_denormal(True)``, a library built with
``-ffast-math``, ``fesetround`` or ``feenableexcept`` change them for the threads they touch. The
compiled core computes with round to nearest, subnormals kept and exceptions masked on every
thread whatever it finds (``cpp/include/pdl_post/float_mode.h``), as the GPU does; this wrapper
gives the Python layer's numpy work (the reference backend, the Gaussian of the training targets)
the same modes, and puts the caller's back afterwards.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

from pdl_post import _core

F = TypeVar("F", bound=Callable)


def with_ieee_float_modes(function: F) -> F:
    """``function`` run with the IEEE default float modes on the calling thread."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        found = _core._get_float_modes()
        ieee = _core._ieee_float_modes(found)
        if ieee == found:
            return function(*args, **kwargs)
        _core._set_float_modes(ieee)
        try:
            return function(*args, **kwargs)
        finally:
            _core._set_float_modes(found)

    return wrapper  # type: ignore[return-value]
