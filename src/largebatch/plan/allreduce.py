"""All-reduce time in the alpha-beta model: alpha seconds of latency per message step, beta
seconds per byte on a link (beta = 1 / bandwidth).

References: Thakur, Rabenseifner and Gropp, "Optimization of Collective Communication Operations
in MPICH" (IJHPCA 2005), for the ring and recursive halving-doubling costs; Goyal et al. 2017
(arXiv 1706.02677, sec. 4) use the same two algorithms between servers. Every function is pure
and returns seconds.

The three variants for ``processors`` processes, ``devices_per_node`` of them per node:

- ring: one ring through all processes, 2(p-1) steps of n/p bytes each:
  T = 2(p-1)/p * n * beta + 2(p-1) * alpha.
- tree: recursive halving (reduce-scatter) then doubling (all-gather), 2 log2(p) steps with the
  same bytes per process as the ring: T = 2(p-1)/p * n * beta + 2 ceil(log2 p) * alpha.
- hierarchical: ring reduce-scatter inside each node, halving-doubling all-reduce of each
  1/g shard between the N nodes (all g shards at once, sharing the node's network links), ring
  all-gather inside the node:
  T = 2(g-1)/g * n * beta_intra + 2(g-1) * alpha_intra
    + 2(N-1)/N * n * beta_node + 2 ceil(log2 N) * alpha_network.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

ALGORITHMS = ("ring", "tree", "hierarchical")


@dataclass(frozen=True)
class Links:
    """The links an all-reduce can use, in bytes/s and seconds per message step.

    ``network_bandwidth`` is what one node can send at once (its links' data rate times the
    number of links per node); ``intra_bandwidth`` is what one process can send to a neighbour
    inside its node (NVLink, PCIe, shared memory).
    """

    network_bandwidth: float
    network_latency: float
    intra_bandwidth: float
    intra_latency: float
    devices_per_node: int = 1


@dataclass(frozen=True)
class AllReduceTime:
    """One algorithm's time, split into its bandwidth and latency terms."""

    algorithm: str
    bandwidth_s: float
    latency_s: float

    @property
    def total_s(self) -> float:
        return self.bandwidth_s + self.latency_s


def ring_seconds(message_bytes: float, processors: int, bandwidth: float, latency: float) -> float:
    """Ring all-reduce on one kind of link: 2(p-1)/p * n / bandwidth + 2(p-1) * latency."""
    if processors <= 1:
        return 0.0
    p = processors
    return 2 * (p - 1) / p * message_bytes / bandwidth + 2 * (p - 1) * latency


def halving_doubling_seconds(message_bytes: float, processors: int, bandwidth: float, latency: float) -> float:
    """Recursive halving-doubling: 2(p-1)/p * n / bandwidth + 2 ceil(log2 p) * latency."""
    if processors <= 1:
        return 0.0
    p = processors
    return 2 * (p - 1) / p * message_bytes / bandwidth + 2 * math.ceil(math.log2(p)) * latency


def _nodes(processors: int, devices_per_node: int) -> tuple[int, int]:
    """(processes per node actually used, number of nodes)."""
    per_node = max(1, min(devices_per_node, processors))
    return per_node, math.ceil(processors / per_node)


def ring(message_bytes: float, processors: int, links: Links) -> AllReduceTime:
    """One flat ring. Across nodes, each node has one ring edge in and one out, so a step runs at
    the slower of the in-node link and the node's network bandwidth, with the network's latency."""
    if processors <= 1:
        return AllReduceTime("ring", 0.0, 0.0)
    per_node, nodes = _nodes(processors, links.devices_per_node)
    if nodes == 1:
        bandwidth, latency = links.intra_bandwidth, links.intra_latency
    elif per_node == 1:
        bandwidth, latency = links.network_bandwidth, links.network_latency
    else:
        bandwidth, latency = min(links.intra_bandwidth, links.network_bandwidth), links.network_latency
    p = processors
    return AllReduceTime("ring", 2 * (p - 1) / p * message_bytes / bandwidth, 2 * (p - 1) * latency)


def tree(message_bytes: float, processors: int, links: Links) -> AllReduceTime:
    """Flat recursive halving-doubling. Across nodes its long-distance steps have all of a node's
    processes on the network at once, so each gets 1/g of the node's bandwidth (conservative:
    the first log2(g) steps could stay inside the node)."""
    if processors <= 1:
        return AllReduceTime("tree", 0.0, 0.0)
    per_node, nodes = _nodes(processors, links.devices_per_node)
    if nodes == 1:
        bandwidth, latency = links.intra_bandwidth, links.intra_latency
    else:
        bandwidth, latency = links.network_bandwidth / per_node, links.network_latency
    p = processors
    return AllReduceTime("tree", 2 * (p - 1) / p * message_bytes / bandwidth,
                         2 * math.ceil(math.log2(p)) * latency)


def hierarchical(message_bytes: float, processors: int, links: Links) -> AllReduceTime:
    """Reduce-scatter in the node, all-reduce of the shards between nodes, all-gather in the node."""
    if processors <= 1:
        return AllReduceTime("hierarchical", 0.0, 0.0)
    per_node, nodes = _nodes(processors, links.devices_per_node)
    g = per_node
    bandwidth_s = 2 * (g - 1) / g * message_bytes / links.intra_bandwidth
    latency_s = 2 * (g - 1) * links.intra_latency
    if nodes > 1:
        # g shards of n/g bytes cross the node's links at once: 2(N-1)/N * n bytes per node.
        bandwidth_s += 2 * (nodes - 1) / nodes * message_bytes / links.network_bandwidth
        latency_s += 2 * math.ceil(math.log2(nodes)) * links.network_latency
    return AllReduceTime("hierarchical", bandwidth_s, latency_s)


def all_algorithms(message_bytes: float, processors: int, links: Links) -> dict[str, AllReduceTime]:
    """The time of every algorithm, by name."""
    return {"ring": ring(message_bytes, processors, links),
            "tree": tree(message_bytes, processors, links),
            "hierarchical": hierarchical(message_bytes, processors, links)}
