"""The models of the tests: tiny randomly initialized networks (built in milliseconds, no weights downloaded), the
LightningModules of the callback tests, the classifiers the CLI tests load, and a SmallCNN trained in seconds.

Classes are module level: ``ddp_spawn`` pickles the LightningModules by reference.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as L
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from evet_lightning.data import SyntheticShapes
from evet_lightning.functional.augment import background_dropout
from evet_lightning.models import SmallCNN

__all__ = [
    "IMAGE_SIZE",
    "NUM_CLASSES",
    "Classifier",
    "DictClassifier",
    "ExampleInputClassifier",
    "FrozenClassifier",
    "LeftRightModel",
    "LitClassifier",
    "MLPClassifier",
    "SharedActivationCNN",
    "TinyCNN",
    "TinyViT",
    "mlp",
    "scores_cnn",
    "shared_activation_cnn",
    "softmax_cnn",
    "stack_dataset",
    "tiny_cnn",
    "tiny_vit",
    "torchvision_vit",
    "train_shapes_model",
    "untrained_small_cnn",
]

#: The image size and class count of the callback tests' classifiers and of the CLI tests' models.
IMAGE_SIZE = 32
NUM_CLASSES = 4


# ----------------------------------------------------------------------------------------------------------------
# A SmallCNN trained in seconds on the synthetic shapes, for tests that need a model that really learned.


def stack_dataset(dataset: SyntheticShapes) -> tuple[Tensor, Tensor, Tensor]:
    """All items of ``dataset`` as ``(images (N, 3, H, W), labels (N,), masks (N, H, W))``."""
    images, labels, masks = zip(*(dataset[i] for i in range(len(dataset))), strict=True)
    return torch.stack(images), torch.stack(labels), torch.stack(masks)


def train_shapes_model(
    seed: int = 0,
    epochs: int = 4,
    image_size: int | tuple[int, int] = 64,
    num_classes: int = 4,
    *,
    num_samples: int = 2048,
    width: int = 16,
    lr: float = 1e-2,
    batch_size: int = 64,
) -> SmallCNN:
    """Train a :class:`SmallCNN` with a plain loop (Adam, one-cycle schedule) on ``SyntheticShapes(seed=seed)``.

    Half the training images get :func:`background_dropout`, as :class:`ShapesClassifier` does, so the model is
    meaningful on perturbed images (faithfulness metrics).

    With the defaults (width 16, 4 epochs of 2048 images) it reaches 99-100% accuracy on unseen shapes in about
    12 s of CPU time. The global RNG state and thread count are left as found. Returns the model in eval mode,
    on the CPU, with ``requires_grad`` on and no ``.grad``.
    """
    # One intra-op thread, restored afterwards: the convolutions are small, and on cores shared with other work
    # OpenMP spin-waits made two threads about 3x slower in wall time (73 s vs 25 s, 12 s of CPU when idle).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_set = SyntheticShapes(num_samples=num_samples, image_size=image_size, num_classes=num_classes, seed=seed)
        images, labels, masks = stack_dataset(train_set)
        # channels_last makes the CPU convolutions about twice as fast; the model is handed back contiguous.
        images = images.contiguous(memory_format=torch.channels_last)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = SmallCNN(num_classes=num_classes, width=width).to(memory_format=torch.channels_last)
            optimizer = torch.optim.Adam(model.parameters(), lr=lr)
            steps_per_epoch = -(-num_samples // batch_size)
            scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=epochs * steps_per_epoch)
            generator = torch.Generator().manual_seed(seed)
            model.train()
            for _ in range(epochs):
                order = torch.randperm(num_samples, generator=generator)
                for start in range(0, num_samples, batch_size):
                    batch = order[start : start + batch_size]
                    inputs = background_dropout(images[batch], masks[batch], 0.5, generator=generator)
                    loss = F.cross_entropy(model(inputs), labels[batch])
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    scheduler.step()
    finally:
        torch.set_num_threads(threads)
    model.zero_grad(set_to_none=True)
    return model.to(memory_format=torch.contiguous_format).eval()


# ----------------------------------------------------------------------------------------------------------------
# Tiny randomly initialized models of the saliency tests.


class TinyCNN(nn.Module):
    """Conv-ReLU-pool-Conv-BN-ReLU, then a 2x2 adaptive pool and a linear head (spatially varying gradients).

    ``features[5]`` (the last ReLU) is the natural CAM target; ``features[0]`` is an earlier conv layer.
    Works on any input of at least 2x2 pixels and any channel count given as ``in_channels``.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 3, width: int = 4, inplace: bool = False) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.ReLU(inplace=inplace),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(inplace=inplace),
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d((2, 2)), nn.Flatten(), nn.Linear(8 * width, num_classes))

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.features(images))


