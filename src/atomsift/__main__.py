"""`python -m atomsift`: the `atomsift` command."""

from atomsift.cli import main

if __name__ == "__main__":
    main()
