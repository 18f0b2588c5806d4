"""The bench's reference scenarios (chapter 08), measured with :class:`StorageCounter`.

This module imports torch; :mod:`memlib.measure` imports it only when a measurement runs.
See :mod:`memlib.measure` for the public functions and what each number means.
"""
from __future__ import annotations

import contextlib
import gc
import sys
import time

import torch

from ..breakdown import Breakdown
from ..validation import choice, positive_int
from .build import build_model, clean_config, hf_config, torch_dtype
from .counter import StorageCounter, unique_storage_bytes
from .fake_kernels import PATCHES as FAKE_PATCHES
from .optim import DEFAULT_OPTIMIZER_IMPL, OPTIMIZER_IMPLS, OPTIMIZERS, impl_flags, make_optimizer

# -- which attention kernel ran ------------------------------------------------------------
FUSED_KERNELS = {
    "aten._scaled_dot_product_flash_attention_for_cpu.default": "flash_for_cpu",
    "aten._scaled_dot_product_flash_attention.default": "flash",
    "aten._scaled_dot_product_efficient_attention.default": "efficient",
    "aten._scaled_dot_product_cudnn_attention.default": "cudnn",
    "aten._scaled_dot_product_fused_attention_overrideable.default": "fused_overrideable",
    "aten._flash_attention_forward.default": "flash",
    "aten._efficient_attention_forward.default": "efficient",
}
MATH_MARKER = "aten._safe_softmax.default"


def attention_kernel(ops, attention_used: str) -> tuple[str, bool, dict]:
    """From the op counts of a run: ``(kernel name, math_path, {kernel: calls})``.

    ``math_path`` is True when SDPA was asked for but (some of) its calls took the math
    fallback (``aten._safe_softmax`` ran and the s x s score matrix was materialised).
    With eager attention the kernel is ``"eager"`` and ``math_path`` is False: the
    score matrix is then the architecture's chosen path, not a CPU artefact.
    """
    calls = {}
    for op, label in FUSED_KERNELS.items():
        if ops.get(op):
            calls[label] = calls.get(label, 0) + ops[op]
    if attention_used == "eager":
        return "eager", False, calls
    math = ops.get(MATH_MARKER, 0)
    if math:
        calls["math"] = math
    if not calls:
        return "none", False, calls
    return "+".join(sorted(calls)), bool(math), calls


def tensors_in(obj, depth: int = 6, _seen=None):
    """Every tensor reachable from ``obj`` through lists, tuples, dicts and object attributes."""
    if _seen is None:
        _seen = set()
    if isinstance(obj, torch.Tensor):
        yield obj
        return
    if depth < 0 or id(obj) in _seen or obj is None or isinstance(obj, (str, bytes, int, float, bool)):
        return
    _seen.add(id(obj))
    if isinstance(obj, dict):
        items = obj.values()
    elif isinstance(obj, (list, tuple, set)):
        items = obj
    elif hasattr(obj, "__dict__") and not isinstance(obj, (torch.nn.Module, type)):
        items = vars(obj).values()
    else:
        return
    for v in items:
        yield from tensors_in(v, depth - 1, _seen)


def _progress(msg, verbose):
    if verbose:
        print(msg, file=sys.stderr, flush=True)


def versions() -> dict:
    """``{"torch": ..., "transformers": ...}``: the versions every bench record states."""
    import transformers
    return {"torch": torch.__version__, "transformers": transformers.__version__}


_versions = versions   # the RL bench's name for it (its records are keyed by its own source)


