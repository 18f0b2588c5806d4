"""Expert parallelism for MoE models with transformers' own distributed code (chapter 05).

**Definition (the ``ep`` scenario).**  transformers 5.x trains MoE models in parallel from a
``DistributedConfig``; the bench uses ``DistributedConfig(fsdp_size=W, ep_size=W)``
(``efsdp_size = fsdp_size * tp_size / ep_size = 1``), applied by transformers'
``maybe_distribute_model`` on a model built from its config:

* the architecture's ``base_model_ep_plan``: every experts module's ``gate_up_proj`` and
  ``down_proj`` are ``Shard(0)`` over the ``ep`` mesh (``grouped_gemm`` style): rank ``r``
  holds experts ``[r * E / W, (r + 1) * E / W)`` whole; the experts module gets an
  ``ep_dispatch_experts`` forward (:class:`transformers.distributed.expert_parallel.AllToAllEP`
  in training): the (token, expert) pairs are sorted by expert, sent to the rank that owns
  the expert with an all-to-all, run there, and sent back with a second all-to-all;
* FSDP2 (transformers' ``apply_fully_sharded_data_parallelism``): every experts module is
  ``fully_shard``-ed on the ``efsdp`` mesh (one rank: its experts stay whole), every other
  module by the model's FSDP plan on the ``fsdp`` mesh of ``W`` ranks (decoder layers with
  ``reshard_after_forward=True``, ``lm_head`` kept unsharded after the forward), then the
  root.  Mixed precision: ``fsdp_mixed_precision=True`` (``MixedPrecisionPolicy(bf16, fp32)``
  on an fp32 model).

**The one emulated part: the split sizes.**  ``AllToAllEP`` reads the per-rank token counts
back to the host (``.tolist()``) to size its all-to-all buffers.  Under fake tensors there
are no values (and the fake group moves no data), so the bench registers an
``EPImplementation`` (:class:`UniformAllToAllEP`) that runs ``AllToAllEP``'s dispatch line for
line but with the sizes of **uniform routing**: each rank sends ``b * s * top_k / W`` pairs
to every rank and receives as many (remainders to the first ranks).  Real routing is
uneven; a rank that receives more pairs holds proportionally larger dispatch buffers and
expert activations.  The combine (``_combine_tokens``) is transformers' own.
"""
from __future__ import annotations

import contextlib

__all__ = ["ep_mesh", "setup_ep", "UniformAllToAllEP", "uniform_split"]

EP_IMPLEMENTATION = "memlib_uniform_all_to_all"


def uniform_split(total: int, parts: int) -> list[int]:
    """``total`` split in ``parts`` as evenly as possible (remainder to the first parts)."""
    q, r = divmod(int(total), int(parts))
    return [q + (1 if i < r else 0) for i in range(parts)]


