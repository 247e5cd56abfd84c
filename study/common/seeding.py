"""Seeds that are identical in every process and on every machine.

Python's ``hash`` is salted per process, so anything that must agree across Ray workers (the fixed W-Asym
masks of a pair of networks, say) derives its seed from a SHA-256 of its parts instead.
"""

from __future__ import annotations

import hashlib

import torch


def stable_seed(*parts: object) -> int:
    """A 63-bit seed determined only by ``repr`` of the parts."""
    digest = hashlib.sha256("\x1f".join(repr(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def generator(*parts: object, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch generator seeded from :func:`stable_seed` of the parts."""
    g = torch.Generator(device=device)
    g.manual_seed(stable_seed(*parts))
    return g
