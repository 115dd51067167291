"""The one exception type for user mistakes: the CLI prints it as a single line and exits 2."""


class BoxsegError(Exception):
    """A problem with the user's input (file, option, dataset); never a bug in boxseg."""
