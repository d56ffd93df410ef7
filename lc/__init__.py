"""landcover: Sentinel-2 land-cover maps with a U-Net, and experiments you can compare.

The package follows the chain product -> scene -> chips -> model -> tracked run -> registered
model -> map -> assessment -> report, one subpackage per stage (docs/architecture.md).
"""
