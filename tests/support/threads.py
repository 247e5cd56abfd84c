"""One torch CPU thread for a test's in-process training, restored afterwards.

On a shared CPU, torch's default intra-op thread pool (one thread per core) makes small models spin against
other processes: tests/test_learning.py's MNIST-1D run took 55-100 s that way and 3.5 s on one thread (measured
on a 2-core machine under load). The subprocess tests get the same through ``OMP_NUM_THREADS=1``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def torch_threads(n: int = 1) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
