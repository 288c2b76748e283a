"""A model version as one self-contained file, preprocessing folded in: ONNX or TorchScript.

What goes in is what a client has: raw feature values. Numeric columns are standardised,
categorical ones one-hot encoded (an unseen category gives an all-zero block, as in Graft),
image channels standardised, and what comes out is what `predict` answers: class
probabilities and the label, or the regression value on the target's own scale.

ONNX: the network is traced by PyTorch's exporter from the encoded matrix to the outputs;
the encoding in front of it is written as ONNX operators here, because strings (categories)
cannot pass through a traced PyTorch graph: `LabelEncoder` (ai.onnx.ml) turns a category into
its index, `Equal` against 0..C-1 into its one-hot block. Inputs: `features` (float32, the
numeric columns in signature order) or `images` (float32, NxCxHxW), plus one string input per
categorical column, named after it. The signature is in the file's metadata (`graft.*`).

TorchScript: one scripted module, `forward(features, categorical)` with `categorical` a dict
from column name to a list of strings (empty for a model without categorical columns); the
signature is in the archive's extra file `graft.json`.

ONNX and TorchScript share the folded preprocessing and the parity checks, so both
formats live here.
"""

import io
import json
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from app.ml import images, serialization

FORMATS = ("onnx", "torchscript")
_MEDIA_TYPES = {"onnx": "application/onnx", "torchscript": "application/octet-stream"}
_SUFFIXES = {"onnx": "onnx", "torchscript": "pt"}
# The exporter's opset; onnxruntime 1.16 and later read it.
_OPSET = 17
_ML_OPSET = 3


@dataclass(frozen=True)
class ExportSource:
    """What an export needs of a version (see app/serving/predictor.py: VersionSpec)."""

    name: str
    version: int
    task: str
    inputs: list[dict[str, Any]]
    architecture: dict[str, Any]
    preprocessing: dict[str, Any]
    weights: bytes
    sha256: str


@dataclass(frozen=True)
class Exported:
    content: bytes
    media_type: str
    filename: str
    signature: dict[str, Any]


class ExportError(ValueError):
    """This version cannot be written in that format; the message says why."""


def export(source: ExportSource, fmt: str) -> Exported:
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; expected one of {list(FORMATS)}")
    model = serialization.load_model(
        source.architecture,
        source.architecture["input_dim"],
        source.architecture["output_dim"],
        source.weights,
    )
    layout = _Layout.of(source)
    signature = layout.signature(fmt)
    with warnings.catch_warnings():
        # The pinned torch's exporters announce their successors on every call; what they
        # write is what the export tests check.
        warnings.simplefilter("ignore", DeprecationWarning)
        content = (
            _onnx(layout, model, signature)
            if fmt == "onnx"
            else _torchscript(layout, model, signature)
        )
    return Exported(
        content=content,
        media_type=_MEDIA_TYPES[fmt],
        filename=f"{source.name}-v{source.version}.{_SUFFIXES[fmt]}",
        signature=signature,
    )


