"""Peak resident memory of this process, measured right.

`getrusage().ru_maxrss` is not it for a process started by `subprocess`: Python starts
children with vfork, and Linux carries the parent's peak across the child's exec, so a small
child of a large parent reports the parent's peak.  `VmHWM` belongs to the process's own
address space, which exec replaces.
"""

from pathlib import Path


def peak_rss_bytes() -> int:
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0]) * 1024
