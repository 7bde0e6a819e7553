"""As root: a child in a user namespace where no more user namespaces may be made (its limit set
to 0), dropped to nobody, asks the sandbox to run code; the sandbox must refuse (test_sandbox_attacks)."""

import ctypes, os, sys

libc = ctypes.CDLL(None, use_errno=True)
ready_r, ready_w = os.pipe()
go_r, go_w = os.pipe()
pid = os.fork()
if pid:  # root in the parent namespace maps the child's whole id range
    os.read(ready_r, 1)
    for name in ("uid_map", "gid_map"):
        with open(f"/proc/{pid}/{name}", "w") as f:
            f.write("0 0 65536")
    os.write(go_w, b"x")
    _, status = os.waitpid(pid, 0)
    sys.exit(os.waitstatus_to_exitcode(status))
assert libc.unshare(0x10000000) == 0
os.write(ready_w, b"x")
os.read(go_r, 1)
with open("/proc/sys/user/max_user_namespaces", "w") as f:
    f.write("0")
os.setgroups([])
os.setgid(65534)
os.setuid(65534)
from ladder.sandbox import run_python

run_python("print(1)")
