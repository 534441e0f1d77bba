"""`python -m stylize`: the same as the `stylize` command."""

from stylize.cli import main

if __name__ == "__main__":
    main()
