"""A training step, eager or replayed from CUDA graphs.

These networks are tiny: on a GPU a training step costs the launches of its few hundred kernels,
not their arithmetic. A CUDA graph records every kernel of one step once (drawing the batch from
the run's own generator, forward, backward, Adam with ``capturable=True``, the log window's sums)
and replays them with one launch, reading and writing the same tensors each time: the same
computation as the eager step, on the same batches (a registered generator advances on each
replay exactly as the eager draws would advance it).

The first ``WARMUP`` steps run eagerly (on a GPU, on a side stream, as PyTorch's recipe has it);
they allocate the gradients and Adam's state that the graphs then update in place, and they run
the computation that is then recorded, so that what it sets up on first use (cuBLAS workspaces,
autograd's buffers for these shapes) is set up before recording. The graphs are recorded on the
step after.

ACT needs the host to see when every sample has halted, which a graph cannot. Its step is two
graphs: the batch and the gradients with a fixed unroll U (``methods/act.py``), then the update. In
between the host reads one flag, ``overflow`` (one sync per step; eager ACT has one per ponder
step). If some sample needed more than U steps, the gradients of the same batch are recomputed
eagerly and exactly before the update runs, and U is raised to that sample's N plus a margin
and the first graph recorded again. At log steps the largest N of the window may shrink U, so
the unroll follows what the network currently needs. The result is always exact ACT. ACT's first
warm-up step is the exact eager step (its largest N sets the first U); the others run the two
functions the graphs record, the autograd unroll over U steps and the update, eagerly, with the
same exact redo (an eager ACT step would take the tanh RNN's hand-written backward instead,
``fused.py``, and warm up kernels the graph never runs).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

WARMUP = 3  # eager steps before recording: PyTorch's recipe, and Adam's state must exist
Batch = tuple[torch.Tensor, torch.Tensor]


class RecordError(RuntimeError):
    """The training step could not be recorded as a CUDA graph; the message says what to do."""


def margin(n: int) -> int:
    """Ponder steps of slack above the largest N seen, so small rises do not re-record."""
    return max(2, n // 4)


class Stepper:
    """``stepper()`` trains one step; ``stepper.last`` is its ``(task_loss, logits, y)``.

    Args:
        sample: draws the next batch ``(x, y)`` from the run's generators.
        grad: ``grad(x, y, unroll) -> (loss, task_loss, logits, info)``, leaving the gradients
            in the parameters' ``.grad`` (``engine.forward_backward``).
        opt: the optimizer (``capturable=True`` when ``graphs``).
        window: the log window's device accumulator; each step adds ``terms(loss, info)``.
        generators: the CUDA generators ``sample`` draws from (registered with the graph).
        graphs: record and replay CUDA graphs (else every step is eager, as on a CPU).
        max_ponder: M for an ACT model (its unroll is bounded by it); None for the others.
        record: how a graph is made: ``CudaGraph``, or ``Emulated`` to run the same logic
            eagerly on any device (the tests check it on a CPU).
    """

    def __init__(
        self,
        sample: Callable[[], Batch],
        grad: Callable[[torch.Tensor, torch.Tensor, int | None], tuple],
        opt: torch.optim.Optimizer,
        window: torch.Tensor,
        terms: Callable[[torch.Tensor, dict[str, torch.Tensor]], torch.Tensor],
        generators: list[torch.Generator],
        graphs: bool = False,
        max_ponder: int | None = None,
        record: type[CudaGraph] | type[Emulated] | None = None,
    ) -> None:
        self.sample, self.grad, self.opt = sample, grad, opt
        self.make = record or CudaGraph
        self.window, self.terms, self.generators = window, terms, generators
        self.graphs, self.max_ponder = graphs, max_ponder
        self.last: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self.calls = 0
        self.unroll: int | None = None  # ACT's current U
        self.overflows = 0  # ACT steps redone exactly (for tests and benchmarks)
        self.records = 0  # graphs recorded
        self._graph: CudaGraph | Emulated | None = None  # the whole step, or ACT's gradients
        self._update: CudaGraph | Emulated | None = None  # ACT's update
        self._grads: list[torch.Tensor] = []  # the gradient buffers the graphs update in place
        self._seen = 0  # ACT: the largest N of the eager steps (warm-up and redone ones)
        if graphs and max_ponder is not None:
            device = window.device
            self._terms = torch.zeros_like(window)
            self._overflow = torch.zeros((), dtype=torch.bool, device=device)
            self._nmax = torch.zeros((), device=device)  # the largest N since the last log

    # ---- eager

    def _eager(self, batch: Batch | None = None):
        x, y = self.sample() if batch is None else batch
        loss, task_loss, logits, info = self.grad(x, y, None)
        self.last = (task_loss, logits, y)
        return loss, info

    def _eager_step(self) -> None:
        loss, info = self._eager()
        self.opt.step()
        with torch.no_grad():
            self.window += self.terms(loss, info)
            if self.graphs and self.max_ponder is not None:
                self._seen = max(self._seen, int(info["ponder_steps"].max()))

    def __call__(self) -> None:
        self.calls += 1
        if not self.graphs:
            return self._eager_step()
        if self.calls <= WARMUP:
            if not self.window.is_cuda:
                return self._warm_step()
            side = _capture_stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self._warm_step()
            torch.cuda.current_stream().wait_stream(side)
            return None
        if self._graph is None:
            self._record()
        if self.max_ponder is None:
            self._graph.replay()
            self.last = self._graph.outputs
            return None
        return self._act_step()

    def _warm_step(self) -> None:
        """A warm-up step: eager, and for ACT after the first one the recorded computation."""
        if self.max_ponder is None or self.calls == 1:
            return self._eager_step()
        if self.unroll is None:
            self.unroll = min(self.max_ponder, self._seen + margin(self._seen))
        return self._act_step(warm=True)

    # ---- graphs

    def _record(self) -> None:
        """Record the step's graph(s); a ``RecordError`` if this step cannot be recorded."""
        self._grads = self._current_grads()
        try:
            if self.max_ponder is None:
                self._graph = self.make(self._whole_step, self.generators)
            else:
                if self.unroll is None:
                    self.unroll = min(self.max_ponder, self._seen + margin(self._seen))
                self._graph = self.make(self._act_gradients, self.generators)
                if self._update is None:
                    self._update = self.make(self._act_update, [])
        except RuntimeError as e:
            # No eager fallback: a recording broken off can leave the data generators in their
            # recording mode, and the run would go on drawing wrong batches without a word.
            raise RecordError(
                f"recording the training step as a CUDA graph failed ({e}); "
                "train with --no-cuda-graphs (cuda_graphs: false) and the run resumes"
            ) from e
        if any(a is not b for a, b in zip(self._current_grads(), self._grads, strict=True)):
            raise RecordError("backward replaced the gradient buffers while recording")
        self.records += 1

    def _whole_step(self):
        x, y = self.sample()
        loss, task_loss, logits, info = self.grad(x, y, None)
        self.opt.step()
        with torch.no_grad():
            self.window += self.terms(loss, info)
        return task_loss, logits, y

    def _act_gradients(self):
        x, y = self.sample()
        loss, task_loss, logits, info = self.grad(x, y, self.unroll)
        with torch.no_grad():
            self._terms.copy_(self.terms(loss, info))
            self._overflow.copy_(info["overflow"])
            torch.maximum(self._nmax, info["ponder_steps"].max(), out=self._nmax)
        return x, y, task_loss, logits

    def _act_update(self):
        self.opt.step()
        with torch.no_grad():
            self.window += self._terms

    def _params(self) -> list[torch.Tensor]:
        return [p for group in self.opt.param_groups for p in group["params"]]

    def _current_grads(self) -> list[torch.Tensor]:
        return [p.grad for p in self._params()]

    def _act_step(self, warm: bool = False) -> None:
        """ACT's step from its two graphs, or with ``warm`` from the functions they record,
        called eagerly (a warm-up step); a step that overflowed U is redone exactly."""
        if warm:
            x, y, task_loss, logits = self._act_gradients()
        else:
            self._graph.replay()
            x, y, task_loss, logits = self._graph.outputs
        if bool(self._overflow):  # the one host sync: some sample needed more than U steps
            loss, info = self._eager((x, y))  # the same batch, exactly
            with torch.no_grad():
                if not warm:  # the update graph reads the recorded gradient buffers
                    for p, buf in zip(self._params(), self._grads, strict=True):
                        if p.grad is not buf:
                            buf.copy_(p.grad)
                            p.grad = buf
                self._terms.copy_(self.terms(loss, info))
                need = int(info["ponder_steps"].max())
            # need > U >= every N this window's replays saw (U only grows within a window)
            self._nmax.fill_(need)
            self.overflows += 1
            self._resize(need)
        else:
            self.last = (task_loss, logits, y)
        if warm:
            self._act_update()
        else:
            self._update.replay()

    def _resize(self, need: int) -> None:
        """Set U for a largest N of ``need``; the gradients' graph is recorded again."""
        self.unroll = min(self.max_ponder, need + margin(need))
        self._graph = None

    def logged(self) -> None:
        """A log step has read the window: ACT's unroll may shrink to what the window needed."""
        if not self.graphs or self.max_ponder is None or self.unroll is None:
            return
        need = int(self._nmax)
        self._nmax.zero_()  # the next window starts afresh, also after a redo
        if self._graph is not None and 2 * (need + margin(need)) <= self.unroll:
            self._resize(need)


