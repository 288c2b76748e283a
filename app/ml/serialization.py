"""Weights as safetensors bytes: no pickle, so loading an artifact cannot run code."""

import hashlib
from typing import Any

import torch
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save
from torch import nn

from app.ml.architectures import build_model


def weights_to_bytes(model: nn.Module) -> bytes:
    """The model's state_dict as a safetensors file in memory."""
    # safetensors refuses views and non-contiguous storage; frozen or transposed
    # parameters would otherwise fail to save.
    tensors = {name: t.detach().contiguous() for name, t in model.state_dict().items()}
    return safetensors_save(tensors)


def weights_from_bytes(data: bytes) -> dict[str, torch.Tensor]:
    """Read a safetensors file from memory into a state_dict."""
    tensors: dict[str, torch.Tensor] = safetensors_load(data)
    return tensors


def load_model(
    architecture: dict[str, Any], input_dim: int, output_dim: int, weights: bytes
) -> nn.Module:
    """Rebuild a model from its architecture and safetensors weights, ready for inference."""
    model = build_model(architecture, input_dim, output_dim)
    model.load_state_dict(weights_from_bytes(weights), strict=True)
    return model.eval()


def sha256_hex(data: bytes) -> str:
    """Hex SHA-256 of `data`, used as the artifact checksum."""
    return hashlib.sha256(data).hexdigest()
