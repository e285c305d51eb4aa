"""Leave a model exactly as it was found: the guard around every saliency computation."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["model_state_guard", "uncompiled"]

_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


@contextmanager
def model_state_guard(model: nn.Module, *, protect_grads: bool) -> Iterator[None]:
    """Put ``model`` in eval mode for the duration, then restore what saliency code may have touched.

    Restored in ``finally`` (errors propagate): the module tree and its forward/backward hooks (third-party
    code may swap layers or leak hooks when it fails), no instance attribute added to a module (attribution
    libraries leave some behind; attributes that existed keep their current value), every submodule's
    ``training`` flag, every parameter's ``requires_grad``, every buffer, the global RNG states of torch (CPU and
    CUDA), numpy and ``random`` (a model may draw from any of them in eval mode), and, when ``protect_grads`` is
    set, every parameter's ``.grad`` (the same tensor object with its old values, or ``None``). Code that only
    calls ``torch.autograd.grad`` never writes ``.grad`` and can skip that copy.

    Modes: entering calls ``model.eval()`` and leaving calls ``model.train(mode)`` with the root's old mode, then
    ``module.train(flag)`` on every submodule (in ``model.modules()`` order, parents first) whose flag then differs
    from the one it had: the calls the user's own code would make, so a module whose ``train()`` has side effects
    (loralib-style layers that merge their weights in eval mode and unmerge them in train mode) undoes them. Setting
    the ``training`` flags directly would leave such weights merged.

    Buffers: a forward pass in eval mode can still change them. Examples are a step counter a model keeps,
    and QAT ``FakeQuantize`` observers after ``torch.ao.quantization.prepare_qat``, which update ``scale``,
    ``zero_point`` and their min/max statistics whatever the mode. Each buffer is cloned once on entry. On exit the
    same tensor object is put back in its module and gets its old shape (observers ``resize_`` theirs) and values.
    Only buffers whose values changed are written, and through ``.data`` (which has its own version counter), so a
    buffer that autograd saved in a training forward pass (BatchNorm's running statistics) keeps its version and a
    ``loss.backward()`` after the guard still works. Inference tensors are skipped: no code outside inference mode
    can change them.
    """
    modules = list(model.modules())
    training = [(module, module.training) for module in modules]
    # Third-party CAM code may swap submodules (AblationCAM) or leave hooks behind when it fails half-way.
    children = [(module, dict(module._modules)) for module in modules]
    hooks = [(module, name, dict(getattr(module, name))) for module in modules for name in _HOOK_DICTS]
    # Attribution libraries leave attributes behind (Captum's DeepLift `input`/`output` tensors, LRP's
    # `activations`; zennit's canonizers a replaced `forward`, should they fail half-way): removed on exit.
    attributes = [(module, set(vars(module))) for module in modules]
    requires_grad = [(param, param.requires_grad) for param in model.parameters()]
    grads: list[tuple[nn.Parameter, Tensor | None, Tensor | None]] = []
    if protect_grads:
        for param in model.parameters():
            grad = param.grad
            grads.append((param, grad, None if grad is None else grad.detach().clone()))
    buffers = [(module, dict(module._buffers)) for module in modules]
    buffer_values = [
        (buffer, buffer.detach().clone())
        for buffer in {id(b): b for _, saved in buffers for b in saved.values() if b is not None}.values()
        if not buffer.is_inference()
    ]
    torch_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    python_rng = random.getstate()
    numpy_rng = np.random.get_state()  # noqa: NPY002 (the legacy global RNG is the one models draw from)
    model.eval()
    try:
        with _run_eagerly(model):
            yield
    finally:
        for module, saved_children in children:
            if module._modules != saved_children:
                module._modules.clear()
                module._modules.update(saved_children)
        for module, name, saved_hooks in hooks:
            current = getattr(module, name)
            if current != saved_hooks:
                current.clear()
                current.update(saved_hooks)
        for module, names in attributes:
            for name in set(vars(module)) - names:
                delattr(module, name)
        _restore_modes(model, training)
        for module, saved_buffers in buffers:
            current_buffers = module._buffers
            if current_buffers.keys() != saved_buffers.keys() or any(
                current_buffers[name] is not buffer for name, buffer in saved_buffers.items()
            ):
                current_buffers.clear()
                current_buffers.update(saved_buffers)
        with torch.no_grad():
            for buffer, saved_values in buffer_values:
                if buffer.shape != saved_values.shape:
                    buffer.resize_(saved_values.shape)
                elif _same_values(buffer, saved_values):
                    continue
                buffer.data.copy_(saved_values)
        for param, flag in requires_grad:
            param.requires_grad_(flag)
        for param, grad, values in grads:
            if grad is not None and values is not None:
                with torch.no_grad():
                    grad.copy_(values)
            param.grad = grad
        torch.set_rng_state(torch_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
        random.setstate(python_rng)
        np.random.set_state(numpy_rng)  # noqa: NPY002


def uncompiled(model: nn.Module) -> nn.Module:
    """The module ``torch.compile(module)`` wrapped (its ``_orig_mod``), or ``model`` itself when not compiled.

    Its submodule names are the user's (``features.5``, not ``_orig_mod.features.5``) and it runs eagerly.
    """
    return model._orig_mod if _is_compiled(model) else model  # type: ignore[return-value]


def _is_compiled(module: nn.Module) -> bool:
    # By name: importing torch._dynamo to check the class would cost every caller its import time.
    return type(module).__name__ == "OptimizedModule" and isinstance(getattr(module, "_orig_mod", None), nn.Module)


@contextmanager
def _run_eagerly(model: nn.Module) -> Iterator[None]:
    """Run compiled code eagerly for the duration (decision 32).

    torch >= 2.6: ``torch.compiler.set_stance("force_eager")`` (every compiled module and function). Older torch
    has no stance: each compiled module in ``model`` gets its original module's ``__call__`` as ``forward`` (the
    attribute ``torch.compile`` sets), put back on exit; compiled functions called by the model stay compiled.
    """
    set_stance = getattr(torch.compiler, "set_stance", None)
    if set_stance is not None:
        with set_stance("force_eager"):
            yield
        return
    compiled = [module for module in model.modules() if _is_compiled(module) and "forward" in vars(module)]
    forwards = [(module, vars(module)["forward"]) for module in compiled]
    try:
        for module in compiled:
            original = module._orig_mod
            assert isinstance(original, nn.Module)
            module.forward = original.__call__  # type: ignore[method-assign]
        yield
    finally:
        for module, forward in forwards:
            module.forward = forward


def _restore_modes(model: nn.Module, training: list[tuple[nn.Module, bool]]) -> None:
    """``model.train(mode)``, then ``module.train(flag)`` where a submodule's flag still differs, parents first."""
    if not training:
        return
    root, root_mode = training[0]
    root.train(root_mode)
    for module, flag in training[1:]:
        if module.training != flag:
            module.train(flag)


def _same_values(current: Tensor, saved: Tensor) -> bool:
    """Bit-for-bit equal (NaN equal to NaN), so an unchanged buffer is not written."""
    if current.dtype != saved.dtype:
        return False
    if current.is_floating_point() or current.is_complex():
        return bool(torch.equal(current, saved)) or bool(
            ((current == saved) | (torch.isnan(current) & torch.isnan(saved))).all()
        )
    return bool(torch.equal(current, saved))