_STREAMS: dict[torch.device, torch.cuda.Stream] = {}


def _capture_stream() -> torch.cuda.Stream:
    """One side stream per device for the warm-up steps and the recordings: libraries that
    set up per stream (cuBLAS workspaces) then do it while warming up, not while recording."""
    device = torch.device("cuda", torch.cuda.current_device())
    if device not in _STREAMS:
        _STREAMS[device] = torch.cuda.Stream(device)
    return _STREAMS[device]


class CudaGraph:
    """``fn`` recorded as a CUDA graph (not run): ``replay()`` runs its kernels again, drawing
    from ``generators`` as eager calls would, and overwrites ``outputs`` in place."""

    def __init__(self, fn: Callable[[], object], generators: list[torch.Generator]) -> None:
        self.graph = torch.cuda.CUDAGraph()
        for g in generators:
            self.graph.register_generator_state(g)
        before = torch.cuda.current_stream()
        try:
            with torch.cuda.graph(self.graph, stream=_capture_stream()):
                self.outputs = fn()
        except RuntimeError as e:
            # A failed capture_end() leaves the capture stream current: later work (the
            # bench's next case, an eager fallback) must run where it ran before.
            torch.cuda.set_stream(before)
            # After an op that cannot be recorded, ending the capture fails too, and its error
            # ("a previous error during capture") hides the first: raise the first.
            first = e
            while isinstance(first.__context__, RuntimeError):
                first = first.__context__
            raise first from None

    def replay(self) -> None:
        self.graph.replay()


