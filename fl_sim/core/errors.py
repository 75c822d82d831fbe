"""User-facing errors: one line, naming what is wrong and where; the CLI exits 2 on them."""


class FlSimError(Exception):
    """A problem with the user's input (config, path, data) rather than a bug in fl-sim."""


class ConfigError(FlSimError):
    """An invalid run configuration: names the key and what is wrong with its value."""


class DataError(FlSimError):
    """An unreadable or inconsistent dataset: names the path."""
