"""`python -m stdtrt ...` (and `accelerate launch -m stdtrt distill ...`) run the CLI."""

from stdtrt.cli import main

if __name__ == "__main__":
    main()
