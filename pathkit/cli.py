"""The `pathkit` command line."""


def main(argv=None):
    raise NotImplementedError("cli is being built")
