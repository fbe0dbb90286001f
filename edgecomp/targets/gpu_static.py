"""The GPU target's static check: every op against the delegate's rules, and the graph the delegate would take.

``check_static`` reads the file, judges each op with ``gpu_ops.op_issues`` and sums
the findings into the rules ``loads``, ``supported_ops``, ``tensor_rank``,
``static_shapes`` and ``data_types``; ``delegation`` cuts the graph as TFLite's
partitioner does and counts the ops and MACs the delegate would take.
"""

from __future__ import annotations

from edgecomp.errors import ModelError
from edgecomp.graph import Operator, Tensor, loads_rule, macs, read_model
from edgecomp.targets.gpu_ops import MAX_RANK, op_issues

# TfLiteGpuDelegateOptionsV2Default() (tensorflow/lite/delegates/gpu/delegate_options.cc): the delegate
# takes the largest partition of supported ops only; the rest runs on the CPU.
MAX_DELEGATED_PARTITIONS = 1


def constant_tensors(operators: list[Operator], tensors: dict[int, Tensor]) -> set[int]:
    """Tensors the delegate sees as constants: stored in the file, or a DEQUANTIZE of one (float16 weights)."""
    constants = {index for index, tensor in tensors.items() if tensor.constant}
    for operator in operators:
        if operator.name == "DEQUANTIZE" and operator.inputs and operator.inputs[0] in constants:
            constants.update(operator.outputs)
    return constants


def node_subsets(operators: list[Operator], on_gpu: list[bool]) -> list[tuple[bool, list[int]]]:
    """The graph cut into subsets of ops that all run on the GPU or all on the CPU, in execution order.

    The greedy partitioner TFLite hands a delegate (``PartitionGraphIntoIndependentNodeSubsets``
    in tensorflow/lite/graph_info.cc): a subset takes every op of its kind whose inputs are
    ready, in as many passes as it can grow; then the other kind starts the next subset.

    Returns:
        ``[(on_gpu, [op positions]), ...]``.
    """
    produced = {tensor for op in operators for tensor in op.outputs}
    ready: set[int] = set()
    done = [False] * len(operators)
    subsets: list[tuple[bool, list[int]]] = []
    while not all(done):
        kind, members, grew = None, [], True
        while grew:
            grew = False
            for position, op in enumerate(operators):
                if done[position] or any(t in produced and t not in ready for t in op.inputs if t >= 0):
                    continue
                kind = on_gpu[position] if kind is None else kind
                if on_gpu[position] == kind:
                    done[position] = grew = True
                    members.append(position)
                    ready.update(op.outputs)
        if not members:    # a cycle or a dangling input: nothing more is schedulable
            break
        subsets.append((bool(kind), members))
    return subsets


def delegation(operators: list[Operator], tensors: dict[int, Tensor], on_gpu: list[bool]) -> dict:
    """What the delegate would take with its default options: ops and MACs on the GPU, partitions.

    Returns:
        ``{"ops_total", "ops_supported", "partitions", "ops_on_gpu", "macs_total", "macs_on_gpu",
        "mac_share_on_gpu", "cpu_subsets"}``; ``ops_on_gpu`` counts the largest partition (the
        delegate takes ``MAX_DELEGATED_PARTITIONS`` by default).
    """
    subsets = node_subsets(operators, on_gpu)
    partitions = sorted((members for kind, members in subsets if kind), key=len, reverse=True)
    taken = [position for members in partitions[:MAX_DELEGATED_PARTITIONS] for position in members]
    counts = [macs(op, tensors) for op in operators]
    total = sum(counts)
    on_gpu_macs = sum(counts[position] for position in taken)
    return {"ops_total": len(operators), "ops_supported": sum(on_gpu), "partitions": len(partitions),
            "ops_on_gpu": len(taken), "macs_total": total, "macs_on_gpu": on_gpu_macs,
            "mac_share_on_gpu": on_gpu_macs / total if total else (1.0 if taken else 0.0),
            "cpu_subsets": sum(1 for kind, _ in subsets if not kind)}


def check_static(content: bytes) -> dict:
    """The static check alone: ``{"rules": [...], "ops": [...], "unsupported": [...]}``."""
    try:
        operators, tensors, _, _ = read_model(content)
    except ModelError as error:
        return {"rules": [_rule("loads", False, str(error))], "ops": [], "unsupported": []}
    constants = constant_tensors(operators, tensors)
    rules = [loads_rule(content, f"{len(operators)} ops, {len(tensors)} tensors")]
    per_op = [op_issues(op, tensors, constants) for op in operators]
    for name, passed in (("supported_ops", "every op is one the GPU delegate implements, within its limits"),
                         ("tensor_rank", f"every tensor computed at run time is at most {MAX_RANK}-D"),
                         ("static_shapes", "no dynamic dimension beyond the batch"),
                         ("data_types", "tensors computed at run time are float32/float16 or quantized 8-bit")):
        found = [(op, reason) for op, issues in zip(operators, per_op) for rule, reason in issues if rule == name]
        ops = sorted({op.name for op, _ in found})
        detail = passed if not found else (f"{len(found)} finding(s) at {', '.join(ops)}; first: op #"
                                           f"{found[0][0].index} {found[0][0].name}: {found[0][1]}")
        rules.append(_rule(name, not found, detail))
    unsupported = [{"index": op.index, "op": op.name, "rule": rule, "reason": reason, "source": "static"}
                   for op, issues in zip(operators, per_op) for rule, reason in issues]
    ops = [{"index": op.index, "op": op.name, "on_gpu": not issues, "issues": [reason for _, reason in issues]}
           for op, issues in zip(operators, per_op)]
    found = delegation(operators, tensors, [not issues for issues in per_op])
    return {"rules": rules, "ops": ops, "unsupported": unsupported, "delegation": found}



def _rule(name: str, ok: bool, detail: str) -> dict:
    return {"rule": name, "ok": bool(ok), "detail": detail}
