"""One CPU process as one rank of a world of W, through PyTorch's fake process group (chapter 05).

``torch.distributed``'s ``"fake"`` backend (``FakeProcessGroup``, with ``FakeStore`` from
``torch.testing._internal.distributed.fake_pg``) accepts every collective and point-to-point
call and returns at once: no data moves, but every buffer that PyTorch's distributed code
allocates for a collective is allocated for real (or as a fake tensor), so it is counted.

:func:`fake_world` initialises that process group for the duration of a ``with`` block;
:func:`cpu_mesh` builds a ``DeviceMesh`` on it.  The mesh must be built *before* entering
``FakeTensorMode``: building it inside makes its rank tensors fake.
"""
from __future__ import annotations

import contextlib

__all__ = ["fake_world", "cpu_mesh"]


@contextlib.contextmanager
def fake_world(world_size: int, rank: int = 0):
    """Run the block as rank ``rank`` of a fake world of ``world_size`` processes.

    An existing default process group is destroyed first; the fake one is destroyed on exit.
    """
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore

    if not 0 <= rank < world_size:
        raise ValueError(f"rank: must be in [0, {world_size}), got {rank}")
    if dist.is_initialized():
        dist.destroy_process_group()
    dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=world_size)
    try:
        yield
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def cpu_mesh(shape, names=None):
    """``init_device_mesh("cpu", shape, mesh_dim_names=names)`` on the current (fake) world."""
    from torch.distributed.device_mesh import init_device_mesh
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    return init_device_mesh("cpu", shape, mesh_dim_names=tuple(names) if names else None)
