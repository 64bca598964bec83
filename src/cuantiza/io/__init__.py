"""Files: the save format, save / load of quantized models, atomic publishing."""
