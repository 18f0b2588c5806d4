"""The bench: what PyTorch really allocates for a Hugging Face architecture (chapter 08).

``memlib.measure`` builds a model from a real ``config.json`` (catalog name, path or dict)
with ``AutoModelForCausalLM.from_config`` under ``FakeTensorMode`` on the CPU: tensors
have shapes and dtypes but no memory, so a 671B model costs no RAM and a Llama-3.1-8B
train step is measured in seconds.  A ``TorchDispatchMode``
(:class:`memlib.measure.counter.StorageCounter`) counts the bytes of every live tensor
storage, once per storage (views and in-place ops are free), and notes when each dies.

Importing this package does not import torch or transformers; calling a function does
(``ImportError`` with ``pip install "memlib[measure]"`` if they are missing).

Reference scenarios (chapter 08):

* :func:`measure_weights` -- unique parameter bytes (tied weights once); buffers apart.
* :func:`measure_prefill` -- ``model.eval()``, ``torch.no_grad()``, one forward of a
  ``(batch_size, seq_len)`` int64 batch with ``use_cache=True, logits_to_keep=1``.
  The input batch is allocated before counting starts and is not part of the peak.
* :func:`measure_train` -- ``model.train()``, AdamW (or SGD with momentum 0.9) in the
  implementation asked for (``optimizer_impl``: ``"loop"``, ``"foreach"`` -- the default,
  what PyTorch picks on CUDA -- or ``"fused"``, see :mod:`memlib.measure.optim`); a step
  is ``model(input_ids, labels=input_ids, use_cache=False).loss`` (under
  ``torch.autocast(bfloat16)`` in mixed precision: the forward only), ``loss.backward()``
  (outside autocast), ``opt.step()``, ``opt.zero_grad(set_to_none=True)``; two steps
  are run and the second is measured.  ``use_cache=False``: a training step builds no KV
  cache (transformers would otherwise build one whenever ``config.use_cache`` is true, a
  K/V copy per layer alive until the end of the forward).  The output object is dropped
  as soon as ``.loss`` is read, as a training loop does, so the logits live only as long
  as autograd keeps them.
* :func:`crosscheck_train` -- the same training step watched by the bench and by
  PyTorch's ``MemTracker`` at once (:mod:`memlib.measure.crosscheck`).

What is counted, and what is not (chapter 08, ``notebooks/08_measure.ipynb``, tells the whole story):
every storage an aten op returns, once, from the op until the storage dies; never the
input batch (made before counting); never memory a single kernel allocates and frees
inside itself (cuBLAS workspaces: the GPU path reports ``max_memory_allocated`` for
that).  Fake tensors must run the program a real run runs: two shims make them do so,
each checked against real tensors -- transformers' causal-mask decision
(``_eager_mask_path``: on plain fake tensors transformers builds a ``(b, 1, s, s)`` mask,
repeats K/V to every query head and saves a bf16 mask per layer, which a real run never
does; a MemTracker run without the shim "finds" 352,321,536 B more on Qwen3-0.6B at b=2, s=1024) and the
``_grouped_mm`` meta kernel, which refuses the fp32 inputs the real kernels accept
(:mod:`memlib.measure.fake_kernels`).

Every function returns a :class:`memlib.Breakdown`; ``meta`` says which attention
implementation and which SDPA kernel actually ran, and flags the CPU's math fallback
(``math_path``), which a GPU would not take (chapter 08).

Mixed precision on the CPU emulates CUDA autocast's op list by default
(:mod:`memlib.measure.autocast`; :func:`autocast_policy_diff` lists how the two differ).

``device="cpu"`` (default, fake tensors, deterministic), ``"cuda"`` (a real run on the
GPU with random weights, plus ``torch.cuda`` allocator numbers in ``meta["cuda"]``) or
``"auto"``.  ``fake=False`` on the CPU runs real tensors (used by the tests to show that
fake and real measurements agree byte for byte).
"""
from __future__ import annotations

__all__ = ["measure_weights", "measure_prefill", "measure_train", "crosscheck_train",
           "autocast_policy_diff", "versions"]


def _scenarios():
    from .build import require_torch
    require_torch()
    from . import scenarios
    return scenarios


def measure_weights(model, dtype: str = "bf16", *, device: str = "cpu", fake: bool = True,
                    verbose: bool = False):
    """Measured weight memory: unique parameter storages x bytes per element (chapter 01).

    ``bytes = sum over distinct parameter storages of numel x itemsize`` (tied
    embeddings count once).  Components: ``"weights"`` (parameters) and, when the
    architecture has any, ``"buffers"`` (e.g. rotary ``inv_freq``, kept in fp32).
    ``meta["n_params"]`` is the unique parameter count.
    """
    return _scenarios().measure_weights(model, dtype, device=device, fake=fake, verbose=verbose)


