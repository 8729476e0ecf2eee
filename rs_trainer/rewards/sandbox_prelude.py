"""Run by `sandbox.run_program` as `python -I -B sandbox_prelude.py PROGRAM MEMORY CPU NPROC FSIZE NOFILE`, never
imported: isolate this interpreter, then run PROGRAM as `__main__`.

The parent writes a random marker on stdin; it is written to stderr only when PROGRAM ran to its last line, so a
program that ends early with `sys.exit(0)` or `os._exit(0)` (skipping the tests appended to it) is not a pass.
"""

import ctypes
import os
import resource
import runpy
import signal
import socket
import sys

CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
PR_SET_KEEPCAPS, PR_SET_NO_NEW_PRIVS = 8, 38
CAP_DAC_READ_SEARCH, CAPABILITY_VERSION_3 = 2, 0x20080522
NOBODY = 65534


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


class _NoNetwork(socket.socket):
    """`socket.socket` for the program: Unix sockets only."""

    def __init__(self, family=-1, type=-1, proto=-1, fileno=None):
        if fileno is None and family != socket.AF_UNIX:
            raise PermissionError("network access is disabled in the sandbox")
        super().__init__(family, type, proto, fileno)


def isolate(memory: int, cpu: int, nproc: int, fsize: int, nofile: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)  # exec of a setuid binary gains nothing
    # No network but a downed loopback; pid namespace: see `main`. Users other than root need a user namespace.
    if libc.unshare(CLONE_NEWNET | CLONE_NEWPID) != 0:
        libc.unshare(CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWPID)
    if os.geteuid() == 0:
        # RLIMIT_NPROC does not bind root: become nobody, keeping only the right to read files and search folders
        # (the interpreter may live under /root). Where nobody does not exist (a rootless container maps few
        # ids), stay root: the other limits, the pid namespace and the timeout still hold.
        libc.prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0)
        try:
            os.setgroups([])
            os.setresgid(NOBODY, NOBODY, NOBODY)
            os.setresuid(NOBODY, NOBODY, NOBODY)
        except OSError:
            pass
        else:
            caps = (_CapData * 2)()
            caps[0].effective = caps[0].permitted = 1 << CAP_DAC_READ_SEARCH
            libc.capset(ctypes.byref(_CapHeader(CAPABILITY_VERSION_3, 0)), caps)
    limits = [
        (resource.RLIMIT_AS, memory, memory),
        (resource.RLIMIT_CPU, cpu, cpu + 1),
        (resource.RLIMIT_NPROC, nproc, nproc),
        (resource.RLIMIT_FSIZE, fsize, fsize),
        (resource.RLIMIT_NOFILE, nofile, nofile),
        (resource.RLIMIT_CORE, 0, 0),
    ]
    for res, soft, hard in limits:
        ceiling = resource.getrlimit(res)[1]  # a limit may be lowered, never raised past the current hard one
        if ceiling != resource.RLIM_INFINITY:
            soft, hard = min(soft, ceiling), min(hard, ceiling)
        resource.setrlimit(res, (soft, hard))
    import _socket

    socket.socket = _socket.socket = _NoNetwork


def wait_and_exit(pid: int) -> None:
    """Wait for the program and end the same way, so the parent sees its exit code or signal."""
    status = os.waitpid(pid, 0)[1]
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
        os._exit(128 + sig)
    os._exit(os.waitstatus_to_exitcode(status))


def main() -> None:
    path, limits = sys.argv[1], [int(x) for x in sys.argv[2:7]]
    marker = sys.stdin.buffer.read()
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    isolate(*limits)
    # The program runs as pid 1 of the new pid namespace: when it ends, everything it started is killed, even a
    # process that left the process group.
    pid = os.fork()
    if pid:
        wait_and_exit(pid)
    sys.argv = [path]
    runpy.run_path(path, run_name="__main__")
    sys.stdout.flush()
    os.write(2, b"\n" + marker)


if __name__ == "__main__":
    main()
