"""The sandbox's child side: namespaces, a minimal read-only root, limits, then the program.

Role: run by `areal_flow.tools.sandbox` as a script (``python -I jail.py STATUS_FD``), never
imported by the parent. It reads one JSON line of configuration on stdin and reports JSON lines
on ``STATUS_FD``. Three processes:

- *supervisor* (this script's first process, outside the sandbox): unshares the mount, network,
  pid, ipc and uts namespaces (plus a user namespace when not root), forks the init, and watches
  two things: the init's exit, and its stdin, the *lifeline*. The parent keeps the lifeline open
  while it wants the sandbox alive; when it closes (a limit hit, or the parent died) the
  supervisor SIGKILLs the init, which takes the whole pid namespace with it.
- *init* (pid 1 of the new pid namespace, still privileged in its namespaces): builds the root —
  a tmpfs holding read-only binds of the system and interpreter folders, a few device nodes, a
  private /proc, and the scratch folder ``/sandbox`` (a size-limited tmpfs, the only writable
  place) — pivots into it, forks the program and reaps every process until the program exits.
  When init exits the kernel kills everything left in the namespace.
- *program*: a new session, resource limits, no privileges (root: a fresh uid unique to this
  sandbox; otherwise the caller's uid inside its user namespace, so exec drops every capability),
  ``no_new_privs``, then ``execve`` of the interpreter with an environment built from scratch.

Rules:
- Standard library only; nothing here trusts the program. Every setup failure is reported as
  ``setup_error`` (or ``unavailable`` when the kernel refuses namespaces) and the run fails
  closed: the program never starts with less isolation than described.
- Mount points are created only in the tmpfs this script mounted (tracked in ``ours``), so no
  step can create or change anything on the host's file systems.
"""

from __future__ import annotations

import ctypes
import json
import os
import platform
import resource
import select
import signal
import socket
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_BIND, MS_REC, MS_PRIVATE = 2, 4, 8, 4096, 16384, 1 << 18
MNT_DETACH = 2
MOUNT_ATTR_RDONLY, MOUNT_ATTR_NOSUID = 0x1, 0x2
AT_FDCWD, AT_RECURSIVE = -100, 0x8000
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38
SYS_MOUNT_SETATTR = 442  # the same number on every architecture (added in Linux 5.12)
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}
#: Root mode runs each sandbox under its own uid (this base + the supervisor's pid), so the
#: process limit counts this sandbox alone and no two sandboxes share an owner.
UID_BASE = 2_000_000_000
SCRATCH = "/sandbox"

_libc = ctypes.CDLL(None, use_errno=True)


class MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def _check(result: int, what: str) -> None:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _b(s: str | None) -> bytes | None:
    return None if s is None else os.fsencode(s)


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str = "") -> None:
    what = f"mount {source or fstype} on {target}"
    _check(_libc.mount(_b(source), _b(target), _b(fstype), ctypes.c_ulong(flags), _b(data)), what)


def mount_setattr(path: str, flags: int, attr_set: int = 0, attr_clr: int = 0) -> None:
    attr = MountAttr(attr_set, attr_clr, 0, 0)
    result = _libc.syscall(
        ctypes.c_long(SYS_MOUNT_SETATTR), ctypes.c_int(AT_FDCWD), _b(path), ctypes.c_uint(flags),
        ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)),
    )  # fmt: skip
    _check(result, f"mount_setattr {path}")


def pivot_root_here() -> None:
    """Make the current folder the root and detach the old root (the "pivot_root . ." idiom)."""
    number = SYS_PIVOT_ROOT.get(platform.machine())
    if number is None:
        raise OSError(0, f"pivot_root: unknown syscall number on {platform.machine()}")
    _check(_libc.syscall(ctypes.c_long(number), b".", b"."), "pivot_root")
    _check(_libc.umount2(b".", ctypes.c_int(MNT_DETACH)), "umount old root")
    os.chdir("/")


