"""Leave a model exactly as it was found: the guard around every saliency computation."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

__all__ = ["model_state_guard"]

_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


@contextmanager
def model_state_guard(model: nn.Module, *, protect_grads: bool) -> Iterator[None]:
    """Put ``model`` in eval mode for the duration, then restore what saliency code may have touched.

    Restored in ``finally`` (errors propagate): the module tree and its forward/backward hooks (third-party
    code may swap layers or leak hooks when it fails), every submodule's ``training`` flag, every parameter's
    ``requires_grad``, the global RNG states of torch (CPU and CUDA) and ``random`` (numpy's is
    guarded by the pytorch-grad-cam adapter, the only code here that could draw from it), and, when
    ``protect_grads`` is set, every parameter's ``.grad`` (the same tensor object with its old values, or
    ``None``). Code that only calls ``torch.autograd.grad`` never writes ``.grad`` and can skip that copy.
    """
    modules = list(model.modules())
    training = [(module, module.training) for module in modules]
    # Third-party CAM code may swap submodules (AblationCAM) or leave hooks behind when it fails half-way.
    children = [(module, dict(module._modules)) for module in modules]
    hooks = [(module, name, dict(getattr(module, name))) for module in modules for name in _HOOK_DICTS]
    requires_grad = [(param, param.requires_grad) for param in model.parameters()]
    grads: list[tuple[nn.Parameter, Tensor | None, Tensor | None]] = []
    if protect_grads:
        for param in model.parameters():
            grad = param.grad
            grads.append((param, grad, None if grad is None else grad.detach().clone()))
    torch_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    python_rng = random.getstate()
    model.eval()
    try:
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
        for module, flag in training:
            module.training = flag
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
