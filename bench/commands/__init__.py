"""The commands: the `bench` CLI and its shared options, scoring checkpoints and other
people's samples, sampling."""
