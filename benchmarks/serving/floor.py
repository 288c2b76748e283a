"""The floor: rows/s of an in-process forward pass, with no HTTP and no JSON.

Also measured: an in-process prediction as a library user would make it, from a Python list
of rows to Python lists of classes and probabilities (still no HTTP, no JSON).

Run pinned to the core the servers use: `taskset -c 0 python -m benchmarks.serving.floor
--model-dir DIR --rows 10000`. Prints one JSON line.
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.serving.baselines import LoadedModel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    loaded = LoadedModel(args.model_dir)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(size=(args.rows, len(loaded.mean))).astype(np.float32))
    timings: list[float] = []
    deadline = time.perf_counter() + args.seconds
    while time.perf_counter() < deadline or len(timings) < 3:
        start = time.perf_counter()
        with torch.inference_mode():
            torch.softmax(loaded.module(x), dim=1).numpy()
        timings.append(time.perf_counter() - start)
    median = float(np.median(timings))
    rows = (x.numpy() * loaded.std + loaded.mean).tolist()
    from_lists: list[float] = []
    deadline = time.perf_counter() + args.seconds
    while time.perf_counter() < deadline or len(from_lists) < 3:
        start = time.perf_counter()
        scaled = ((np.array(rows, dtype=np.float64) - loaded.mean) / loaded.std).astype(np.float32)
        with torch.inference_mode():
            probabilities = torch.softmax(loaded.module(torch.from_numpy(scaled)), dim=1)
        [loaded.classes[i] for i in probabilities.argmax(dim=1).tolist()]
        probabilities.tolist()
        from_lists.append(time.perf_counter() - start)
    print(
        json.dumps(
            {
                "rows": args.rows,
                "passes": len(timings),
                "median_s": median,
                "rows_per_s": args.rows / median,
                "from_lists_rows_per_s": args.rows / float(np.median(from_lists)),
                "torch_threads": torch.get_num_threads(),
            }
        )
    )


if __name__ == "__main__":
    main()
