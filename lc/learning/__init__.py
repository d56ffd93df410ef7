"""Scenes -> chips -> the U-Net: splits, normalisation, augmentation, harmonisation, losses, the contract."""
