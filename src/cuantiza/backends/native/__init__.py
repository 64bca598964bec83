"""Optional native C kernels, loaded with ctypes; each has a torch path held to it bit for bit."""
