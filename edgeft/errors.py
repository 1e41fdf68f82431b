"""Errors that edgeft reports to a person as one clear sentence."""


class EdgeftError(Exception):
    """A problem the user can fix: bad input, bad file, bad option. Its message is the whole report."""


class DataError(EdgeftError):
    """A data file that cannot be learned from; the message names the file and the problem."""