def _register():
    from transformers.distributed.expert_parallel import AllToAllEP, EPImplementationInterface
    if EP_IMPLEMENTATION in EPImplementationInterface():
        return
    import torch
    from torch.distributed import all_to_all_single
    from torch.distributed._functional_collectives import all_to_all_single_autograd
    from transformers.distributed.expert_parallel import _AllToAllState
    from transformers.distributed.parallel_utils import _WaitTensor

    class UniformAllToAllEP(AllToAllEP):
        """transformers' ``AllToAllEP`` with the all-to-all split sizes of uniform routing (see module doc)."""

        def _dispatch_tokens(self, hidden_states, top_k_index, top_k_weights):
            if self.tp_mesh.size() > 1:
                raise ValueError("ep: the bench's uniform all-to-all supports tp_size=1 only")
            num_tokens = hidden_states.size(0)
            ep_group, ep_size = self.ep_mesh.get_group(), self.ep_mesh.size()
            num_top_k = top_k_index.size(-1)
            expert_ids = top_k_index.reshape(-1)
            order = torch.argsort(expert_ids)
            send_tokens = hidden_states[order // num_top_k]
            send_counts = torch.zeros(self.num_local_experts * ep_size, dtype=torch.long, device=hidden_states.device)
            send_counts = send_counts.scatter_add_(0, expert_ids, torch.ones_like(expert_ids))
            send_counts = send_counts.view(ep_size, self.num_local_experts)
            recv_counts = torch.empty_like(send_counts)
            all_to_all_single(recv_counts, send_counts, group=ep_group)
            # the emulated line: AllToAllEP reads these sizes back with .tolist()
            send_sizes = uniform_split(num_tokens * num_top_k, ep_size)
            recv_sizes = list(send_sizes)
            recv_tokens = all_to_all_single_autograd(send_tokens, recv_sizes, send_sizes, ep_group)
            recv_tokens = _WaitTensor.apply(recv_tokens)
            recv_expert_ids = torch.arange(self.num_local_experts, device=hidden_states.device).repeat(ep_size)
            recv_expert_ids = recv_expert_ids.repeat_interleave(recv_counts.reshape(-1), output_size=sum(recv_sizes))
            recv_expert_ids = recv_expert_ids.unsqueeze(-1)
            recv_weights = torch.ones_like(recv_expert_ids, dtype=recv_tokens.dtype)
            state = _AllToAllState(top_k_weights, order, send_sizes, recv_sizes, num_tokens)
            return recv_tokens, recv_expert_ids, recv_weights, state

    EPImplementationInterface.register(EP_IMPLEMENTATION, UniformAllToAllEP)
    globals()["UniformAllToAllEP"] = UniformAllToAllEP


UniformAllToAllEP = None  # set by _register() (it subclasses a transformers class, imported lazily)


@contextlib.contextmanager
def _real_mesh_concatenation():
    """Let FSDP2 build its (efsdp x ep) mesh from real rank tensors while fake mode is on.

    FSDP2 shards the EP-sharded expert DTensors on the ``efsdp`` mesh and concatenates the
    two meshes (``DeviceMesh._concatenate``); a mesh built under ``FakeTensorMode`` fails
    (its rank tensor is real), the same trap as building the first mesh inside fake mode.
    The concatenation is bookkeeping of rank ids; it allocates nothing on a device.
    """
    from torch._subclasses.fake_tensor import unset_fake_temporarily
    from torch.distributed.device_mesh import DeviceMesh
    orig = DeviceMesh.__dict__["_concatenate"]

    def concatenate(device_mesh_list):
        with unset_fake_temporarily():
            return orig.__func__(device_mesh_list)
    DeviceMesh._concatenate = staticmethod(concatenate)
    try:
        yield
    finally:
        DeviceMesh._concatenate = orig


def ep_mesh(world_size: int):
    """``(DistributedConfig(fsdp_size=W, ep_size=W), transformers' mesh manager)``, built outside fake mode."""
    from transformers.distributed.configuration_utils import DistributedConfig
    from transformers.distributed.utils import initialize_distributed_mesh
    _register()
    dc = DistributedConfig(fsdp_size=world_size, ep_size=world_size, ep_implementation=EP_IMPLEMENTATION)
    _, manager = initialize_distributed_mesh(dc)
    return dc, manager


def setup_ep(model, mesh, precision, **_):
    """Apply ``DistributedConfig(fsdp_size=W, ep_size=W)`` with transformers' ``maybe_distribute_model``."""
    from .data_parallel import fsdp_instrumentation
    from .dist_run import DistRun
    dc, manager = mesh
    if not getattr(model.config, "base_model_ep_plan", None):
        raise ValueError(f"ep: model_type {model.config.model_type!r} has no base_model_ep_plan in transformers")
    dc.fsdp_mixed_precision = precision == "mixed"
    model.init_parallel_plans()
    with _real_mesh_concatenation():
        model = type(model).maybe_distribute_model(model, dc, manager)
    params = [p for p in model.parameters() if p.requires_grad]
    experts = [n for n, m in model.named_modules() if getattr(m, "_is_expert_parallel", False)]
    run = DistRun(model, params, forward=lambda ids: model(input_ids=ids, labels=ids, use_cache=False).loss,
               tracker="fsdp", autocast=False,
               meta={"distributed_config": dc.to_dict(), "expert_modules": len(experts),
                     "ep_routing": "uniform (emulated split sizes, see memlib.measure.expert_parallel)"})
    fsdp_instrumentation(run, model)
    return run
