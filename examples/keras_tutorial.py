"""TensorState's Keras LeNet-5 tutorial with ``import onnx_state as ts``, on offline digits.

    python -m examples.keras_tutorial

MNIST is replaced by the digits bundled with onnx_state (28x28, see README); everything
after training is the tutorial's code with only the import changed.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np

import onnx_state as ts
from examples.lenet import bundled_digits, keras_lenet5

# Data: channels-last like the tutorial; the first 80 % train, the rest validate.
x, y = bundled_digits()
x = x.transpose(0, 2, 3, 1)
n_train = int(0.8 * len(x))
train_images, train_labels = x[:n_train], y[:n_train]
test_images, test_labels = x[n_train:], y[n_train:]

keras.utils.set_random_seed(0)
model = keras_lenet5()
model.compile(
    optimizer=keras.optimizers.Adam(1e-3),
    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    metrics=["accuracy"],
)
earlystop_callback = keras.callbacks.EarlyStopping(
    monitor="val_accuracy", min_delta=0.0001, patience=3, restore_best_weights=True
)
model.fit(
    train_images, train_labels, epochs=30, batch_size=64, verbose=0,
    validation_data=(test_images, test_labels), callbacks=[earlystop_callback],
)  # fmt: skip

# --- from here on: the tutorial, unchanged but for the import ---
efficiency_model = ts.build_efficiency_model(model, attach_to=["Conv2D"], method="after")
predictions = efficiency_model.predict(train_images, batch_size=200)

for layer in efficiency_model.efficiency_layers:
    print(f"Layer {layer.name} number of states: {layer.state_count}")

for layer in efficiency_model.efficiency_layers:
    layer_efficiency = layer.efficiency()
    print(f"Layer {layer.name} efficiency: {100 * layer_efficiency:.1f}%")

beta = 2  # fudge factor giving a slight bias toward accuracy over efficiency
print()
print("Network metrics...")
print(f"Beta: {beta}")
network_efficiency = ts.network_efficiency(efficiency_model)
print(f"Network efficiency: {100 * network_efficiency:.1f}%")
accuracy = np.sum(np.argmax(predictions, axis=1) == train_labels) / train_labels.size
print(f"Network accuracy: {100 * accuracy:.1f}%")
aIQ = ts.aIQ(network_efficiency, accuracy, beta)  # noqa: N816 (the tutorial's name)
print(f"aIQ: {100 * aIQ:.1f}%")
