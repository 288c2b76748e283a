"""Open Inference Protocol (V2) documents: server and model metadata, infer request/response.

The request models validate only the JSON header of an infer request. Tensor `data` stays
`Any` so that pydantic never walks every element; the tensor codec checks it in one pass.
"""

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Datatype = Literal[
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "BYTES",
]

# Parameter values are scalars in the protocol.
Parameters = dict[str, bool | int | float | str]


class ErrorBody(BaseModel):
    error: str = Field(examples=["model 'iris' has no version 7"])


class ServerMetadata(BaseModel):
    name: str = Field(examples=["graft"])
    version: str = Field(examples=["0.1.0"])
    extensions: list[str] = Field(examples=[["binary_tensor_data", "parameters"]])


class ServerReady(BaseModel):
    ready: bool


class ServerLive(BaseModel):
    live: bool


class ModelReady(BaseModel):
    name: str
    version: str | None = None
    ready: bool


class TensorMetadata(BaseModel):
    name: str = Field(examples=["input"])
    datatype: Datatype = Field(examples=["FP32"])
    shape: list[int] = Field(examples=[[-1, 4]], description="-1 marks the batch dimension.")


class ModelMetadata(BaseModel):
    name: str = Field(examples=["iris-source"])
    versions: list[str] = Field(examples=[["1", "2"]])
    platform: str = Field(examples=["pytorch"])
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    # Graft's additions, outside the protocol's fixed fields.
    version: str = Field(
        examples=["2"], description="The version these inputs and outputs describe."
    )
    task: str = Field(examples=["classification"])
    classes: list[Any] | None = Field(
        None, description="Column order of `probabilities`; null for regression."
    )
    features: list[TensorMetadata] = Field(
        description="The alternative input form: one tensor of shape [N] per feature, named "
        "by column. Needed when the signature has string features (BYTES)."
    )


class RequestInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    shape: list[Annotated[int, Field(ge=0)]]
    datatype: Datatype
    parameters: Parameters | None = None
    data: Any = Field(
        None,
        description="Row-major values, flat or nested; absent when the tensor travels as "
        "binary data (parameters.binary_data_size).",
    )


class RequestOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    parameters: Parameters | None = None


class InferenceRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "id": "42",
                    "inputs": [
                        {
                            "name": "input",
                            "shape": [2, 4],
                            "datatype": "FP32",
                            "data": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]],
                        }
                    ],
                    "outputs": [{"name": "predictions"}],
                }
            ]
        },
    )

    id: str | None = None
    parameters: Parameters | None = None
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: Datatype
    parameters: Parameters | None = None
    data: list[Any] | None = None


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[ResponseOutput]
