"""Model builders, registered by name so an architecture dict can be rebuilt from JSON."""

import inspect
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from app.ml.forest import build_forest

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "leaky_relu": nn.LeakyReLU,
    "silu": nn.SiLU,
}


class MLP(nn.Module):
    """A feature trunk followed by a linear head; transfer strategies swap or freeze the parts."""

    def __init__(self, trunk: nn.Sequential, head: nn.Linear) -> None:
        super().__init__()
        self.trunk = trunk
        self.head = head

    @property
    def feature_dim(self) -> int:
        """Width of the features the head reads."""
        return self.head.in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (classification) or standardised values (regression), shape (n, output_dim)."""
        return self.head(self.trunk(x))


def build_mlp(
    input_dim: int,
    output_dim: int,
    *,
    hidden_layers: list[int],
    dropout: float = 0.0,
    activation: str = "relu",
) -> MLP:
    """An MLP with Linear, activation and Dropout per hidden layer, then a Linear head."""
    _check_dims(input_dim, output_dim)
    if activation not in ACTIVATIONS:
        raise ValueError(
            f"unknown activation {activation!r}; expected one of {sorted(ACTIVATIONS)}"
        )
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    if not isinstance(hidden_layers, list | tuple):
        raise ValueError(f"hidden_layers must be a list of sizes, got {hidden_layers!r}")
    layers: list[nn.Module] = []
    width = input_dim
    for size in hidden_layers:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"hidden layer sizes must be positive integers, got {size!r}")
        # Dropout is kept even at p=0 so every MLP with the same layers has the same structure.
        layers += [nn.Linear(width, size), ACTIVATIONS[activation](), nn.Dropout(dropout)]
        width = size
    return MLP(nn.Sequential(*layers), nn.Linear(width, output_dim))


class CNN(nn.Module):
    """Convolutional blocks and dense layers as the trunk, then a linear head, like `MLP`.

    It reads images flattened to (n, C·H·W), the layout the training loop and the image
    preprocessing use, and restores their shape first; (n, C, H, W) input works too.
    """

    def __init__(self, trunk: nn.Sequential, head: nn.Linear, input_shape: list[int]) -> None:
        super().__init__()
        self.trunk = trunk
        self.head = head
        self.input_shape = list(input_shape)

    @property
    def input_dim(self) -> int:
        """Number of values in one image, C·H·W."""
        return int(math.prod(self.input_shape))

    @property
    def feature_dim(self) -> int:
        """Width of the features the head reads."""
        return self.head.in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (classification) or standardised values (regression), shape (n, output_dim)."""
        return self.head(self.trunk(x))


class _AsImages(nn.Module):
    """Reshape (n, C·H·W) or (n, C, H, W) input to (n, C, H, W); it holds no parameters."""

    def __init__(self, input_shape: list[int]) -> None:
        super().__init__()
        self.input_shape = tuple(input_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], *self.input_shape)


# The dense layers of a CNN read at most this many convolutional features; more would make
# the first dense layer the bulk of the model (add a pooling block instead).
MAX_CNN_FEATURES = 65_536


def cnn_feature_shape(input_shape: list[int], channels: list[int]) -> list[int]:
    """(channels, height, width) after the convolutional blocks; ValueError if it is unusable.

    Every block halves height and width (2x2 max pooling, rounding down).
    """
    if len(input_shape) != 3 or any(
        isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in input_shape
    ):
        raise ValueError(f"input_shape must be [channels, height, width], got {input_shape!r}")
    if not isinstance(channels, list | tuple) or not channels:
        raise ValueError(f"channels must be a non-empty list of sizes, got {channels!r}")
    for size in channels:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"channel sizes must be positive integers, got {size!r}")
    _, height, width = input_shape
    depth = len(channels)
    out_h, out_w = height >> depth, width >> depth
    if out_h < 1 or out_w < 1:
        fits = max(0, min(height, width).bit_length() - 1)
        raise ValueError(
            f"{height}x{width} images are too small for {depth} convolutional blocks: each "
            f"block halves height and width, leaving {out_h}x{out_w}; use at most {fits} "
            "entries in `channels`, or larger images"
        )
    features = channels[-1] * out_h * out_w
    if features > MAX_CNN_FEATURES:
        raise ValueError(
            f"the convolutional blocks leave {channels[-1]}x{out_h}x{out_w} = {features} "
            f"features for the dense layers, more than {MAX_CNN_FEATURES}; add a block to "
            "`channels` (each halves height and width) or use fewer channels in the last one"
        )
    return [channels[-1], out_h, out_w]


