"""The host kernel through bpf(2) (ctypes) and rtnetlink (pyroute2): the only I/O in ``vxdp.bpf``.

Every bpf(2) call goes through `syscall.sys_bpf`; every fd has one owner object
that closes it (``close()`` is idempotent, ``__del__`` is the safety net, all
are context managers).
"""
