"""The non-meta baseline of the CLINC150 table: supervised pretraining, then nearest class mean.

The encoder (``model=text_bag`` or ``text_cnn`` of the toolkit, everything under its head) is
trained with a softmax over the meta-training intents (50 for the 50/50/50 split), on all their
utterances, by plain minibatch Adam; no episode, no inner loop. On each test episode the query
utterances are then classified by the nearest class mean of the support embeddings under cosine
similarity (the "Baseline++"-style / prototype classifier that Chen et al., 2019, and the few-shot
text-classification studies after them, e.g. Bansal et al., 2020; Zhang et al., 2020, report as hard
to beat). The episodes are those ``maml-eval`` scores (the same seeded ``held_out("test", ...)``
set), so the numbers sit in one table with the meta-learners'.

    MAML_DATA_ROOT=/path/to/data python scripts/clinc150_baseline.py --ways 5 --shots 1
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from toolkit import provenance
from torch.nn import functional as F

from maml_cli.config import config_dir, register_configs
from maml_cli.engine.build import build_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ways", type=int, default=5)
    parser.add_argument("--shots", type=int, default=1)
    parser.add_argument("--model", default="text_bag")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None, help="also write the result here")
    parser.add_argument("overrides", nargs="*", help="maml-train config overrides, e.g. dataset.split=domain")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    register_configs()
    preset = f"clinc150_{args.ways}w{args.shots}s"
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"experiment={preset}", f"model={args.model}", *args.overrides])
    device = torch.device("cpu")
    tasks = instantiate(cfg.dataset, seed=args.seed, device=device)
    train_ids = [tasks.class_names.index(name) for name in tasks.split_intents["train"]]
    cfg.model.out_features = len(train_ids)  # a softmax over the meta-training intents
    model = build_model(cfg, device, tasks.input_shape)

    rows = torch.nonzero(torch.isin(tasks.labels, torch.tensor(train_ids))).flatten()
    relabel = torch.full((len(tasks.class_names),), -1, dtype=torch.long)
    relabel[torch.tensor(train_ids)] = torch.arange(len(train_ids))
    x_all, y_all = tasks.images[rows], relabel[tasks.labels[rows]]
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    generator = torch.Generator().manual_seed(args.seed)
    start = time.perf_counter()
    model.train()
    for epoch in range(args.epochs):
        order = torch.randperm(len(rows), generator=generator)
        total = 0.0
        for i in range(0, len(rows), args.batch):
            batch = order[i : i + args.batch]
            loss = F.cross_entropy(model(x_all[batch]), y_all[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        print(f"epoch {epoch + 1}: train loss {total / len(rows):.3f}", flush=True)
    train_s = time.perf_counter() - start

    start = time.perf_counter()
    model.eval()
    accuracies = []
    with torch.no_grad():
        for batch in tasks.held_out("test", args.episodes, 100):
            for t in range(batch.num_tasks):
                support = F.normalize(model.embed(batch.support_x[t]), dim=-1)
                query = F.normalize(model.embed(batch.query_x[t]), dim=-1)
                means = torch.zeros(args.ways, support.shape[-1]).index_add_(0, batch.support_y[t], support)
                means = F.normalize(means, dim=-1)  # cosine: the mean's direction
                predicted = (query @ means.T).argmax(dim=-1)
                accuracies.append((predicted == batch.query_y[t]).double().mean())
    eval_s = time.perf_counter() - start
    acc = torch.stack(accuracies)
    mean, ci95 = acc.mean().item(), 1.96 * acc.std(unbiased=True).item() / math.sqrt(len(acc))
    print(
        f"{preset} {args.model} supervised + nearest class mean (cosine): {100 * mean:.2f} +- {100 * ci95:.2f}% "
        f"on {len(acc)} test episodes; pretraining {train_s:.0f} s, episodes {eval_s:.0f} s  "
        + provenance(args.seed, torch.get_num_threads())
    )
    if args.json:
        result = {"mean": mean, "ci95": ci95, "episodes": len(acc), "train_s": train_s, "eval_s": eval_s}
        with open(args.json, "w") as handle:
            json.dump(result, handle)


if __name__ == "__main__":
    main()
