"""Training losses (pixel, perceptual, style, hinge) and the multi-scale spectral-norm discriminator."""
import logging

import pytest
import torch
from torch import nn

from dmdnet.discriminator import MultiScaleDiscriminator, downsample
from dmdnet.losses import (
    LossWeights,
    TrainingLoss,
    VGG19Features,
    discriminator_hinge,
    feature_losses,
    generator_hinge,
    gram_matrix,
    perceptual_loss,
    pixel_loss,
    style_loss,
    vgg19_features,
    vgg19_layer_names,
)

VGG19_CONVS = (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34)
VGG19_CHANNELS = (64, 64, 128, 128, 256, 256, 256, 256, 512, 512, 512, 512, 512, 512, 512, 512)


class FixedConv(nn.Module):
    """A tiny hand-made feature network: one fixed 3 -> 2 conv and its ReLU, as a dict."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3, padding=1, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.linspace(-1, 1, self.conv.weight.numel()).view_as(self.conv.weight))

    def forward(self, image):
        features = self.conv(image)
        return {"conv": features, "relu": torch.relu(features)}


def const(value, shape=(2, 3, 8, 8)):
    return torch.full(shape, float(value))


# --- weights and pixel loss ---------------------------------------------------------------

def test_default_weights_are_the_papers_where_known():
    weights = LossWeights()
    assert weights.pixel == 300 and weights.adversarial == (4.0, 1.0, 0.5)
    with pytest.raises(ValueError):
        LossWeights(pixel=-1)
    with pytest.raises(ValueError):
        LossWeights(adversarial=(1.0, float("nan")))


def test_pixel_loss_of_constant_images_is_300_times_the_squared_difference():
    assert pixel_loss(const(0.5), const(-0.25)).item() == pytest.approx(300 * 0.75**2)
    assert pixel_loss(const(0.5), const(0.5)).item() == 0
    assert pixel_loss(const(0.1), const(0.3), weight=2).item() == pytest.approx(2 * 0.2**2)
    with pytest.raises(ValueError):
        pixel_loss(const(0), const(0, (2, 3, 8, 4)))


# --- Gram, perceptual and style -----------------------------------------------------------

def test_gram_matrix_of_a_known_tensor():
    # channel 0 = (1, 2, 3, 4), channel 1 = (0, 1, 0, 1) on a 2 x 2 map: C * H * W = 8
    features = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [0.0, 1.0]]]])
    expected = torch.tensor([[[30.0, 6.0], [6.0, 2.0]]]) / 8
    assert torch.allclose(gram_matrix(features), expected)
    assert gram_matrix(features.half()).dtype == torch.float32


def test_perceptual_and_style_of_constant_features_by_hand():
    identity = lambda image: [image]  # noqa: E731  features = the image itself, one layer
    a, b = const(0.5, (1, 2, 2, 2)), const(0.25, (1, 2, 2, 2))
    assert perceptual_loss(a, b, identity, weight=3).item() == pytest.approx(3 * 0.25**2)
    # Gram of a constant c (C = 2, H * W = 4): every entry 4 c^2 / 8 = c^2 / 2
    difference = (0.5**2 - 0.25**2) / 2
    assert style_loss(a, b, identity, weight=2).item() == pytest.approx(2 * 4 * difference**2)


def test_perceptual_loss_is_zero_for_identical_images_and_its_gradient_reaches_the_image():
    torch.manual_seed(0)
    network = FixedConv().requires_grad_(False)
    target = torch.rand(2, 3, 16, 16) * 2 - 1
    assert perceptual_loss(target.clone(), target, network).item() == 0
    assert style_loss(target.clone(), target, network).item() == 0
    restored = (target + 0.1 * torch.randn_like(target)).requires_grad_(True)
    perceptual, style = feature_losses(restored, target, network)
    assert perceptual.item() > 0 and style.item() > 0
    (perceptual + style).backward()
    assert restored.grad is not None and restored.grad.abs().sum() > 0


def test_without_vgg_weights_perceptual_and_style_are_skipped_with_a_logged_reason(caplog, tmp_path):
    target = torch.rand(1, 3, 16, 16) * 2 - 1
    restored = target.flip(-1)
    for path in (None, tmp_path / "vgg19.pth"):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="dmdnet.train"):
            loss = TrainingLoss(vgg19_weights=path)
            total, terms = loss(restored, target)
            loss(restored, target)
        records = [r for r in caplog.records if r.name == "dmdnet.train"]
        assert len(records) == 1 and "skipped" in records[0].getMessage()
        assert loss.skip_reason and (path is None or str(path) in loss.skip_reason)
        assert terms["perceptual"] == 0 and terms["style"] == 0 and terms["adversarial"] == 0
        assert terms["total"] == pytest.approx(terms["pixel"]) and total.item() == pytest.approx(terms["pixel"])
        assert terms["pixel"] == pytest.approx(pixel_loss(restored, target).item())


# --- VGG-19 -------------------------------------------------------------------------------

def torchvision_vgg19_state(seed=0) -> dict:
    """A random state dict with torchvision vgg19's keys and shapes, built by hand (classifier included)."""
    generator = torch.Generator().manual_seed(seed)
    state, cin = {}, 3
    for index, cout in zip(VGG19_CONVS, VGG19_CHANNELS):
        state[f"features.{index}.weight"] = torch.randn(cout, cin, 3, 3, generator=generator) * (2 / (9 * cin)) ** 0.5
        state[f"features.{index}.bias"] = torch.randn(cout, generator=generator) * 0.01
        cin = cout
    state["classifier.0.weight"] = torch.zeros(4, 8)  # shape irrelevant: classifier keys are ignored
    state["classifier.0.bias"] = torch.zeros(4)
    return state


