"""Every kernel of cuantiza: the torch reference paths and the optional native C ones."""