# -- a session: where the model lives -------------------------------------------------------
@contextlib.contextmanager
def _eager_mask_path():
    """Make transformers take, on fake tensors, the mask path it takes on real ones.

    transformers treats a FakeTensor as "tracing" and then cannot read mask values, so
    it never skips the causal mask: it builds a (batch, 1, seq, seq) boolean mask and
    hands it to SDPA, which a real eager run does not do.  The only data-dependent read on
    the bench's path is ``find_packed_sequence_indices`` (are the position ids several
    packed sequences?); the bench's position ids are always ``arange(seq_len)``, for
    which the real answer is "not packed" (``None``).  So under fake tensors that
    function answers ``None`` and ``is_tracing`` ignores fake tensors; every other check
    then runs exactly as in eager mode.
    """
    try:
        from transformers import masking_utils
        from transformers.utils import import_utils
    except ImportError:  # pragma: no cover - older transformers
        yield
        return
    if not (hasattr(masking_utils, "find_packed_sequence_indices") and hasattr(masking_utils, "is_tracing")):
        yield  # pragma: no cover - another transformers version: nothing to patch
        return
    orig_find = masking_utils.find_packed_sequence_indices
    orig_tracing = masking_utils.is_tracing

    def is_tracing(tensor=None):
        return orig_tracing(None) or (tensor is not None and import_utils.is_torch_fx_proxy(tensor))

    def find_packed_sequence_indices(position_ids):
        # the same tensors as transformers' eager path, whose final check reads True
        # for arange position ids ("one sequence per row"): answer None like it does
        first_dummy_value = position_ids[:, :1] - 1
        position_diff = torch.diff(position_ids, prepend=first_dummy_value, dim=-1)
        packed_sequence_mask = (position_diff != 1).cumsum(-1)
        (packed_sequence_mask[:, -1] == 0).all()
        return None

    masking_utils.find_packed_sequence_indices = find_packed_sequence_indices
    masking_utils.is_tracing = is_tracing
    try:
        yield
    finally:
        masking_utils.find_packed_sequence_indices = orig_find
        masking_utils.is_tracing = orig_tracing


@contextlib.contextmanager
def _quiet_transformers():
    """transformers' advisory log lines (config checks, loss_type...) would end up in notebook outputs."""
    from transformers.utils import logging as hf_logging
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


class Session:
    """A built model plus the context it runs in (fake CPU, real CPU or CUDA)."""

    def __init__(self, model, dtype, attention: str, device: str = "cpu", fake: bool = True,
                 verbose: bool = False, seed: int = 0):
        from .gpu import resolve_device
        self.device = resolve_device(device)
        self.fake = bool(fake) and self.device == "cpu"
        self.name, cfg, self.config_changes = clean_config(model)
        self.config = hf_config(self.name, cfg)
        self.dtype = dtype
        self.stack = contextlib.ExitStack()
        self.stack.enter_context(_quiet_transformers())
        if self.fake:
            from torch._subclasses.fake_tensor import FakeTensorMode
            from .fake_kernels import grouped_mm_meta_accepts_real_dtypes
            self.stack.enter_context(_eager_mask_path())
            self.stack.enter_context(grouped_mm_meta_accepts_real_dtypes())
            self.stack.enter_context(FakeTensorMode())
        self.cuda_before = None
        self.cuda_window_start = None
        if self.device == "cuda":
            from .gpu import cuda_baseline
            self.cuda_before = cuda_baseline()
        torch.manual_seed(seed)
        _progress(f"building {self.name} ({'fake ' if self.fake else ''}{self.device}, "
                  f"{str(dtype).replace('torch.', '')}, {attention})...", verbose)
        t0 = time.perf_counter()
        try:
            with torch.device(self.device):
                self.model, self.attention, self.sdpa_fallback = build_model(
                    self.name, self.config, dtype, attention)
        except BaseException:
            self.close()
            raise
        self.build_s = time.perf_counter() - t0
        self.model.requires_grad_(True)

    def close(self):
        self.model = None
        self.stack.close()
        if self.device == "cuda":
            gc.collect()
            torch.cuda.empty_cache()

    def reset_device_peak(self):
        """Start the allocator's measurement window (CUDA only)."""
        if self.device == "cuda":
            from .gpu import cuda_reset_peak
            self.cuda_window_start = cuda_reset_peak()

    def device_report(self):
        """``torch.cuda`` allocator numbers for the window (None on the CPU)."""
        if self.device != "cuda":
            return None
        from .gpu import cuda_report
        return cuda_report(self.cuda_before, self.cuda_window_start)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close()
        if exc_type is not None and self.fake:
            from torch._subclasses import fake_tensor as ft
            kinds = tuple(getattr(ft, n) for n in ("DataDependentOutputException", "DynamicOutputShapeException",
                                                   "UnsupportedOperatorException") if hasattr(ft, n))
            if issubclass(exc_type, kinds):
                raise ValueError(
                    f"model {self.name!r}: cannot be measured with fake tensors: its forward reads tensor "
                    f"values or makes data-dependent shapes ({exc_type.__name__}: {exc}); "
                    f"measure it with real tensors (fake=False, or device='cuda')") from None
        return False

    def params(self):
        return list(self.model.parameters())

    def buffers(self):
        return list(self.model.buffers())

    def input_ids(self, batch_size, seq_len):
        vocab = int(self.model.config.get_text_config().vocab_size)
        return torch.randint(0, vocab, (batch_size, seq_len), dtype=torch.long, device=self.device)

    def counter(self):
        c = StorageCounter(device_type=self.device)
        c.register(self.params(), "weights")
        c.register(self.buffers(), "buffers")
        return c

    def meta(self, attention_requested):
        notes = list(self.config_changes)
        nextn = getattr(self.config, "num_nextn_predict_layers", None)
        if nextn:
            notes.append(f"num_nextn_predict_layers={nextn} (MTP) not built: transformers builds "
                         f"num_hidden_layers only")
        return {"model": self.name, "architecture": type(self.model).__name__, "device": self.device if not self.fake else "cpu (fake tensors)",
                "fake": self.fake, "attention_requested": attention_requested,
                "attention": self.attention, "sdpa_fallback": self.sdpa_fallback,
                "config_changes": notes, "fake_kernel_patches": list(FAKE_PATCHES) if self.fake else [],
                **versions()}