def build_cnn(
    input_dim: int,
    output_dim: int,
    *,
    input_shape: list[int],
    channels: list[int],
    kernel_size: int = 3,
    hidden_layers: list[int],
    dropout: float = 0.0,
    activation: str = "relu",
    batch_norm: bool = False,
) -> CNN:
    """Per channel count a block Conv2d (same padding), [BatchNorm2d], activation, MaxPool2d(2);
    then Flatten, the hidden dense layers as in the MLP, and a Linear head."""
    _check_dims(input_dim, output_dim)
    feature_shape = cnn_feature_shape(input_shape, channels)
    if input_dim != math.prod(input_shape):
        raise ValueError(f"input_dim {input_dim} does not match input_shape {input_shape}")
    if activation not in ACTIVATIONS:
        raise ValueError(
            f"unknown activation {activation!r}; expected one of {sorted(ACTIVATIONS)}"
        )
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1:
        raise ValueError(f"kernel_size must be a positive integer, got {kernel_size!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    layers: list[nn.Module] = [_AsImages(input_shape)]
    in_channels = input_shape[0]
    for out_channels in channels:
        layers.append(nn.Conv2d(in_channels, out_channels, kernel_size, padding="same"))
        if batch_norm:
            layers.append(nn.BatchNorm2d(out_channels))
        layers += [ACTIVATIONS[activation](), nn.MaxPool2d(2)]
        in_channels = out_channels
    layers.append(nn.Flatten())
    dense = build_mlp(
        math.prod(feature_shape),
        output_dim,
        hidden_layers=hidden_layers,
        dropout=dropout,
        activation=activation,
    )
    return CNN(nn.Sequential(*layers, *dense.trunk), dense.head, input_shape)


class Ensemble(nn.Module):
    """Several trained models served as one: the weighted mean of their class probabilities
    (returned as log-probabilities, whose softmax is that mean) or of their regression outputs.

    Each member may read its inputs on another scaling than the version's (`auto` blends
    candidates trained on the source's and on the target's standardisation): member i reads
    `x * input_scale[i] + input_shift[i]`, an exact per-input affine map between the two.
    """

    weights: torch.Tensor
    input_scale: torch.Tensor
    input_shift: torch.Tensor

    def __init__(self, members: list[nn.Module], weights: list[float], combine: str, width: int):
        super().__init__()
        if combine not in ENSEMBLE_COMBINE:
            raise ValueError(f"combine must be one of {ENSEMBLE_COMBINE}, got {combine!r}")
        if not members or len(weights) != len(members) or min(weights) <= 0:
            raise ValueError("an ensemble needs members and one positive weight for each")
        self.members = nn.ModuleList(members)
        self.combine = combine
        total = float(sum(weights))
        self.register_buffer("weights", torch.tensor([w / total for w in weights]))
        self.register_buffer("input_scale", torch.ones(len(members), width))
        self.register_buffer("input_shift", torch.zeros(len(members), width))
        self.register_load_state_dict_post_hook(lambda module, _: module.forget_stacks())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        exporting = torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()
        if self.training or exporting or torch.is_grad_enabled():
            # Exports trace the plain loop: one graph of the members as they are declared.
            return self._finish(self._mean_of(x, range(len(self.members))))
        groups, alone = self._stacks()
        total = self._mean_of(x, alone) if alone else None
        for stack in groups:
            out = stack.forward(x, self.input_scale, self.input_shift, self.combine)
            out = torch.einsum("k,knc->nc", self.weights[stack.index], out)
            total = out if total is None else total + out
        assert total is not None
        return self._finish(total)

    def _mean_of(self, x: torch.Tensor, members: "range | list[int]") -> torch.Tensor:
        """The weighted sum of these members' outputs (probabilities, or regression values)."""
        total = torch.zeros(0)
        for position, i in enumerate(members):
            out = self.members[i](x * self.input_scale[i] + self.input_shift[i])
            if self.combine == "probabilities":
                out = torch.softmax(out, dim=1)
            out = out * self.weights[i]
            total = out if position == 0 else total + out
        return total

    def _finish(self, total: torch.Tensor) -> torch.Tensor:
        if self.combine == "probabilities":
            # A log of 0 would be -inf, and softmax of a row holding one is NaN.
            return torch.log(total.clamp_min(1e-30))
        return total

    def _stacks(self) -> tuple[list["_StackedMLPs"], list[int]]:
        """Members that are MLPs of one shape, grouped so each group runs as batched matrix
        products (auto delivers 8 fold models of a candidate: one by one, a prediction of one
        row paid 8 times the per-layer overhead); the other members' indices.

        Built at the first inference and kept until the weights may change: loading a state
        dict, `train()`/`eval()`, or moving the model (`to`, `float`, ...). Weights edited in
        place after that need `forget_stacks()`.
        """
        cached = self.__dict__.get("_stack_cache")
        if cached is not None:
            return cached
        shapes: dict[tuple[Any, ...], list[int]] = {}
        alone: list[int] = []
        for i, member in enumerate(self.members):
            shape = _mlp_shape(member)
            if shape is None:
                alone.append(i)
            else:
                shapes.setdefault(shape, []).append(i)
        groups = []
        for indices in shapes.values():
            if len(indices) == 1:
                alone.extend(indices)
            else:
                groups.append(_StackedMLPs([self.members[i] for i in indices], indices))
        alone.sort()
        self.__dict__["_stack_cache"] = (groups, alone)
        return groups, alone

    def forget_stacks(self) -> None:
        self.__dict__.pop("_stack_cache", None)

    def train(self, mode: bool = True) -> "Ensemble":
        self.forget_stacks()
        return super().train(mode)

    def _apply(self, fn: Any, recurse: bool = True) -> "Ensemble":
        self.forget_stacks()
        return super()._apply(fn, recurse)


def _mlp_shape(member: nn.Module) -> tuple[Any, ...] | None:
    """The layer sizes and activation of a plain MLP (Linear, activation, Dropout per hidden
    layer, then a Linear head); None for any other model."""
    if type(member) is not MLP:
        return None
    shape: list[Any] = []
    layers = list(member.trunk)
    if len(layers) % 3:
        return None
    for linear, activation, dropout in zip(layers[::3], layers[1::3], layers[2::3], strict=True):
        if not (
            isinstance(linear, nn.Linear)
            and type(activation) in ACTIVATIONS.values()
            and isinstance(dropout, nn.Dropout)
            and linear.bias is not None
        ):
            return None
        shape.append((linear.in_features, linear.out_features, type(activation)))
    return (*shape, (member.head.in_features, member.head.out_features))


class _StackedMLPs:
    """MLPs of one shape as stacked weights: member k's layer i is weight[i][k]."""

    # Rows per pass times members: (members x rows x width) pieces stay in cache (1,000 rows
    # through 16 members took 6.7 ms in one pass, 3.9 ms in pieces of 256 rows).
    PIECE = 4096

    def __init__(self, members: list[nn.Module], indices: list[int]) -> None:
        self.index = torch.tensor(indices)
        linears = [[m for m in member.modules() if isinstance(m, nn.Linear)] for member in members]
        self.activations = [m for m in members[0].modules() if type(m) in ACTIVATIONS.values()]
        depth = len(linears[0])
        self.weight = [
            torch.stack([ls[i].weight.detach().T for ls in linears]) for i in range(depth)
        ]
        self.bias = [
            torch.stack([ls[i].bias.detach() for ls in linears]).unsqueeze(1) for i in range(depth)
        ]

    def forward(
        self, x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, combine: str
    ) -> torch.Tensor:
        """Every member's output, (members, rows, outputs), probabilities if `combine` asks."""
        rows = max(64, self.PIECE // len(self.index))
        if len(x) > rows:
            return torch.cat([self.forward(p, scale, shift, combine) for p in x.split(rows)], 1)
        scale, shift = scale[self.index].unsqueeze(1), shift[self.index].unsqueeze(1)
        h = torch.addcmul(shift, x.unsqueeze(0), scale)
        for layer, (weight, bias) in enumerate(zip(self.weight, self.bias, strict=True)):
            h = torch.baddbmm(bias, h, weight)
            if layer < len(self.activations):
                activation = self.activations[layer]
                # In place: a fresh (members x rows x width) tensor per layer took longer
                # than the layer's matrix product for 1,000 rows.
                h = h.clamp_(min=0) if type(activation) is nn.ReLU else activation(h)
        if combine != "probabilities":
            return h
        # torch.softmax over a last axis of a few classes is ~4x slower than this.
        h = torch.exp(h - h.amax(dim=2, keepdim=True))
        return h / h.sum(dim=2, keepdim=True)


ENSEMBLE_COMBINE = ("probabilities", "mean")


def build_ensemble(
    input_dim: int,
    output_dim: int,
    *,
    members: list[dict[str, Any]],
    weights: list[float],
    combine: str,
) -> Ensemble:
    """An `Ensemble` of the members' architectures (each with its own input and output
    sizes, which must be the ensemble's), freshly initialised like every builder's model."""
    _check_dims(input_dim, output_dim)
    built = []
    for member in members:
        if member.get("type") == "ensemble":
            raise ValueError("an ensemble's members cannot be ensembles")
        built.append(
            build_model(
                member,
                int(member.get("input_dim", input_dim)),
                int(member.get("output_dim", output_dim)),
            )
        )
    return Ensemble(built, weights, combine, input_dim)


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "mlp": build_mlp,
    "cnn": build_cnn,
    "ensemble": build_ensemble,
    "forest": build_forest,
}


def build_model(architecture: dict[str, Any], input_dim: int, output_dim: int) -> nn.Module:
    """Build a freshly initialised model from an architecture dict such as {"type": "mlp", ...}."""
    kind = architecture.get("type")
    builder = ARCHITECTURES.get(kind) if isinstance(kind, str) else None
    if builder is None:
        raise ValueError(
            f"unknown architecture type {kind!r}; expected one of {sorted(ARCHITECTURES)}"
        )
    # Only the builder's keyword options are passed, so extra keys in a stored spec are ignored.
    options = {
        name: param
        for name, param in inspect.signature(builder).parameters.items()
        if param.kind is inspect.Parameter.KEYWORD_ONLY
    }
    missing = [n for n, p in options.items() if p.default is p.empty and n not in architecture]
    if missing:
        raise ValueError(f"architecture {kind!r} needs {missing}")
    kwargs = {key: value for key, value in architecture.items() if key in options}
    return builder(input_dim, output_dim, **kwargs)


def new_head(model: nn.Module, output_dim: int) -> nn.Linear:
    """A freshly initialised head that reads the same features as `model`'s current head."""
    head = getattr(model, "head", None)
    if not isinstance(head, nn.Linear):
        raise ValueError(f"{type(model).__name__} has no linear `head` to replace")
    _check_dims(head.in_features, output_dim)
    return nn.Linear(head.in_features, output_dim).to(
        device=head.weight.device, dtype=head.weight.dtype
    )


def _check_dims(input_dim: int, output_dim: int) -> None:
    if input_dim < 1 or output_dim < 1:
        raise ValueError(
            f"input and output sizes must be at least 1, got {input_dim} and {output_dim}"
        )
