"""What torch.distributed.tensor keeps of a job once the job is left, emptied (dist.shutdown).

FSDP2's parameters are DTensors. DTensor keeps what it works out for a layout (an operator's output
sharding, a redistribution's steps and plan, a mesh's topology) in caches whose keys and values
hold the DeviceMesh, and a DeviceMesh holds its process groups (torch 2.13's `_pg_registry`):
after destroy_process_group the groups, with gloo's threads, lived on into the interpreter's exit,
where such a thread aborted the process now and then (SIGABRT). A later job's equal mesh would also
have been served the old one. These caches are private and change between torch versions: every
functools cache of DTensor's modules and their classes is emptied, and the two kept otherwise.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator


def empty() -> None:
    if "torch.distributed.tensor" not in sys.modules:  # no DTensor was made: nothing is cached
        return
    from torch.distributed.tensor import _redistribute, debug

    # the operators' output shardings (in Python and in C++), and a dict of redistribution plans
    getattr(debug, "_clear_sharding_prop_cache", lambda: None)()
    getattr(_redistribute, "clear_redistribute_planner_cache", lambda: None)()
    for cache in _functools_caches():
        cache.cache_clear()


def _functools_caches() -> Iterator:
    """The functools caches (lru_cache, cache) of DTensor's modules and of their classes."""
    for name, module in list(sys.modules.items()):
        if not name.startswith("torch.distributed.tensor.") or module is None:
            continue
        for value in list(vars(module).values()):
            for item in [value, *(vars(value).values() if isinstance(value, type) else ())]:
                item = getattr(item, "__func__", item)  # a staticmethod's function
                if hasattr(item, "cache_info") and not isinstance(item, type):  # not a cache's class
                    yield item
