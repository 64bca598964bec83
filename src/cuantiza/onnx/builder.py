"""GraphBuilder: new nodes and initializers for an existing ONNX graph, with unique names.

Both directions use it: ``export`` replaces marker nodes of a traced torch model, ``quantize``
rewrites the weights and activations of a float ONNX graph. Names are ``prefix/what``, made
unique against every name already in the graph (tensors and nodes) and every name handed out.
"""

from __future__ import annotations

from onnx import GraphProto, NodeProto, TensorProto, helper


def graph_names(graph: GraphProto) -> set:
    """Every tensor and node name used in ``graph`` (top level and subgraphs)."""
    names = {t.name for t in graph.initializer} | {v.name for v in graph.input}
    names |= {v.name for v in graph.output} | {v.name for v in graph.value_info}
    for node in graph.node:
        names.add(node.name)
        names.update(node.input)
        names.update(node.output)
        for a in node.attribute:
            for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                names |= graph_names(g)
    names.discard("")
    return names


class GraphBuilder:
    """Collects nodes (in order) and initializers; ``take()`` hands over the nodes so far."""

    def __init__(self, taken: set):
        self.taken = set(taken)
        self.nodes: list[NodeProto] = []
        self.initializers: list[TensorProto] = []

    def name(self, base: str) -> str:
        """``base``, or ``base_1``, ``base_2``... : the first that is not taken yet."""
        cand, i = base, 0
        while cand in self.taken:
            i += 1
            cand = f"{base}_{i}"
        self.taken.add(cand)
        return cand

    def init(self, tensor: TensorProto) -> str:
        """Add an initializer under a unique version of its name; returns that name."""
        tensor.name = self.name(tensor.name)
        self.initializers.append(tensor)
        return tensor.name

    def const(self, name: str, value, dtype: int = TensorProto.FLOAT) -> str:
        """A scalar initializer."""
        return self.init(helper.make_tensor(name, dtype, [], [value]))

    def node(
        self,
        op: str,
        inputs: list,
        prefix: str,
        outputs: list | None = None,
        domain: str = "",
        **attrs,
    ) -> str:
        """Append ``op(inputs) -> outputs`` (fresh ``prefix/op`` names unless given); returns
        the first output's name."""
        node_name = self.name(f"{prefix}/{op}")
        outputs = outputs or [self.name(f"{node_name}_output")]
        self.nodes.append(
            helper.make_node(
                op, list(inputs), list(outputs), node_name, domain=domain or None, **attrs
            )
        )
        return outputs[0]

    def take(self) -> list[NodeProto]:
        nodes, self.nodes = self.nodes, []
        return nodes
