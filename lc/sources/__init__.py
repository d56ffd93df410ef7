"""Where an experiment's products come from (synthetic, or WorldCover and CDSE downloads) and their scenes."""
