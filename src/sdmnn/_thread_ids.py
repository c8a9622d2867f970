"""The kernel thread id of each of numba's workers, for ``runtime.pin_workers`` (imported only there,
since it imports numba and registers glibc's gettid with LLVM)."""
from __future__ import annotations

import os

import numba
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic


def _gettid_address() -> int:
    """The address of glibc's gettid (0 where there is none), registered with LLVM so that the
    compiled (and cached) worker-id kernel can call it."""
    try:
        import ctypes

        import llvmlite.binding as llvm

        address = ctypes.cast(ctypes.CDLL(None).gettid, ctypes.c_void_p).value or 0
    except (OSError, AttributeError):
        return 0
    if address:
        llvm.add_symbol("sdmnn_gettid", address)
    return address


#: Whether gettid can be called from a kernel (it is registered at this module's import).
AVAILABLE = bool(_gettid_address()) if hasattr(os, "sched_setaffinity") else False


@intrinsic
def _gettid(typingctx):
    """The calling thread's kernel id (gettid(2)); only called where AVAILABLE."""

    def codegen(context, builder, signature, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.IntType(32), []), "sdmnn_gettid")
        return builder.sext(builder.call(fn, []), ir.IntType(64))

    return types.int64(), codegen


@njit(cache=True, parallel=True)
def worker_tids(out):
    """out[i] = the kernel thread id of numba's worker i, for i < len(out) = the threads in use (a
    parallel loop of that many iterations gives each worker one)."""
    for i in prange(len(out)):
        out[numba.get_thread_id()] = _gettid()