def test_vgg19_builder_loads_a_torchvision_layout_file_and_computes_features(tmp_path):
    state = torchvision_vgg19_state()
    path = tmp_path / "vgg19.pth"
    torch.save(state, path)
    network = vgg19_features(path)
    assert all(not p.requires_grad for p in network.parameters()) and not network.training
    for index in VGG19_CONVS:
        assert torch.equal(network.features[index].weight, state[f"features.{index}.weight"])
    assert vgg19_layer_names()[1] == "relu1_1" and vgg19_layer_names()[34] == "conv5_4"

    image = torch.rand(1, 3, 32, 32) * 2 - 1
    features = network(image)
    assert list(features) == ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"]
    assert [tuple(f.shape) for f in features.values()] == [
        (1, 64, 32, 32), (1, 128, 16, 16), (1, 256, 8, 8), (1, 512, 4, 4), (1, 512, 2, 2)
    ]
    # the first layer by hand: ImageNet normalisation of the [0, 1] image, then conv and ReLU
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    expected = torch.relu(nn.functional.conv2d(((image + 1) / 2 - mean) / std, state["features.0.weight"], state["features.0.bias"], padding=1))
    assert torch.allclose(features["relu1_1"], expected, atol=1e-5)

    loss = TrainingLoss(vgg19_weights=path)
    assert loss.skip_reason is None
    restored = (image + 0.05 * torch.randn_like(image)).requires_grad_(True)
    total, terms = loss(restored, image)
    assert terms["perceptual"] > 0 and terms["style"] > 0
    total.backward()
    assert restored.grad.abs().sum() > 0


def test_vgg19_builder_rejects_a_wrong_layout(tmp_path):
    state = torchvision_vgg19_state()
    del state["features.34.bias"]
    state["features.0.weight"] = state["features.0.weight"][:32]
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match="features.34.bias") as error:
        vgg19_features(path)
    assert "features.0.weight" in str(error.value)
    with pytest.raises(FileNotFoundError):
        vgg19_features(tmp_path / "absent.pth")
    with pytest.raises(ValueError, match="unknown VGG-19 layers"):
        VGG19Features(["relu9_9"])


# --- hinge losses -------------------------------------------------------------------------

def logits(value, sides=(8, 4, 2)):
    return [torch.full((2, 1, s, s), float(value)) for s in sides]


def test_discriminator_hinge_on_known_logits():
    assert discriminator_hinge(logits(2), logits(-2)).item() == 0
    assert discriminator_hinge(logits(0), logits(0)).item() == pytest.approx((4 + 1 + 0.5) * 2)
    # real = 0.5, fake = 0.25: each scale 0.5 + 1.25
    assert discriminator_hinge(logits(0.5), logits(0.25)).item() == pytest.approx(5.5 * 1.75)
    # per-scale values: only the first scale wrong (real -1 -> 2, fake 1 -> 2)
    real, fake = logits(2), logits(-2)
    real[0].fill_(-1.0)
    fake[0].fill_(1.0)
    assert discriminator_hinge(real, fake).item() == pytest.approx(4 * 4)
    assert discriminator_hinge(real, fake, LossWeights(adversarial=(1, 1, 1))).item() == pytest.approx(4)
    with pytest.raises(ValueError):
        discriminator_hinge(logits(0)[:2], logits(0)[:2])


