"""`python -m gaqtool` runs the command-line tool."""

from gaqtool.cli import main

if __name__ == "__main__":
    main()
