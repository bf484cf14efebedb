"""`python -m gaqtool` runs the command-line tool."""

from gaqtool.cli.app import main

if __name__ == "__main__":
    main()