def test_generator_hinge_on_known_logits():
    assert generator_hinge(logits(0)).item() == 0
    assert generator_hinge(logits(2)).item() == pytest.approx(-5.5 * 2)
    mixed = [torch.tensor([[[[1.0, 3.0]]]]), torch.full((1, 1, 1, 1), -1.0), torch.full((1, 1, 1, 1), 4.0)]
    assert generator_hinge(mixed).item() == pytest.approx(-(4 * 2 + 1 * -1 + 0.5 * 4))
    with pytest.raises(TypeError):
        generator_hinge(torch.zeros(1, 1, 2, 2))


def test_training_loss_adds_the_weighted_terms():
    torch.manual_seed(1)
    target = torch.rand(2, 3, 16, 16) * 2 - 1
    restored = target + 0.1
    weights = LossWeights(pixel=300, perceptual=2, style=5, adversarial=(4, 1, 0.5))
    network = FixedConv()
    loss = TrainingLoss(weights, feature_network=network)
    assert loss.skip_reason is None and not any(p.requires_grad for p in network.parameters())
    total, terms = loss(restored, target, logits(1))
    perceptual, style = feature_losses(restored, target, network, 2, 5)
    assert terms["pixel"] == pytest.approx(300 * 0.01, rel=1e-4)
    assert terms["perceptual"] == pytest.approx(perceptual.item()) and terms["style"] == pytest.approx(style.item())
    assert terms["adversarial"] == pytest.approx(-5.5)
    assert terms["total"] == pytest.approx(sum(terms[k] for k in ("pixel", "perceptual", "style", "adversarial")), rel=1e-5)
    assert total.item() == pytest.approx(terms["total"])
    d_total, d_terms = loss.discriminator_loss(logits(0), logits(0))
    assert d_total.item() == pytest.approx(11) and d_terms["discriminator"] == pytest.approx(11)
    assert d_terms["real_logit_0"] == 0 and d_terms["fake_logit_2"] == 0
    loss.train()
    assert not network.training


# --- discriminator ------------------------------------------------------------------------

def test_discriminator_gives_one_logit_map_per_scale():
    torch.manual_seed(0)
    discriminator = MultiScaleDiscriminator(width=4, depth=3)
    image = torch.rand(2, 3, 64, 64) * 2 - 1
    outputs = discriminator(image)
    assert [tuple(o.shape) for o in outputs] == [(2, 1, 8, 8), (2, 1, 4, 4), (2, 1, 2, 2)]
    assert len(MultiScaleDiscriminator(width=4, depth=2, scales=(1,))(image)) == 1
    # the coarser inputs are block averages
    assert torch.allclose(downsample(image, 0.25)[0, 0, 0, 0], image[0, 0, :4, :4].mean())
    with pytest.raises(ValueError):
        MultiScaleDiscriminator(width=4, depth=2, scales=(1, 0.3))


def test_default_discriminator_widths():
    discriminator = MultiScaleDiscriminator()
    convs = [m for m in discriminator.discriminators[0].modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 128, 256, 512, 1]
    assert [c.kernel_size for c in convs] == [(4, 4)] * 4 + [(3, 3)]
    assert len(discriminator.discriminators) == 3


def largest_singular_values(discriminator) -> list[float]:
    """sigma_max of every conv's weight as used, read in eval mode (reading in train mode would iterate)."""
    mode = discriminator.training
    discriminator.eval()
    convs = [m for m in discriminator.modules() if isinstance(m, nn.Conv2d)]
    sigmas = [torch.linalg.matrix_norm(c.weight.detach().flatten(1), ord=2).item() for c in convs]
    discriminator.train(mode)
    return sigmas


def test_spectral_norm_keeps_the_largest_singular_value_near_one():
    torch.manual_seed(0)
    discriminator = MultiScaleDiscriminator(width=8, depth=3).train()
    convs = [m for m in discriminator.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 3 * 4
    # as after a large training step: raw weights changed (and scaled by 7), power-iteration vectors stale
    with torch.no_grad():
        for conv in convs:
            raw = conv.parametrizations.weight.original
            raw.add_(0.3 * raw.std() * torch.randn_like(raw)).mul_(7.0)
    assert max(abs(s - 1) for s in largest_singular_values(discriminator)) > 0.05
    image = torch.rand(2, 3, 32, 32) * 2 - 1
    for _ in range(12):
        discriminator(image)  # one power iteration per conv and call in train mode
    for sigma in largest_singular_values(discriminator):
        assert sigma == pytest.approx(1.0, abs=0.05)
    for conv in convs:
        assert torch.linalg.matrix_norm(conv.parametrizations.weight.original.detach().flatten(1), ord=2).item() > 2
    # eval mode freezes the estimate: calls change nothing
    discriminator.eval()
    before = largest_singular_values(discriminator)
    discriminator(image)
    assert largest_singular_values(discriminator) == before
