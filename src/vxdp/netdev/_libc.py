"""The libc calls compiled batch loops make, declared for numba by symbol name.

Why ``types.ExternalFunction`` and not ctypes function pointers: a ctypes
pointer is an address baked into the compiled code as a constant, so numba
refuses to cache such a function (the address changes with every process under
ASLR). An external function is a named symbol that LLVM resolves when the code
is loaded, so ``@njit(cache=True)`` works and the call is a direct call.

Pointer arguments are declared ``uintp`` (the System V x86_64 ABI passes a
pointer and an integer in the same register), so compiled code can pass
``array.ctypes.data + offset`` without casts.

errno: compiled code reads it right after a failed call through
``__errno_location()`` (glibc's thread-local errno), in the same thread and
before any other libc call can overwrite it, and hands it back to Python in
the kernel's result — Python's ``ctypes.get_errno()`` would not see it (that
is ctypes' private copy, filled only by calls made through ctypes).
"""

from __future__ import annotations

import errno as _errno

from numba import njit, types

# ssize_t read(int fd, void *buf, size_t count)
c_read = types.ExternalFunction("read", types.intp(types.intc, types.uintp, types.uintp))
# ssize_t readv(int fd, const struct iovec *iov, int iovcnt)
c_readv = types.ExternalFunction("readv", types.intp(types.intc, types.uintp, types.intc))
# ssize_t write(int fd, const void *buf, size_t count)
c_write = types.ExternalFunction("write", types.intp(types.intc, types.uintp, types.uintp))
# int sendmmsg(int sockfd, struct mmsghdr *msgvec, unsigned int vlen, int flags)
c_sendmmsg = types.ExternalFunction("sendmmsg", types.intc(types.intc, types.uintp, types.uintc, types.intc))
# void *memcpy(void *dest, const void *src, size_t n): one call per frame beats a byte loop in numba
c_memcpy = types.ExternalFunction("memcpy", types.uintp(types.uintp, types.uintp, types.uintp))
# int sched_yield(void): lets the receiving softirq/peer drain a full ring between retries
c_sched_yield = types.ExternalFunction("sched_yield", types.intc())
# int *__errno_location(void): glibc's per-thread errno
c_errno_location = types.ExternalFunction("__errno_location", types.CPointer(types.intc)())

EAGAIN = _errno.EAGAIN
EINTR = _errno.EINTR
ENOBUFS = _errno.ENOBUFS


@njit(cache=True, nogil=True)
def last_errno() -> int:
    """The calling thread's errno (call only right after the failed libc call)."""
    return c_errno_location()[0]
