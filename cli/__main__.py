"""`python -m cli ...`: the `ai-analytics` command without its console script (how the stack starts children)."""

from cli.main import main

if __name__ == "__main__":
    main()
