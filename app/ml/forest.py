"""Target-only random forests from scikit-learn, expressed as a torch module for serving.

A fitted forest becomes tensors: per tree, which input each split node reads and its
threshold, a path matrix saying for each leaf which split nodes it lies left (+1) or right
(-1) of, the number of left turns on the way to each leaf, and the leaves' values. A row
reaches a leaf exactly when its decisions, multiplied by the path matrix, add up to that
leaf's left-turn count: comparisons and matrix products, so the forest predicts in batches
like any other version, and exports to ONNX and TorchScript with no tree operator.
"""

from typing import Any

import numpy as np
import torch
from torch import nn

# 100 trees, as scikit-learn's default; at most 64 leaves a tree keeps the path matrix
# (trees x 63 x 64) small whatever the number of rows. Small targets, where a target-only
# forest matters, grow trees of fewer leaves than that anyway.
FOREST_TREES = 100
FOREST_MAX_LEAVES = 64
FOREST_COMBINE = ("probabilities", "mean")
# The left-turn count given to padding leaves: no row's decisions add up to it.
_UNREACHABLE = -1.0


class Forest(nn.Module):
    """A forest's trees as padded tensors; returns log-probabilities (classification: the
    log of the trees' mean class probabilities, whose softmax is that mean) or the trees'
    mean output (regression, one column)."""

    feature: torch.Tensor
    threshold: torch.Tensor
    path: torch.Tensor
    left_turns: torch.Tensor
    leaf_value: torch.Tensor

    def __init__(
        self,
        input_dim: int,
        output_dim: int,
        trees: int,
        split_nodes: int,
        leaves: int,
        combine: str,
    ):
        super().__init__()
        if combine not in FOREST_COMBINE:
            raise ValueError(f"combine must be one of {FOREST_COMBINE}, got {combine!r}")
        if min(input_dim, output_dim, trees, leaves) < 1 or split_nodes < 0:
            raise ValueError("a forest needs inputs, outputs, trees and leaves")
        self.combine = combine
        self.input_dim = input_dim
        self.register_buffer("feature", torch.zeros(trees * split_nodes, dtype=torch.int64))
        self.register_buffer("threshold", torch.zeros(trees * split_nodes))
        self.register_buffer("path", torch.zeros(trees, split_nodes, leaves))
        self.register_buffer("left_turns", torch.full((trees, leaves), _UNREACHABLE))
        self.register_buffer("leaf_value", torch.zeros(trees, leaves, output_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        trees, split_nodes, _ = self.path.shape
        goes_left = (x.index_select(1, self.feature) <= self.threshold).to(x.dtype)
        turns = torch.einsum(
            "nts,tsl->ntl", goes_left.reshape(x.shape[0], trees, split_nodes), self.path
        )
        reached = (turns == self.left_turns).to(x.dtype)
        mean = torch.einsum("ntl,tlk->nk", reached, self.leaf_value) / trees
        if self.combine == "probabilities":
            # A class no tree predicts has probability 0; its log would be -inf.
            return torch.log(mean.clamp_min(1e-30))
        return mean


def build_forest(
    input_dim: int,
    output_dim: int,
    *,
    trees: int,
    split_nodes: int,
    leaves: int,
    combine: str,
) -> Forest:
    """An empty forest of this shape; a stored version's weights fill it."""
    return Forest(input_dim, output_dim, trees, split_nodes, leaves, combine)


def fit_forest(
    x: np.ndarray,
    y: np.ndarray,
    target_spec: dict[str, Any],
    *,
    seed: int = 0,
    trees: int = FOREST_TREES,
    max_leaves: int = FOREST_MAX_LEAVES,
) -> tuple[Forest, dict[str, Any]]:
    """A random forest on rows x features (classification: class indices; regression: the
    standardised targets), as a `Forest` module and the architecture dict it is stored with."""
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

    x2 = np.asarray(x, dtype=np.float32)
    if x2.ndim != 2 or len(x2) == 0:
        raise ValueError(f"a forest reads rows x features, got shape {x2.shape}")
    classification = target_spec["task"] == "classification"
    forest: Any
    if classification:
        output_dim = len(target_spec["classes"])
        forest = RandomForestClassifier(
            n_estimators=trees, max_leaf_nodes=max_leaves, random_state=seed, n_jobs=1
        )
        forest.fit(x2, np.asarray(y, dtype=np.int64))
        seen = forest.classes_.astype(np.int64)
    else:
        output_dim = 1
        forest = RandomForestRegressor(
            n_estimators=trees, max_leaf_nodes=max_leaves, random_state=seed, n_jobs=1
        )
        forest.fit(x2, np.asarray(y, dtype=np.float64))
        seen = np.zeros(1, dtype=np.int64)
    estimators = [est.tree_ for est in forest.estimators_]
    split_nodes = max(1, max(int((t.children_left >= 0).sum()) for t in estimators))
    leaves = max(int((t.children_left < 0).sum()) for t in estimators)
    combine = "probabilities" if classification else "mean"
    module = Forest(x2.shape[1], output_dim, len(estimators), split_nodes, leaves, combine)
    feature = np.zeros((len(estimators), split_nodes), np.int64)
    threshold = np.zeros((len(estimators), split_nodes), np.float64)
    path = np.zeros((len(estimators), split_nodes, leaves), np.float32)
    left_turns = np.full((len(estimators), leaves), _UNREACHABLE, np.float32)
    leaf_value = np.zeros((len(estimators), leaves, output_dim), np.float32)
    for t, tree in enumerate(estimators):
        split_index: dict[int, int] = {}
        leaf_index: dict[int, int] = {}
        for node in range(tree.node_count):
            if tree.children_left[node] >= 0:
                split_index[node] = len(split_index)
            else:
                leaf_index[node] = len(leaf_index)
        # Walk from the root carrying each node's ancestors and the side taken at each.
        stack: list[tuple[int, list[tuple[int, float]]]] = [(0, [])]
        while stack:
            node, ancestors = stack.pop()
            if node in leaf_index:
                leaf = leaf_index[node]
                for split, side in ancestors:
                    path[t, split, leaf] = side
                left_turns[t, leaf] = sum(1 for _, side in ancestors if side > 0)
                value = tree.value[node].reshape(-1)
                if classification:
                    # Fractions of the leaf's rows per class, over the classes this forest saw.
                    leaf_value[t, leaf, seen] = value / value.sum()
                else:
                    leaf_value[t, leaf, 0] = value[0]
                continue
            split = split_index[node]
            feature[t, split] = tree.feature[node]
            threshold[t, split] = tree.threshold[node]
            stack.append((int(tree.children_left[node]), [*ancestors, (split, 1.0)]))
            stack.append((int(tree.children_right[node]), [*ancestors, (split, -1.0)]))
    # scikit-learn compares float32 inputs with float64 thresholds; the largest float32 not
    # above each threshold gives every float32 input the same side in float32 arithmetic.
    rounded = threshold.astype(np.float32)
    above = rounded.astype(np.float64) > threshold
    rounded[above] = np.nextafter(rounded[above], np.float32(-np.inf))
    with torch.no_grad():
        module.feature.copy_(torch.as_tensor(feature.reshape(-1)))
        module.threshold.copy_(torch.as_tensor(rounded.reshape(-1)))
        module.path.copy_(torch.as_tensor(path))
        module.left_turns.copy_(torch.as_tensor(left_turns))
        module.leaf_value.copy_(torch.as_tensor(leaf_value))
    architecture = {
        "type": "forest",
        "trees": len(estimators),
        "split_nodes": split_nodes,
        "leaves": leaves,
        "combine": combine,
        "input_dim": int(x2.shape[1]),
        "output_dim": output_dim,
    }
    return module.eval(), architecture
