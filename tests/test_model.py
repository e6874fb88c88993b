import torch

from recipe.model import ResNet34


def test_width_64_has_exactly_the_resnet34_parameter_count():
    assert sum(p.numel() for p in ResNet34().parameters()) == 21_328_292


def test_keeps_32x32_resolution_through_the_stem_and_gives_100_logits():
    model = ResNet34(width=4).eval()
    stem_out = model.stem(torch.zeros(2, 3, 32, 32))
    assert stem_out.shape == (2, 4, 32, 32)  # 3x3 stride-1 stem, no max-pool
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 100)


def test_stages_downsample_by_strided_convolutions_to_4x4():
    model = ResNet34(width=4)
    blocks = list(model.layers)
    assert len(blocks) == 3 + 4 + 6 + 3
    strided = [i for i, b in enumerate(blocks) if b.conv1.stride == (2, 2)]
    assert strided == [3, 7, 13]
    assert all(len(blocks[i].shortcut) == 2 and blocks[i].shortcut[0].kernel_size == (1, 1) for i in strided)
    assert model.layers(model.stem(torch.zeros(1, 3, 32, 32))).shape == (1, 32, 4, 4)


def test_dropout_sits_before_the_classifier():
    model = ResNet34(width=4, dropout=0.2)
    assert model.dropout.p == 0.2
    assert model.fc.in_features == 32 and model.fc.out_features == 100
