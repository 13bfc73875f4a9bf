import torch

from medclf.contract import DataContract
from medclf.data.transforms import Augment, make_transform


def contract(in_chans=3, size=32):
    return DataContract(model_name="x", num_classes=2, label_names=["n", "p"], positive_index=1, input_size=size,
                        in_chans=in_chans, mean=[0.5] * in_chans, std=[0.25] * in_chans)


def test_eval_transform_normalises_and_replicates():
    images = torch.full((2, 32, 32), 255, dtype=torch.uint8)
    images[1] = 0
    x = make_transform(contract(), train=False)(images)
    assert x.shape == (2, 3, 32, 32)
    assert torch.allclose(x[0], torch.full_like(x[0], (1.0 - 0.5) / 0.25))
    assert torch.allclose(x[1], torch.full_like(x[1], (0.0 - 0.5) / 0.25))


def test_eval_transform_resizes_to_model_size_single_channel():
    images = torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8)
    x = make_transform(contract(in_chans=1, size=32), train=False)(images)
    assert x.shape == (3, 1, 32, 32)
    # area-like antialiased resize keeps the mean grey level
    assert abs(float(x.mean() * 0.25 + 0.5) - float(images.float().mean() / 255)) < 0.01


def test_flip_is_seeded_and_mirrors():
    images = torch.zeros((8, 16, 16), dtype=torch.uint8)
    images[:, :, :4] = 255  # bright left edge
    t = make_transform(contract(size=16), train=True, augment=Augment(flip=True))
    a = t.unit(images, torch.Generator().manual_seed(1))
    b = t.unit(images, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    flipped = a[:, 0, :, -1].mean(1) == 1.0
    assert 0 < int(flipped.sum()) < 8  # some mirrored, some not
    assert torch.all(a[~flipped, 0, :, 0] == 1.0)


def test_affine_and_contrast_stay_in_range():
    images = torch.randint(0, 256, (4, 32, 32), dtype=torch.uint8)
    t = make_transform(contract(), train=True, augment=Augment(flip=False, affine=True, contrast=True))
    x = t.unit(images, torch.Generator().manual_seed(0))
    assert x.shape == (4, 1, 32, 32)
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert not torch.allclose(x, images.unsqueeze(1).float() / 255)

