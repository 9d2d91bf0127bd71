"""TOML recipes shipped with sj-realspike (see ``SpikeConfig.from_file``)."""
