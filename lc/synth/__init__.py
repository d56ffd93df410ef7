"""Synthetic Sentinel-2 products and WorldCover tiles in ESA's formats: the offline default data."""
