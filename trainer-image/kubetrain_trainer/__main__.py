"""``python -m kubetrain_trainer``: the worker process torchrun starts."""

from kubetrain_trainer.main import main

if __name__ == "__main__":
    main()
