"""``python -m lightning_cam``: the ``lightning-cam`` command."""

from lightning_cam.cli import main

if __name__ == "__main__":
    main()