@dataclass(frozen=True)
class _Layout:
    """How raw inputs become the encoded matrix the network reads, and what comes out."""

    source: ExportSource
    # Tabular: the spec's columns in encoded order; images: None.
    columns: list[dict[str, Any]] | None
    numeric: list[str]  # numeric input names in signature order
    categorical: list[dict[str, Any]]  # categorical columns in signature order
    image_spec: dict[str, Any] | None
    classes: list[Any] | None
    target: dict[str, Any]

    @classmethod
    def of(cls, source: ExportSource) -> "_Layout":
        features = source.preprocessing["features"]
        target = source.preprocessing["target"]
        classes = target.get("classes") if source.task == "classification" else None
        if images.is_image_spec(features):
            return cls(source, None, [], [], features, classes, target)
        by_name = {column["name"]: column for column in features["columns"]}
        order = [column["name"] for column in source.inputs if column["name"] in by_name]
        numeric = [name for name in order if by_name[name]["kind"] == "numeric"]
        categorical = [by_name[name] for name in order if by_name[name]["kind"] == "categorical"]
        return cls(source, features["columns"], numeric, categorical, None, classes, target)

    def signature(self, fmt: str) -> dict[str, Any]:
        inputs: list[dict[str, Any]] = []
        if self.image_spec is not None:
            shape = ["N", *self.image_spec["shape"]]
            inputs.append({"name": "images", "dtype": "float32", "shape": shape})
        else:
            if self.numeric:
                inputs.append(
                    {
                        "name": "features",
                        "dtype": "float32",
                        "shape": ["N", len(self.numeric)],
                        "columns": self.numeric,
                    }
                )
            for column in self.categorical:
                name = column["name"] if fmt == "onnx" else f"categorical[{column['name']!r}]"
                inputs.append(
                    {
                        "name": name,
                        "dtype": "string",
                        "shape": ["N"],
                        "categories": column["categories"],
                    }
                )
        if self.classes is not None:
            outputs = [
                {"name": "probabilities", "dtype": "float32", "shape": ["N", len(self.classes)]},
                {"name": "label", "dtype": "string", "shape": ["N"]},
            ]
            if fmt == "torchscript":
                outputs = outputs[:1]
        else:
            outputs = [{"name": "prediction", "dtype": "float32", "shape": ["N"]}]
        return {
            "model": self.source.name,
            "version": self.source.version,
            "task": self.source.task,
            "classes": [str(c) for c in self.classes] if self.classes is not None else None,
            "inputs": inputs,
            "outputs": outputs,
            "weights_sha256": self.source.sha256,
            "format": fmt,
        }


class _Outputs(nn.Module):
    """Logits to probabilities, or a standardised value to the target's scale."""

    def __init__(self, network: nn.Module, classification: bool, mean: float, std: float) -> None:
        super().__init__()
        self.network = network
        self.classification = classification
        self.mean = mean
        self.std = std

    def forward(self, encoded: torch.Tensor) -> torch.Tensor:
        out = self.network(encoded)
        if self.classification:
            return torch.softmax(out, dim=1)
        return out.reshape(-1) * self.std + self.mean


