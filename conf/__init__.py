# conf/ is installed as the package `pipeline.conf` (through the link pipeline/conf) so Hydra finds it anywhere.
