"""BatchNorm folded into its convolution (aabench.models.folding)."""

import pytest
import torch
from torch import nn

from aabench.models.folding import (
    FoldedBatchNorm2d,
    FoldedConv2d,
    fold_batchnorms,
    foldable_pairs,
)
from aabench.models.zoo import create_model


def _randomise_statistics(module: nn.Module) -> None:
    """BatchNorms that are not the identity a fresh model's are."""
    generator = torch.Generator().manual_seed(0)
    for norm in module.modules():
        if isinstance(norm, nn.BatchNorm2d):
            size = norm.num_features
            norm.running_mean.copy_(torch.rand(size, generator=generator) * 2 - 1)
            norm.running_var.copy_(torch.rand(size, generator=generator) + 0.5)
            with torch.no_grad():
                norm.weight.copy_(torch.rand(size, generator=generator) + 0.5)
                norm.bias.copy_(torch.rand(size, generator=generator) - 0.5)


def test_a_hand_computed_fold():
    # conv: y = 2x + 1; BN (eps 0): (y - 3) / sqrt(4) * 5 + 6, so together 5x + 1.
    model = nn.Sequential(nn.Conv2d(1, 1, 1), nn.BatchNorm2d(1, eps=0.0)).eval()
    with torch.no_grad():
        model[0].weight.fill_(2.0)
        model[0].bias.fill_(1.0)
        model[1].running_mean.fill_(3.0)
        model[1].running_var.fill_(4.0)
        model[1].weight.fill_(5.0)
        model[1].bias.fill_(6.0)
    assert fold_batchnorms(model, True) == 1
    assert type(model[0]) is FoldedConv2d and type(model[1]) is FoldedBatchNorm2d
    assert model[0].folded_weight.flatten().tolist() == [5.0]
    assert model[0].folded_bias.tolist() == [1.0]
    x = torch.tensor([[[[0.0, 1.0], [-2.0, 0.5]]]])
    assert model(x).flatten().tolist() == [1.0, 6.0, -9.0, 3.5]


@pytest.mark.parametrize(
    ("name", "norms"),
    [("resnet18_aa", 20), ("mobilenet_v2_aa", 52), ("densenet121_aa", 59)],
)
def test_zoo_models_fold_to_the_same_logits_and_back(name, norms):
    # DenseNet's norm1 follows a concatenation, not a convolution: only norm2 folds.
    model = create_model(name, weights="none").module.eval()
    _randomise_statistics(model)
    state = {key: value.clone() for key, value in model.state_dict().items()}
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        before = model(x)
        assert fold_batchnorms(model, True) == norms
        folded = model(x)
        assert fold_batchnorms(model, False) == 0
        after = model(x)
    assert (folded - before).abs().max() <= 1e-5 * before.abs().max()
    assert not torch.equal(folded, before)  # the folded computation did run
    assert torch.equal(after, before)
    assert not any(type(sub) in (FoldedConv2d, FoldedBatchNorm2d) for sub in model.modules())
    # Nothing the checkpoint holds changed, and nothing was added to it.
    assert list(model.state_dict()) == list(state)
    assert all(torch.equal(model.state_dict()[key], value) for key, value in state.items())


def test_folding_twice_recomputes_from_the_weights():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).eval()
    _randomise_statistics(model)
    fold_batchnorms(model, True)
    with torch.no_grad():
        model[0].weight.mul_(2.0)  # new weights loaded after a first fold
    assert fold_batchnorms(model, True) == 1
    reference = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).eval()
    reference.load_state_dict(model.state_dict())
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=1e-5, atol=1e-6)


def test_the_folded_weight_keeps_the_memory_format():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).eval()
    fold_batchnorms(model.to(memory_format=torch.channels_last), True)
    assert model[0].folded_weight.is_contiguous(memory_format=torch.channels_last)
    assert not model[0].folded_weight.is_contiguous()
    fold_batchnorms(model.to(memory_format=torch.contiguous_format), True)
    assert model[0].folded_weight.is_contiguous()


class _Shared(nn.Module):
    """The convolution's output goes to the BN and to the sum."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y


class _Twice(nn.Module):
    """One convolution module called twice."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2)

    def forward(self, x):
        return self.bn(self.conv(x)) + self.conv(x)


class _Untraceable(nn.Module):
    """Control flow on a value: torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2)

    def forward(self, x):
        y = self.bn(self.conv(x))
        return y if y.sum() > 0 else -y


def _hooked():
    model = nn.Sequential(nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2)).eval()
    model[0].register_forward_hook(lambda *args: None)
    return model


class _ForwardCalled(nn.Module):
    """The convolution also run through its ``forward`` (traced as its tensors read)."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2)

    def forward(self, x):
        return self.bn(self.conv(x)) + self.conv.forward(x)


def _training():
    model = nn.Sequential(nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2))
    model.eval()[1].train()  # a BN that updates its statistics is not a fixed map
    return model


@pytest.mark.parametrize(
    "make",
    [_Shared, _Twice, _ForwardCalled, _Untraceable, _hooked, _training],
    ids=["output-shared", "called-twice", "forward-called", "untraceable", "hooked", "training"],
)
def test_what_cannot_be_folded_is_left_as_it_is(make):
    model = make()
    if not isinstance(model, nn.Sequential):
        model.eval()
    # Each would fold but for the reason it stands for (here: all in eval, no hooks).
    assert not any(sub.training for sub in model.modules()) or make is _training
    assert foldable_pairs(model) == []
    assert fold_batchnorms(model, True) == 0
    assert not any(type(sub) in (FoldedConv2d, FoldedBatchNorm2d) for sub in model.modules())


class _Recording(nn.Module):
    """Keeps every input it is called with, as test doubles and some models do."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2)
        self.seen = []

    def forward(self, x):
        self.seen.append(x)
        return self.bn(self.conv(x))


def test_tracing_leaves_the_models_own_state_alone():
    model = _Recording().eval()
    assert fold_batchnorms(model, True) == 1
    assert model.seen == []  # the trace's proxies went to a stand-in copy
    model(torch.zeros(1, 2, 3, 3))
    assert len(model.seen) == 1 and isinstance(model.seen[0], torch.Tensor)


@pytest.mark.parametrize(
    "conv",
    [
        {"bias": False},
        {"dilation": 2, "padding": 2, "padding_mode": "reflect"},
        {"groups": 2, "stride": 2},
    ],
    ids=["no-bias", "dilated-reflect", "grouped-strided"],
)
@pytest.mark.parametrize("affine", [True, False])
def test_every_convolution_and_batchnorm_kind_folds_exactly(conv, affine):
    model = nn.Sequential(nn.Conv2d(4, 6, 3, **conv), nn.BatchNorm2d(6, affine=affine)).eval()
    if affine:
        _randomise_statistics(model)
    else:
        model[1].running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 4, 11, 11, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        before = model(x)
        assert fold_batchnorms(model, True) == 1
        torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-6)


def test_a_folded_model_put_back_in_training_computes_as_before():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).eval()
    fold_batchnorms(model, True)
    model.train()
    x = torch.randn(4, 3, 8, 8)
    model(x).sum().backward()  # a plain conv and BN again: gradients, statistics
    assert model[0].weight.grad is not None
    assert model[1].num_batches_tracked.item() == 1


def test_undoing_a_fold_leaves_no_trace():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).eval()
    fold_batchnorms(model, True)
    fold_batchnorms(model, False)
    conv = model[0]
    assert set(conv._buffers) == set() and conv._non_persistent_buffers_set == set()
