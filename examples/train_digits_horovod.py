"""An MLP on scikit-learn's digits under horovodrun (README: "Migrating from horovod.mxnet")."""

import argparse

import horovod.mxnet as hvd
import mxnet as mx
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=10)
parser.add_argument("--batch-size", type=int, default=32)
args = parser.parse_args()

hvd.init()

# each rank trains on its own equal shard of the training data
x, y = load_digits(return_X_y=True)
x_train, x_test, y_train, y_test = train_test_split(
    (x / 16).astype(np.float32), y, test_size=0.2, random_state=0, stratify=y
)
per_rank = len(x_train) // hvd.size()
mine = slice(hvd.rank() * per_rank, (hvd.rank() + 1) * per_rank)
x_train, y_train = x_train[mine], y_train[mine].astype(np.float32)

mx.random.seed(0)
net = mx.gluon.nn.HybridSequential()
net.add(
    mx.gluon.nn.Dense(128, activation="relu", in_units=64),
    mx.gluon.nn.Dense(64, activation="relu", in_units=128),
    mx.gluon.nn.Dense(10, in_units=64),
)
net.initialize(mx.init.Xavier())
net.hybridize()
params = net.collect_params()
optim = {"learning_rate": 0.1, "momentum": 0.9}

hvd.broadcast_parameters(params, root_rank=0)
trainer = hvd.DistributedTrainer(params, "sgd", optim)
loss_fn = mx.gluon.loss.SoftmaxCrossEntropyLoss()

rng = np.random.RandomState(hvd.rank())
for epoch in range(args.epochs):
    order = rng.permutation(len(x_train))
    for i in range(len(x_train) // args.batch_size):
        batch = order[i * args.batch_size : (i + 1) * args.batch_size]
        data, label = mx.nd.array(x_train[batch]), mx.nd.array(y_train[batch])
        with mx.autograd.record():
            loss = loss_fn(net(data), label)
        loss.backward()
        trainer.step(args.batch_size)
    if hvd.rank() == 0:
        print(f"epoch {epoch + 1}: loss {loss.mean().asscalar():.4f}", flush=True)

pred = net(mx.nd.array(x_test)).argmax(axis=1).asnumpy()
if hvd.rank() == 0:
    print(f"test accuracy: {(pred == y_test).mean():.4f}", flush=True)
hvd.shutdown()
