"""A registered model -> maps of new scenes (tiled, streamed) -> their accuracy and class areas."""
