"""``python -m lightning_ebm fit --config dem_toy.yaml`` (``python -m lightning_ebm configs`` lists the configs)."""

from lightning_ebm.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
