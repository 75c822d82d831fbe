"""Imprint attack (attacks/imprint.py): exact read-out of lone photos, empty bins, recovery shares on faces."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attacks.imprint import (
    ImprintBlock,
    bin_thresholds,
    imprint_parameters,
    measurement_vector,
    recover,
    recover_bins,
    update_as_gradient,
)

SHAPE = (3, 32, 32)


def smooth_images(n: int, seed: int) -> torch.Tensor:
    """Smooth random images in [-1, 1]: 4x4 noise upsampled, squashed."""
    g = torch.Generator().manual_seed(seed)
    low = torch.randn(n, 3, 4, 4, generator=g)
    return torch.tanh(F.interpolate(low, size=SHAPE[1:], mode="bilinear", align_corners=False))


def imprinted_model(weight: torch.Tensor, bias: torch.Tensor, classes: int = 10) -> nn.Sequential:
    torch.manual_seed(1)
    block = ImprintBlock(SHAPE, weight.shape[0], weight, bias)
    return nn.Sequential(block, nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 16 * 16, classes))


def imprint_grads(net: nn.Sequential, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """FedSGD: the real autograd gradient of the block's first layer for one batch."""
    net.zero_grad()
    F.cross_entropy(net(x), y).backward()
    layer = net[0].imprint
    assert layer.weight.grad is not None and layer.bias.grad is not None
    return layer.weight.grad.clone(), layer.bias.grad.clone()


