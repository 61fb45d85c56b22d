"""The one dispatch point between the fused Triton kernels and the reference ops.

The model calls only `remn.ops.memory_read` and `remn.ops.local_attention`. With
`backend=None` (automatic) a call goes to the Triton kernel when every tensor is on CUDA,
the dtype is one the kernels take and Triton imports; otherwise to `remn.reference`.
`backend="triton"` forces the kernel and raises with the reason when it cannot run (on CPU
tensors it runs only under `TRITON_INTERPRET=1`); `backend="reference"` forces PyTorch.

The automatic choice is a PyTorch custom op, `torch.ops.remn.memory_read` and
`torch.ops.remn.local_attention` (`torch.library.custom_op`), so `torch.compile`,
`torch.export` and FakeTensor tracing see one opaque node per call on every device: its
CUDA implementation is the Triton kernel (the reference where the kernel cannot take the
tensors), its implementation elsewhere the reference; `register_fake` gives the output
shape, and the autograd formula is the reference's gradient (a second custom op,
`remn::*_backward`, that differentiates the reference with `torch.func.vjp`), the same
gradient the kernels' own backward computes. `REFERENCE_DECOMPOSITIONS` maps each op to
its reference math (the memory read in one query chunk, `memory_read_one_chunk`):
`ExportedProgram.run_decompositions` with it turns the ops into standard tensor programs
(what `remn.export` writes to ONNX).
"""
from __future__ import annotations

import importlib
import importlib.util
import math

import torch

from remn import reference

BACKENDS = (None, "triton", "reference")


def triton_unavailable_reason(*tensors: torch.Tensor | None) -> str | None:
    """Why the Triton kernels cannot take these tensors, or None when they can (the check
    is the kernels' own, `remn.kernels._common.unsupported_reason`)."""
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    from remn.kernels._common import unsupported_reason

    reason = unsupported_reason("remn.ops", **{f"tensor {i}": t for i, t in enumerate(tensors)})
    return None if reason is None else reason[1]


def can_run_triton(*tensors: torch.Tensor | None, raise_error: bool = False) -> bool:
    """True when the Triton kernels can run on these tensors; with raise_error, say why not."""
    reason = triton_unavailable_reason(*tensors)
    if reason is not None and raise_error:
        raise RuntimeError(f"the Triton backend cannot run: {reason}")
    return reason is None


def choose_backend(backend: str | None, *tensors: torch.Tensor | None) -> str:
    """Resolve `backend` (None, "triton" or "reference") for these tensors."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "reference":
        return "reference"
    if backend == "triton":
        can_run_triton(*tensors, raise_error=True)
        return "triton"
    on_cuda = all(t.device.type == "cuda" for t in tensors if t is not None)
    return "triton" if on_cuda and can_run_triton(*tensors) else "reference"


# ----------------------------------------------------------------- custom ops
def _fused_top_k_fits(memory_key: torch.Tensor, top_k: int | None) -> bool:
    """The fused top-k keeps each query's k best logits in registers: larger k reads on the reference."""
    if top_k is None:
        return True
    limit = importlib.import_module("remn.kernels.memory_read").MAX_FUSED_TOP_K
    return top_k <= limit or top_k >= memory_key.shape[-1]


@torch.library.custom_op("remn::memory_read", mutates_args=())
def _memory_read_op(
    query_key: torch.Tensor,
    memory_key: torch.Tensor,
    memory_value: torch.Tensor,
    key_bias: torch.Tensor | None,
    scale: float | None,
    top_k: int | None,
) -> torch.Tensor:
    """Every device but CUDA: the reference. [B, Ck, N], [B, Ck, M], [B, O, Cv, M], [B, M] → [B, O, Cv, N]."""
    return reference.memory_read(query_key, memory_key, memory_value, key_bias, scale=scale, top_k=top_k).contiguous()


