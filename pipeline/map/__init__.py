"""The latent map: layout, regions and labels, quality, map.png and the map job (docs/map.md)."""
