"""perturbo: FPGA accelerators that train neural networks without backpropagation."""
__version__ = "0.1.0"