def prctl(option: int, value: int) -> None:
    zero = ctypes.c_ulong(0)
    _check(_libc.prctl(ctypes.c_int(option), ctypes.c_ulong(value), zero, zero, zero), "prctl")


def report(fd: int, **fields: object) -> None:
    os.write(fd, (json.dumps(fields) + "\n").encode())


def main() -> None:
    status_fd = int(sys.argv[1])
    config = json.loads(_read_line(0))
    root = os.geteuid() == 0
    refusal = enter_namespaces(root)
    if refusal is not None:
        report(status_fd, unavailable=refusal)
        os._exit(2)
    uid = UID_BASE + os.getpid() if root else os.getuid()
    init = os.fork()
    if init == 0:
        try:
            run_init(config, status_fd, uid, root)
        except BaseException as e:
            report(status_fd, setup_error=f"{type(e).__name__}: {e}")
            os._exit(1)
    supervise(init, status_fd)


def enter_namespaces(root: bool) -> str | None:
    """Unshare every namespace but the user's (root) or with it (others); why not, if refused."""
    flags = CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS
    try:
        if root:
            _check(_libc.unshare(ctypes.c_int(flags)), "unshare")
            return None
        uid, gid = os.getuid(), os.getgid()
        if _outer_uid(uid) == 0:
            # The kernel never applies RLIMIT_NPROC to the host's root user: a fork bomb would
            # be unbounded. Refuse rather than run with a limit that does not hold.
            return (
                "the caller is root outside its user namespace, where the process limit does "
                "not hold; run as real root or as a non-root user"
            )
        _check(_libc.unshare(ctypes.c_int(flags | CLONE_NEWUSER)), "unshare (user namespace)")
        _write("/proc/self/setgroups", "deny")
        _write("/proc/self/uid_map", f"{uid} {uid} 1")
        _write("/proc/self/gid_map", f"{gid} {gid} 1")
    except OSError as e:
        return str(e)
    return None


def supervise(init: int, status_fd: int) -> None:
    """Wait for the init; kill it (and so the namespace) when the lifeline on stdin closes."""
    pidfd = os.pidfd_open(init)
    killed = False
    while True:
        ready, _, _ = select.select([0, pidfd], [], [])
        if pidfd in ready:
            break
        if not os.read(0, 4096):  # the parent closed the lifeline, or died
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            killed = True
            break
    os.waitpid(init, 0)
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    report(status_fd, supervisor_killed=killed, cpu_s=usage.ru_utime + usage.ru_stime)


def run_init(config: dict, status_fd: int, uid: int, root: bool) -> None:
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    os.close(0)  # the lifeline belongs to the supervisor
    has_proc = build_root(config, uid)
    socket.sethostname("sandbox")
    report(status_fd, isolation={"mode": "root" if root else "userns", "uid": uid,
                                 "proc": has_proc})  # fmt: skip
    program = os.fork()
    if program == 0:
        run_program(config, status_fd, uid, root)
    while True:  # pid 1 inherits every orphan: reap them all until the program itself exits
        pid, status = os.waitpid(-1, 0)
        if pid == program:
            break
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    code = os.waitstatus_to_exitcode(status)
    report(status_fd, exit=code, cpu_s=usage.ru_utime + usage.ru_stime)
    os._exit(0)  # takes every process still in the namespace with it