class Emulated:
    """A stand-in for ``CudaGraph`` on any device: ``replay()`` calls ``fn``, and ``outputs``
    are its latest results. The logic around the graphs (ACT's overflow, re-recording) is the
    same, so a CPU can test it; and ``fn`` runs under ``HostData``, so a CPU also finds the
    host-to-device copies that CUDA graph capture refuses."""

    def __init__(self, fn: Callable[[], object], generators: list[torch.Generator]) -> None:
        self.fn, self.outputs = fn, None

    def replay(self) -> None:
        with HostData():
            self.outputs = self.fn()


class CaptureError(RuntimeError):
    """A recorded step made a tensor from host data (``HostData``)."""


# Functions that make a tensor from their first argument's data: from Python numbers or lists
# (or NumPy arrays) the data is on the host, and on a GPU the tensor is a host-to-device copy.
_FROM_DATA = {
    torch.tensor,
    torch.as_tensor,
    torch.asarray,
    torch.from_numpy,
    torch.Tensor.new_tensor,
}
# Methods that move a tensor to a device given as an argument.
_MOVES = {torch.Tensor.to, torch.Tensor.cuda, torch.Tensor.copy_}


class HostData(TorchFunctionMode):
    """Fails, with a ``CaptureError`` naming the call, on what a CUDA graph cannot record: a
    tensor made from Python numbers, lists or NumPy data (``torch.tensor(0.2)``,
    ``torch.as_tensor(lambda_p, device=...)``), and a CPU tensor moved or copied to a device
    (``.to(device)``, ``.cuda()``, ``copy_(cpu_tensor)``). On a GPU each is a copy from
    unpinned host memory, which capture refuses (or, pinned, records a copy of the value seen
    while recording). A step that runs on a CPU is checked for the same calls: there "the
    device" is the CPU, so any explicit move of a CPU tensor counts, as it would be a copy
    from the host on a GPU. Scalars as operands (``x * 0.5``, ``torch.where(m, 0.0, x)``,
    ``torch.full``) are kernel arguments, not copies, and pass.

    What it does not see: device-to-host syncs (``.item()``, ``.tolist()``, a tensor's truth
    value, ``nonzero``, boolean-mask indexing), which capture refuses too, and factory calls
    without ``device=`` (on a CPU they are where everything is). A GPU run finds those.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None) -> Any:
        kwargs = kwargs or {}
        if func in _FROM_DATA:
            data = args[1] if func is torch.Tensor.new_tensor else args[0] if args else None
            if not isinstance(data, torch.Tensor):
                raise CaptureError(
                    f"{_name(func)} of {type(data).__name__} data inside a recorded step: "
                    "a copy from the host, which CUDA graph capture refuses"
                )
            if data.device.type == "cpu" and _target(func, args[1:], kwargs) is not None:
                raise CaptureError(f"{_name(func)} moves a CPU tensor to a device inside a step")
        elif func in _MOVES and args and isinstance(args[0], torch.Tensor):
            if func is torch.Tensor.copy_:
                src = args[1] if len(args) > 1 else kwargs.get("src")
                if isinstance(src, torch.Tensor) and src.device != args[0].device:
                    raise CaptureError("copy_ from a CPU tensor to a device inside a step")
            elif args[0].device.type == "cpu" and (
                func is torch.Tensor.cuda or _target(func, args[1:], kwargs) is not None
            ):
                raise CaptureError(f"{_name(func)} moves a CPU tensor to a device inside a step")
        return func(*args, **kwargs)


def _name(func: Callable) -> str:
    return getattr(func, "__name__", repr(func))


def _target(func: Callable, args: tuple, kwargs: dict) -> object | None:
    """The device a ``to``/``as_tensor`` call names (a device, a string, or a tensor), else
    None: ``.to(torch.float64)`` changes the type only."""
    if kwargs.get("device") is not None:
        return kwargs["device"]
    if func is torch.Tensor.to:
        for a in args:
            if isinstance(a, torch.device | str | torch.Tensor) or type(a) is int:
                return a
    return None
