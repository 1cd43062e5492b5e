"""2-D (and 1-D) convolution with a hand-written backward: the slides' linear layer at every patch.

Notation (the lecture's, in torch's layout). A patch X_p is the C_in·kH·kW input values under the
kernel at output position p (for every image of the batch: an (N, C_in·kH·kW) matrix), W is the
weight seen as a (C_out, C_in·kH·kW) matrix, δZ_p = ∂L/∂Z[:, :, p] is (N, C_out). Then

    Z_p = X_p Wᵀ + b                              (the linear layer, at every patch p)
    δW  = Σ_p δZ_pᵀ X_p                          (slides, W as (in, out): Σ_p X_pᵀ δZ_p)
    δX  = Σ_p (δZ_p W scattered back onto patch p) (slides: δZ_p Wᵀ)
    δb  = Σ_p Σ_n δZ_p

``conv2d_backward`` is the formula as code: the patches built by ``F.unfold`` and each sum a matrix
product. ``conv2d_backward_fast`` (what the Function runs) computes the same sums with convolution
kernels where PyTorch has fast ones: δX a transposed convolution of δZ with W, δW a convolution of
X with δZ over the batch (README, "Conv nets", says which form runs for which dtype and why).
conv1d is conv2d on the signal as a 1 × L image. (torch.nn.grad and autograd of the forward are not used.)
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from manualbp.errors import NotConvertibleError
from manualbp.layers.base import LayerFunction, apply, dtype_under_autocast, hand_writes, is_traced, owns_buffers
from manualbp.layers.linear import rows_per_example_norms
from manualbp.layers.sharing import SharesState

__all__ = [
    "conv2d", "conv2d_forward", "conv2d_backward", "conv2d_backward_fast", "conv2d_per_example", "Conv2dFunction",
    "Conv2d", "conv1d", "conv1d_forward", "conv1d_backward", "conv1d_per_example", "Conv1dFunction", "Conv1d",
]

Pair = tuple[int, int]


# ----------------------------------------------------------------------------------------------
# The formulas
# ----------------------------------------------------------------------------------------------


def conv2d_forward(
    input: Tensor, weight: Tensor, bias: Tensor | None, stride: Pair, padding: Pair, dilation: Pair, groups: int
) -> Tensor:
    """Z_p = X_p Wᵀ + b at every patch p.

    input X: (N, C_in, H, W) or (C_in, H, W); weight W: (C_out, C_in/groups, kH, kW);
    bias b: (C_out,) or None. Returns Z: (N, C_out, H_out, W_out) (no N if the input had none),
    H_out = ⌊(H + 2·padding − dilation·(kH − 1) − 1)/stride⌋ + 1, and likewise W_out.
    """
    return torch.conv2d(input, weight, bias, stride, padding, dilation, groups)  # Z_p = X_p Wᵀ + b, every p


def conv2d_backward(
    grad_output: Tensor,
    input: Tensor | None,
    weight: Tensor,
    input_shape: tuple[int, ...],
    stride: Pair,
    padding: Pair,
    dilation: Pair,
    groups: int,
    needs_grad: tuple[bool, bool, bool] = (True, True, True),
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """δX, δW, δb of Z = conv2d(X, W, b) as the slides' linear layer at every patch, the patches
    built explicitly (``F.unfold``, im2col); each computed only if ``needs_grad`` asks for it.
    :func:`conv2d_backward_fast` computes the same with convolution kernels where those are faster.

    grad_output δZ: (N, C_out, H_out, W_out) or unbatched (C_out, H_out, W_out); input X: the
    forward's input (may be None if δW is not needed); weight W: (C_out, C_in/groups, kH, kW);
    input_shape: X's shape. Returns δX: X's shape, δW: W's shape, δb: (C_out,).
    """
    if grad_output.dim() == 3:
        return _as_a_batch_of_one(conv2d_backward, grad_output, input, weight, input_shape, stride, padding, dilation,
                                  groups, needs_grad)
    grad_input = grad_weight = grad_bias = None
    if needs_grad[0]:
        batch_size, out_channels, out_height, out_width = grad_output.shape
        positions, patch_size = out_height * out_width, math.prod(weight.shape[1:])  # L patches of C_in/G·kH·kW
        grad_rows = grad_output.reshape(batch_size, groups, out_channels // groups, positions)  # δZ_p, every p
        weight_rows = weight.reshape(groups, out_channels // groups, patch_size)  # W: (G, C_out/G, C_in/G·kH·kW)
        patch_grads = torch.matmul(weight_rows.transpose(1, 2), grad_rows)  # δX_p = δZ_p W, every p (slides: δZ_p Wᵀ)
        grad_input = torch.nn.functional.fold(  # δX = Σ_p δX_p scattered back onto patch p
            patch_grads.reshape(batch_size, groups * patch_size, positions), input_shape[-2:],
            weight.shape[-2:], dilation, padding, stride,
        )
    if needs_grad[1]:
        grad_weight = _grad_weight_from_patches(grad_output, input, weight.shape, stride, padding, dilation, groups)
    if needs_grad[2]:
        grad_bias = grad_output.sum((0, 2, 3))  # δb = Σ_n Σ_p δZ_p
    return grad_input, grad_weight, grad_bias


def _grad_weight_from_patches(grad_output, input, weight_shape, stride, padding, dilation, groups) -> Tensor:
    """δW = Σ_n Σ_p δZ_pᵀ X_p with the patches X_p built by ``F.unfold``: per image n, one matrix
    product (C_out, L)·(L, C_in·kH·kW) per group, added into δW as they come. That is PyTorch's own
    float64 CPU algorithm (im2col, then one GEMM per image accumulated into δW), so it gives torch's
    δW to the bit there; its memory is the patches, kH·kW times the input."""
    batch_size, out_channels, out_height, out_width = grad_output.shape
    if batch_size == 0:  # no image, no patch: δW = 0
        return grad_output.new_zeros(weight_shape)
    patches = torch.nn.functional.unfold(input, weight_shape[-2:], dilation, padding, stride)  # X_p: (N, C_in·kH·kW, L)
    patches = patches.reshape(batch_size, groups, patches.shape[1] // groups, out_height * out_width)
    grad_rows = grad_output.reshape(batch_size, groups, out_channels // groups, out_height * out_width)  # δZ_p
    patches_t = patches.transpose(2, 3)  # X_p as (L, C_in/G·kH·kW) rows
    # δW += ... into δW's own buffer where autograd does not record the backward (a copy per image otherwise)
    add_product = torch.Tensor.baddbmm_ if owns_buffers(grad_output, input) else torch.baddbmm
    grad_weight = torch.matmul(grad_rows[0], patches_t[0])  # Σ_p δZ_pᵀ X_p of image 0
    for image in range(1, batch_size):
        grad_weight = add_product(grad_weight, grad_rows[image], patches_t[image])  # δW += Σ_p δZ_pᵀ X_p of image n
    return grad_weight.reshape(weight_shape)


def _as_a_batch_of_one(backward, grad_output, input, weight, input_shape, *settings):
    """``backward`` on an unbatched δZ (C_out, H_out, W_out): a batch of one, δX unbatched again."""
    input = None if input is None else input.unsqueeze(0)
    grad_input, grad_weight, grad_bias = backward(grad_output.unsqueeze(0), input, weight, (1, *input_shape), *settings)
    return (None if grad_input is None else grad_input.squeeze(0)), grad_weight, grad_bias


def conv2d_backward_fast(
    grad_output: Tensor,
    input: Tensor | None,
    weight: Tensor,
    input_shape: tuple[int, ...],
    stride: Pair,
    padding: Pair,
    dilation: Pair,
    groups: int,
    needs_grad: tuple[bool, bool, bool] = (True, True, True),
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """What :func:`conv2d_backward` computes (same arguments, same results), each sum over the
    patches done by a convolution kernel where one is fast, without building the patches:

    * δX as a transposed convolution of δZ with W (every dtype: PyTorch's float64 kernel is the
      same im2col GEMM as ``conv2d_backward``'s, and the float32 one does not build the patches);
    * δW, per dtype and shape (README, "Conv nets", has the measurements): where PyTorch has a fast
      convolution kernel (float32 and bfloat16 on the CPU with oneDNN, CUDA) a convolution of X
      with δZ over the batch (:func:`_sum_over_patches_and_images`), or for few channels at stride 1
      its transposed form; a 1×1 kernel and every other dtype (float64, float16 on the CPU, whose
      convolution with δZ as the kernel is im2col over that kernel: 8–14× PyTorch's float64
      backward) the patches of ``conv2d_backward`` itself.
    """
    if grad_output.dim() == 3:
        return _as_a_batch_of_one(conv2d_backward_fast, grad_output, input, weight, input_shape, stride, padding,
                                  dilation, groups, needs_grad)
    grad_input = grad_weight = grad_bias = None
    if needs_grad[0] and _one_by_one_at_a_stride(grad_output, weight, stride, padding, groups):
        grad_input = _grad_input_one_by_one(grad_output, weight, input_shape, stride)
    elif needs_grad[0] and _flipped_kernel_form_applies(grad_output, weight, stride, padding, dilation, groups):
        grad_input = _grad_input_flipped_kernel(grad_output, weight, padding, dilation, groups)
    elif needs_grad[0]:
        # The transposed convolution lands on (H_out − 1)·stride − 2·padding + dilation·(k − 1) + 1
        # rows; the rows the forward's floor division dropped come back as output_padding (zeros).
        output_padding = tuple(
            size - ((out - 1) * s - 2 * p + d * (k - 1) + 1)
            for size, out, s, p, d, k in zip(
                input_shape[-2:], grad_output.shape[-2:], stride, padding, dilation, weight.shape[-2:], strict=True
            )
        )
        grad_input = torch.conv_transpose2d(
            grad_output, weight, None, stride, padding, output_padding, groups, dilation
        )  # δX = Σ_p δZ_p W scattered onto patch p   (slides: δZ_p Wᵀ)
    if needs_grad[1]:
        grad_weight = _grad_weight_fast(grad_output, input, weight.shape, stride, padding, dilation, groups)
    if needs_grad[2]:
        grad_bias = grad_output.sum((0, 2, 3))  # δb = Σ_n Σ_p δZ_p
    return grad_input, grad_weight, grad_bias


def _one_by_one_at_a_stride(grad_output, weight, stride, padding, groups) -> bool:
    """A 1×1 kernel at a stride, no padding, one group (ResNet's downsampling shortcut), in float32
    where oneDNN runs (its transposed convolution there took 1.5-6x :func:`_grad_input_one_by_one`'s
    time at ResNet-18's shapes), on tensors that are not torch.func-batched."""
    return (tuple(weight.shape[-2:]) == (1, 1) and stride != (1, 1) and padding == (0, 0) and groups == 1
            and has_fast_convolution_kernel(grad_output) and not is_traced(grad_output) and not is_traced(weight))


def _grad_input_one_by_one(grad_output, weight, input_shape, stride) -> Tensor:
    """δX of a 1×1 convolution at a stride: δX_p = δZ_p W at every patch p, as one product over every
    image and position, each patch one pixel, so that scattering back onto the patches writes every
    ``stride``-th pixel once (the others get no patch: 0)."""
    batch_size, out_channels, out_height, out_width = grad_output.shape
    grad_rows = grad_output.transpose(0, 1).reshape(out_channels, -1)  # δZ_p: (C_out, N·L)
    patch_grads = weight.reshape(out_channels, -1).t().mm(grad_rows)  # δX_p = δZ_p W, every p (slides: δZ_p Wᵀ)
    patch_grads = patch_grads.reshape(-1, batch_size, out_height, out_width).transpose(0, 1)
    grad_input = grad_output.new_zeros(input_shape)
    grad_input[:, :, :: stride[0], :: stride[1]] = patch_grads  # δX = Σ_p δX_p scattered back onto patch p
    return grad_input


def _flipped_kernel_form_applies(grad_output, weight, stride, padding, dilation, groups) -> bool:
    """Grouped or depthwise at stride 1 where PyTorch has no fast convolution kernel (float64 on the
    CPU): its transposed convolution runs one slow kernel per group (depthwise 3x3 on 8x144x32x32
    images: 3x the forward's time), its forward convolution one grouped kernel."""
    return (groups > 1 and stride == (1, 1) and not has_fast_convolution_kernel(grad_output)
            and all(d * (k - 1) >= p for d, k, p in zip(dilation, weight.shape[-2:], padding, strict=True)))


def _grad_input_flipped_kernel(grad_output, weight, padding, dilation, groups) -> Tensor:
    """δX at stride 1 as a convolution of δZ with W flipped in H and W, each group's W transposed
    (in ↔ out): the transposed convolution of δZ with W written as a correlation,
    δX[n, c, x] = Σ_k Σ_t δZ[n, k, x + padding − t·dilation] W[k, c, t], padded by dilation·(k − 1) − padding."""
    out_channels, channels_per_group = weight.shape[:2]
    flipped = (weight.flip(-2, -1).reshape(groups, out_channels // groups, channels_per_group, *weight.shape[-2:])
               .transpose(1, 2).reshape(groups * channels_per_group, out_channels // groups, *weight.shape[-2:]))
    full_padding = tuple(d * (k - 1) - p for d, k, p in zip(dilation, weight.shape[-2:], padding, strict=True))
    return torch.conv2d(grad_output, flipped, None, 1, full_padding, dilation, groups)  # δX = Σ_p δZ_p W onto patch p


def has_fast_convolution_kernel(tensor: Tensor) -> bool:
    """Whether PyTorch convolves ``tensor``'s dtype on its device with a kernel that does not build
    the patches (oneDNN for float32 and bfloat16 on the CPU, cuDNN on CUDA). Where it does not, a convolution
    with δZ as its kernel (H_out × W_out wide) runs as im2col over that kernel: slow, and for the
    transposed form quadratic in the image size (32 GiB for 2 float64 64×64 images)."""
    if tensor.device.type == "cuda":
        return True
    return tensor.dtype in (torch.float32, torch.bfloat16) and _ONEDNN


_ONEDNN = torch.backends.mkldnn.is_available()  # read once: torch.compile cannot trace the call


# The transposed form of δW: at most this many elements in the im2col buffer that PyTorch's slow
# transposed-convolution kernel would make for it (C_out·H_out·W_out·H·W), whichever kernel runs.
_TRANSPOSED_FORM_MAX_COLUMNS = 2**24
# ... and only for few channels (C_in·C_out ≤ this): LeNet's convolutions (1·6, 6·16, batch 64), where it
# took 0.5-0.6x the correlation's time; at 8·16 and 16·16 on 32×32 images (batch 4) 2.9-3.2x, at ResNet-18's
# (64·64 and up) 1.6–1.9x.
_TRANSPOSED_FORM_MAX_CHANNEL_PAIRS = 96


def _grad_weight_fast(grad_output, input, weight_shape, stride, padding, dilation, groups) -> Tensor:
    """δW = Σ_p δZ_pᵀ X_p by the form measured fastest for this dtype and shape (see
    :func:`conv2d_backward_fast`)."""
    one_by_one = tuple(weight_shape[-2:]) == (1, 1)
    if groups > 1 and not one_by_one and input.shape[0] > 0 and not is_traced(input):
        # grouped and depthwise (every dtype): the correlation's kernels are δZ, H_out × W_out wide with
        # one or a few channels per group, which oneDNN runs 10-20x slower than one product per image
        return _grad_weight_per_image(grad_output, input, weight_shape, stride, padding, dilation, groups)
    if one_by_one and stride == (1, 1) and groups == 1 and has_fast_convolution_kernel(input) and input.shape[0] > 0:
        # float32 1x1 (pointwise): δZ and X each copied once for one product (0.5x the per-image patches' time)
        return _grad_weight_in_one_product(grad_output, input, weight_shape, stride, padding, dilation, groups)
    if not has_fast_convolution_kernel(input) or (one_by_one and stride == (1, 1)) or input.shape[0] == 0:
        return _grad_weight_from_patches(grad_output, input, weight_shape, stride, padding, dilation, groups)
    if one_by_one or _patch_form_is_faster(grad_output, input, stride):  # 1×1 at a stride: 0.7x per image
        if grad_output.shape[-2] * grad_output.shape[-1] > grad_output.shape[1] and not is_traced(input):
            # more positions than filters: one product per image, no copy of δZ (ResNet's first conv)
            return _grad_weight_per_image(grad_output, input, weight_shape, stride, padding, dilation, groups)
        return _grad_weight_in_one_product(grad_output, input, weight_shape, stride, padding, dilation, groups)
    if _transposed_form_applies(grad_output, input, weight_shape, stride, padding, dilation, groups):
        return _sum_over_patches_and_images_transposed(grad_output, input, padding)
    if _flipped_grads_form_applies(grad_output, weight_shape, stride, padding, dilation, groups):
        return _sum_over_patches_and_images_flipped_grads(grad_output, input, padding)
    return _sum_over_patches_and_images(grad_output, input, weight_shape, stride, padding, dilation, groups)


# The flipped-gradients form of δW (C_out first, no transposing copy of δW) at stride 1 up to this many
# positions per image: 0.64x the correlation's time at ResNet-18's 3×3 512 → 512 on 2×2 images, 0.71x at
# 256 → 256 on 4×4 (batch 32); 1.1x at 8×8, 1.3-2.2x at 7×7 to 28×28 (batch 8, 224×224). 1 thread.
_FLIPPED_GRADS_FORM_MAX_POSITIONS = 16

# The patch form of δW in float32 where oneDNN's correlation is slow: at any stride (the correlation's
# dilation: ResNet's first conv, 7×7/2 3 → 64, took 1.7-1.8x the patches' time per image; its 3×3/2 convs
# up to 1.6x the patches' in one product), and where the product's depth N·H_out·W_out is at most this
# (ResNet-18's last stage, 2×2 positions, batch 8: the correlation took 9x the patches' time and 1.5x
# torch's own backward, whatever the batch; at batch 32, 0.7x). Measured at ResNet-18's shapes, batch 8
# and 32 at 64×64, batch 8 at 224×224, 1 thread.
_PATCH_FORM_MAX_DEPTH = 64


def _patch_form_is_faster(grad_output, input, stride) -> bool:
    if grad_output.shape[0] * grad_output.shape[-2] * grad_output.shape[-1] <= _PATCH_FORM_MAX_DEPTH:
        return True
    return stride != (1, 1)


def _grad_weight_per_image(grad_output, input, weight_shape, stride, padding, dilation, groups) -> Tensor:
    """δW = Σ_n Σ_p δZ_pᵀ X_p as :func:`_grad_weight_from_patches` sums it, one product per image (per
    slab of at most ``_PATCH_SLAB_POSITIONS`` positions of it) added into δW, the patches copied from
    a strided view of the padded input (as :func:`_patches_as_rows` does for the batch) and δZ read in
    its own layout: for many positions per image (L = H_out·W_out more than C_out), where copying δZ
    for one product costs more than the per-image sums (ResNet's first conv, 7×7/2 on 64×64 and
    224×224 images: 0.55-0.9x one product)."""
    batch_size, out_channels, out_height, out_width = grad_output.shape
    grad_rows = grad_output.reshape(batch_size, groups, out_channels // groups, -1)  # δZ_p of each image
    add_product = torch.Tensor.baddbmm_ if owns_buffers(grad_output, input) else torch.baddbmm
    if padding != (0, 0):  # padded once for every image and slab
        input = torch.nn.functional.pad(input, (padding[1], padding[1], padding[0], padding[0]))
    slab_rows = max(1, _PATCH_SLAB_POSITIONS // out_width)  # rows of positions per product
    grad_weight = None
    for image in range(batch_size):
        for first in range(0, out_height, slab_rows):
            rows = min(slab_rows, out_height - first)
            # the input rows under these positions' patches, and the patches X_p there: (G, C_in/G·kH·kW, L_slab)
            slab = input[image : image + 1, :, first * stride[0] : (first + rows - 1) * stride[0]
                         + dilation[0] * (weight_shape[-2] - 1) + 1]
            patch_rows = _patches_as_rows(slab, weight_shape[-2:], (rows, out_width), stride, (0, 0), dilation, groups)
            grads = grad_rows[image, :, :, first * out_width : (first + rows) * out_width]  # δZ_p there
            if grad_weight is None:
                grad_weight = torch.matmul(grads, patch_rows.transpose(1, 2))  # Σ_p δZ_pᵀ X_p of the first slab
            else:  # δW += Σ_p δZ_pᵀ X_p of this slab of image n
                grad_weight = add_product(grad_weight, grads, patch_rows.transpose(1, 2))
    return grad_weight.reshape(weight_shape)


# The per-image patches of δW in slabs of at most this many positions: ResNet's first conv on 224×224
# images (12,544 positions, 7.4 MB of patches per image) took 0.85-0.87x the time in slabs of 16-18 rows
# of 112 positions than whole (the patches stay in cache for their product); on 64×64 images (1,024
# positions) one slab, as before. 1 thread.
_PATCH_SLAB_POSITIONS = 2048


def _grad_weight_in_one_product(grad_output, input, weight_shape, stride, padding, dilation, groups) -> Tensor:
    """δW = Σ_n Σ_p δZ_pᵀ X_p as ONE matrix product over every image and patch (per group): δZ as
    (C_out, N·L) times the patches as (N·L, C_in·kH·kW), the patches copied once straight into that
    layout from a strided view of the (padded) input. :func:`_grad_weight_from_patches` runs one
    product per image, each adding C_out × C_in·kH·kW values into δW (slow where the L = H_out·W_out
    positions are few: ResNet's later stages), on patches that ``F.unfold`` builds (4x the strided
    copy's time, measured at ResNet's first conv)."""
    batch_size, out_channels = grad_output.shape[:2]
    patch_rows = _patches_as_rows(input, weight_shape[-2:], grad_output.shape[-2:], stride, padding, dilation, groups)
    grad_rows = grad_output.reshape(batch_size, groups, out_channels // groups, -1).permute(1, 2, 0, 3)
    grad_rows = grad_rows.reshape(groups, out_channels // groups, patch_rows.shape[-1])  # δZ_p: (G, C_out/G, N·L)
    grad_weight = torch.matmul(grad_rows, patch_rows.transpose(1, 2))  # δW = Σ_n Σ_p δZ_pᵀ X_p
    return grad_weight.reshape(weight_shape)


def _patches_as_rows(input, kernel_size, out_size, stride, padding, dilation, groups) -> Tensor:
    """The patches X_p of every image as (G, C_in/G·kH·kW, N·L) rows, the layout of
    ``F.unfold(input, ...)`` (N, C_in·kH·kW, L) with the images moved next to the positions: one copy
    of a strided view of the zero-padded input (``F.unfold`` builds them element by element)."""
    batch_size, in_channels = input.shape[:2]
    if is_traced(input):  # a torch.func-batched tensor has no strides to view: F.unfold's patches, moved
        patches = torch.nn.functional.unfold(input, kernel_size, dilation, padding, stride)  # (N, C_in·kH·kW, L)
        patches = patches.reshape(batch_size, groups, patches.shape[1] // groups, -1).permute(1, 2, 0, 3)
        return patches.reshape(groups, patches.shape[1], -1)
    if padding != (0, 0):
        input = torch.nn.functional.pad(input, (padding[1], padding[1], padding[0], padding[0]))
    image_stride, channel_stride, row_stride, column_stride = input.stride()
    sizes = (groups, in_channels // groups, *kernel_size, batch_size, *out_size)
    strides = (channel_stride * (in_channels // groups), channel_stride, row_stride * dilation[0],
               column_stride * dilation[1], image_stride, row_stride * stride[0], column_stride * stride[1])
    patches = input.as_strided(sizes, strides, input.storage_offset())  # X_p: (G, C_in/G, kH, kW, N, H_out, W_out)
    return patches.reshape(groups, sizes[1] * sizes[2] * sizes[3], batch_size * out_size[0] * out_size[1])


# The correlation's images-as-channels input in channels-last layout (the images the innermost
# dimension, one copy either way) from this many positions per image up: oneDNN's channels-last kernel
# took 0.82-0.91x the time at ResNet-18's stride-1 3×3 convs on 8×8 to 56×56 images (batch 8), 1.08x
# at 7×7 and 1.4-3x at 4×4 and 2×2 (1 thread).
_CHANNELS_LAST_MIN_POSITIONS = 64


def _sum_over_patches_and_images(grad_output, input, weight_shape, stride, padding, dilation, groups) -> Tensor:
    """δW = Σ_p δZ_pᵀ X_p, for every group, as one convolution of X with δZ.

    δW[k, c, t] = Σ_n Σ_p δZ[n, k, p] · X[n, c, p·stride + t·dilation − padding] is a correlation
    of X with δZ in which the images n are the channels summed over, the forward's stride becomes
    the dilation and the dilation the stride. Layout for ``groups`` G: batch = input channel within
    its group, channels = (group, image), so one grouped convolution does every group at once.
    """
    correlation = None
    in_place = owns_buffers(grad_output, input)
    for first in range(0, max(input.shape[0], 1), _CORRELATION_MAX_IMAGES):  # Σ over the images, a few at a time
        images = slice(first, first + _CORRELATION_MAX_IMAGES)
        part = _correlation(grad_output[images], input[images], weight_shape, stride, padding, dilation, groups)
        if correlation is None:
            correlation = part
        else:  # δWᵀ += Σ_p δZ_pᵀ X_p of these images
            correlation = correlation.add_(part) if in_place else correlation + part
    # δW = Σ_p δZ_pᵀ X_p: (C_out, C_in/G, kH, kW), laid out as W is (autograd would copy it so anyway, and an
    # optimizer handed δW by the manual engine rounds alike only if its layout is the same)
    return correlation.transpose(0, 1).contiguous()


# The correlation's images (its channels) at most this many at a time, the partial δWs added: oneDNN's
# channels-last correlation over 32 images at once took 1.7-2x the time of four over 8 at ResNet-18's 3×3
# 64 → 64 on 16×16 images (batch 32), 1.6x over 32×32 images; 0.93-1.0x at 8×8 (1 thread, this AVX-512 CPU).
_CORRELATION_MAX_IMAGES = 8


def _correlation(grad_output, input, weight_shape, stride, padding, dilation, groups) -> Tensor:
    """Σ_n Σ_p δZ_pᵀ X_p over these images as the correlation of :func:`_sum_over_patches_and_images`,
    C_in/G first: (C_in/G, C_out, kH, kW)."""
    batch_size, in_channels, height, width = input.shape
    kernel_height, kernel_width = weight_shape[-2:]
    images_as_channels = (  # (C_in/G, G·N, H, W)
        input.reshape(batch_size, groups, in_channels // groups, height, width)
        .permute(2, 1, 0, 3, 4)
        .reshape(in_channels // groups, groups * batch_size, height, width)
    )
    if height * width >= _CHANNELS_LAST_MIN_POSITIONS:  # oneDNN's channels-last kernel: see there
        images_as_channels = images_as_channels.contiguous(memory_format=torch.channels_last)
    grads_as_kernels = grad_output.transpose(0, 1)  # (C_out, N, H_out, W_out): the images as its channels
    correlation = torch.conv2d(images_as_channels, grads_as_kernels, None, dilation, padding, stride, groups)
    if correlation.shape[-2:] != (kernel_height, kernel_width):  # rows past kH pair patches the forward's
        correlation = correlation[:, :, :kernel_height, :kernel_width]  # floor division dropped
    return correlation  # Σ_n Σ_p δZ_pᵀ X_p, C_in/G first


def _flipped_grads_form_applies(grad_output, weight_shape, stride, padding, dilation, groups) -> bool:
    """Whether :func:`_sum_over_patches_and_images_flipped_grads` computes this δW, and fast: stride 1,
    no dilation, one group, padding < H_out (likewise W) so that its crop is not negative, and few
    positions per image."""
    out_size = grad_output.shape[-2:]
    return (stride == (1, 1) and dilation == (1, 1) and groups == 1
            and out_size[0] * out_size[1] <= _FLIPPED_GRADS_FORM_MAX_POSITIONS
            and all(pad <= out - 1 for pad, out in zip(padding, out_size, strict=True)))


def _sum_over_patches_and_images_flipped_grads(grad_output, input, padding) -> Tensor:
    """δW = Σ_p δZ_pᵀ X_p for stride 1, no dilation, one group, with C_out first as W is laid out.

    The correlation of :func:`_sum_over_patches_and_images` gives δW with C_in first: a transposing
    copy of δW after it, as large as W (4.4 ms a layer for ResNet-18's 3×3 512 → 512 inside the
    batch-32 step). Here δZ̃ = δZ reversed in H and W, its images as channels (C_out, N, H_out, W_out),
    is transposed-convolved with X itself as the kernel ((N, C_in, H, W) is a transposed convolution's
    (in, out, kH, kW) layout), cropped by P' = H_out − 1 − padding:
    out[k, c, t] = Σ_n Σ_q δZ̃[n, k, q] X[n, c, t + P' − q] = Σ_n Σ_p δZ[n, k, p] X[n, c, p + t − padding]
    (p = H_out − 1 − q) = δW[k, c, t]. Its only copy is δZ's (reversed and transposed).
    """
    crop = tuple(out - 1 - pad for out, pad in zip(grad_output.shape[-2:], padding, strict=True))
    flipped_grads = grad_output.flip(-2, -1).transpose(0, 1)  # δZ̃: (C_out, N, H_out, W_out), one copy
    return torch.conv_transpose2d(flipped_grads, input, None, 1, crop)  # δW = Σ_p δZ_pᵀ X_p: (C_out, C_in, kH, kW)


def _transposed_form_applies(grad_output, input, weight_shape, stride, padding, dilation, groups) -> bool:
    """Whether :func:`_sum_over_patches_and_images_transposed` computes this δW, and fast: stride 1,
    no dilation, one group, H + padding ≥ kH (likewise W) so that its crop is not negative; few
    channels, and an im2col buffer of bounded size should PyTorch run its slow kernel."""
    sizes = zip(input.shape[-2:], padding, weight_shape[-2:], strict=True)
    if not (stride == (1, 1) and dilation == (1, 1) and groups == 1 and all(h + pad >= k for h, pad, k in sizes)):
        return False
    columns = grad_output[0].numel() * input.shape[-2] * input.shape[-1]  # C_out·H_out·W_out·H·W
    channel_pairs = input.shape[1] * grad_output.shape[1]  # C_in·C_out
    return columns <= _TRANSPOSED_FORM_MAX_COLUMNS and channel_pairs <= _TRANSPOSED_FORM_MAX_CHANNEL_PAIRS


def _sum_over_patches_and_images_transposed(grad_output, input, padding) -> Tensor:
    """δW = Σ_p δZ_pᵀ X_p for stride 1, no dilation, one group, with δZ in its own layout.

    The correlation of :func:`_sum_over_patches_and_images` wants δZ as (C_out, N, H_out, W_out)
    kernels: a copy of δZ transposed, the largest tensor of the backward. Read from the far end
    instead, δW[k, c, kH−1−t] = Σ_n Σ_p X̃[n, c, q] · δZ[n, k, p] with X̃ = X reversed in H and W and
    q = p + (kH−1−t) − (P−1−padding): a transposed convolution of X̃ (images as its channels) with
    δZ, whose (N, C_out, H_out, W_out) layout is exactly a transposed convolution's kernel layout
    (in, out, kH, kW). Only X is reversed and transposed (C_in/C_out of δZ's size); δW comes out
    reversed, and is turned back (kH·kW values per filter).
    """
    reversed_images_as_channels = input.transpose(0, 1).flip(-2, -1)  # X̃: (C_in, N, H, W), one copy
    crop = tuple(out - 1 - pad for out, pad in zip(grad_output.shape[-2:], padding, strict=True))
    reversed_grad_weight = torch.conv_transpose2d(reversed_images_as_channels, grad_output, None, 1, crop)
    grad_weight = reversed_grad_weight.flip(-2, -1).transpose(0, 1)  # δW = Σ_p δZ_pᵀ X_p: (C_out, C_in, kH, kW)
    return grad_weight.contiguous()  # in W's layout, as below


def _conv2d_tangent(input, weight, conv_args, input_tangent, weight_tangent, bias_tangent) -> Tensor:
    """Forward-mode derivative of Z = conv(X, W) + b: Ż = conv(Ẋ, W) + conv(X, Ẇ) + ḃ (bilinear)."""
    tangent = 0
    if input_tangent is not None:
        tangent = tangent + conv2d_forward(input_tangent, weight, None, *conv_args)  # conv(Ẋ, W)
    if weight_tangent is not None:
        tangent = tangent + conv2d_forward(input, weight_tangent, None, *conv_args)  # conv(X, Ẇ)
    if bias_tangent is not None:
        tangent = tangent + bias_tangent[:, None, None]  # ḃ, per output channel
    return tangent


def conv2d_per_example(
    grad_output: Tensor, input: Tensor | None, weight_shape: tuple[int, ...], stride: Pair, padding: Pair,
    dilation: Pair, groups: int, needs_grad: tuple[bool, bool, bool] = (False, True, True), norms_only: bool = False,
) -> tuple[None, Tensor | None, Tensor | None]:
    """Each image's term of δW and δb: δWₖ = Σ_p δZₖ,ₚᵀ Xₖ,ₚ and δbₖ = Σ_p δZₖ,ₚ -- the linear layer's
    per-example formula with the patches p of image k as its rows (per group of channels).

    grad_output δZ: (N, C_out, H_out, W_out) or unbatched (one image); input X: (N, C_in, H, W)
    or unbatched. Returns None (no per-example δX), δWₖ: ``(N, *W's shape)``, δbₖ: (N, C_out). With
    ``norms_only`` it returns their squared norms instead, (N,) each, by the linear layer's ghost
    norms (``rows_per_example_norms``) where the Gram matrices are smaller than δWₖ.
    """
    if grad_output.dim() == 3:  # one image without a batch dimension: a batch of one
        grad_output, input = grad_output.unsqueeze(0), None if input is None else input.unsqueeze(0)
    batch, out_channels = grad_output.shape[:2]
    grad_rows = grad_output.reshape(batch * groups, out_channels // groups, -1).mT  # δZ per image, group: (P, C_out/g)
    patches = None
    if needs_grad[1]:
        patches = torch.nn.functional.unfold(input, weight_shape[-2:], dilation, padding, stride)  # Xₖ,ₚ as columns
        patches = patches.reshape(batch * groups, -1, patches.shape[-1]).mT  # (P, C_in/g·kH·kW) per image and group
    if norms_only:
        _, squared_weight, _ = rows_per_example_norms(grad_rows, patches, (False, needs_grad[1], False))
        squared_weight = None if squared_weight is None else squared_weight.reshape(batch, groups).sum(1)
        squared_bias = grad_output.flatten(2).sum(2).square().sum(1) if needs_grad[2] else None  # ‖Σ_p δzₚ‖²
        return None, squared_weight, squared_bias
    grad_weight = grad_bias = None
    if needs_grad[1]:
        grad_weight = (grad_rows.mT @ patches).reshape(batch, *weight_shape)  # δWₖ = Σ_p δZₖ,ₚᵀ Xₖ,ₚ
    if needs_grad[2]:
        grad_bias = grad_output.flatten(2).sum(2)  # δbₖ = Σ_p δZₖ,ₚ
    return None, grad_weight, grad_bias


def conv1d_per_example(
    grad_output: Tensor, input: Tensor | None, weight_shape: tuple[int, ...], stride: int, padding: int,
    dilation: int, groups: int, needs_grad: tuple[bool, bool, bool] = (False, True, True), norms_only: bool = False,
) -> tuple[None, Tensor | None, Tensor | None]:
    """:func:`conv2d_per_example` on the 1 × L images. grad_output δZ: (N, C_out, L_out) or (C_out, L_out);
    input X: (N, C_in, L) or (C_in, L). Returns None, δWₖ: ``(N, *W's shape)``, δbₖ: (N, C_out) (or squared norms)."""
    image_weight_shape = (*weight_shape[:-1], 1, weight_shape[-1])
    _, grad_weight, grad_bias = conv2d_per_example(
        _as_image(grad_output), _as_image(input), image_weight_shape, (1, stride), (0, padding), (1, dilation), groups,
        needs_grad, norms_only)
    if grad_weight is not None and not norms_only:
        grad_weight = grad_weight.squeeze(-2)
    return None, grad_weight, grad_bias

def _a_tensor_of_its_own(output: Tensor) -> Tensor:
    """The forward's output ``output`` as a tensor that is not a view, over the same memory (no copy).

    torch's unbatched convolution, and a signal convolved as a 1 × L image, return a view (squeezed) of
    the batched result; a view that a custom Function returns may not be modified in place (autograd
    would lose the Function's backward), so ``relu(conv(x), inplace=True)`` and ``conv(x) += skip``
    would fail where they work after torch's. ``detach`` gives the same values and storage as a tensor
    with no view history, which the Function then owns as its output."""
    return output.detach()


# ----------------------------------------------------------------------------------------------
# The autograd Function
# ----------------------------------------------------------------------------------------------


class Conv2dFunction(LayerFunction):
    """Z = conv2d(X, W, b) with the hand-written backward of :func:`conv2d_backward`.

    Saves X only when W needs a gradient (δX needs W alone) and W always (a parameter: no extra
    memory). stride, padding, dilation: pairs of ints; groups: int.
    """


    @staticmethod
    def forward(input, weight, bias, stride, padding, dilation, groups):
        output = conv2d_forward(input, weight, bias, stride, padding, dilation, groups)
        return output if input.dim() == 4 else _a_tensor_of_its_own(output)  # unbatched: a view of a batch of one

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, weight, bias, stride, padding, dilation, groups = inputs
        ctx.conv_args = (stride, padding, dilation, groups)
        ctx.input_shape = tuple(input.shape)
        ctx.save_for_backward(input if ctx.needs_input_grad[1] else None, weight)
        ctx.save_for_forward(input, weight)

    @staticmethod
    def backward(ctx, grad_output):
        input, weight = ctx.saved_tensors
        grads = conv2d_backward_fast(grad_output, input, weight, ctx.input_shape, *ctx.conv_args,
                                     ctx.needs_input_grad[:3])
        return *grads, None, None, None, None

    @staticmethod
    def jvp(ctx, input_tangent, weight_tangent, bias_tangent, *_):
        input, weight = ctx.saved_tensors
        return _conv2d_tangent(input, weight, ctx.conv_args, input_tangent, weight_tangent, bias_tangent)

    @staticmethod
    def per_example(ctx, grad_output, norms_only=False):
        input, weight = ctx.saved_tensors
        terms = conv2d_per_example(grad_output, input, tuple(weight.shape), *ctx.conv_args, ctx.needs_input_grad[:3],
                                   norms_only)
        return *terms, None, None, None, None

    @staticmethod
    def per_example_norms(ctx, grad_output):
        return Conv2dFunction.per_example(ctx, grad_output, norms_only=True)


# ----------------------------------------------------------------------------------------------
# The public function: check the arguments, apply the Function
# ----------------------------------------------------------------------------------------------


def int_pair(function: str, name: str, value, minimum: int) -> Pair:
    """``value`` (an int or a pair of ints, each ≥ minimum) as a pair; a clear error otherwise."""
    if type(value) is tuple and len(value) == 2 and type(value[0]) is int and type(value[1]) is int:
        if min(value) >= minimum:
            return value  # a Module's setting, a pair already: the common case, every layer and step
    pair = (value, value) if isinstance(value, int) else tuple(value) if isinstance(value, (tuple, list)) else None
    if pair is None or len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair):
        raise TypeError(f"{function}: expected {name} as an int or a pair of ints, got {value!r}")
    if min(pair) < minimum:
        raise ValueError(f"{function}: expected {name} ≥ {minimum}, got {value!r}")
    return pair


def _same_padding(input: Tensor, weight: Tensor, stride: Pair, dilation: Pair) -> tuple[Tensor, Pair]:
    """padding="same" as torch does it: dilation·(k − 1) split evenly, an odd one out added on the
    right/bottom by padding the input first (an ordinary autograd op; its backward crops)."""
    if stride != (1, 1):
        raise ValueError(
            f"conv2d: padding='same' needs stride 1 (the output would not keep the input's size), got "
            f"stride {stride}; give the padding as numbers instead"
        )
    totals = [d * (k - 1) for d, k in zip(dilation, weight.shape[-2:], strict=True)]
    extra_height, extra_width = (total % 2 for total in totals)
    if extra_height or extra_width:
        input = torch.nn.functional.pad(input, (0, extra_width, 0, extra_height))
    return input, (totals[0] // 2, totals[1] // 2)


def _check_conv2d_arguments(input: Tensor, weight: Tensor, bias: Tensor | None, groups: int) -> None:
    if not (isinstance(groups, int) and groups >= 1):
        raise ValueError(f"conv2d: expected groups as a positive int, got {groups!r}")
    if weight.dim() != 4:
        raise ValueError(
            f"conv2d: expected a weight of shape (out_channels, in_channels/groups, kH, kW), "
            f"got shape {tuple(weight.shape)}"
        )
    if input.dim() not in (3, 4):
        raise ValueError(
            f"conv2d: expected an input of shape (N, C, H, W) or (C, H, W), got shape {tuple(input.shape)}; "
            f"for a flat image reshape it, e.g. input.reshape(N, 1, 28, 28)"
        )
    for argument, tensor in (("input", input), ("weight", weight), ("bias", bias)):
        if tensor is not None and not tensor.is_floating_point():
            raise TypeError(
                f"conv2d: expected a floating-point {argument}, got dtype {tensor.dtype}; convert it, "
                f"e.g. {argument}.float()"
            )
        if tensor is not None and dtype_under_autocast(tensor) != dtype_under_autocast(input):
            raise TypeError(
                f"conv2d: input is {input.dtype} but {argument} is {tensor.dtype}; use one dtype for all, "
                f"e.g. model.to({input.dtype})"
            )
    out_channels, channels_per_group = weight.shape[:2]
    in_channels = input.shape[-3]
    if out_channels % groups:
        raise ValueError(f"conv2d: out_channels ({out_channels}) must be divisible by groups ({groups})")
    if in_channels != channels_per_group * groups:
        raise ValueError(
            f"conv2d: expected {channels_per_group * groups} input channels (weight {tuple(weight.shape)}, "
            f"groups={groups}), got {in_channels} (input shape {tuple(input.shape)}); check the layer's "
            f"in_channels or the input's channel dimension"
        )
    if bias is not None and tuple(bias.shape) != (out_channels,):
        raise ValueError(f"conv2d: expected a bias of shape ({out_channels},), got {tuple(bias.shape)}")


def conv2d_arguments(input: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1, padding=0, dilation=1,
                     groups: int = 1) -> tuple:
    """The checked arguments of :class:`Conv2dFunction` (pairs of ints; padding="same" with an odd
    total pads the input first), or a clear error."""
    _check_conv2d_arguments(input, weight, bias, groups)
    stride = int_pair("conv2d", "stride", stride, 1)
    dilation = int_pair("conv2d", "dilation", dilation, 1)
    if padding == "valid":
        padding = (0, 0)
    elif padding == "same":
        input, padding = _same_padding(input, weight, stride, dilation)
    elif isinstance(padding, str):
        raise ValueError(f"conv2d: padding must be 'valid', 'same', an int or a pair of ints, got {padding!r}")
    else:
        padding = int_pair("conv2d", "padding", padding, 0)
    for size, pad, d, k, axis in zip(input.shape[-2:], padding, dilation, weight.shape[-2:], "HW", strict=True):
        if size + 2 * pad < d * (k - 1) + 1:
            raise ValueError(
                f"conv2d: the kernel ({d * (k - 1) + 1} with dilation) is larger than the padded input "
                f"({size} + 2·{pad}) along {axis}; use a smaller kernel or more padding"
            )
    return input, weight, bias, stride, padding, dilation, groups


@hand_writes(torch.nn.functional.conv2d, torch.conv2d)
def conv2d(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
) -> Tensor:
    """2-D convolution like ``torch.nn.functional.conv2d``, with the hand-written backward.

    input: (N, C_in, H, W) or (C_in, H, W); weight: (C_out, C_in/groups, kH, kW); bias: (C_out,)
    or None; stride, dilation: int or pair (≥ 1); padding: int or pair (≥ 0), "valid" or "same".
    Returns (N, C_out, H_out, W_out) (no N for an unbatched input). Under autocast it runs in the
    autocast dtype, as ``torch.nn.functional.conv2d`` does.
    """
    arguments = conv2d_arguments(input, weight, bias, stride, padding, dilation, groups)
    return apply(Conv2dFunction, *arguments, autocast_to="lower")


# ----------------------------------------------------------------------------------------------
# The Module
# ----------------------------------------------------------------------------------------------


class Conv2d(torch.nn.Conv2d, SharesState, torch_twin=torch.nn.Conv2d):
    """``torch.nn.Conv2d`` (same parameters, init, state_dict, repr) with the hand-written backward;
    padding_mode "zeros" only. input (N, C_in, H, W) or (C_in, H, W) -> (N, C_out, H_out, W_out)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.check_convertible(self)

    @classmethod
    def check_convertible(cls, module: torch.nn.Conv2d) -> None:
        if module.padding_mode != "zeros":
            raise NotConvertibleError(
                f"Conv2d: manualbp pads with zeros only, got padding_mode={module.padding_mode!r}; "
                f"keep torch.nn.Conv2d for this layer (convert leaves it as it is)"
            )

    @classmethod
    def example(cls, dtype=torch.float64):
        return cls(2, 2, 3).to(dtype), (torch.randn(6, 2, 4, 4, dtype=dtype),)  # (6, 2, 4, 4) images -> (6, 2, 2, 2)

    def forward(self, input: Tensor) -> Tensor:
        return conv2d(input, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def function_and_arguments(self, input: Tensor):
        arguments = conv2d_arguments(input, self.weight, self.bias, self.stride, self.padding, self.dilation,
                                     self.groups)
        if arguments[0] is not input:
            raise ValueError(
                "Conv2d: padding='same' with an even kernel pads unevenly, which the manual engine does not "
                "run; give the padding as numbers, or use engine=autograd"
            )
        return Conv2dFunction, arguments


# ----------------------------------------------------------------------------------------------
# 1-D convolution: a length-L signal is a 1 × L image, and conv1d is conv2d on it
# ----------------------------------------------------------------------------------------------


def _as_image(signal: Tensor | None) -> Tensor | None:
    """(N, C, L) or (C, L) -> (N, C, 1, L) or (C, 1, L): the signal as an image of one row."""
    return None if signal is None else signal.unsqueeze(-2)


def conv1d_forward(input: Tensor, weight: Tensor, bias: Tensor | None, stride: int, padding: int, dilation: int,
                   groups: int) -> Tensor:
    """Z_p = X_p Wᵀ + b at every patch p of the signal: conv2d's formula on the 1 × L image.

    input X: (N, C_in, L) or (C_in, L); weight W: (C_out, C_in/groups, k); bias b: (C_out,) or
    None. Returns Z: (N, C_out, L_out) (no N if the input had none),
    L_out = ⌊(L + 2·padding − dilation·(k − 1) − 1)/stride⌋ + 1.
    """
    image = conv2d_forward(_as_image(input), _as_image(weight), bias, (1, stride), (0, padding), (1, dilation), groups)
    return image.squeeze(-2)  # Z_p = X_p Wᵀ + b, every p of the 1 × L image


def conv1d_backward(
    grad_output: Tensor,
    input: Tensor | None,
    weight: Tensor,
    input_shape: tuple[int, ...],
    stride: int,
    padding: int,
    dilation: int,
    groups: int,
    needs_grad: tuple[bool, bool, bool] = (True, True, True),
    image_backward: Callable = conv2d_backward,
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """δX, δW, δb of Z = conv1d(X, W, b): ``image_backward`` (:func:`conv2d_backward`, the formula;
    the Function passes :func:`conv2d_backward_fast`) on the 1 × L images, each made a signal again.

    grad_output δZ: (N, C_out, L_out) or (C_out, L_out); input X: (N, C_in, L) or (C_in, L), or
    None if δW is not needed; weight W: (C_out, C_in/groups, k); input_shape: X's shape.
    Returns δX: X's shape, δW: W's shape, δb: (C_out,).
    """
    image_shape = (*input_shape[:-1], 1, input_shape[-1])
    grad_input, grad_weight, grad_bias = image_backward(  # δX, δW, δb of the 1 × L image
        _as_image(grad_output), _as_image(input), _as_image(weight), image_shape, (1, stride), (0, padding),
        (1, dilation), groups, needs_grad,
    )
    return (None if grad_input is None else grad_input.squeeze(-2)), (
        None if grad_weight is None else grad_weight.squeeze(-2)), grad_bias


class Conv1dFunction(LayerFunction):
    """Z = conv1d(X, W, b) with the hand-written backward of :func:`conv1d_backward` (conv2d's, on a
    1 × L image). Saves X only when W needs a gradient, and W. stride, padding, dilation, groups: ints."""

    @staticmethod
    def forward(input, weight, bias, stride, padding, dilation, groups):
        return _a_tensor_of_its_own(conv1d_forward(input, weight, bias, stride, padding, dilation, groups))

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, weight, bias, stride, padding, dilation, groups = inputs
        ctx.conv_args = (stride, padding, dilation, groups)
        ctx.input_shape = tuple(input.shape)
        ctx.save_for_backward(input if ctx.needs_input_grad[1] else None, weight)
        ctx.save_for_forward(input, weight)

    @staticmethod
    def backward(ctx, grad_output):
        input, weight = ctx.saved_tensors
        grads = conv1d_backward(grad_output, input, weight, ctx.input_shape, *ctx.conv_args, ctx.needs_input_grad[:3],
                                image_backward=conv2d_backward_fast)
        return *grads, None, None, None, None

    @staticmethod
    def jvp(ctx, input_tangent, weight_tangent, bias_tangent, *_):
        input, weight = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conv_args
        image_args = ((1, stride), (0, padding), (1, dilation), groups)
        tangent = _conv2d_tangent(_as_image(input), _as_image(weight), image_args, _as_image(input_tangent),
                                  _as_image(weight_tangent), bias_tangent)
        return tangent.squeeze(-2)

    @staticmethod
    def per_example(ctx, grad_output, norms_only=False):
        input, weight = ctx.saved_tensors
        terms = conv1d_per_example(grad_output, input, tuple(weight.shape), *ctx.conv_args, ctx.needs_input_grad[:3],
                                   norms_only)
        return *terms, None, None, None, None

    @staticmethod
    def per_example_norms(ctx, grad_output):
        return Conv1dFunction.per_example(ctx, grad_output, norms_only=True)


def _single_int(name: str, value) -> int | str:
    """torch.nn.functional.conv1d's int or 1-tuple setting as an int (a padding string as it is)."""
    if isinstance(value, (tuple, list)) and len(value) == 1:
        value = value[0]
    if isinstance(value, str) and name == "padding":
        return value
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"conv1d: expected {name} as an int or a 1-tuple of ints, got {value!r}; e.g. {name}=1")
    return value


def conv1d_arguments(input: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1, padding=0, dilation=1,
                     groups: int = 1) -> tuple:
    """The checked arguments of :class:`Conv1dFunction` (ints; padding="same" with an odd total pads
    the input first), or a clear error: conv2d's checks on the 1 × L image."""
    if weight.dim() != 3:
        raise ValueError(f"conv1d: expected a weight of shape (out_channels, in_channels/groups, k), got shape "
                         f"{tuple(weight.shape)}")
    if input.dim() not in (2, 3):
        raise ValueError(f"conv1d: expected an input of shape (N, C, L) or (C, L), got shape {tuple(input.shape)}; "
                         f"for a batch of 1-channel signals use input.unsqueeze(1)")
    stride, padding, dilation = (_single_int(name, value) for name, value in
                                 (("stride", stride), ("padding", padding), ("dilation", dilation)))
    image_padding = padding if isinstance(padding, str) else (0, padding)
    as_image = _as_image(input)
    try:
        image, _, _, _, image_padding, _, _ = conv2d_arguments(as_image, _as_image(weight), bias, (1, stride),
                                                               image_padding, (1, dilation), groups)
    except (TypeError, ValueError) as error:  # conv2d's check, on the signal as a 1 × L image: say so
        message = str(error).replace("conv2d:", "conv1d (checked as conv2d on the signal as a 1 × L image):", 1)
        raise type(error)(message) from None
    signal = input if image is as_image else image.squeeze(-2)  # padded first for an uneven "same"
    return signal, weight, bias, stride, image_padding[1], dilation, groups


@hand_writes(torch.nn.functional.conv1d, torch.conv1d)
def conv1d(input: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1, padding=0, dilation=1,
           groups: int = 1) -> Tensor:
    """1-D convolution like ``torch.nn.functional.conv1d``, with conv2d's hand-written backward.

    input: (N, C_in, L) or (C_in, L); weight: (C_out, C_in/groups, k); bias: (C_out,) or None;
    stride, dilation: int (≥ 1); padding: int (≥ 0), "valid" or "same". Returns (N, C_out, L_out)
    (no N for an unbatched input). Under autocast it runs in the autocast dtype, as torch's does.
    """
    return apply(Conv1dFunction, *conv1d_arguments(input, weight, bias, stride, padding, dilation, groups),
                 autocast_to="lower")


class Conv1d(torch.nn.Conv1d, SharesState, torch_twin=torch.nn.Conv1d):
    """``torch.nn.Conv1d`` (same parameters, init, state_dict, repr) with conv2d's hand-written
    backward on the 1 × L image; padding_mode "zeros" only. input (N, C_in, L) or (C_in, L)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.check_convertible(self)

    @classmethod
    def check_convertible(cls, module: torch.nn.Conv1d) -> None:
        if module.padding_mode != "zeros":
            raise NotConvertibleError(
                f"Conv1d: manualbp pads with zeros only, got padding_mode={module.padding_mode!r}; "
                f"keep torch.nn.Conv1d for this layer (convert leaves it as it is)"
            )

    @classmethod
    def example(cls, dtype=torch.float64):
        return cls(2, 2, 3).to(dtype), (torch.randn(6, 2, 5, dtype=dtype),)  # (6, 2, 5) signals -> (6, 2, 3)

    def forward(self, input: Tensor) -> Tensor:
        return conv1d(input, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def function_and_arguments(self, input: Tensor):
        arguments = conv1d_arguments(input, self.weight, self.bias, self.stride, self.padding, self.dilation,
                                     self.groups)
        if arguments[0] is not input:
            raise ValueError(
                "Conv1d: padding='same' with an even kernel pads unevenly, which the manual engine does not "
                "run; give the padding as a number, or use engine=autograd"
            )
        return Conv1dFunction, arguments
