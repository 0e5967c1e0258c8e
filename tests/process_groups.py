"""Helpers for tests that run 2-process gloo groups."""
from pathlib import Path


def gloo_threads() -> list:
    """Names of this process's threads that belong to a gloo process group (Linux): a
    group still referenced after teardown keeps them, and they can abort the process at
    interpreter exit."""
    tasks = Path("/proc/self/task")
    if not tasks.is_dir():
        return []
    names = []
    for task in tasks.iterdir():
        try:
            names.append((task / "comm").read_text().strip())
        except OSError:  # the thread ended meanwhile
            pass
    return [n for n in names if "gloo" in n]
