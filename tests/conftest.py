import ctypes
import gc
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
_COLLECT_ABOVE = 2e9  # bytes resident after a test that makes a full garbage collection worth its ~0.3 s
try:
    _LIBC_TRIM = ctypes.CDLL("libc.so.6").malloc_trim
except (OSError, AttributeError):  # not glibc
    _LIBC_TRIM = None


def _resident_bytes() -> int:
    try:
        with open(f"/proc/{os.getpid()}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


@pytest.fixture(autouse=True, scope="session")
def _torch_threads():
    """Each process that runs tests gets its share of the cores (two xdist workers on two cores: one torch
    thread each). torch is imported here, not at the top: the xdist controller runs no test and so does
    not hold torch's half a gigabyte."""
    import torch

    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // workers)))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Slow tests first (stable: file order within each group), so that on several workers the
    long ones start early and the short ones fill the gaps instead of one long test running alone last."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(autouse=True)
def _memory_returned_after_each_test():
    """ONNX exports free their graphs into glibc's heap, which keeps the pages: test after test, one process
    of the suite grew to 5.7 GB. ``malloc_trim`` (~1 ms) hands the freed pages back after each test; a
    process still big also collects the reference cycles export leaves (~0.3 s, so only then)."""
    yield
    if _resident_bytes() > _COLLECT_ABOVE:
        gc.collect()
    if _LIBC_TRIM is not None:
        _LIBC_TRIM(0)
