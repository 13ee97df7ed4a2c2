"""An example user package for kubetrain (see ../README.md)."""