def measure_prefill(model, batch_size: int, seq_len: int, dtype: str = "bf16", attention: str = "sdpa",
                    *, device: str = "cpu", fake: bool = True, verbose: bool = False):
    """Measured prefill: one no-grad forward with ``use_cache=True, logits_to_keep=1`` (chapters 02, 03).

    Components: ``weights`` (+ ``buffers``), ``kv_cache`` (bytes of the storages held by
    the returned cache object), ``transient`` (``prefill_peak - kv_cache``), so
    ``total = weights + buffers + prefill_peak``.  ``meta["prefill_peak"]`` is the peak of
    live bytes above the resident weights and buffers during the forward (the cache being
    built included; the input batch, allocated before counting, excluded).
    ``meta["attention_kernel"]`` / ``meta["math_path"]`` say which SDPA kernel ran.
    """
    return _scenarios().measure_prefill(model, batch_size, seq_len, dtype, attention,
                                        device=device, fake=fake, verbose=verbose)


def measure_train(model, batch_size: int, seq_len: int, precision: str = "bf16", recompute: str = "none",
                  attention: str = "sdpa", optimizer: str = "adamw", *, optimizer_impl: str = "foreach",
                  device: str = "cpu", fake: bool = True, verbose: bool = False, timeline_points: int = 400,
                  autocast_policy: str = "cuda"):
    """Measured training step (the second of two), peak and phases (chapters 03, 04).

    ``precision="bf16"``: parameters, gradients and optimizer state in bf16.
    ``"mixed"``: fp32 parameters, gradients and state; only the forward (loss included)
    runs inside ``torch.autocast(bfloat16)``, ``loss.backward()`` runs outside it, as in
    PyTorch's AMP recipe, accelerate and the HF Trainer.  Leaving the context clears the
    autocast cache: of its bf16 weight copies only those autograd saved live on into the
    backward.  ``recompute="full"``: activation checkpointing of every decoder layer
    (``torch.utils.checkpoint`` restores the forward's autocast state while it recomputes).

    ``optimizer``: ``"adamw"`` or ``"sgd"`` (momentum 0.9); ``optimizer_impl``:
    ``"loop"`` (``foreach=False``), ``"foreach"`` (default: what PyTorch picks on CUDA)
    or ``"fused"`` (``fused=True``), passed explicitly so the CPU runs what a GPU runs
    (:mod:`memlib.measure.optim` says what each allocates in the step).

    Components are what is live at the peak: ``weights`` (+ ``buffers``), ``gradients``,
    ``optimizer`` (state incl. AdamW's 4-byte ``step`` tensor per parameter),
    ``activations`` (everything else: saved tensors, autocast cache, temporaries);
    ``total`` = ``meta["train_peak"]``.  ``phases`` holds the peak of ``forward``,
    ``backward`` and ``step`` (``zero_grad`` included).
    ``meta["timeline"]`` is a downsampled list of ``(phase, live_bytes)``;
    ``meta["end_of_forward"]`` the live bytes right after the forward returned (autocast
    cache included), ``meta["start_of_backward"]`` the live bytes once autocast was left;
    ``meta["step_temporaries_by_op"]`` what was live at the step phase's peak, by the
    aten op that allocated it.

    ``autocast_policy`` (mixed precision on the CPU only): ``"cuda"`` (default) applies
    CUDA autocast's op list on top of CPU autocast (softmax, pow, layer_norm, sum... in
    fp32, as a GPU does; see :mod:`memlib.measure.autocast`); ``"cpu"`` keeps plain CPU
    autocast.  ``meta["autocast_emulated"]`` counts the calls the emulation changed in the
    forward, ``meta["autocast_emulated_recompute"]`` those in the recomputation.
    """
    return _scenarios().measure_train(model, batch_size, seq_len, precision, recompute, attention,
                                      optimizer, optimizer_impl=optimizer_impl, device=device, fake=fake,
                                      verbose=verbose, timeline_points=timeline_points,
                                      autocast_policy=autocast_policy)


def versions() -> dict:
    """``{"torch": ..., "transformers": ...}`` installed: what every bench record states."""
    return _scenarios().versions()


def crosscheck_train(model, batch_size: int, seq_len: int, precision: str = "bf16", recompute: str = "none",
                     attention: str = "sdpa", optimizer: str = "adamw", *, optimizer_impl: str = "foreach",
                     autocast_policy: str = "cuda", standalone: bool = True, module_stats: bool = False):
    """The bench's training step measured twice at once: by the bench and by PyTorch's MemTracker.

    Returns ``{"bench": {phase: bytes}, "memtracker": {phase: bytes}, "difference": ...,
    "memtracker_categories": {phase: {category: bytes}}, ...}``; see
    :mod:`memlib.measure.crosscheck` (chapter 08).
    """
    from .build import require_torch
    require_torch()
    from .crosscheck import crosscheck_train as run
    return run(model, batch_size, seq_len, precision, recompute, attention, optimizer,
               optimizer_impl=optimizer_impl, autocast_policy=autocast_policy, standalone=standalone,
               module_stats=module_stats)


def autocast_policy_diff():
    """Which aten ops have an autocast rule on CUDA only, on the CPU only, or on both.

    ``{"cuda_only": [...], "cpu_only": [...], "both": [...]}``, read from the installed
    torch's dispatcher (see :mod:`memlib.measure.autocast`, chapter 04).
    """
    from .build import require_torch
    require_torch()
    from .autocast import policy_diff
    return policy_diff()
