"""Content hashes of full KV blocks, chained so a block's hash stands for its whole prefix.

    block 0: h0 = H(ROOT, tokens[0:B])
    block 1: h1 = H(h0,   tokens[B:2B])      B = block_size
    block i: hi = H(h(i-1), tokens[iB:(i+1)B])

Two requests share block i's KV only if they agree on every token up to the end of block i,
which is exactly when their chained hashes agree. SHA-256 keeps accidental collisions (which
would silently hand one request another's KV) out of reach; Python's hash() would not.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence

BlockHash = bytes

_ROOT = hashlib.sha256(b"inflightd prefix cache root").digest()


def hash_block_tokens(parent_hash: BlockHash | None, token_ids: Sequence[int]) -> BlockHash:
    """The chained hash of one full block; parent_hash is None for a request's first block."""
    digest = hashlib.sha256(_ROOT if parent_hash is None else parent_hash)
    digest.update(struct.pack(f"<{len(token_ids)}q", *token_ids))
    return digest.digest()


def hash_full_blocks(token_ids: Sequence[int], block_size: int, *, start_block: int = 0,
                     num_blocks: int, parent_hash: BlockHash | None = None
                     ) -> list[BlockHash]:
    """Hashes of blocks start_block .. start_block + num_blocks - 1 of token_ids, chained
    from parent_hash (the hash of block start_block - 1, or None when start_block is 0)."""
    hashes: list[BlockHash] = []
    for index in range(start_block, start_block + num_blocks):
        parent_hash = hash_block_tokens(
            parent_hash, token_ids[index * block_size:(index + 1) * block_size])
        hashes.append(parent_hash)
    return hashes
