"""Field data (`tinyops field`): batches of samples that deployed devices saw, with their int8
outputs and, where known, labels, checked against the device's bundle and stored under
data/field/ for the drift monitor and the next training split. Only `core` is below it."""
