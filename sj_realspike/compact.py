"""`compact`: what pays of onnxscript's optimizer, on the exporter's ``onnx_ir`` model."""

from __future__ import annotations

__all__ = ["compact"]


def compact(model: object) -> None:
    """What pays of onnxscript's optimizer (``optimize=True``), in place on the exporter's ``onnx_ir`` model.

    Constant folding, common subexpressions, constants lifted to initializers, and the
    rewrite rules that merge reshape/cast chains and drop no-op ``· 1`` / ``/ 1`` and
    all-zero biases, repeated until nothing changes (a reshape whose shape a rule made
    constant merges on the next round). Not the optimizer's full rule set: it took 4× as
    long for the same graph, node for node, and the same onnxruntime time
    (bench/export_time.py), and it would fuse a BatchNorm that fold left after a Conv into
    the Conv's weights: a rounding the deploy model does not have.
    """
    import onnx_ir.passes
    import onnx_ir.passes.common as common
    from onnxscript import optimizer, rewriter
    from onnxscript.rewriter.rules import common as rules

    optimizer.fold_constants_ir(model)
    common.RemoveUnusedNodesPass()(model)
    common.CommonSubexpressionEliminationPass()(model)
    rules_pass = rewriter.RewritePass([
        rules.reshape_reshape_rule, rules.materialize_reshape_shape_rule, rules.unsqueeze_unsqueeze_rule,
        rules.squeeze_reshape_1d_rule, rules.cast_cast_rule, rules.no_op_cast_rule, rules.no_op_expand_rule,
        rules.no_op_transpose_rule, rules.transpose_transpose_rule, rules.slice_split_rule,
        rules.collapse_slice_rule, rules.collapse_slice2_rule, rules.one_reshape_matmul_reshape_rule,
        rules.two_reshapes_matmul_reshape_rule, rules.mul_by_1_rule, rules.div_by_1_rule,
        # torchlib gives a bias-free Conv3d a zero bias of the wrong shape ([C_out, 2]: onnxruntime
        # refuses it); folded to a constant above, the zero bias is dropped here
        rules.remove_optional_bias_from_conv_rule, rules.remove_optional_bias_from_conv_transpose_rule,
        rules.remove_optional_bias_from_gemm_rule])
    onnx_ir.passes.PassManager([rules_pass, common.RemoveUnusedNodesPass()], steps=4, early_stop=True)(model)
    for step in (common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
                 common.DeduplicateInitializersPass(), common.CommonSubexpressionEliminationPass(),
                 common.RemoveUnusedNodesPass(), common.OutputFixPass(), common.NameFixPass()):
        step(model)
