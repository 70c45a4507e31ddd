"""`python -m streams worker ...`: Faust's own command line for the app."""

from streams.cli import main

if __name__ == "__main__":
    main()
