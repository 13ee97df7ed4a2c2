"""Which nodes hold each job's replicas: best-fit packing that keeps a job on as few nodes as it can.

The throughput model charges a job that spans nodes the cross-node all-reduce, so packing
matters: a job that fits on one node goes to the fullest node it fits on (leaving whole nodes
for big jobs); a bigger one takes the emptiest nodes first. A job whose replica count did not
change keeps its nodes (moving it would be a restart for nothing).
"""

from __future__ import annotations

from collections.abc import Mapping


def place(replicas: Mapping[str, int], previous: Mapping[str, Mapping[int, int]], nodes: int,
          gpus_per_node: int) -> dict[str, dict[int, int]]:
    """{job: {node index: replicas}} for every job with replicas > 0. Raises if they do not fit."""
    free = [gpus_per_node] * nodes
    out: dict[str, dict[int, int]] = {}
    todo = []
    for name in sorted(replicas):
        r = replicas[name]
        if r <= 0:
            continue
        prev = previous.get(name)
        if prev and sum(prev.values()) == r and all(free[n] >= c for n, c in prev.items()):
            for n, c in prev.items():
                free[n] -= c
            out[name] = dict(prev)
        else:
            todo.append(name)
    # Largest first (ties by name: deterministic).
    for name in sorted(todo, key=lambda n: (-replicas[n], n)):
        r = replicas[name]
        fits = [n for n in range(nodes) if free[n] >= r]
        if fits:
            n = min(fits, key=lambda k: (free[k], k))
            free[n] -= r
            out[name] = {n: r}
            continue
        got: dict[int, int] = {}
        for n in sorted(range(nodes), key=lambda k: (-free[k], k)):
            if r == 0:
                break
            take = min(free[n], r)
            if take:
                got[n] = take
                free[n] -= take
                r -= take
        if r:
            raise ValueError(f"{name}: {replicas[name]} replicas do not fit in the free GPUs")
        out[name] = got
    return out