class _ImagesIn(nn.Module):
    """Raw NxCxHxW images, each channel standardised, flattened as the network reads them."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, outputs: nn.Module, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.outputs = outputs
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        scaled = (images - self.mean) / self.std
        return self.outputs(scaled.reshape(scaled.shape[0], -1))


def _with_outputs(layout: _Layout, model: nn.Module) -> _Outputs:
    target = layout.target
    return _Outputs(
        model,
        layout.classes is not None,
        float(target.get("mean", 0.0)),
        float(target.get("std", 1.0)),
    )


def _example(layout: _Layout) -> torch.Tensor:
    if layout.image_spec is not None:
        return torch.zeros(2, *layout.image_spec["shape"])
    return torch.zeros(2, int(layout.source.preprocessing["features"]["input_dim"]))


# --- ONNX ---------------------------------------------------------------------------------


def _onnx(layout: _Layout, model: nn.Module, signature: dict[str, Any]) -> bytes:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    network: nn.Module = _with_outputs(layout, model)
    first = "encoded"
    if layout.image_spec is not None:
        network = _ImagesIn(network, layout.image_spec["mean"], layout.image_spec["std"])
        first = "images"
    main = "probabilities" if layout.classes is not None else "prediction"
    buffer = io.BytesIO()
    # The TorchScript-based exporter: fast (a fraction of a second), no onnxscript needed.
    torch.onnx.export(
        network.eval(),
        (_example(layout),),
        buffer,  # type: ignore[arg-type]  # it writes to any binary file object
        input_names=[first],
        output_names=[main],
        dynamic_axes={first: {0: "N"}, main: {0: "N"}},
        opset_version=_OPSET,
        dynamo=False,
    )
    graph_model = onnx.load_from_string(buffer.getvalue())
    graph = graph_model.graph
    nodes: list[Any] = []
    initializers: list[Any] = []

    def constant(name: str, value: Any) -> str:
        initializers.append(numpy_helper.from_array(value, name=name))
        return name

    import numpy as np

    if layout.columns is not None:
        # Raw tabular inputs in front of the traced network's "encoded" input.
        new_inputs = []
        if layout.numeric:
            new_inputs.append(
                helper.make_tensor_value_info(
                    "features", TensorProto.FLOAT, ["N", len(layout.numeric)]
                )
            )
            spec = {c["name"]: c for c in layout.columns}
            mean = np.array([[spec[n]["mean"] for n in layout.numeric]], dtype=np.float32)
            std = np.array([[spec[n]["std"] for n in layout.numeric]], dtype=np.float32)
            nodes.append(
                helper.make_node(
                    "Sub", ["features", constant("graft_mean", mean)], ["graft_centred"]
                )
            )
            nodes.append(
                helper.make_node(
                    "Div", ["graft_centred", constant("graft_std", std)], ["graft_scaled"]
                )
            )
        blocks = []
        for index, column in enumerate(layout.columns):
            name = column["name"]
            if column["kind"] == "numeric":
                position = np.array([layout.numeric.index(name)], dtype=np.int64)
                out = f"graft_block_{index}"
                nodes.append(
                    helper.make_node(
                        "Gather",
                        ["graft_scaled", constant(f"graft_at_{index}", position)],
                        [out],
                        axis=1,
                    )
                )
                blocks.append(out)
                continue
            categories = [str(c) for c in column["categories"]]
            new_inputs.append(helper.make_tensor_value_info(name, TensorProto.STRING, ["N"]))
            codes = f"graft_codes_{index}"
            nodes.append(
                helper.make_node(
                    "LabelEncoder",
                    [name],
                    [codes],
                    domain="ai.onnx.ml",
                    keys_strings=categories,
                    values_int64s=list(range(len(categories))),
                    default_int64=-1,
                )
            )
            column_codes = f"graft_column_codes_{index}"
            axes = constant(f"graft_axes_{index}", np.array([1], dtype=np.int64))
            nodes.append(helper.make_node("Unsqueeze", [codes, axes], [column_codes]))
            every = constant(
                f"graft_range_{index}", np.arange(len(categories), dtype=np.int64).reshape(1, -1)
            )
            hits = f"graft_hits_{index}"
            nodes.append(helper.make_node("Equal", [column_codes, every], [hits]))
            out = f"graft_block_{index}"
            nodes.append(helper.make_node("Cast", [hits], [out], to=TensorProto.FLOAT))
            blocks.append(out)
        nodes.append(helper.make_node("Concat", blocks, ["encoded"], axis=1))
        del graph.input[:]
        graph.input.extend(new_inputs)
    if layout.classes is not None:
        labels = np.array([str(c) for c in layout.classes], dtype=object)
        after = [
            helper.make_node("ArgMax", ["probabilities"], ["graft_best"], axis=1, keepdims=0),
            helper.make_node(
                "Gather", [constant("graft_classes", labels), "graft_best"], ["label"], axis=0
            ),
        ]
        graph.output.append(helper.make_tensor_value_info("label", TensorProto.STRING, ["N"]))
    else:
        after = []
    traced = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + traced + after)
    graph.initializer.extend(initializers)
    graph.name = f"{layout.source.name}-v{layout.source.version}"
    graph_model.opset_import.append(helper.make_opsetid("ai.onnx.ml", _ML_OPSET))
    graph_model.producer_name = "graft"
    graph_model.doc_string = (
        f"Graft model {layout.source.name} version {layout.source.version} "
        f"({layout.source.task}): raw feature values in, preprocessing included; "
        "the signature is in the metadata, graft.signature."
    )
    onnx.helper.set_model_props(
        graph_model,
        {
            "graft.signature": json.dumps(signature),
            "graft.model": layout.source.name,
            "graft.version": str(layout.source.version),
            "graft.weights_sha256": layout.source.sha256,
        },
    )
    onnx.checker.check_model(graph_model, full_check=True)
    return bytes(graph_model.SerializeToString())


# --- TorchScript ----------------------------------------------------------------------------


class _TabularIn(nn.Module):
    """Raw numeric features (signature order) and categorical strings to the encoded matrix."""

    mean: torch.Tensor
    std: torch.Tensor
    numeric_index: torch.Tensor
    # Declared here, not in __init__: TorchScript types attributes from the class body.
    width: int
    numeric_at: list[int]  # encoded position of each numeric input
    categorical_names: list[str]
    categorical_at: list[int]  # encoded position of each category block
    lookups: list[dict[str, int]]

    def __init__(self, outputs: nn.Module, layout: _Layout) -> None:
        super().__init__()
        self.outputs = outputs
        assert layout.columns is not None
        spec = {c["name"]: c for c in layout.columns}
        self.width = int(layout.source.preprocessing["features"]["input_dim"])
        self.categorical_names = []
        self.categorical_at = []
        self.lookups = []
        offset = 0
        positions: dict[str, int] = {}
        for column in layout.columns:
            positions[column["name"]] = offset
            offset += 1 if column["kind"] == "numeric" else len(column["categories"])
        self.numeric_at = [positions[name] for name in layout.numeric]
        for column in layout.categorical:
            self.categorical_names.append(column["name"])
            self.categorical_at.append(positions[column["name"]])
            self.lookups.append({str(c): i for i, c in enumerate(column["categories"])})
        mean = [spec[name]["mean"] for name in layout.numeric]
        std = [spec[name]["std"] for name in layout.numeric]
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).reshape(1, -1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).reshape(1, -1))
        self.register_buffer("numeric_index", torch.tensor(self.numeric_at, dtype=torch.long))

    def forward(
        self, features: torch.Tensor, categorical: dict[str, list[str]] | None = None
    ) -> torch.Tensor:
        rows = features.shape[0]
        encoded = torch.zeros(rows, self.width, dtype=torch.float32)
        if len(self.numeric_at) > 0:
            encoded[:, self.numeric_index] = (features.to(torch.float32) - self.mean) / self.std
        for index in range(len(self.categorical_names)):
            name = self.categorical_names[index]
            if categorical is None or name not in categorical:
                raise ValueError("missing categorical column " + name)
            values = categorical[name]
            if len(values) != rows:
                raise ValueError("categorical column " + name + " has another number of rows")
            lookup = self.lookups[index]
            start = self.categorical_at[index]
            for row in range(rows):
                value = values[row]
                if value in lookup:
                    encoded[row, start + lookup[value]] = 1.0
        return self.outputs(encoded)


class _ImagesScript(nn.Module):
    def __init__(self, images_in: nn.Module) -> None:
        super().__init__()
        self.images_in = images_in

    def forward(
        self, features: torch.Tensor, categorical: dict[str, list[str]] | None = None
    ) -> torch.Tensor:
        return self.images_in(features)


def _torchscript(layout: _Layout, model: nn.Module, signature: dict[str, Any]) -> bytes:
    # The network is traced (tensors in, tensors out), the input handling around it scripted
    # (it loops over strings, which a trace cannot record).
    outputs = _with_outputs(layout, model).eval()
    if layout.image_spec is not None:
        images_in = _ImagesIn(outputs, layout.image_spec["mean"], layout.image_spec["std"]).eval()
        example = torch.zeros(2, *layout.image_spec["shape"])
        module: nn.Module = _ImagesScript(torch.jit.trace(images_in, example))
    else:
        traced = torch.jit.trace(outputs, _example(layout))
        module = _TabularIn(traced, layout)
    scripted = torch.jit.script(module.eval())
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer, _extra_files={"graft.json": json.dumps(signature)})
    return buffer.getvalue()
