"""TensorState's PyTorch LeNet-5 tutorial with ``import onnx_state as ts``, on offline digits.

    python -m examples.pytorch_tutorial

MNIST is replaced by the digits bundled with onnx_state (28x28, see README). As in the
tutorial, states are captured by hooks while the user's own evaluation loop runs.
"""

import numpy as np
import torch
from torch import nn, optim

import onnx_state as ts
from examples.lenet import bundled_digits, torch_lenet5

torch.manual_seed(0)
x, y = bundled_digits()
n_train = int(0.8 * len(x))
train = torch.utils.data.TensorDataset(torch.from_numpy(x[:n_train]), torch.from_numpy(y[:n_train]))
valid = torch.utils.data.TensorDataset(torch.from_numpy(x[n_train:]), torch.from_numpy(y[n_train:]))
train_dl = torch.utils.data.DataLoader(train, batch_size=64, shuffle=True)
valid_dl = torch.utils.data.DataLoader(valid, batch_size=200)

dev = torch.device("cpu")
model = torch_lenet5().to(dev)
loss_func = nn.CrossEntropyLoss()
optimizer = optim.Adam(model.parameters(), lr=1e-3)


def epoch_func(x, y, train=False):
    predictions = model(x)
    num = len(x)
    accuracy = (torch.argmax(predictions, axis=1) == y).float().sum() / num
    loss = loss_func(predictions, y)
    if train:
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return loss.item(), accuracy.item(), num


last_valid_accuracy, val_count, patience = 0, 0, 3
for _epoch in range(30):
    model.train()
    for xb, yb in train_dl:
        epoch_func(xb.to(dev), yb.to(dev), True)
    model.eval()
    with torch.no_grad():
        losses, accuracies, nums = zip(*[epoch_func(xb, yb) for xb, yb in valid_dl])
    valid_accuracy = np.sum(np.multiply(accuracies, nums)) / np.sum(nums)
    if valid_accuracy > last_valid_accuracy:
        val_count, last_valid_accuracy = 0, valid_accuracy
    else:
        val_count += 1
    if val_count >= patience:
        break

# --- from here on: the tutorial, unchanged but for the import ---
efficiency_model = ts.build_efficiency_model(model, attach_to=["Conv2d"], method="after")

model.eval()
with torch.no_grad():
    losses, accuracies, nums = zip(
        *[epoch_func(xb.to(dev), yb.to(dev), False) for xb, yb in valid_dl]
    )

for layer in efficiency_model.efficiency_layers:
    print(f"Layer {layer.name} number of states: {layer.state_count}")

for layer in efficiency_model.efficiency_layers:
    layer_efficiency = layer.efficiency()
    print(f"Layer {layer.name} efficiency: {100 * layer_efficiency:.1f}%")

beta = 2
print()
print("Network metrics...")
print(f"Beta: {beta}")
network_efficiency = ts.network_efficiency(efficiency_model)
print(f"Network efficiency: {100 * network_efficiency:.1f}%")
accuracy = np.sum(np.multiply(accuracies, nums)) / np.sum(nums)
print(f"Network accuracy: {100 * accuracy:.1f}%")
aIQ = ts.aIQ(network_efficiency, accuracy, beta)  # noqa: N816 (the tutorial's name)
print(f"aIQ: {100 * aIQ:.1f}%")

# method='both' works here too (it crashes in TensorState for PyTorch):
efficiency_model.remove_hooks()
both = ts.build_efficiency_model(model, attach_to=["Conv2d"], method="both")
with torch.no_grad():
    model(torch.from_numpy(x[n_train:]))
print([layer.name for layer in both.efficiency_layers])