def tiny_cnn(seed: int = 0, **kwargs: int | bool) -> TinyCNN:
    """A :class:`TinyCNN` with seeded weights and non-trivial BatchNorm statistics, in eval mode.

    The global RNG state is left untouched.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = TinyCNN(**kwargs)  # type: ignore[arg-type]
        bn = model.features[4]
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 1.5)
        with torch.no_grad():
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.1, 0.1)
    return model.eval()


class LeftRightModel(nn.Module):
    """Two classes whose evidence lies in opposite halves of the image, so a horizontal flip swaps the argmax.

    ``features`` (a 1x1 conv) makes channel 0 = the image and channel 1 = 1 - the image; the logit of class 0
    is 4 x the mean of channel 0 over the left half, that of class 1 is 4 x (1 - the mean of channel 1 over the
    right half), i.e. 4 x the mean of the image there. Grad-CAM for class 0 is channel 0 (the image); for class
    1 the channel weight is negative and the map is all zeros. The input gradient (``"Gradient"``) of class 0
    lies in the left half, that of class 1 in the right half.
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Conv2d(1, 2, 1)
        with torch.no_grad():
            self.features.weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
            self.features.bias.copy_(torch.tensor([0.0, 1.0]))

    def forward(self, images: Tensor) -> Tensor:
        maps = self.features(images)
        half = maps.shape[-1] // 2
        left = maps[:, 0, :, :half].mean(dim=(1, 2))
        right = maps[:, 1, :, half:].mean(dim=(1, 2))
        return 4.0 * torch.stack([left, 1.0 - right], dim=1)


class SharedActivationCNN(nn.Module):
    """One ``SiLU`` instance, ``body.act``, applied after the stem and again after the head conv (as EfficientNet ports
    do); ``separate=True`` gives the second use its own module, ``body.head_act``, with identical weights elsewhere.

    The second call's output (``(B, 6, H/2, W/2)``) is the last feature map; the first call's is ``(B, 4, H, W)``.
    ``vector_last=True`` applies ``body.act`` a third time, to the pooled ``(B, 6)`` vector.
    """

    def __init__(self, separate: bool = False, vector_last: bool = False) -> None:
        super().__init__()
        self.body = nn.Module()
        self.body.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.body.head = nn.Conv2d(4, 6, 3, padding=1, stride=2)
        self.body.act = nn.SiLU()
        self.body.head_act = nn.SiLU() if separate else self.body.act
        self.fc = nn.Linear(6, 3)
        self.vector_last = vector_last

    def forward(self, images: Tensor) -> Tensor:
        x = self.body.act(self.body.stem(images))
        x = self.body.head_act(self.body.head(x)).mean(dim=(2, 3))
        if self.vector_last:
            x = self.body.act(x)
        return self.fc(x)


