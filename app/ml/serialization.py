"""Weights as safetensors bytes: no pickle, so loading an artifact cannot run code."""

import hashlib
import json
import struct
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


def tensor_bytes(data: bytes) -> int:
    """Bytes the tensors of a safetensors file take once loaded, read from its header alone.

    This is the memory a loaded version's parameters and buffers occupy.
    """
    if len(data) < 8:
        raise ValueError("not a safetensors file: shorter than its 8-byte header length")
    (header_length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_length])
    return sum(
        int(entry["data_offsets"][1]) - int(entry["data_offsets"][0])
        for name, entry in header.items()
        if name != "__metadata__"
    )


def sha256_hex(data: bytes) -> str:
    """Hex SHA-256 of `data`, used as the artifact checksum."""
    return hashlib.sha256(data).hexdigest()