@_memory_read_op.register_kernel("cuda")
def _memory_read_cuda(query_key, memory_key, memory_value, key_bias, scale, top_k):
    """CUDA: the fused kernel when it can take the tensors and this k, else the reference."""
    if can_run_triton(query_key, memory_key, memory_value, key_bias) and _fused_top_k_fits(memory_key, top_k):
        from remn.kernels import memory_read as fused_memory_read

        with torch.no_grad():  # the op's autograd formula is registered below
            return fused_memory_read(query_key, memory_key, memory_value, key_bias, scale=scale, top_k=top_k)
    return reference.memory_read(query_key, memory_key, memory_value, key_bias, scale=scale, top_k=top_k).contiguous()


@_memory_read_op.register_fake
def _memory_read_fake(query_key, memory_key, memory_value, key_bias, scale, top_k):
    batch, _, num_queries, _, num_objects, value_dim = reference.check_memory_read_args(
        query_key, memory_key, memory_value, key_bias, top_k
    )
    return memory_value.new_empty(batch, num_objects, value_dim, num_queries)  # [B, O, Cv, N]


@torch.library.custom_op("remn::local_attention", mutates_args=())
def _local_attention_op(
    query_key: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    radius: int,
    key_bias: torch.Tensor | None,
    scale: float | None,
) -> torch.Tensor:
    """Every device but CUDA: the reference. [B, Ck, H, W] ×2, [B, O, Cv, H, W] → [B, O, Cv, H, W]."""
    return reference.local_attention(query_key, key, value, radius, key_bias, scale=scale).contiguous()


@_local_attention_op.register_kernel("cuda")
def _local_attention_cuda(query_key, key, value, radius, key_bias, scale):
    """CUDA: the fused kernel when it can take the tensors, else the reference."""
    if can_run_triton(query_key, key, value, key_bias):
        from remn.kernels import local_attention as fused_local_attention

        with torch.no_grad():  # the op's autograd formula is registered below
            return fused_local_attention(query_key, key, value, radius, key_bias, scale=scale)
    return reference.local_attention(query_key, key, value, radius, key_bias, scale=scale).contiguous()


@_local_attention_op.register_fake
def _local_attention_fake(query_key, key, value, radius, key_bias, scale):
    batch, _, height, width, num_objects, value_dim = reference.check_local_attention_args(
        query_key, key, value, radius, key_bias
    )
    return value.new_empty(batch, num_objects, value_dim, height, width)  # [B, O, Cv, H, W]


def _reference_vjp(op, tensors, needs_grad, grad_out):
    """Gradients of `op(*tensors)` (None entries stay None) for the tensors flagged in
    needs_grad, by `torch.func.vjp` of the reference; an empty tensor where none is wanted
    (a custom op returns tensors only)."""
    wanted = [i for i, (t, need) in enumerate(zip(tensors, needs_grad)) if t is not None and need]

    def of_wanted(*chosen):
        full = list(tensors)
        for index, tensor in zip(wanted, chosen):
            full[index] = tensor
        return op(*full)

    grads = iter(torch.func.vjp(of_wanted, *(tensors[i] for i in wanted))[1](grad_out) if wanted else ())
    return tuple(
        next(grads).contiguous() if i in wanted else grad_out.new_empty(0) for i in range(len(tensors))
    )


