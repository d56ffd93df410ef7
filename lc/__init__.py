"""landcover: Sentinel-2 land-cover mapping with a U-Net, every experiment comparable."""

__version__ = "0.1.0"
