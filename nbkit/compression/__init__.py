"""Weight compression and post-training quantization with NNCF: configs checked against the model, calibration data, NNCF's phases as progress, and the same config as code."""
