"""``train.compile``: torch.compile of a model's ``forward``, with a clear error where it cannot
work and the compilation time read back for the log.

The whole model's ``forward`` is compiled in place (``nn.Module.compile``): parameter names and
state dicts are unchanged (checkpoints move freely between compiled and eager runs), and cached
generation (``next_logits``, which calls the submodules directly) stays eager, so decoding's
growing KV caches never trigger recompilation. Training shapes are fixed, so steady state runs
one graph (``tests/test_compile.py`` counts them).
"""

from __future__ import annotations

import shutil
from typing import Any, Callable, Dict, Union

import torch
from torch import nn

Backend = Union[str, Callable[..., Any]]
DEFAULT_BACKEND = "inductor"


class CompileUnavailable(RuntimeError):
    """torch.compile cannot run here as asked (no C compiler for CPU inductor, unsupported Python)."""


def check_compile(device: torch.device, backend: Backend = DEFAULT_BACKEND) -> None:
    """Raise :class:`CompileUnavailable` (one line naming the cause) when ``backend`` cannot
    compile for ``device``: inductor on CPU generates C++ and needs a C compiler on PATH."""
    import torch._dynamo

    try:
        torch._dynamo.eval_frame.check_if_dynamo_supported()
    except RuntimeError as err:
        raise CompileUnavailable(f"train.compile=true: torch.compile is not supported here ({err}); "
                                 "set train.compile=false") from None
    if backend == "inductor" and device.type == "cpu":
        compiler = next((c for c in ("cc", "gcc", "clang") if shutil.which(c)), None)
        if compiler is None:
            raise CompileUnavailable("train.compile=true on CPU needs a C compiler (cc, gcc or "
                                     "clang) on PATH for the inductor backend; install one or set "
                                     "train.compile=false")


def compile_model(model: nn.Module, device: torch.device, backend: Backend = DEFAULT_BACKEND
                  ) -> nn.Module:
    """Compile ``model.forward`` in place (checked by :func:`check_compile` first) and return
    the model. ``backend``: a torch.compile backend name or callable (tests pass a counter)."""
    check_compile(device, backend if isinstance(backend, str) else "custom")
    model.compile(backend=backend, dynamic=False)
    return model


def compile_seconds() -> Dict[str, float]:
    """Seconds torch.compile has spent in this process so far (Dynamo tracing plus the backend,
    forward and the lazily compiled backward) and the number of graphs it produced."""
    from torch._dynamo.utils import compile_times, counters

    names, values = compile_times(repr="csv", aggregate=True)
    times = dict(zip(names, (float(v) for v in values)))
    seconds = times.get("_compile.compile_inner", 0.0) + times.get("backward._backward_impl", 0.0)
    return {"seconds": seconds, "graphs": float(counters["stats"]["unique_graphs"])}