def shared_activation_cnn(seed: int = 0, **kwargs: bool) -> SharedActivationCNN:
    """A seeded :class:`SharedActivationCNN` in eval mode (the global RNG is left untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return SharedActivationCNN(**kwargs).eval()


class TinyViT(nn.Module):
    """A one-block ViT: ``prefix_tokens`` learned tokens, then 4 x 4 patches; pre-norm attention; head on token 0.

    ``blocks.0.norm1`` is what a CAM should explain (the final ``norm`` has zero gradient on the patch tokens).
    ``declare_prefix``: set ``num_prefix_tokens`` as timm does, so the tokens can be read without a
    ``reshape_transform``; without it nothing says how many tokens precede the patches.
    """

    def __init__(
        self,
        prefix_tokens: int = 1,
        dim: int = 24,
        image_size: int = 16,
        num_classes: int = 3,
        declare_prefix: bool = True,
    ) -> None:
        super().__init__()
        if declare_prefix:
            self.num_prefix_tokens = prefix_tokens
        self.patch_embed = nn.Conv2d(3, dim, 4, stride=4)
        self.prefix = nn.Parameter(torch.randn(1, prefix_tokens, dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, prefix_tokens + (image_size // 4) ** 2, dim) * 0.02)
        self.blocks = nn.Sequential(_Block(dim))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, images: Tensor) -> Tensor:
        tokens = self.patch_embed(images).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.prefix.expand(tokens.shape[0], -1, -1), tokens], dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(tokens))[:, 0])


class _Block(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, num_heads=2, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, tokens: Tensor) -> Tensor:
        normed = self.norm1(tokens)
        tokens = tokens + self.attn(normed, normed, normed, need_weights=False)[0]
        return tokens + self.mlp(self.norm2(tokens))


def tiny_vit(seed: int = 0, **kwargs: int | bool) -> TinyViT:
    """A seeded :class:`TinyViT` in eval mode (the global RNG is left untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return TinyViT(**kwargs).eval()


# ----------------------------------------------------------------------------------------------------------------
# LightningModules of the EVETCallback tests.


class Classifier(pl.LightningModule):
    """A tiny SmallCNN (BatchNorm, 4 blocks) with dropout before the head, trained with SGD.

    Args:
        width: SmallCNN width.
        freeze_backbone: set ``requires_grad=False`` on ``features`` (a frozen backbone).
        eval_block: leave ``features.block1`` in eval mode during training, on purpose (a frozen BatchNorm).
    """

    def __init__(self, width: int = 4, freeze_backbone: bool = False, eval_block: bool = False) -> None:
        super().__init__()
        self.model = SmallCNN(num_classes=NUM_CLASSES, width=width)
        self.dropout = nn.Dropout(0.3)
        self.eval_block = eval_block
        self.training_steps = 0
        if freeze_backbone:
            self.model.features.requires_grad_(False)

    def forward(self, x: Tensor) -> Tensor:
        features = torch.flatten(self.model.pool(self.model.features(x)), 1)
        return self.model.classifier(self.dropout(features))

    def on_train_epoch_start(self) -> None:
        if self.eval_block:
            self.model.features.block1.eval()

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        self.training_steps += 1
        loss = F.cross_entropy(self(batch[0]), batch[1])
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val_loss", F.cross_entropy(self(batch[0]), batch[1]))

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD((p for p in self.parameters() if p.requires_grad), lr=0.05, momentum=0.9)


class ExampleInputClassifier(Classifier):
    """A classifier with ``example_input_array``: the target layer is resolved in ``setup``."""

    def __init__(self) -> None:
        super().__init__()
        self.example_input_array = torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE)


class MLPClassifier(Classifier):
    """No spatial layer at all (:func:`mlp`): a CAM has nothing to explain."""

    def __init__(self) -> None:
        super().__init__()
        self.mlp = mlp()

    def forward(self, x: Tensor) -> Tensor:
        return self.mlp(x)


class DictClassifier(Classifier):
    """Trains and validates on ``{"image", "label"}`` batches."""

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return super().training_step((batch["image"], batch["label"]), batch_idx)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        super().validation_step((batch["image"], batch["label"]), batch_idx)


class FrozenClassifier(Classifier):
    """Trains without changing anything (lr 0, whole model in eval): its fit-validation equals plain validation."""

    def on_train_epoch_start(self) -> None:
        self.eval()

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.0)


class LitClassifier(L.LightningModule):
    """A tiny SmallCNN as a ``lightning.pytorch`` module (for the ``lightning.pytorch.Trainer``); no dropout."""

    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.model = SmallCNN(num_classes=NUM_CLASSES, width=width)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return F.cross_entropy(self(batch[0]), batch[1])

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val_loss", F.cross_entropy(self(batch[0]), batch[1]))

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.05)


