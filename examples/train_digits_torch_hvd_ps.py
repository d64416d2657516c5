"""An MLP on digits in PyTorch under horovodrun (docs: "Migrating from horovod.torch")."""

import argparse

import horovod.torch as hvd
import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import hvd_ps.torch as hps

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=10)
parser.add_argument("--batch-size", type=int, default=32)
args = parser.parse_args()

hps.init(group_size=2)  # groups of 2 ranks (default: one per host); runs hvd.init

# each rank trains on its own equal shard of the training data
x, y = load_digits(return_X_y=True)
x_train, x_test, y_train, y_test = train_test_split(
    (x / 16).astype(np.float32), y, test_size=0.2, random_state=0, stratify=y
)
per_rank = len(x_train) // hvd.size()
mine = slice(hvd.rank() * per_rank, (hvd.rank() + 1) * per_rank)
x_train, y_train = torch.from_numpy(x_train[mine]), torch.from_numpy(y_train[mine])

torch.manual_seed(0)
model = torch.nn.Sequential(
    torch.nn.Linear(64, 128),
    torch.nn.ReLU(),
    torch.nn.Linear(128, 64),
    torch.nn.ReLU(),
    torch.nn.Linear(64, 10),
)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

hvd.broadcast_parameters(model.state_dict(), root_rank=0)
optimizer = hps.DistributedOptimizer(optimizer, model.named_parameters(), sync=hps.EASGD(4))
loss_fn = torch.nn.CrossEntropyLoss()

generator = torch.Generator().manual_seed(hvd.rank())
for epoch in range(args.epochs):
    order = torch.randperm(len(x_train), generator=generator)
    for i in range(len(x_train) // args.batch_size):
        batch = order[i * args.batch_size : (i + 1) * args.batch_size]
        optimizer.zero_grad()
        loss = loss_fn(model(x_train[batch]), y_train[batch])
        loss.backward()
        optimizer.step()
    if hvd.rank() == 0:
        print(f"epoch {epoch + 1}: loss {loss.item():.4f}", flush=True)

optimizer.pull_global(model)  # the global model (EASGD's centre), on every rank
with torch.no_grad():
    pred = model(torch.from_numpy(x_test)).argmax(dim=1).numpy()
if hvd.rank() == 0:
    print(f"test accuracy: {(pred == y_test).mean():.4f}", flush=True)
hps.shutdown()
