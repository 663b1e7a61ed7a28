"""The Open Inference Protocol (KServe v2 REST) on the wire: its JSON bodies, its tensor datatypes, and the
binary tensor data extension (a JSON header of Inference-Header-Content-Length bytes, then raw tensors), so
clients such as tritonclient, the kserve SDK and perf_analyzer can talk to the service unchanged. It encodes and
decodes bytes and knows no web framework: service/routes/v2.py sends them, and the core's v2 models
(service/v2_models.py) describe themselves in its bodies.

Spec: https://kserve.github.io/website/latest/modelserving/data_plane/v2_protocol/ and Triton's
binary_data extension (docs/protocol/extension_binary_data.md of triton-inference-server/server).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field, ValidationError

from .failures import MalformedRequest

HEADER_LENGTH = "Inference-Header-Content-Length"
# The protocol's datatypes that map onto numpy (BYTES, variable-length strings, is not used by these models).
DATATYPES: dict[str, np.dtype] = {
    name: np.dtype(kind).newbyteorder("<")
    for name, kind in {
        "BOOL": "bool",
        "UINT8": "uint8",
        "UINT16": "uint16",
        "UINT32": "uint32",
        "UINT64": "uint64",
        "INT8": "int8",
        "INT16": "int16",
        "INT32": "int32",
        "INT64": "int64",
        "FP16": "float16",
        "FP32": "float32",
        "FP64": "float64",
    }.items()
}


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int] = Field(description="-1 for a dimension of any size")


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class Live(BaseModel):
    live: bool


class Ready(BaseModel):
    ready: bool


class RepositoryEntry(BaseModel):
    """One version of one model of the repository, as Triton's repository index lists it."""

    name: str
    version: str
    state: Literal["READY", "LOADING", "UNLOADING", "UNAVAILABLE"]
    reason: str = Field(description="why an UNAVAILABLE version is not served: not loaded, or its load error")


class RepositoryChange(BaseModel):
    """What a load or unload left: the model and the versions it loaded or unloaded."""

    name: str
    versions: list[str]


class ModelReady(BaseModel):
    name: str
    ready: bool


class RequestInput(BaseModel):
    name: str
    shape: list[int] = Field(description="dimensions, each 0 or more")
    datatype: str
    parameters: dict[str, Any] | None = Field(None, description="binary_data_size: the tensor's bytes after the JSON")
    data: list[Any] | None = Field(None, description="the elements in row-major order, flat or nested")


class RequestOutput(BaseModel):
    name: str
    parameters: dict[str, Any] | None = Field(None, description="binary_data: true for raw bytes after the JSON")


class InferRequest(BaseModel):
    id: str | None = Field(None, description="echoed in the response")
    parameters: dict[str, Any] | None = Field(
        None, description="binary_data_output: true for every output as raw bytes after the JSON"
    )
    inputs: list[RequestInput]
    outputs: list[RequestOutput] | None = Field(None, description="the outputs to return (default: all)")


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class InferResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[ResponseOutput]


class ErrorMessage(BaseModel):
    """The protocol's error body."""

    error: str


def _describe(error: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in error.errors())


def decode_request(body: bytes, header_length: str | None) -> tuple[InferRequest, dict[str, np.ndarray]]:
    """The request and its input tensors, from JSON `data` or from the binary part after the JSON header."""
    json_end = len(body)
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise MalformedRequest(f"{HEADER_LENGTH} must be a byte count within the body")
        json_end = int(header_length)
    try:
        request = InferRequest.model_validate_json(body[:json_end])
    except ValidationError as error:
        raise MalformedRequest(_describe(error)) from None
    tensors: dict[str, np.ndarray] = {}
    offset = json_end
    for tensor in request.inputs:
        if tensor.name in tensors:
            raise MalformedRequest(f"input {tensor.name!r} is given twice")
        dtype = DATATYPES.get(tensor.datatype)
        if dtype is None:
            raise MalformedRequest(f"input {tensor.name!r}: unsupported datatype {tensor.datatype!r}")
        if any(dim < 0 for dim in tensor.shape):
            raise MalformedRequest(f"input {tensor.name!r}: shape {tensor.shape} has a negative dimension")
        count = math.prod(tensor.shape)
        size = (tensor.parameters or {}).get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or size != count * dtype.itemsize or offset + size > len(body):
                raise MalformedRequest(
                    f"input {tensor.name!r}: binary_data_size must be {count * dtype.itemsize} bytes"
                )
            array = np.frombuffer(body, dtype, count, offset)
            offset += size
        elif tensor.data is None:
            raise MalformedRequest(f"input {tensor.name!r} has neither data nor binary_data_size")
        else:
            try:
                array = np.asarray(tensor.data, dtype).reshape(-1)
            except (ValueError, TypeError, OverflowError):
                raise MalformedRequest(f"input {tensor.name!r}: data is not an array of {tensor.datatype}") from None
            if array.size != count:
                raise MalformedRequest(f"input {tensor.name!r}: {array.size} elements for shape {tensor.shape}")
        try:
            tensors[tensor.name] = array.reshape(tensor.shape)
        except ValueError:  # e.g. an empty tensor with a dimension numpy cannot hold
            raise MalformedRequest(
                f"input {tensor.name!r}: shape {tensor.shape} is not a shape of {count} elements"
            ) from None
    if offset != len(body):
        raise MalformedRequest(f"{len(body) - offset} bytes of binary data belong to no input")
    return request, tensors


def check_outputs(request: InferRequest, names: list[str]) -> None:
    """400 for a requested output the model does not have: checked before inference runs, and again on encoding."""
    unknown = sorted({o.name for o in request.outputs or []} - set(names))
    if unknown:
        raise MalformedRequest(f"no outputs named {unknown}; this model has {sorted(names)}")


@dataclass(frozen=True)
class EncodedResponse:
    """An infer response's bytes: JSON alone, or (`header_length` set) a JSON header of that many bytes followed
    by the raw tensors, sent as application/octet-stream with the length in Inference-Header-Content-Length."""

    content: bytes
    header_length: int | None


def encode_response(
    request: InferRequest, model_name: str, outputs: dict[str, tuple[str, np.ndarray]], request_id: str | None
) -> EncodedResponse:
    """The requested outputs ((datatype, array) by name), each as JSON data or raw bytes as the request asks.
    The response `id` is the request's, else the request ID of the X-Request-ID header."""
    binary_default = bool((request.parameters or {}).get("binary_data_output", False))
    wanted = {o.name: bool((o.parameters or {}).get("binary_data", binary_default)) for o in request.outputs or []}
    check_outputs(request, list(outputs))
    chosen = wanted or dict.fromkeys(outputs, binary_default)
    described, chunks = [], []
    for name, binary in chosen.items():
        datatype, array = outputs[name]
        array = np.ascontiguousarray(array, DATATYPES[datatype])
        output = ResponseOutput(name=name, shape=list(array.shape), datatype=datatype)
        if binary:
            chunks.append(array.tobytes())
            output.parameters = {"binary_data_size": len(chunks[-1])}
        else:
            output.data = array.reshape(-1).tolist()
        described.append(output)
    body = InferResponse(model_name=model_name, model_version="1", id=request.id or request_id, outputs=described)
    # strict JSON (no NaN or Infinity), as clients' parsers read it
    header = json.dumps(body.model_dump(exclude_none=True), separators=(",", ":"), allow_nan=False).encode()
    if not chunks:
        return EncodedResponse(header, None)
    return EncodedResponse(header + b"".join(chunks), len(header))
