"""What serving an `auto` version costs: one network against its fold models as one Ensemble.

`auto` delivers the chosen candidates' cross-validation fold models (8 per candidate with
the defaults) as one `Ensemble`. This times one forward pass in inference mode, one thread,
as the predictor runs it, for batches of 1, 100 and 1,000 rows of 30 inputs and MLPs
[64, 64] with 3 classes: one MLP (what a named strategy serves), the Ensemble as shipped
(members of one shape stacked into batched matrix products), and the same Ensemble member by
member (the loop it runs while tracing for export). Each figure is the best of 5 rounds of
200 calls; the ratios are against the single MLP measured in the same run.

    .venv/bin/python benchmarks/ensemble_predict.py
    .venv/bin/python benchmarks/ensemble_predict.py --members 8,16,24
"""

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.ml.architectures import Ensemble, build_model

ARCHITECTURE = {"type": "mlp", "hidden_layers": [64, 64], "activation": "relu"}
WIDTH, CLASSES = 30, 3


def best_seconds(call: Callable[[], object], calls: int = 200, rounds: int = 5) -> float:
    with torch.inference_mode():
        for _ in range(20):
            call()
        best = float("inf")
        for _ in range(rounds):
            started = time.perf_counter()
            for _ in range(calls):
                call()
            best = min(best, (time.perf_counter() - started) / calls)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--members", default="8,16", help="ensemble sizes, comma-separated")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    single = build_model(ARCHITECTURE, WIDTH, CLASSES).eval()
    print(
        f"torch {torch.__version__}, 1 thread, MLP {ARCHITECTURE['hidden_layers']}, "
        f"{WIDTH} inputs, {CLASSES} classes; best of 5 x 200 calls"
    )
    print(
        f"{'members':>7} {'rows':>5} {'one MLP':>10} {'stacked':>10} {'loop':>10} "
        f"{'stacked/one':>12} {'loop/stacked':>13}"
    )
    for count in (int(c) for c in args.members.split(",")):
        members = [build_model(ARCHITECTURE, WIDTH, CLASSES).eval() for _ in range(count)]
        ensemble = Ensemble(members, [1.0] * count, "probabilities", WIDTH).eval()
        everyone = range(count)
        for rows in (1, 100, 1000):
            x = torch.randn(rows, WIDTH)
            one = best_seconds(lambda: single(x))  # noqa: B023 (timed here, in this loop)
            stacked = best_seconds(lambda: ensemble(x))  # noqa: B023
            loop = best_seconds(
                lambda: ensemble._finish(ensemble._mean_of(x, everyone))  # noqa: B023
            )
            print(
                f"{count:>7} {rows:>5} {one * 1e6:>8.0f}us {stacked * 1e6:>8.0f}us "
                f"{loop * 1e6:>8.0f}us {stacked / one:>11.1f}x {loop / stacked:>12.1f}x"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
