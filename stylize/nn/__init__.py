"""Neural-network modules: normalization layers, the transformer network, the VGG loss net."""
