"""BatchNorm folded into the convolution before it, for evaluation.

In eval mode a BatchNorm is a fixed per-channel affine map, so conv -> BN equals one
convolution with weight w·s and bias (b - mean)·s + beta, s = gamma / sqrt(var + eps):
the same outputs to float rounding (about 1e-7 of the activations) without the BN's
pass over the feature map. The model is not edited: the folded weight and bias are
non-persistent buffers beside the originals (the state_dict and every name stay as they
are), and the two modules change class to FoldedConv2d and FoldedBatchNorm2d, which
``fold_batchnorms(module, False)`` (or aabench.api.kept_modes) switches back.

A pair is folded only where the model's graph shows that the convolution's output goes
to the BatchNorm and nowhere else, each module runs once, and neither has hooks; the
graph comes from torch.fx with BlurPool and ShiftedMaxPool2d as leaves, traced on a
copy of the model that shares its tensors. A model that fx cannot trace is left as it is.
"""

from __future__ import annotations

import copy

import torch
from torch import fx, nn

from aabench.models.blurpool import BlurPool, ShiftedMaxPool2d

__all__ = ["FOLDING_FASTER", "FoldedBatchNorm2d", "FoldedConv2d", "fold_batchnorms"]

# Whether folding beats conv + BN, by (device type, channels-last), from whole-model
# forward passes; missing (CUDA, until measured): not folded. On the 2-core CPU
# (resnet18_aa, batch 16, 3 interleaved rounds, the max pools shifted) channels-last went
# from 40.4-42.2 to 44.0-45.3 views/s.
FOLDING_FASTER = {("cpu", False): True, ("cpu", True): True}


def folding_is_faster(device: torch.device | str, channels_last: bool) -> bool:
    return FOLDING_FASTER.get((torch.device(device).type, bool(channels_last)), False)


class FoldedConv2d(nn.Conv2d):
    """A Conv2d that computes conv -> BN with the folded weight and bias buffers (in
    training mode, a plain convolution again: the fold holds for eval only)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return super().forward(x)
        return self._conv_forward(x, self.folded_weight, self.folded_bias)


class FoldedBatchNorm2d(nn.BatchNorm2d):
    """A BatchNorm2d whose map its convolution already applies (in training mode, a
    BatchNorm again)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return super().forward(x)
        return x


class _LeafTracer(fx.Tracer):
    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        if isinstance(module, BlurPool | ShiftedMaxPool2d):
            return True
        return super().is_leaf_module(module, qualified_name)


def _graph(module: nn.Module) -> fx.Graph | None:
    """The traced graph, or None. Tracing runs the forward on proxies, so a forward that
    keeps state on the model (inputs it has seen, a call count) would keep proxies: it is
    traced on a stand-in copy that shares the model's tensors."""
    if not any(type(sub) is nn.BatchNorm2d for sub in module.modules()):
        return None  # nothing to fold, nothing to trace
    shared = {id(tensor): tensor for tensor in (*module.parameters(), *module.buffers())}
    try:
        return _LeafTracer().trace(copy.deepcopy(module, memo=shared))
    except Exception:  # any model fx cannot trace (or copy) is simply not folded
        return None


def foldable_pairs(module: nn.Module) -> list[tuple[str, str]]:
    """(convolution, BatchNorm) module names whose BN can be folded into the conv."""
    graph = _graph(module)
    if graph is None:
        return []
    calls = [node for node in graph.nodes if node.op == "call_module"]
    # A module's tensors read outside its own call (``conv.forward(x)`` traces as
    # conv2d on them, ``conv.weight`` used elsewhere) would see the folded computation.
    read = [node.target for node in graph.nodes if node.op == "get_attr"]
    times_called: dict[str, int] = {}
    for node in calls:
        times_called[node.target] = times_called.get(node.target, 0) + 1
    pairs = []
    for node in calls:
        conv = module.get_submodule(node.target)
        if type(conv) is not nn.Conv2d or len(node.users) != 1:
            continue
        (user,) = node.users
        if user.op != "call_module" or user.args != (node,) or user.kwargs:
            continue
        norm = module.get_submodule(user.target)
        if (
            type(norm) is nn.BatchNorm2d
            and not norm.training
            and norm.running_mean is not None
            and norm.num_features == conv.out_channels
            and times_called[node.target] == times_called[user.target] == 1
            and not _hooked(conv)
            and not _hooked(norm)
            and not any(t.startswith((f"{node.target}.", f"{user.target}.")) for t in read)
        ):
            pairs.append((node.target, user.target))
    return pairs


def _hooked(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks)


def _folded(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    # In float64, then the conv's dtype: the product rounds once.
    scale = torch.rsqrt(norm.running_var.double() + norm.eps)
    shift = -norm.running_mean.double() * scale
    if norm.affine:
        scale, shift = scale * norm.weight.double(), shift * norm.weight.double()
        shift = shift + norm.bias.double()
    bias = shift if conv.bias is None else shift + conv.bias.double() * scale
    weight = conv.weight.double() * scale.view(-1, 1, 1, 1)
    dtype = conv.weight.dtype
    return weight.to(dtype).contiguous(memory_format=_format(conv.weight)), bias.to(dtype)


def _format(weight: torch.Tensor) -> torch.memory_format:
    """The weight's memory format (a tensor that is both, as a 1 x 1 kernel can be, is
    contiguous)."""
    nhwc = weight.dim() == 4 and weight.is_contiguous(memory_format=torch.channels_last)
    return torch.channels_last if nhwc and not weight.is_contiguous() else torch.contiguous_format


def fold_batchnorms(module: nn.Module, enabled: bool) -> int:
    """Fold every foldable BatchNorm of ``module`` (in eval mode) into its convolution,
    or with ``enabled`` False undo it; returns the number folded. Call it after the
    module is on its device and its weights are loaded: the folded tensors are computed
    from them then (again on every call, so it can be called more than once)."""
    for sub in module.modules():
        if type(sub) is FoldedConv2d:
            sub.__class__ = nn.Conv2d
            delattr(sub, "folded_weight")
            delattr(sub, "folded_bias")
        elif type(sub) is FoldedBatchNorm2d:
            sub.__class__ = nn.BatchNorm2d
    if not enabled:
        return 0
    pairs = foldable_pairs(module)
    with torch.no_grad():
        for conv_name, norm_name in pairs:
            conv, norm = module.get_submodule(conv_name), module.get_submodule(norm_name)
            weight, bias = _folded(conv, norm)
            conv.register_buffer("folded_weight", weight, persistent=False)
            conv.register_buffer("folded_bias", bias, persistent=False)
            conv.__class__ = FoldedConv2d
            norm.__class__ = FoldedBatchNorm2d
    return len(pairs)