def build_root(config: dict, uid: int) -> bool:
    """Mount the new root in the staging folder and pivot into it; whether /proc is mounted."""
    stage = config["stage"]
    mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing below propagates back to the host
    mount("tmpfs", stage, "tmpfs", MS_NOSUID | MS_NODEV, "size=4m,mode=0755")
    ours = {stage}
    for link, target in config["symlinks"].items():
        _mkdirs(stage, os.path.dirname(link), ours)
        os.symlink(target, stage + link)
    for path in config["binds"]:
        is_dir = os.path.isdir(path)
        _mkdirs(stage, path if is_dir else os.path.dirname(path), ours)
        if not is_dir:
            os.close(os.open(stage + path, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o644))
        mount(path, stage + path, None, MS_BIND | MS_REC)
        ours.discard(stage + path)  # now the host's folder: nothing may be created inside it
    _mkdirs(stage, "/proc", ours)
    ours.discard(stage + "/proc")
    try:
        mount("proc", stage + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        has_proc = True
    except OSError:  # a user namespace may not mount proc under a masked /proc (containers)
        has_proc = False
    _mkdirs(stage, SCRATCH, ours)
    ours.discard(stage + SCRATCH)
    limit = config["limits"]["scratch_bytes"]
    mount("tmpfs", stage + SCRATCH, "tmpfs", MS_NOSUID | MS_NODEV,
          f"size={limit},mode=0700,uid={uid},gid={uid}")  # fmt: skip
    for name, text in config["files"].items():
        path = os.path.join(stage + SCRATCH, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        os.chown(path, uid, uid)
    mount_setattr(stage, AT_RECURSIVE, attr_set=MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID)
    mount_setattr(stage + SCRATCH, 0, attr_clr=MOUNT_ATTR_RDONLY)
    os.chdir(stage)
    pivot_root_here()
    return has_proc


def run_program(config: dict, status_fd: int, uid: int, root: bool) -> None:
    """The program's process: limits, stdin, no privileges, exec. Never returns."""
    try:
        os.setsid()
        limits = config["limits"]
        cpu = max(1, int(limits["cpu_s"] + 0.999))
        for which, value in (
            (resource.RLIMIT_CPU, (cpu, cpu + 1)),  # SIGXCPU, then SIGKILL a second later
            (resource.RLIMIT_AS, (limits["memory_bytes"],) * 2),
            (resource.RLIMIT_NPROC, (limits["processes"],) * 2),
            (resource.RLIMIT_FSIZE, (limits["file_bytes"],) * 2),
            (resource.RLIMIT_NOFILE, (limits["open_files"],) * 2),
            (resource.RLIMIT_CORE, (0, 0)),
        ):
            resource.setrlimit(which, value)
        read_end, write_end = os.pipe()
        os.write(write_end, config["stdin"].encode())  # fits: the parent caps it at 64 KiB
        os.close(write_end)
        if read_end != 0:  # 0 is free (the init closed the lifeline), so usually it is 0
            os.dup2(read_end, 0)
        os.set_inheritable(0, True)  # pipes are close-on-exec; dup2 onto itself changes nothing
        os.set_inheritable(status_fd, False)  # kept until exec to report a failed exec
        os.closerange(3, status_fd)
        os.closerange(status_fd + 1, 1 << 16)
        if root:
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
        prctl(PR_SET_NO_NEW_PRIVS, 1)
        os.chdir(SCRATCH)
        os.execve(config["argv"][0], config["argv"], config["env"])
    except BaseException as e:
        report(status_fd, setup_error=f"program: {type(e).__name__}: {e}")
    os._exit(127)


def _mkdirs(stage: str, path: str, ours: set[str]) -> None:
    """Create ``stage + path`` folder by folder, only inside folders this script created."""
    current = stage
    for part in [p for p in path.split("/") if p]:
        current = os.path.join(current, part)
        if current in ours:
            continue
        if os.path.lexists(current):
            raise OSError(0, f"mount point {current!r} is not a folder this sandbox created")
        os.mkdir(current, 0o755)
        ours.add(current)


def _outer_uid(uid: int) -> int | None:
    """``uid`` as the parent user namespace sees it (None when unmapped)."""
    with open("/proc/self/uid_map") as f:
        for line in f:
            inside, outside, count = (int(x) for x in line.split())
            if inside <= uid < inside + count:
                return outside + uid - inside
    return None


def _read_line(fd: int) -> str:
    data = b""
    while not data.endswith(b"\n"):
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            raise SystemExit("jail: the configuration line ended early")
        data += chunk
    return data.decode()


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
