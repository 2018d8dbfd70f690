"""``python -m torchcam_ops <command>``: see :mod:`torchcam_ops.cli`."""

from torchcam_ops.cli import main

if __name__ == "__main__":
    main()
