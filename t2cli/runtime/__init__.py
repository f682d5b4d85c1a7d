"""How models run: devices and processes (torchrun / accelerate), batched generation."""
