"""Teachers that arrive as graphs, a TorchScript archive or a `torch.export` program, made hookable.

Neither format has Python modules to hook: a ScriptModule refuses forward hooks, and an exported program is
one flat graph of aten ops. Both graphs still record which module each op ran in (TorchScript: the inlined
call stack, `node.getModuleHierarchy()`; torch.export: `node.meta["nn_module_stack"]`). From that we find each
module's output (the last value computed inside the module that is used outside it) and insert a `Tap`
module there under the module's own path. The result is an ordinary `torch.fx.GraphModule`: forward hooks,
`FeatureTap`, FLOP counting, `.to(device)` and the ONNX exporter work on it as on any nn.Module, and its
attention points have the paths of the original model (`layer1`, `layer1.0`, ...).

    gm = from_exported(torch.export.load("teacher.pt2"))
    gm = from_torchscript(torch.jit.load("teacher.ts"), example=torch.zeros(2, 3, 32, 32))
"""

from __future__ import annotations

import re
import warnings
from collections import defaultdict

import torch
from torch import fx, nn

from compressor.core.errors import UserError


class Tap(nn.Module):
    """Stands for one module of the original model: returns that module's output unchanged.

    It is also handed the module's inputs (values computed outside the module and used inside it), so a
    forward hook sees what a hook on the original module would: which tensors went in, which came out.
    """

    def forward(self, output, *inputs):
        return output


def from_exported(program: torch.export.ExportedProgram) -> fx.GraphModule:
    """A `torch.export` program as a GraphModule with a `Tap` at every module output."""
    gm = program.module()
    # `module()` makes train()/eval() raise, because they cannot change a traced graph. The ops are fixed either
    # way (`training_mode_ops` refuses training-mode programs), and the trainer calls eval() on every teacher.
    for name in ("train", "eval"):
        gm.__dict__.pop(name, None)
    scope = {}
    for node in gm.graph.nodes:
        stack = node.meta.get("nn_module_stack")
        if node.op == "call_function" and stack:
            scope[node] = _clean_path(list(stack.values())[-1][0])  # innermost module: (path, type)
    install_taps(gm, scope, tensor_only=True)
    return gm


def from_torchscript(scripted: torch.jit.ScriptModule, example: torch.Tensor) -> fx.GraphModule:
    """A TorchScript module converted to a GraphModule (aten ops) with a `Tap` at every module output.

    The conversion is torch's own TorchScript-to-FX converter (`torch._export.converter`, a private module of
    the pinned torch version). It maps every TorchScript value to an FX node, which is how the module paths
    of the TorchScript graph reach the FX nodes. The FX graph does not specialise on `example`'s shape.
    """
    from torch._export import converter as ts2fx  # private API of torch==2.14 (pinned in pyproject.toml)

    scripted.eval()  # `training` is folded into the graph when it is frozen below
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the converter warns about every branch it specialises
        conv = ts2fx.TS2EPConverter(scripted, (example,))
        blocks, attribute_fqn = ts2fx.get_block_to_lifted_attrs(conv.ts_graph)
        graph_conv = ts2fx.TS2FXGraphConverter(
            conv.ts_graph, conv.name_to_param, conv.name_to_buffer, blocks,
            conv.name_to_non_tensor_attributes, conv.name_to_constant, attribute_fqn,
        )
        gm = graph_conv.convert()
        ts2fx.replace_quantized_ops_with_standard_ops(gm)
    _as_parameters(gm, dict(scripted.named_parameters()))
    # TorchScript `if` blocks whose values nothing uses (input checks that raise, BatchNorm's training-only
    # counter update) become torch.cond calls on a constant: drop them before they are mapped to modules.
    for node in reversed(gm.graph.nodes):
        if node.op == "call_function" and node.target is torch.ops.higher_order.cond and not node.users:
            gm.graph.erase_node(node)
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()

    ts_scope = {}
    for ts_node in conv.ts_graph.nodes():
        path = _torchscript_path(ts_node.getModuleHierarchy())
        for value in ts_node.outputs():
            ts_scope[value.debugName()] = path
    scope = {}
    for name, node in graph_conv.name_to_node.items():
        if isinstance(node, fx.Node) and node.op == "call_function" and name in ts_scope:
            scope[node] = ts_scope[name]
    # the converter emits helper nodes for one TorchScript op just before that op's node: same module
    following = None
    for node in reversed(list(gm.graph.nodes)):
        if node.op != "call_function":
            continue
        if node in scope:
            following = scope[node]
        elif following is not None:
            scope[node] = following
    install_taps(gm, scope, tensor_only=False)
    return gm


def _clean_path(path: str) -> str:
    # torch.export writes the root as "" and submodules as dotted paths ("layer1.0.conv1")
    return path.removeprefix("L['self'].").removeprefix("L__self__.").strip(".")


