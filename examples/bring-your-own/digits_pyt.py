"""A PyTorch script written for HPE Swarm Learning, as its users write them: it reads the ML
container's environment (DATA_DIR, MODEL_DIR, SCRATCH_DIR, MAX_EPOCHS, MIN_PEERS), builds its model,
and calls the four SwarmCallback hooks, counting epochs from 1 as HPE's examples do. Nothing in it
is specific to this project; run it with

    swarmctl run --script examples/bring-your-own/digits_pyt.py --data DATA --nodes 2

after ``python examples/bring-your-own/prepare_data.py DATA --nodes 2``.
"""

import logging
import os

import numpy as np
import torch
from swarmlearning.pyt import SwarmCallback
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

default_max_epochs = 6
default_min_peers = 2
batchSz = 32


def loadData(dataDir):
    def load(name):
        with np.load(os.path.join(dataDir, name)) as d:
            return TensorDataset(torch.from_numpy(d["x"]).float(), torch.from_numpy(d["y"]).long())

    return load("train.npz"), load("val.npz")


def doTrainBatch(model, trainLoader, optimizer, epoch, swarmCallback):
    model.train()
    for batchIdx, (data, target) in enumerate(trainLoader):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(data), target)
        loss.backward()
        optimizer.step()
        if batchIdx % 20 == 0:
            seen = batchIdx * len(data)
            print(f"Train Epoch: {epoch} [{seen}/{len(trainLoader.dataset)}] Loss: {loss.item():.6f}")
        if swarmCallback is not None:
            swarmCallback.on_batch_end()


def main():
    dataDir = os.getenv("DATA_DIR", "./data")
    modelDir = os.getenv("MODEL_DIR", "./model")
    scratchDir = os.getenv("SCRATCH_DIR", "./scratch")
    max_epochs = int(os.getenv("MAX_EPOCHS", str(default_max_epochs)))
    min_peers = int(os.getenv("MIN_PEERS", str(default_min_peers)))
    torch.set_num_threads(1)
    torch.manual_seed(1)
    trainDs, valDs = loadData(dataDir)
    trainLoader = DataLoader(trainDs, batch_size=batchSz, shuffle=True)
    model = nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    swarmCallback = SwarmCallback(
        syncFrequency="4",  # HPE's client accepts numbers given as strings
        minPeers=min_peers,
        useAdaptiveSync=False,
        adsValData=valDs,
        adsValBatchSize=batchSz,
        model=model,
        mergeMethod="MEAN",  # and method names in any case
        lossFunction="CrossEntropyLoss",
        lossFunctionArgs={"reduction": "sum"},  # the loss is reported as a mean all the same
        metricFunction="Accuracy",
        totalEpochs=max_epochs,
        mlPlatform="PYTORCH",  # an HPE-only parameter: accepted with a warning
    )
    swarmCallback.logger.setLevel(logging.INFO)
    swarmCallback.on_train_begin()
    for epoch in range(1, max_epochs + 1):
        doTrainBatch(model, trainLoader, opt, epoch, swarmCallback)
        swarmCallback.on_epoch_end(epoch)
    swarmCallback.on_train_end()
    over = swarmCallback.isSwarmTrainingOver
    print(f"epochs completed: {swarmCallback.epochsCompleted}, swarm training over: {over}")
    os.makedirs(scratchDir, exist_ok=True)
    os.makedirs(modelDir, exist_ok=True)
    torch.save(model.state_dict(), os.path.join(modelDir, "digits_pyt.pt"))
    print("Saved the trained model!")


if __name__ == "__main__":
    main()
