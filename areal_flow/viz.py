"""Drawing a graph: DOT, Mermaid, SVG and PNG.

Rules:
- Nodes are coloured by role (source, generator, reward, filter, trainer, publisher) and show
  name, kind and replicas; edges are labelled with record type and capacity; weight edges are
  dashed.
- Layout is layered left to right along the data plane; a weight edge that closes a loop is
  drawn as an arc back, so the feedback reads at a glance.
- SVG and PNG are drawn with matplotlib (a pip dependency); no Graphviz binary is needed. DOT
  output is for users who have Graphviz.
"""

from __future__ import annotations

from pathlib import Path

import networkx as nx

from areal_flow.graph import ResolvedEdge, resolved_edges
from areal_flow.roles import role_of
from areal_flow.spec import NodeSpec

ROLE_COLOURS = {
    "source": "#cfe8ff",
    "generator": "#ffe0b3",
    "reward": "#d9f2d0",
    "filter": "#f0e0ff",
    "trainer": "#ffd1d1",
    "publisher": "#fff5b3",
    "transform": "#e8e8e8",
    "sink": "#e0f0f0",
}
FORMATS = (".dot", ".mmd", ".svg", ".png")


def draw(g: nx.MultiDiGraph, out: Path) -> Path:
    """Write the drawing of ``g`` to ``out``; the suffix picks the format."""
    if out.suffix not in FORMATS:
        raise ValueError(f"cannot draw to {out.name}: use one of {', '.join(FORMATS)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".dot":
        out.write_text(to_dot(g))
    elif out.suffix == ".mmd":
        out.write_text(to_mermaid(g))
    else:
        _render(g, out)
    return out


def node_label(spec: NodeSpec) -> str:
    replicas = f" ×{spec.replicas}" if spec.replicas > 1 else ""
    return f"{spec.name}\n{spec.kind}{replicas}"


def edge_label(edge: ResolvedEdge) -> str:
    return f"{edge.record} · cap {edge.spec.capacity}"


def to_dot(g: nx.MultiDiGraph) -> str:
    lines = [
        f'digraph "{g.name}" {{',
        "  rankdir=LR;",
        '  node [shape=box, style="rounded,filled"];',
    ]
    for name, data in g.nodes(data=True):
        spec: NodeSpec = data["spec"]
        label = node_label(spec).replace("\n", "\\n")
        lines.append(f'  "{name}" [label="{label}", fillcolor="{ROLE_COLOURS[role_of(spec)]}"];')
    for edge in resolved_edges(g):
        style = ", style=dashed, constraint=false" if edge.weights else ""
        lines.append(f'  "{edge.src}" -> "{edge.dst}" [label="{edge_label(edge)}"{style}];')
    lines.append("}")
    return "\n".join(lines) + "\n"


def to_mermaid(g: nx.MultiDiGraph) -> str:
    lines = ["flowchart LR"]
    for name, data in g.nodes(data=True):
        spec: NodeSpec = data["spec"]
        lines.append(f'  {name}["{node_label(spec).replace(chr(10), "<br/>")}"]')
    for edge in resolved_edges(g):
        arrow = "-.->" if edge.weights else "-->"
        lines.append(f"  {edge.src} {arrow}|{edge_label(edge)}| {edge.dst}")
    for role, colour in ROLE_COLOURS.items():
        members = [n for n, d in g.nodes(data=True) if role_of(d["spec"]) == role]
        if members:
            lines.append(f"  classDef {role} fill:{colour},stroke:#555")
            lines.append(f"  class {','.join(members)} {role}")
    return "\n".join(lines) + "\n"


def layered_positions(g: nx.MultiDiGraph) -> dict[str, tuple[float, float]]:
    """x = layer along the data plane, y = spread within the layer.

    Weight edges also order the layers unless they close a loop (the feedback arc).
    """
    data = nx.DiGraph()
    data.add_nodes_from(g.nodes)
    edges = resolved_edges(g)
    data.add_edges_from((e.src, e.dst) for e in edges if not e.weights)
    for edge in (e for e in edges if e.weights):
        if not nx.has_path(data, edge.dst, edge.src):
            data.add_edge(edge.src, edge.dst)
    positions = {}
    for layer, names in enumerate(nx.topological_generations(data)):
        for row, name in enumerate(sorted(names)):
            positions[name] = (layer * 3.0, -(row - (len(names) - 1) / 2) * 1.6)
    return positions


def _render(g: nx.MultiDiGraph, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Patch

    pos = layered_positions(g)
    xs = [p[0] for p in pos.values()]
    ys = [p[1] for p in pos.values()]
    fig, ax = plt.subplots(figsize=(max(6.0, (max(xs) - min(xs)) * 1.1 + 3), 4.2))
    box_w, box_h = 1.9, 0.8
    for name, data in g.nodes(data=True):
        spec: NodeSpec = data["spec"]
        x, y = pos[name]
        ax.add_patch(
            FancyBboxPatch(
                (x - box_w / 2, y - box_h / 2),
                box_w,
                box_h,
                boxstyle="round,pad=0.05,rounding_size=0.15",
                facecolor=ROLE_COLOURS[role_of(spec)],
                edgecolor="#444",
                linewidth=1.2,
                zorder=2,
            )
        )
        ax.text(x, y, node_label(spec), ha="center", va="center", fontsize=10, zorder=3)
    for edge in resolved_edges(g):
        (x0, y0), (x1, y1) = pos[edge.src], pos[edge.dst]
        backwards = x1 <= x0
        rad = -0.35 if backwards else 0.0
        start = (x0, y0 - box_h / 2) if backwards else (x0 + box_w / 2, y0)
        end = (x1, y1 - box_h / 2) if backwards else (x1 - box_w / 2, y1)
        ax.add_patch(
            FancyArrowPatch(
                start,
                end,
                connectionstyle=f"arc3,rad={rad}",
                arrowstyle="-|>",
                mutation_scale=14,
                linewidth=1.3,
                color="#c0392b" if edge.weights else "#333",
                linestyle="--" if edge.weights else "-",
                zorder=1,
            )
        )
        mx, my = (start[0] + end[0]) / 2, (start[1] + end[1]) / 2
        if backwards:
            my -= abs(x1 - x0) * 0.18 + 0.25
        ax.text(
            mx,
            my + (0 if backwards else 0.22),
            edge_label(edge),
            ha="center",
            va="center",
            fontsize=8,
            color="#c0392b" if edge.weights else "#333",
            zorder=4,
            bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.85, "pad": 1},
        )
    roles = sorted({role_of(d["spec"]) for _, d in g.nodes(data=True)})
    legend = [Patch(facecolor=ROLE_COLOURS[r], edgecolor="#444", label=r) for r in roles]
    legend.append(Patch(facecolor="white", edgecolor="#c0392b", linestyle="--", label="weights"))
    ax.legend(
        handles=legend,
        loc="upper left",
        fontsize=8,
        ncol=len(legend),
        frameon=False,
        bbox_to_anchor=(0, 1.02),
    )
    span = (max(xs) - min(xs)) if len(xs) > 1 else 0
    ax.set_xlim(min(xs) - box_w, max(xs) + box_w)
    ax.set_ylim(min(ys) - 1.2 - span * 0.22, max(ys) + 1.1)
    ax.set_title(f"{g.name}", fontsize=12)
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(out, dpi=150)
    plt.close(fig)
