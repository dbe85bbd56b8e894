"""Which nodes of an exported edgeseg graph stay float: what fp16 and int8 both must leave alone.

Both reduced-precision files keep the in-graph normalisation float32 (its sums of ~155k raw
intensities, squared, overflow float16's 65504, and 256 levels would lose raw detail), and
the int8 file also keeps the first and the last Conv float. The selections are structural
(ancestors and descendants in graph order), so they survive onnxslim renaming nodes.

Split from :mod:`edgeseg.export.quantize` (507 lines) so that :mod:`edgeseg.export.quantize_fp16` and the
int8 flow share them from below instead of one importing the other.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgeseg.errors import EdgesegError

if TYPE_CHECKING:
    import onnx


def normalization_nodes(proto: onnx.ModelProto) -> list[str]:
    """Names of the nodes computing the first Conv's input from the image: the normalisation.

    Found structurally (ancestors of the first Conv's data input), so it survives onnxslim
    renaming nodes or dropping their metadata. Unnamed nodes get names first.
    """
    producers = {}
    for i, node in enumerate(proto.graph.node):
        node.name = node.name or f"edgeseg_node_{i}"
        producers.update({out: node for out in node.output})
    conv = next((n for n in proto.graph.node if n.op_type == "Conv"), None)
    if conv is None:
        raise EdgesegError("the graph has no Conv node; is this an edgeseg U-Net export?")
    found: dict[str, None] = {}
    stack = [conv.input[0]]
    while stack:
        node = producers.get(stack.pop())
        if node is not None and node.name not in found:
            found[node.name] = None
            stack.extend(node.input)
    return list(found)


def image_nodes(proto: onnx.ModelProto) -> list[str]:
    """Nodes that depend on no Conv: computed from the image and constants alone.

    The normalisation and, in contract 3, the frame's per-image shifts; the shifts also pick
    the logits' window after the last Conv, so an fp16 model must keep all of them float32.
    """
    convs = {n.name for n in proto.graph.node if n.op_type == "Conv"}
    downstream: set[str] = set()
    for node in proto.graph.node:  # graph order is topological
        if node.name in convs or downstream.intersection(node.input):
            downstream.update(node.output)
    return [n.name for n in proto.graph.node if not downstream.intersection(n.output)]


def float_nodes(proto: onnx.ModelProto) -> list[str]:
    """Nodes kept float in the int8 model: the normalisation, the first and the last Conv, and after it.

    The first Conv would otherwise see the normalised image in 256 levels, and the last one
    would hand the logits (the argmax's input) over in 256 levels; both flip labels where
    gray and white matter meet. Together they are ~1.6 % of the MACs (22 + 67 of 5,490
    MMAC per 394x394 slice), so keeping them float costs little speed. What follows the last
    Conv (contract 3 cuts the logits out of the aligned frame) only moves logits.
    """
    names = normalization_nodes(proto)
    convs = [n.name for n in proto.graph.node if n.op_type == "Conv"]
    return [*names, *dict.fromkeys([convs[0], *_descendants(proto, convs[-1])])]


def _descendants(proto: onnx.ModelProto, name: str) -> list[str]:
    """``name`` and every node that consumes its outputs, directly or not (graph order)."""
    reached, tensors = {name}, set()
    for node in proto.graph.node:  # graph order is topological
        if node.name in reached or tensors.intersection(node.input):
            reached.add(node.name)
            tensors.update(node.output)
    return [n.name for n in proto.graph.node if n.name in reached]


def internal_tensors(proto: onnx.ModelProto, nodes: set[str]) -> set[str]:
    """Outputs of ``nodes`` whose every consumer is also in ``nodes``."""
    consumers: dict[str, list[str]] = {}
    for node in proto.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node.name)
    outputs = {o.name for o in proto.graph.output}
    return {
        out
        for node in proto.graph.node
        if node.name in nodes
        for out in node.output
        if out not in outputs and all(c in nodes for c in consumers.get(out, []))
    }
