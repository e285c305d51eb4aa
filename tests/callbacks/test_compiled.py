"""``torch.compile``: EVET and the callback explain compiled models eagerly, with the eager model's values, and leave
the compiled code in use (decision 32).

The models are compiled with a counting Dynamo backend (:func:`counting_backend`): Dynamo traces the module as it
would for inductor (the failure being guarded against happened in Dynamo's tracing of our hooks), while the
graphs run as plain FX code, so a compile costs about a second instead of inductor's ~20 s on a CPU.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from evet_lightning import EVET, EVETCallback
from tests._helpers.models import Classifier, tiny_cnn
from tests._helpers.trainer import TrainerFactory
from tests.callbacks._modules import shapes_loader

#: How many graphs Dynamo compiled and how many times compiled graphs ran, since the last reset.
COUNTS = {"graphs": 0, "runs": 0}


def counting_backend(graph: torch.fx.GraphModule, example_inputs: list[Tensor]) -> Callable[..., Any]:
    """A Dynamo backend that runs the traced graph as is and counts compilations and runs."""
    COUNTS["graphs"] += 1

    def run(*args: Any) -> Any:
        COUNTS["runs"] += 1
        return graph.forward(*args)

    return run


@pytest.fixture(autouse=True)
def _fresh_dynamo() -> Iterator[None]:
    torch._dynamo.reset()
    COUNTS.update(graphs=0, runs=0)
    yield
    torch._dynamo.reset()


class CompiledNetClassifier(Classifier):
    """:class:`Classifier` whose network is compiled inside the module (``self.model = torch.compile(...)``), the
    pattern Lightning's examples show. ``compiled=False`` keeps the same weights eager."""

    def __init__(self, compiled: bool = True) -> None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            super().__init__()
        if compiled:
            self.model = torch.compile(self.model, backend=counting_backend)  # type: ignore[assignment]

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


def test_evet_on_a_compiled_model_equals_the_eager_model() -> None:
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    eager = EVET(tiny_cnn(), target_layers="features.5", alpha="auto")(images)
    compiled_model = torch.compile(tiny_cnn(), backend=counting_backend)
    outer = nn.Sequential(torch.compile(tiny_cnn(), backend=counting_backend))  # a compiled submodule
    # Layer names as in the eager model; inside a compiled submodule, with or without its `_orig_mod` step.
    for model, layer in ((compiled_model, "features.5"), (outer, "0.features.5"), (outer, "0._orig_mod.features.5")):
        result = EVET(model, target_layers=layer, alpha="auto")(images)
        torch.testing.assert_close(result.saliency, eager.saliency, atol=1e-6, rtol=0)
        torch.testing.assert_close(result.original, eager.original, atol=1e-6, rtol=0)
        torch.testing.assert_close(result.clean_scores, eager.clean_scores, atol=1e-6, rtol=0)
        assert result.alpha == eager.alpha
    assert COUNTS == {"graphs": 0, "runs": 0}  # explained eagerly: nothing was compiled
    with torch.no_grad():
        torch.testing.assert_close(compiled_model(images), tiny_cnn()(images))
    assert COUNTS["graphs"] == 1 and COUNTS["runs"] == 1  # the compiled model still compiles and runs compiled


def test_older_torch_without_set_stance_runs_compiled_submodules_eagerly(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch < 2.6 has no ``set_stance``: each compiled module gets its original module's call while explained."""
    monkeypatch.delattr(torch.compiler, "set_stance")
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    inner = torch.compile(tiny_cnn(), backend=counting_backend)
    forward = inner.forward
    result = EVET(nn.Sequential(inner), target_layers="0._orig_mod.features.5", alpha=0.5)(images)
    eager = EVET(tiny_cnn(), target_layers="features.5", alpha=0.5)(images)
    torch.testing.assert_close(result.saliency, eager.saliency, atol=1e-6, rtol=0)
    assert inner.forward is forward and COUNTS["graphs"] == 0


def test_callback_explains_a_network_compiled_inside_the_module(make_trainer: TrainerFactory) -> None:
    """``trainer.validate`` logs the eager module's values; ``fit`` trains through the compiled network after an
    explained epoch."""
    reference = make_trainer([EVETCallback(num_samples=4, log_images=0, alpha=0.5)])
    expected = reference.validate(CompiledNetClassifier(compiled=False), shapes_loader(4), verbose=False)[0]

    module = CompiledNetClassifier()
    trainer = make_trainer([EVETCallback(num_samples=4, log_images=0, alpha=0.5)])
    validated = trainer.validate(module, shapes_loader(4), verbose=False)[0]
    assert validated.keys() == expected.keys() and "evet/evet/average_drop" in validated
    for key, value in expected.items():
        assert validated[key] == pytest.approx(value, abs=1e-6), key

    callback = EVETCallback(num_samples=4, log_images=0, alpha=0.5)
    trainer = make_trainer([callback], max_epochs=2, num_sanity_val_steps=0)
    trainer.fit(module, shapes_loader(8), shapes_loader(4))
    assert callback.epochs_explained == 2
    # Training steps of both epochs (4) ran the compiled graphs, including those after the first explanation.
    assert COUNTS["graphs"] >= 1 and COUNTS["runs"] >= 4
    assert isinstance(module.model, torch._dynamo.eval_frame.OptimizedModule)
