"""The weights/ folder, installed as the data package esrgan_cli.bundled (see pyproject.toml)."""