# -- scenarios ------------------------------------------------------------------------------
def measure_weights(model, dtype="bf16", *, device="cpu", fake=True, verbose=False) -> Breakdown:
    tdt = torch_dtype(dtype)
    with Session(model, tdt, "sdpa", device=device, fake=fake, verbose=verbose) as s:
        params, buffers = s.params(), s.buffers()
        w = unique_storage_bytes(params)
        b = unique_storage_bytes(buffers)
        n_params = sum(_unique_numel(params))
        meta = s.meta("sdpa")
        meta.update({"weights": w, "buffers": b, "n_params": n_params, "dtype": str(dtype),
                     "buffer_names": [n for n, _ in s.model.named_buffers()]})
        comps = {"weights": w}
        if b:
            comps["buffers"] = b
        if s.device == "cuda":
            meta["cuda"] = s.device_report()
        return Breakdown(comps, title=f"{s.name}, {dtype} weights (measured)", meta=meta)


def _unique_numel(params):
    seen = set()
    for p in params:
        k = p.untyped_storage()._cdata
        if k not in seen:
            seen.add(k)
            yield p.numel()


def measure_prefill(model, batch_size, seq_len, dtype="bf16", attention="sdpa", *, device="cpu",
                    fake=True, verbose=False) -> Breakdown:
    batch_size = positive_int("batch_size", batch_size)
    seq_len = positive_int("seq_len", seq_len)
    choice("attention", attention, ("sdpa", "eager"))
    tdt = torch_dtype(dtype)
    with Session(model, tdt, attention, device=device, fake=fake, verbose=verbose) as s:
        m = s.model
        m.eval()
        ids = s.input_ids(batch_size, seq_len)          # allocated before counting: not in the peak
        counter = s.counter()
        resident = counter.live_bytes
        gc.collect()
        s.reset_device_peak()
        _progress(f"prefill batch={batch_size} seq={seq_len}...", verbose)
        t0 = time.perf_counter()
        with torch.no_grad(), counter:
            counter.reset_peak()
            counter.set_phase("prefill")
            out = m(input_ids=ids, use_cache=True, logits_to_keep=1)
            cache = out.past_key_values
            cache_tensors = list(tensors_in(cache))
            kv = unique_storage_bytes(t for t in cache_tensors if t.device.type == s.device)
            counter.categorize(cache_tensors, "kv_cache")
            logits = unique_storage_bytes([out.logits]) if getattr(out, "logits", None) is not None else 0
            end_live = counter.live_bytes
        counter.close()
        run_s = time.perf_counter() - t0
        peak = counter.peak - resident
        kernel, math_path, calls = attention_kernel(counter.ops, s.attention)
        w, b = unique_storage_bytes(s.params()), unique_storage_bytes(s.buffers())
        comps = {"weights": w}
        if b:
            comps["buffers"] = b
        comps["kv_cache"] = kv
        comps["transient"] = peak - kv
        meta = s.meta(attention)
        meta.update({
            "scenario": "prefill", "batch_size": batch_size, "seq_len": seq_len, "dtype": str(dtype),
            "weights": w, "buffers": b, "kv_cache": kv, "prefill_peak": peak,
            "logits": logits, "after_forward": end_live - resident,
            "kv_cache_class": type(cache).__name__ if cache is not None else None,
            "attention_kernel": kernel, "math_path": math_path, "attention_calls": calls,
            "input_ids": "allocated before counting: not part of prefill_peak",
            "build_s": round(s.build_s, 3), "run_s": round(run_s, 3),
        })
        if s.device == "cuda":
            meta["cuda"] = s.device_report()
        del out, cache, cache_tensors
        title = f"{s.name}, prefill b={batch_size} s={seq_len} {dtype} {s.attention} (measured)"
        return Breakdown(comps, title=title, meta=meta)


