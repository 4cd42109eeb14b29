"""What the benchmark scripts name beside every timing."""

import platform


def cpu_name():
    """The CPU's model name, as /proc/cpuinfo gives it (timings mean little without it)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()