def _torchscript_path(hierarchy: str) -> str:
    """'layer1(Sequential).0(BasicBlock).relu(ReLU).UNKNOWN_INSTANCE(UNKNOWN_TYPE)' -> 'layer1.0.relu'.

    Each segment is `instance(Type)`; SELF(...) segments are method calls on the same module and
    UNKNOWN_INSTANCE(...) ones free functions (F.relu), so neither names a submodule.
    """
    names = re.findall(r"([^.()]*)\(([^()]*)\)", hierarchy)
    return ".".join(name for name, _ in names if name and name not in ("SELF", "UNKNOWN_INSTANCE"))


def _as_parameters(gm: fx.GraphModule, names: dict) -> None:
    """The converter stores every tensor as a buffer; the scripted module's parameters become parameters again."""
    for fqn in names:
        owner_path, _, attr = fqn.rpartition(".")
        try:
            owner = gm.get_submodule(owner_path)
        except AttributeError:
            continue
        value = owner._buffers.pop(attr, None)
        if value is not None:
            owner.register_parameter(attr, nn.Parameter(value, requires_grad=False))


def _ancestors(path: str) -> list[str]:
    parts = path.split(".") if path else []
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def install_taps(gm: fx.GraphModule, scope: dict[fx.Node, str], *, tensor_only: bool) -> None:
    """Insert a `Tap` call after each module's output node.

    scope: the innermost module path of each op node. A module's output is its last node (in graph order)
    whose value is used outside the module or returned; its inputs are the nodes outside it used inside it.
    """
    graph = gm.graph
    inside: dict[fx.Node, set[str]] = {n: set(_ancestors(scope.get(n, ""))) for n in graph.nodes}
    members: dict[str, list[fx.Node]] = defaultdict(list)
    for node in graph.nodes:
        for path in inside[node]:
            members[path].append(node)

    outputs: dict[str, fx.Node] = {}
    inputs: dict[str, list[fx.Node]] = {}
    for path, nodes in members.items():
        for node in reversed(nodes):
            if tensor_only and not isinstance(node.meta.get("val"), torch.Tensor):
                continue
            if any(user.op == "output" or path not in inside[user] for user in node.users):
                outputs[path] = node
                break
        if path in outputs:
            seen = dict.fromkeys(
                arg for n in nodes for arg in n.all_input_nodes if path not in inside[arg] and arg.op != "get_attr"
            )
            inputs[path] = list(seen)

    for path in sorted(outputs, key=lambda p: p.count(".")):  # parents first: children move into them
        _put_tap(gm, path)
    by_node: dict[fx.Node, list[str]] = defaultdict(list)
    for path, node in outputs.items():
        by_node[node].append(path)
    for node, paths in by_node.items():
        chain, last = [], node
        for path in sorted(paths, key=lambda p: -p.count(".")):  # inner module first, as its hook fires first
            with graph.inserting_after(last):
                last = graph.call_module(path, (last, *inputs[path]))
            chain.append(last)
        node.replace_all_uses_with(last, delete_user_cb=lambda user, chain=chain: user not in chain)
    graph.lint()
    gm.recompile()


def _put_tap(gm: fx.GraphModule, path: str) -> None:
    """Make the submodule at `path` a Tap, keeping any parameters, buffers and children already there."""
    parent: nn.Module = gm
    *owners, name = path.split(".")
    for part in owners:
        child = parent._modules.get(part)
        if child is None:
            child = parent._modules[part] = nn.Module()
        parent = child
    tap, old = Tap(), parent._modules.get(name)
    if old is not None:
        tap._modules, tap._parameters, tap._buffers = old._modules, old._parameters, old._buffers
    elif hasattr(parent, name):
        raise UserError(f"cannot tap module {path!r}: the graph module already has an attribute {name!r}")
    parent._modules[name] = tap


def exported_input_shape(program: torch.export.ExportedProgram) -> tuple:
    """The one user input's shape, ints where fixed and None where dynamic: e.g. (None, 3, 224, 224)."""
    names = program.graph_signature.user_inputs
    if len(names) != 1:
        raise UserError(f"the program takes {len(names)} inputs; a classifier takes one batch of images")
    node = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == names[0])
    val = node.meta.get("val")
    if not isinstance(val, torch.Tensor) or val.dim() != 4:
        raise UserError("the program's input is not an (N, C, H, W) image batch")
    return tuple(d if isinstance(d, int) else None for d in val.shape)


def training_mode_ops(gm: fx.GraphModule) -> list[str]:
    """Ops of a program exported in training mode (batch statistics, active dropout): they make a bad teacher."""
    aten = torch.ops.aten
    # op -> index of its `training` argument; the legit_functional batch norm only exists in training mode
    flags = {aten.batch_norm.default: 5, aten.dropout.default: 2, aten.feature_dropout.default: 2}
    always = {aten._native_batch_norm_legit_functional.default, aten._native_batch_norm_legit.default}
    found = set()
    for node in gm.graph.nodes:
        i = flags.get(node.target)
        if node.target in always or (i is not None and len(node.args) > i and node.args[i] is True):
            found.add(str(node.target))
    return sorted(found)
