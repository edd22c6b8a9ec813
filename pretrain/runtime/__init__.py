"""The process around the model: device choice, seeds and RNG states, logging and metrics files,
hardware peaks, exit codes and the torchrun command line. No model, data or training code."""