from ..scenario import PHASES, PRECISIONS  # noqa: E402  (one vocabulary, memlib.scenario)

#: What transformers offers (``gradient_checkpointing_enable``): memlib's "selective" is a model only.
RECOMPUTE = ("none", "full")
AUTOCAST_POLICIES = ("cuda", "cpu")


def _opt_state_tensors(opt):
    out = []
    for st in opt.state.values():
        out.extend(tensors_in(st))
    return out


class _NoObserver:
    """The default observer of a training run: sees nothing (see :mod:`memlib.measure.crosscheck`)."""

    def window(self, model, opt):
        return contextlib.nullcontext()

    def phase(self, name):
        pass


def measure_train(model, batch_size, seq_len, precision="bf16", recompute="none", attention="sdpa",
                  optimizer="adamw", *, optimizer_impl=DEFAULT_OPTIMIZER_IMPL, device="cpu", fake=True,
                  verbose=False, timeline_points=400, autocast_policy="cuda", observer=None) -> Breakdown:
    """See :func:`memlib.measure.measure_train`.

    ``observer`` (internal, used by :mod:`memlib.measure.crosscheck`): an object with
    ``window(model, opt)`` (a context manager entered around the measured second step,
    after the counter's window opened) and ``phase(name)`` (called whenever the
    counter's phase changes inside that window).
    """
    batch_size = positive_int("batch_size", batch_size)
    seq_len = positive_int("seq_len", seq_len)
    choice("precision", precision, PRECISIONS)
    choice("recompute", recompute, RECOMPUTE)
    choice("attention", attention, ("sdpa", "eager"))
    choice("optimizer", optimizer, OPTIMIZERS)
    choice("optimizer_impl", optimizer_impl, OPTIMIZER_IMPLS)
    choice("autocast_policy", autocast_policy, AUTOCAST_POLICIES)
    observer = observer or _NoObserver()
    tdt = torch.bfloat16 if precision == "bf16" else torch.float32
    with Session(model, tdt, attention, device=device, fake=fake, verbose=verbose) as s:
        m = s.model
        m.train()
        dev_type = "cuda" if s.device == "cuda" else "cpu"
        emulate = precision == "mixed" and dev_type == "cpu" and autocast_policy == "cuda"
        policy = recompute_policy = None
        if emulate:
            from .autocast import CudaAutocastPolicy
            policy = CudaAutocastPolicy(dev_type)
            recompute_policy = CudaAutocastPolicy(dev_type)
        ckpt = None
        if recompute == "full":
            enable = getattr(m, "activation_checkpointing_enable", None) or m.gradient_checkpointing_enable
            ckpt_kwargs = {"use_reentrant": False}
            if recompute_policy is not None:
                # torch.utils.checkpoint re-enters the forward's autocast state for the
                # recomputation; the emulated CUDA op list must follow it (a
                # TorchFunctionMode is not active inside the autograd engine)
                ckpt_kwargs["context_fn"] = lambda: (contextlib.nullcontext(), recompute_policy)
            enable(ckpt_kwargs)
            ckpt = "torch.utils.checkpoint (use_reentrant=False) on every decoder layer"
        params = [p for p in m.parameters() if p.requires_grad]
        opt = make_optimizer(optimizer, params, optimizer_impl)
        ids = s.input_ids(batch_size, seq_len)        # allocated before counting
        counter = s.counter()

        @contextlib.contextmanager
        def autocast():
            if precision != "mixed":
                yield
                return
            with torch.autocast(dev_type, dtype=torch.bfloat16), (policy or contextlib.nullcontext()):
                yield

        end_of_forward = start_of_backward = None
        eof_t = sob_t = 0
        last_loss = None
        t0 = time.perf_counter()
        with counter:
            for step in (1, 2):
                _progress(f"train step {step}/2 (batch={batch_size} seq={seq_len} {precision} "
                          f"{optimizer}/{optimizer_impl})...", verbose)
                with contextlib.ExitStack() as window:
                    watching = step == 2
                    if watching:
                        gc.collect()
                        counter.reset_peak()
                        s.reset_device_peak()
                        window.enter_context(observer.window(m, opt))

                    def phase(name):
                        counter.set_phase(name)
                        if watching:
                            observer.phase(name)

                    phase("forward")
                    with autocast():          # the forward only (PyTorch AMP recipe, accelerate, HF Trainer)
                        loss = m(input_ids=ids, labels=ids, use_cache=False).loss
                        if watching:
                            end_of_forward, eof_t = counter.live_bytes, counter.t
                    # leaving autocast cleared its cache of bf16 weight copies: only those
                    # that autograd saved are still alive
                    if watching:
                        start_of_backward, sob_t = counter.live_bytes, counter.t
                    phase("backward")
                    loss.backward()
                    counter.categorize([p.grad for p in params if p.grad is not None], "gradients")
                    phase("step")
                    opt.step()
                    counter.categorize(_opt_state_tensors(opt), "optimizer")
                    counter.categorize([p.grad for p in params if p.grad is not None], "gradients")
                    opt.zero_grad(set_to_none=True)
                    if watching:
                        last_loss = loss.detach()          # a view: no new storage
                    del loss
                    if watching:
                        phase("end")
            counter.set_phase("end")
        counter.close()
        run_s = time.perf_counter() - t0
        loss_val = None if s.fake else float(last_loss)
        w = unique_storage_bytes(params)
        b = unique_storage_bytes(s.buffers())

        def components(t):
            cats = counter.by_category(counter.live_records(t))
            out = {"weights": cats.pop("weights", 0)}
            if b:
                out["buffers"] = cats.pop("buffers", 0)
            out["gradients"] = cats.pop("gradients", 0)
            out["optimizer"] = cats.pop("optimizer", 0)
            out["activations"] = sum(cats.values())
            return out

        comps = components(counter.peak_t)
        phases = {p: counter.phase_peaks.get(p, 0) for p in PHASES}
        phase_components = {p: components(counter.phase_peak_t[p]) for p in PHASES if p in counter.phase_peak_t}
        activations_by_op = {
            "end_of_forward": counter.by_op(counter.live_records(eof_t)),
            "start_of_backward": counter.by_op(counter.live_records(sob_t)),
            "peak": counter.by_op(counter.live_records(counter.peak_t)),
        }
        step_peak_t = counter.phase_peak_t.get("step")
        step_temporaries = (counter.by_op(counter.live_records(step_peak_t)) if step_peak_t is not None else {})
        kernel, math_path, calls = attention_kernel(counter.ops, s.attention)
        opt_state = _opt_state_tensors(opt)
        on_dev = [t for t in opt_state if t.device.type == s.device]
        off_dev = [t for t in opt_state if t.device.type != s.device]
        scalar_steps = unique_storage_bytes(t for t in opt_state if t.dim() == 0)
        meta = s.meta(attention)
        meta.update({
            "scenario": "train", "batch_size": batch_size, "seq_len": seq_len, "precision": precision,
            "recompute": recompute, "optimizer": optimizer, "optimizer_impl": optimizer_impl,
            "optimizer_flags": impl_flags(optimizer_impl),
            "train_peak": counter.peak,
            "phase_peak": phases, "peak_phase": counter.peak_phase,
            "end_of_forward": end_of_forward, "end_of_forward_components": components(eof_t),
            "start_of_backward": start_of_backward,
            "phase_components": phase_components, "activations_by_op": activations_by_op,
            "step_temporaries_by_op": step_temporaries,
            "weights": w, "buffers": b,
            "optimizer_state": unique_storage_bytes(on_dev),
            "optimizer_scalar_step_bytes": scalar_steps,
            "optimizer_host_bytes": unique_storage_bytes(off_dev),
            "attention_kernel": kernel, "math_path": math_path, "attention_calls": calls,
            "checkpointing": ckpt, "use_cache": False,
            "autocast": f"torch.autocast({dev_type!r}, bfloat16) around the forward only; "
                        f"loss.backward() outside it" if precision == "mixed" else None,
            "autocast_policy": None if precision != "mixed" else (
                "cuda (native)" if dev_type == "cuda" else
                "cuda (emulated on the cpu)" if emulate else "cpu"),
            "autocast_emulated": dict(policy.changed) if policy is not None else {},
            "autocast_emulated_recompute": dict(recompute_policy.changed) if recompute_policy is not None else {},
            "timeline": counter.timeline(timeline_points),
            "build_s": round(s.build_s, 3), "run_s": round(run_s, 3),
        })
        if loss_val is not None:
            meta["loss"] = loss_val
        if s.device == "cuda":
            meta["cuda"] = s.device_report()
        title = (f"{s.name}, train step b={batch_size} s={seq_len} {precision} {optimizer}/{optimizer_impl} "
                 f"recompute={recompute} {s.attention} (measured)")
        return Breakdown(comps, title=title, phases=phases, peak_phase=counter.peak_phase, meta=meta)