# ----------------------------------------------------------------------------------------------------------------
# Classifiers for IMAGE_SIZE images and NUM_CLASSES classes, which the CLI tests load through tests/cli/_factories.py.


def mlp() -> nn.Sequential:
    """A classifier with no spatial layer (flatten, linear): a CAM has nothing to explain. Not seeded."""
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * IMAGE_SIZE * IMAGE_SIZE, NUM_CLASSES))


def untrained_small_cnn() -> SmallCNN:
    """An untrained :class:`SmallCNN` (width 4), the same weights on every call: it seeds the global RNG with 0."""
    torch.manual_seed(0)
    return SmallCNN(num_classes=NUM_CLASSES, width=4)


def softmax_cnn() -> nn.Sequential:
    """:func:`untrained_small_cnn` followed by a softmax: it outputs probabilities, not logits."""
    return nn.Sequential(untrained_small_cnn(), nn.Softmax(dim=1))


class _ScoresOnly(nn.Module):
    """:func:`untrained_small_cnn` whose forward returns ``{"scores": logits}``: no key or attribute EVET
    recognises."""

    def __init__(self) -> None:
        super().__init__()
        self.net = untrained_small_cnn()

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        return {"scores": self.net(images)}


def scores_cnn() -> nn.Module:
    """A classifier whose output is ``{"scores": logits}`` (it needs an output transform)."""
    return _ScoresOnly()


def torchvision_vit() -> nn.Module:
    """A 2-block torchvision ViT for 32 px images: 8 px patches, a 4 x 4 grid of 16 channels and a class token;
    the same weights on every call (it seeds the global RNG with 0)."""
    from torchvision.models import VisionTransformer

    torch.manual_seed(0)
    return VisionTransformer(
        image_size=IMAGE_SIZE,
        patch_size=8,
        num_layers=2,
        num_heads=2,
        hidden_dim=16,
        mlp_dim=32,
        num_classes=NUM_CLASSES,
    )


# ----------------------------------------------------------------------------------------------------------------
# Multi-label (issue 23).


def train_multi_label_model(seed: int = 0, epochs: int = 6, num_samples: int = 512, width: int = 8) -> SmallCNN:
    """A :class:`SmallCNN` trained with ``BCEWithLogitsLoss`` on ``MultiObjectShapes(seed=seed)`` at 32 px, 4 classes
    (Adam, one-cycle; about 3 s on one core, validation mAP 0.90 against 0.63 by chance, decision 50). Eval mode,
    no ``.grad``; the global RNG state is left as found."""
    from evet_lightning.data import MultiObjectShapes

    dataset = MultiObjectShapes(num_samples=num_samples, image_size=IMAGE_SIZE, num_classes=NUM_CLASSES, seed=seed)
    images, labels, _ = (torch.stack(part) for part in zip(*(dataset[i] for i in range(num_samples)), strict=True))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small convolutions: one thread is faster on shared cores (train_shapes_model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SmallCNN(num_classes=NUM_CLASSES, width=width)
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
        steps = -(-num_samples // 32)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-2, total_steps=epochs * steps)
        model.train()
        for _ in range(epochs):
            order = torch.randperm(num_samples)
            for step in range(steps):
                batch = order[step * 32 : (step + 1) * 32]
                optimizer.zero_grad()
                F.binary_cross_entropy_with_logits(model(images[batch]), labels[batch]).backward()
                optimizer.step()
                schedule.step()
    torch.set_num_threads(threads)
    model.zero_grad(set_to_none=True)
    return model.eval()


class MultiLabelClassifier(pl.LightningModule):
    """A LightningModule around a multi-label network (logits of independent sigmoids); validation logs the BCE of
    multi-hot labels (and nothing for single labels)."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.model = network

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        if batch[1].ndim == 2:
            self.log("val_loss", F.binary_cross_entropy_with_logits(self(batch[0]), batch[1].float()))
