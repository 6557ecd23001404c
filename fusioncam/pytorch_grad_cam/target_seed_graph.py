"""The bundle's explain graph with its backward seed chosen per image, for pytorch-grad-cam's targets that are not one
logit: ClassifierOutputSoftmaxTarget, BinaryClassifierOutputTarget and RawScoresOutputTarget.

The explain graph computes the gradients as J^T s, the transposed Jacobian of the logits z (with respect to the
target layer) times a seed s [N, C]; the bundle's graph builds s as the one-hot of the target class. Any target that is
a function t(z) of the logits has the gradient J^T (dt/dz), so the same backward gives it exactly, in the same one
pass, once s = dt/dz. This module copies the explain graph (in memory; the bundle is not changed) and replaces the
node that makes the one-hot seed by

    s = a * onehot(c) + b * p_c * (onehot(c) - p) + r,    p = softmax(z),

with per-image weights (a, b, r) as a graph input:
  - ClassifierOutputTarget(c): a = 1 (the bundle's own seed);
  - ClassifierOutputSoftmaxTarget(c): b = 1, since d p_c / d z_j = p_c (delta_cj - p_j);
  - BinaryClassifierOutputTarget(k) on a model with one output logit: c = 0, a = +1 for k = 1, else -1;
  - RawScoresOutputTarget(): r = 1, since d (sum_j z_j) / d z_j = 1.
The seed is a constant of the backward (computed from the forward's logits, as autograd holds dt/dz), so the result is
the gradient of t, not an approximation; no per-logit gradients and no second pass are needed.
"""

from __future__ import annotations

import numpy as np

from ..errors import BundleError
from ..graph_names import INPUT, TARGET

SEED = "explain/seed"  # the backward seed [N, C] of export/explain_graph.py
ONEHOT = "explain/onehot_bool"
ARGMAX_NODE = "explain/argmax"  # reads the logits tensor
SEED_WEIGHTS = "seed_weights"  # the added input: float32 [N, 3], per image (a, b, r) above
PROTOBUF_LIMIT = 2 ** 31 - 1


def seeded_explain_model(explain_path) -> bytes:
    """The explain graph at `explain_path` with the seed above, weights included, serialised for ONNX Runtime."""
    import os

    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(os.fspath(explain_path), load_external_data=True)
    graph = model.graph
    made = [i for i, node in enumerate(graph.node) if SEED in node.output]
    argmax = [node for node in graph.node if node.name == ARGMAX_NODE]
    if len(made) != 1 or not argmax:
        raise BundleError(f"{explain_path}: this explain graph has no one-hot seed node ('{SEED}'), so softmax, binary "
                          f"and raw-score targets cannot be given to it; re-export the bundle with this fusioncam")
    logits = argmax[0].input[0]
    del graph.node[made[0]]
    graph.input.append(helper.make_tensor_value_info(SEED_WEIGHTS, TensorProto.FLOAT, ["N", 3]))
    graph.initializer.extend([numpy_helper.from_array(np.array([1], np.int64), "seeded/axis1"),
                              numpy_helper.from_array(np.array([0], np.int64), "seeded/start0"),
                              numpy_helper.from_array(np.array([1], np.int64), "seeded/start1"),
                              numpy_helper.from_array(np.array([2], np.int64), "seeded/start2"),
                              numpy_helper.from_array(np.array([3], np.int64), "seeded/stop3")])

    def column(start: str, stop: str, name: str):
        return helper.make_node("Slice", [SEED_WEIGHTS, f"seeded/{start}", f"seeded/{stop}", "seeded/axis1"],
                                [name], name=name)

    graph.node.extend([
        helper.make_node("Cast", [ONEHOT], ["seeded/onehot"], to=TensorProto.FLOAT, name="seeded/onehot"),
        helper.make_node("Softmax", [logits], ["seeded/p"], axis=1, name="seeded/p"),
        helper.make_node("Mul", ["seeded/onehot", "seeded/p"], ["seeded/p_masked"], name="seeded/p_masked"),
        helper.make_node("ReduceSum", ["seeded/p_masked", "seeded/axis1"], ["seeded/p_c"], keepdims=1,
                         name="seeded/p_c"),
        helper.make_node("Sub", ["seeded/onehot", "seeded/p"], ["seeded/onehot_minus_p"], name="seeded/onehot_minus_p"),
        helper.make_node("Mul", ["seeded/p_c", "seeded/onehot_minus_p"], ["seeded/softmax_seed"],
                         name="seeded/softmax_seed"),
        column("start0", "start1", "seeded/a"),
        column("start1", "start2", "seeded/b"),
        column("start2", "stop3", "seeded/r"),
        helper.make_node("Mul", ["seeded/a", "seeded/onehot"], ["seeded/logit_term"], name="seeded/logit_term"),
        helper.make_node("Mul", ["seeded/b", "seeded/softmax_seed"], ["seeded/softmax_term"],
                         name="seeded/softmax_term"),
        helper.make_node("Add", ["seeded/logit_term", "seeded/softmax_term"], ["seeded/sum"], name="seeded/sum"),
        helper.make_node("Add", ["seeded/sum", "seeded/r"], [SEED], name=SEED),
    ])
    # the seed's producer moved to the end: put the nodes back in topological order
    order, ready = [], {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending = list(graph.node)
    while pending:
        progressed = [node for node in pending if all(name in ready for name in node.input)]
        if not progressed:
            raise BundleError(f"{explain_path}: the explain graph with the target seed is not a DAG")
        for node in progressed:
            ready.update(node.output)
        order += progressed
        pending = [node for node in pending if node not in progressed]
    del graph.node[:]
    graph.node.extend(order)
    data = model.SerializeToString()
    if len(data) > PROTOBUF_LIMIT:
        raise BundleError(f"{explain_path}: the model is over 2 GiB, too large for softmax, binary and raw-score "
                          f"targets (the copied explain graph is held in memory); use ClassifierOutputTarget")
    return data


class SeededExplain:
    """One ONNX Runtime session of the seeded explain graph of a bundle: logits, activations and gradients for
    per-image seed weights."""

    def __init__(self, bundle, providers: list[str] | None = None) -> None:
        import onnxruntime as ort

        from ..cpu_quota import cpu_budget

        options = ort.SessionOptions()
        options.intra_op_num_threads = cpu_budget().cpus  # as runtime/cpu_backend.py's sessions
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._session = ort.InferenceSession(seeded_explain_model(bundle.explain_path), sess_options=options,
                                             providers=providers or ["CPUExecutionProvider"])
        self.num_classes = int(bundle.manifest.num_classes)
        self._outputs = [output.name for output in self._session.get_outputs()]  # several layers: activations/1, ...

    def run(self, images: np.ndarray, classes: np.ndarray, seeds: np.ndarray) -> dict[str, np.ndarray]:
        """{logits, activations, gradients, target_used} (and a several-layer bundle's activations/1, gradients/1,
        ...) for images [N, 3, H, W], classes int64 [N] (-1: arg-max) and seed weights float32 [N, 3]."""
        names = self._outputs
        feed = {INPUT: np.ascontiguousarray(images, np.float32), TARGET: np.asarray(classes, np.int64),
                SEED_WEIGHTS: np.ascontiguousarray(seeds, np.float32)}
        return dict(zip(names, self._session.run(names, feed)))
