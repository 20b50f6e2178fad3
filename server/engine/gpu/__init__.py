"""The CUDA plumbing: NVRTC compilation, the kernel store and launch arguments, CUDA graphs and kernel tuning."""