def best_psnr(photos: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Per photo: the PSNR (dB, images in [-1, 1]) of its best candidate; 0 when there is none."""
    if len(candidates) == 0:
        return torch.zeros(len(photos))
    mse = ((candidates.clamp(-1, 1)[None] - photos[:, None]) ** 2).flatten(2).mean(2)
    return 10 * torch.log10(4.0 / mse.min(1).values.clamp_min(1e-12))


def ladder(values: torch.Tensor, cuts: list[float]) -> torch.Tensor:
    """Ascending thresholds: one far below every value (unit 0 sees all), then ``cuts``."""
    return torch.tensor([float(values.min()) - 10.0, *cuts], dtype=torch.float64)


def test_lone_photo_recovered_exactly_from_autograd_gradient() -> None:
    x = smooth_images(8, seed=0)
    m = measurement_vector(SHAPE, "random", seed=3)
    v, order = torch.sort(x.flatten(1).double() @ m)
    mid = [float(v[i] + v[i + 1]) / 2 for i in range(7)]
    # bin 0: the two lowest photos together (mixed); bins 1..6: one photo each; bin 7: the top photo.
    thr = ladder(v, mid[1:] + [float(v[-1]) + 1.0])
    weight, bias = imprint_parameters(SHAPE, len(thr), thr, m)
    net = imprinted_model(weight, bias)
    gw, gb = imprint_grads(net, x, torch.arange(8) % 10)
    r = recover_bins(gw, gb)
    assert r.bins.tolist() == [0, 1, 2, 3, 4, 5, 6]  # bin 7 (above every photo) is empty
    lone = r.images[1:]
    truth = x[order[2:]]
    assert (lone - truth).abs().max() < 1e-4
    # The mixed bin gives a blend, not either photo.
    for j in order[:2]:
        assert (r.images[0] - x[j]).abs().max() > 1e-2
    assert torch.equal(recover(gw, gb), r.images)


def test_block_keeps_the_image_and_the_model_trainable() -> None:
    x = smooth_images(4, seed=1)
    m = measurement_vector(SHAPE)
    thr = bin_thresholds(smooth_images(64, seed=2), m, 16)
    weight, bias = imprint_parameters(SHAPE, 16, thr, m)
    net = imprinted_model(weight, bias)
    y = net[0](x)
    assert y.shape == x.shape and (y - x).abs().max() < 5e-3  # under one 8-bit grey level (2/255)
    gw, gb = imprint_grads(net, x, torch.zeros(4, dtype=torch.long))
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net[1:].parameters())
    assert "0.readout" in dict(net.named_buffers())  # the way back to image space is not trained
    assert [n for n, _ in net[0].named_parameters()] == ["imprint.weight", "imprint.bias"]
    # Identical rows, monotone biases: the structure recover relies on.
    assert torch.equal(weight, weight[:1].expand_as(weight)) and bool((bias[1:] < bias[:-1]).all())


def test_zero_loss_and_empty_bins_yield_nothing() -> None:
    x = smooth_images(6, seed=4)
    m = measurement_vector(SHAPE, "mean")
    v, order = torch.sort(x.flatten(1).double() @ m)
    gap = float(v[3] - v[2])
    # Three thresholds inside one gap between photos (two empty bins), two above every photo (empty).
    cuts = [float(v[1] + v[2]) / 2, float(v[2]) + gap / 4, float(v[2]) + gap / 2, float(v[2]) + 3 * gap / 4,
            float(v[4] + v[5]) / 2, float(v[5]) + 1.0, float(v[5]) + 2.0]
    thr = ladder(v, cuts)
    weight, bias = imprint_parameters(SHAPE, len(thr), thr, m)
    net = imprinted_model(weight, bias)
    # A zero loss (outputs matched to themselves): a zero gradient, and not one candidate.
    net.zero_grad()
    out = net(x)
    F.mse_loss(out, out.detach()).backward()
    layer = net[0].imprint
    assert layer.weight.grad is not None and layer.bias.grad is not None
    none = recover(layer.weight.grad, layer.bias.grad)
    assert none.shape == (0, *SHAPE)
    # A real loss: only occupied bins speak. Bins: 0 {v0,v1}, 1 {v2}, 2-3 empty, 4 {v3,v4}, 5 {v5}, 6-7 empty.
    gw, gb = imprint_grads(net, x, torch.arange(6))
    r = recover_bins(gw, gb)
    assert r.bins.tolist() == [0, 1, 4, 5]
    assert (r.images[1] - x[order[2]]).abs().max() < 1e-4
    assert (r.images[3] - x[order[5]]).abs().max() < 1e-4


def test_readout_flags_opposite_sign_blends() -> None:
    x = smooth_images(3, seed=5)
    g = torch.tensor([1.0, -0.6, 0.5], dtype=torch.float64)  # photos 0 and 1 share bin 0; photo 2 in bin 1
    xs = x.flatten(1).double()
    bin_of = torch.tensor([0, 0, 1])
    active = (bin_of[None, :] >= torch.arange(3)[:, None]).double()  # unit i fires for photos in bins >= i
    gw, gb = (active * g) @ xs, active @ g  # unit 2 (above every photo) stays zero
    r = recover_bins(gw, gb)
    assert r.bins.tolist() == [0, 1]
    assert r.mixed.tolist() == [True, False]  # 2.5·x0 − 1.5·x1 leaves [-1, 1]
    assert (r.images[1] - x[2]).abs().max() < 1e-5


@pytest.fixture(scope="module")
def faces() -> dict[str, torch.Tensor]:
    """Photos of the embedded users: attacked users u0000-u0003 and u0020-u0021, public users u0075-u0099."""
    from fl_sim.core.data import open_dataset

    ds = open_dataset("synthfaces")
    users = [u.user for u in ds.users()]
    out = {u: ds.photos(u, 32) for u in users[:4] + users[20:22]}
    out["public"] = torch.cat([ds.photos(u, 32)[:32] for u in users[75:]])
    return out


def face_attack(faces: dict[str, torch.Tensor], batch: int, bins_per_photo: int = 4) -> tuple[nn.Sequential, torch.Tensor]:
    m = measurement_vector(SHAPE, "random", seed=0)
    thr = bin_thresholds(faces["public"], m, bins_per_photo * batch)
    weight, bias = imprint_parameters(SHAPE, len(thr), thr, m)
    return imprinted_model(weight, bias), m


def test_recovery_share_on_faces_fedsgd(faces: dict[str, torch.Tensor]) -> None:
    shares = {}
    for batch, groups in ((32, [["u0000"], ["u0001"], ["u0002"], ["u0003"]]), (100, [["u0000", "u0020"], ["u0001", "u0021"]])):
        net, _ = face_attack(faces, batch)
        got = []
        for users in groups:
            x = torch.cat([faces[u] for u in users])[:batch]
            y = torch.randint(0, 10, (batch,), generator=torch.Generator().manual_seed(batch))
            gw, gb = imprint_grads(net, x, y)
            got.append(float((best_psnr(x, recover(gw, gb)) >= 25).float().mean()))
        shares[batch] = sum(got) / len(got)
        print(f"imprint FedSGD, batch {batch}, {4 * batch} bins: recovered at PSNR >= 25 dB: "
              f"{shares[batch]:.3f} (per batch {', '.join(f'{s:.2f}' for s in got)})")
    assert shares[32] >= 0.7
    assert shares[100] >= 0.5


def test_recovery_share_on_faces_fedavg(faces: dict[str, torch.Tensor]) -> None:
    """4 local SGD steps on mini-batches of 8 (one epoch of 32 photos), read from the float32 update."""
    lr, batch = 0.01, 32
    net0, _ = face_attack(faces, batch)
    got = []
    for i, user in enumerate(["u0000", "u0001", "u0002", "u0003"]):
        g = torch.Generator().manual_seed(i)
        x = faces[user][:batch]
        y = torch.randint(0, 10, (batch,), generator=g)
        net = copy.deepcopy(net0)
        perm = torch.randperm(batch, generator=g)
        for step in range(4):  # plain SGD, every parameter (the imprint layer's too) takes the step
            idx = perm[step * 8:(step + 1) * 8]
            net.zero_grad()
            F.cross_entropy(net(x[idx]), y[idx]).backward()
            with torch.no_grad():
                for p in net.parameters():
                    assert p.grad is not None
                    p -= lr * p.grad
        before, after = net0[0].imprint, net[0].imprint
        gw = update_as_gradient(before.weight.data, after.weight.data, lr)
        gb = update_as_gradient(before.bias.data, after.bias.data, lr)
        got.append(float((best_psnr(x, recover(gw, gb)) >= 25).float().mean()))
    share = sum(got) / len(got)
    print(f"imprint FedAvg (4 steps x 8, lr {lr}), batch 32, 128 bins: recovered at PSNR >= 25 dB: "
          f"{share:.3f} (per user {', '.join(f'{s:.2f}' for s in got)})")
    assert share > 0.2


def test_the_priors_cleaning_keeps_a_face_at_low_noise_and_redraws_a_blend_at_high_noise() -> None:
    # Known answers at the two ends: at a tiny noise std the DDIM round trip returns the face it was given; at a
    # large one it returns a different, valid image (the prior's, not the blend's) — and the same one for a seed.
    from attacks.imprint import clean_with_prior
    from fl_sim.core.data import open_dataset
    from fl_sim.core.metrics import psnr
    from fl_sim.core.priors import open_prior

    prior = open_prior("faces32", device="cpu")
    ds = open_dataset("synthfaces:prior")
    faces = torch.cat([ds.photos(p.user, 32)[:1] for p in ds.users()[:2]])
    kept = clean_with_prior(faces, prior, 0.01, steps=2)
    assert kept.shape == faces.shape and psnr(kept, faces) > 30
    blend = 1.6 * faces[:1] - 0.6 * faces[1:]  # a mixed bin: a signed blend, out of range
    a, b = clean_with_prior(blend, prior, 1.0, steps=5), clean_with_prior(blend, prior, 1.0, steps=5)
    assert torch.equal(a, b) and float(a.abs().max()) <= 1.0 and psnr(a, blend.clamp(-1, 1)) < 30
    assert clean_with_prior(blend[:0], prior, 1.0).shape == (0, 3, 32, 32)


def test_spread_direction_finds_where_one_person_varies_not_where_people_differ() -> None:
    # Known answer: people differ along axis 0 only, each person's photos vary along axis 1 only (and a little noise).
    from attacks.imprint import spread_direction

    gen = torch.Generator().manual_seed(0)
    groups = []
    for _ in range(40):
        centre = torch.zeros(3, 4, 4)
        centre.view(-1)[0] = 5 * torch.randn(1, generator=gen)
        photos = centre.repeat(6, 1, 1, 1)
        spread = torch.randn(6, generator=gen)
        photos.view(6, -1)[:, 1] += spread - spread.mean()  # each person's own variation, about their centre
        groups.append(photos + 1e-3 * torch.randn(photos.shape, generator=gen))
    m = spread_direction(groups, rank=8)
    assert abs(float(m.norm()) - 1) < 1e-9 and abs(float(m[1])) > 0.99 and abs(float(m[0])) < 0.01
    with pytest.raises(ValueError, match="two identities"):
        spread_direction(groups[:1])
