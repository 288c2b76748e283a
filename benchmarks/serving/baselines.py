"""The two baselines Graft is measured against, serving the same weights with the same JSON.

- `idiomatic`: the FastAPI app most people would write: a pydantic request model, a dict
  response that FastAPI encodes, the model called as a module.
- `ceiling`: plain Starlette with orjson and NumPy and nothing else: no validation beyond what
  NumPy does, no version lookup, no error documents. What one Python process can do at best.

Both read a model folder written by the benchmark (`weights.safetensors`, `meta.json` with
the architecture, the standardisation and the classes) and answer
`POST /v1/models/{name}/predict` with `{"instances": [[...], ...]}` exactly as Graft does:
`{"model": {"name", "version"}, "predictions", "classes", "probabilities"}`.

Run one: `python -m benchmarks.serving.baselines idiomatic --model-dir DIR --port 8101`.
"""

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import torch
from fastapi import FastAPI
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.ml import serialization


class LoadedModel:
    """The benchmark model as a user would hold it: the module, its scaling and classes."""

    def __init__(self, model_dir: Path) -> None:
        meta = json.loads((model_dir / "meta.json").read_text())
        architecture = meta["architecture"]
        self.name: str = meta["name"]
        self.version: int = meta["version"]
        self.classes: list[Any] = meta["classes"]
        self.mean = np.array(meta["mean"], dtype=np.float64)
        self.std = np.array(meta["std"], dtype=np.float64)
        self.module = serialization.load_model(
            architecture,
            architecture["input_dim"],
            architecture["output_dim"],
            (model_dir / "weights.safetensors").read_bytes(),
        )


class PredictRequest(BaseModel):
    instances: list[list[float]]


def idiomatic_app(model_dir: Path) -> FastAPI:
    loaded = LoadedModel(model_dir)
    mean = torch.from_numpy(loaded.mean).float()
    std = torch.from_numpy(loaded.std).float()
    app = FastAPI()

    @app.post("/v1/models/{name}/predict")
    async def predict(name: str, request: PredictRequest) -> dict[str, Any]:
        x = (torch.tensor(request.instances, dtype=torch.float32) - mean) / std
        with torch.inference_mode():
            probabilities = torch.softmax(loaded.module(x), dim=1)
        best = probabilities.argmax(dim=1).tolist()
        return {
            "model": {"name": loaded.name, "version": loaded.version},
            "predictions": [loaded.classes[i] for i in best],
            "classes": loaded.classes,
            "probabilities": probabilities.tolist(),
        }

    return app


def ceiling_app(model_dir: Path) -> Starlette:
    loaded = LoadedModel(model_dir)
    classes = np.array(loaded.classes, dtype=object)

    async def predict(request: Request) -> Response:
        instances = orjson.loads(await request.body())["instances"]
        x = ((np.array(instances, dtype=np.float64) - loaded.mean) / loaded.std).astype(np.float32)
        with torch.inference_mode():
            probabilities = torch.softmax(loaded.module(torch.from_numpy(x)), dim=1).numpy()
        body = {
            "model": {"name": loaded.name, "version": loaded.version},
            "predictions": classes[probabilities.argmax(axis=1)].tolist(),
            "classes": loaded.classes,
            "probabilities": probabilities,
        }
        return Response(
            orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json"
        )

    return Starlette(routes=[Route("/v1/models/{name}/predict", predict, methods=["POST"])])


APPS = {"idiomatic": idiomatic_app, "ceiling": ceiling_app}


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("app", choices=sorted(APPS))
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    # The same uvicorn settings `graft serve` uses, at the benchmark's log level.
    uvicorn.run(APPS[args.app](args.model_dir), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
