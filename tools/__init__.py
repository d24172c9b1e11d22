"""Support code for tests, benchmarks and the demo: the host ComfyUI and random models in official layouts."""