@torch.library.custom_op("remn::memory_read_backward", mutates_args=())
def _memory_read_backward_op(
    grad_out: torch.Tensor,
    query_key: torch.Tensor,
    memory_key: torch.Tensor,
    memory_value: torch.Tensor,
    key_bias: torch.Tensor | None,
    scale: float | None,
    top_k: int | None,
    needs_grad: list[bool],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients w.r.t. (query_key, memory_key, memory_value, key_bias), the reference's; an
    empty tensor for an input whose needs_grad is False or that is None."""
    return _reference_vjp(
        lambda q, k, v, bias: reference.memory_read(q, k, v, bias, scale=scale, top_k=top_k),
        (query_key, memory_key, memory_value, key_bias), needs_grad, grad_out,
    )


def _gradient_fakes(grad_out, tensors, needs_grad):
    """The shapes a backward op returns: like each input that needs a gradient, else empty."""
    return tuple(
        torch.empty_like(t, memory_format=torch.contiguous_format) if t is not None and need else grad_out.new_empty(0)
        for t, need in zip(tensors, needs_grad)
    )


@_memory_read_backward_op.register_fake
def _memory_read_backward_fake(grad_out, query_key, memory_key, memory_value, key_bias, scale, top_k, needs_grad):
    return _gradient_fakes(grad_out, (query_key, memory_key, memory_value, key_bias), needs_grad)


@torch.library.custom_op("remn::local_attention_backward", mutates_args=())
def _local_attention_backward_op(
    grad_out: torch.Tensor,
    query_key: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    radius: int,
    key_bias: torch.Tensor | None,
    scale: float | None,
    needs_grad: list[bool],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients w.r.t. (query_key, key, value, key_bias), the reference's; an empty tensor
    for an input whose needs_grad is False or that is None."""
    return _reference_vjp(
        lambda q, k, v, bias: reference.local_attention(q, k, v, radius, bias, scale=scale),
        (query_key, key, value, key_bias), needs_grad, grad_out,
    )


@_local_attention_backward_op.register_fake
def _local_attention_backward_fake(grad_out, query_key, key, value, radius, key_bias, scale, needs_grad):
    return _gradient_fakes(grad_out, (query_key, key, value, key_bias), needs_grad)


def _memory_read_setup(ctx, inputs, output):
    query_key, memory_key, memory_value, key_bias, scale, top_k = inputs
    ctx.save_for_backward(query_key, memory_key, memory_value, key_bias)
    ctx.scale, ctx.top_k = scale, top_k


def _memory_read_backward(ctx, grad_out):
    needs = [bool(n) for n in ctx.needs_input_grad[:4]]
    grads = torch.ops.remn.memory_read_backward(grad_out, *ctx.saved_tensors, ctx.scale, ctx.top_k, needs)
    return (*(g if need else None for g, need in zip(grads, needs)), None, None)


def _local_attention_setup(ctx, inputs, output):
    query_key, key, value, radius, key_bias, scale = inputs
    ctx.save_for_backward(query_key, key, value, key_bias)
    ctx.radius, ctx.scale = radius, scale


def _local_attention_backward(ctx, grad_out):
    needs_input = ctx.needs_input_grad
    needs = [bool(needs_input[i]) for i in (0, 1, 2, 4)]
    query_key, key, value, key_bias = ctx.saved_tensors
    q_grad, k_grad, v_grad, bias_grad = torch.ops.remn.local_attention_backward(
        grad_out, query_key, key, value, ctx.radius, key_bias, ctx.scale, needs
    )
    grads = [g if need else None for g, need in zip((q_grad, k_grad, v_grad, bias_grad), needs)]
    return grads[0], grads[1], grads[2], None, grads[3], None


_memory_read_op.register_autograd(_memory_read_backward, setup_context=_memory_read_setup)
_local_attention_op.register_autograd(_local_attention_backward, setup_context=_local_attention_setup)


def memory_read_one_chunk(query_key, memory_key, memory_value, key_bias=None, scale=None, top_k=None):
    """`reference.memory_read` with all N queries in one chunk: the same logits, the same
    top-k selection (`reference.top_k_indices`: exactly k keys, ties towards the lowest key
    index), the same softmax, and the same sums of k weighted values, as one batched product
    here (a graph operator ONNX takes) where the reference uses `embedding_bag`: equal to
    rounding.

    The reference takes queries in chunks sized from M and O to bound eager memory; a graph
    with dynamic M (memory frames) and O (objects) cannot hold a Python loop whose trip
    count depends on them, so the decomposition for export runs this one-chunk form (a
    test keeps it equal to the reference). Shapes: [B, Ck, N], [B, Ck, M], [B, O, Cv, M],
    [B, M] or None → [B, O, Cv, N].
    """
    batch, key_dim, num_queries, num_keys, num_objects, value_dim = reference.check_memory_read_args(
        query_key, memory_key, memory_value, key_bias, top_k
    )
    scale = 1.0 / math.sqrt(key_dim) if scale is None else scale
    query = query_key.float().transpose(1, 2)  # [B, N, Ck]
    keys = memory_key.float()  # [B, Ck, M]
    key_term = -scale * reference.key_square_norms(keys)  # [B, M]
    if key_bias is not None:
        key_term = key_term + key_bias.float()
    values = memory_value.float().flatten(1, 2)  # [B, O·Cv, M]
    logits = torch.baddbmm(key_term[:, None, :], query, keys, alpha=2.0 * scale)  # [B, N, M]
    if top_k is not None and top_k < num_keys:
        index = reference.top_k_indices(logits, top_k)  # [B, N, k]
        weights = reference._safe_softmax(logits.gather(2, index), dim=2)  # [B, N, k]
        batch_index = torch.arange(batch, device=values.device)[:, None, None]  # [B, 1, 1]
        picked = values.transpose(1, 2).contiguous()[batch_index, index]  # [B, N, k, O·Cv]
        out = torch.matmul(weights[:, :, None, :], picked).squeeze(2).transpose(1, 2)  # [B, O·Cv, N]
    else:
        out = torch.bmm(values, reference._safe_softmax(logits, dim=2).transpose(1, 2))  # [B, O·Cv, N]
    return out.reshape(batch, num_objects, value_dim, num_queries).to(memory_value.dtype)


def _memory_read_reference(query_key, memory_key, memory_value, key_bias, scale, top_k):
    with torch.autocast(device_type=query_key.device.type, enabled=False):  # fp32, as the reference
        return memory_read_one_chunk(query_key, memory_key, memory_value, key_bias, scale, top_k)


def _local_attention_reference(query_key, key, value, radius, key_bias, scale):
    return reference.local_attention(query_key, key, value, radius, key_bias, scale=scale)


# The custom ops → their reference math, for `ExportedProgram.run_decompositions`
# (traceable with dynamic M and O).
REFERENCE_DECOMPOSITIONS = {
    torch.ops.remn.memory_read.default: _memory_read_reference,
    torch.ops.remn.local_attention.default: _local_attention_reference,
}


# ----------------------------------------------------------------- public ops
def memory_read(query_key, memory_key, memory_value, key_bias=None, *, scale=None, top_k=None, backend=None):
    """Gated memory read; see `remn.reference.memory_read` for shapes and math.

    backend=None: the custom op `torch.ops.remn.memory_read` (the kernel on CUDA where it
    can run, the reference elsewhere); "triton" / "reference": that implementation, directly.
    """
    if backend is None:
        return torch.ops.remn.memory_read(query_key, memory_key, memory_value, key_bias, scale, top_k)
    if choose_backend(backend, query_key, memory_key, memory_value, key_bias) == "triton":
        from remn.kernels import memory_read as fused_memory_read

        return fused_memory_read(query_key, memory_key, memory_value, key_bias, scale=scale, top_k=top_k)
    return reference.memory_read(query_key, memory_key, memory_value, key_bias, scale=scale, top_k=top_k)


def local_attention(query_key, key, value, radius, key_bias=None, *, scale=None, backend=None):
    """Windowed local attention; see `remn.reference.local_attention` for shapes and math.

    backend=None: the custom op `torch.ops.remn.local_attention` (the kernel on CUDA where
    it can run, the reference elsewhere); "triton" / "reference": that implementation, directly.
    """
    if backend is None:
        return torch.ops.remn.local_attention(query_key, key, value, radius, key_bias, scale)
    if choose_backend(backend, query_key, key, value, key_bias) == "triton":
        from remn.kernels import local_attention as fused_local_attention

        return fused_local_attention(query_key, key, value, radius, key_bias, scale=scale)
    return reference.local_attention(query_key, key, value, radius, key_bias, scale=scale)
